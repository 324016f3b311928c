"""train: fit the MLP, checkpoint every epoch, resume after a restart, log the model.

``python -m mlkube.steps.train --dataset DIR [--params JSON] [--epochs N] [--run-key KEY]``

The run's identity (``--run-key``, by default a digest of the dataset and hyperparameters)
names its checkpoint directory. Started again with the same identity, the step continues
from the newest checkpoint in the same MLflow run; once finished, it returns the same result
without training again.

Checkpoints: ``epoch-NNNN.pt`` after epoch N (the newest two are kept), each written aside,
flushed to disk and renamed. SIGTERM while training (a pod's eviction or preemption: the
kubelet sends it, then SIGKILL once the pod's terminationGracePeriodSeconds are over) stops
the run after the batch in progress: it writes ``epoch-NNNN-batch-BBBBBB.pt`` (epoch N in
progress, B of its batches done; it sorts between ``epoch-(N-1)`` and ``epoch-N``), marks the
MLflow run KILLED, and exits with status 143 (128 + SIGTERM) and one line saying where the
checkpoint is. A retried pod goes on from the next batch, in the same MLflow run, and ends
with the weights, epoch losses and metric of a run never stopped (bit for bit on the CPU,
where the kernels are deterministic for a given thread count); no batch is done twice, and
each epoch's metrics are logged once. Under torchrun the processes agree on the batch to
stop at (they compare flags every ``Trainer.STOP_CHECK_EVERY`` batches), rank 0 writes, and
every worker exits 143; torchrun itself then exits 1. A SIGTERM between epochs stops after
that epoch's checkpoint (after the last epoch, the run goes on to log its model); one before
training starts or while the model is logged stops at once (status 130), and a retry
resumes from the newest checkpoint, as it does after a SIGKILL.

Each epoch logs ``train_loss`` and ``val_<metric>`` to MLflow. The last epoch's metric, which
is the step's result, is over the whole validation split; the earlier epochs' points of the
curve are over a fixed seeded sample of it (:data:`EPOCH_EVAL_ROWS` rows, the whole split when
it is smaller), which keeps evaluation under 1% of a large epoch.

Given GPUs (``MLKUBE_GPUS``, which the pod adapters set from the step's resources and the
local backend from its ``gpus``), the step fails before it reads the data or creates an MLflow
run when torch sees fewer, in one line: how many were asked for, how many torch sees, and the
likely cause (a CPU-only torch build, no device exposed to the container, the node's driver).
Under torchrun every process of a pod sees all of the pod's GPUs, so each compares the pod's
count. With none asked for, the step trains on CUDA where torch finds it, else on the CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from mlkube import config as configmod
from mlkube import spec
from mlkube.config import ModelConfig, parse_json_option
from mlkube.errors import MlkubeError
from mlkube.result import atomic_write_text, write_termination_message
from mlkube.steps._main import Context, run_step

SPEC = spec.TRAIN
KEEP_CHECKPOINTS = 2
# Validation rows behind each per-epoch metric but the last epoch's, which is the whole split:
# the same seeded sample every epoch, one forward block (model.EVAL_ROWS). On a 200,000-row
# data set the whole split (30,000 rows) cost about 6% of a CPU epoch; a 4,096-row sample
# costs under 1%, with a standard error of about 0.3 points of accuracy at 97%
# (benchmarks/train_vs_loop.py). The step's result and anything that decides (tune's pruning,
# register's gate on the test split) never use the sample.
EPOCH_EVAL_ROWS = 4096

# The exit status after a SIGTERM that left a checkpoint: what a shell reports for a process
# SIGTERM ended, distinct from a step's own error (1, which a workflow does not retry) and
# from Ctrl-C (130); a pod that overran its grace period shows 137 (SIGKILL) instead.
PREEMPTED_EXIT = 128 + signal.SIGTERM
# Under torchrun, how long the first process of a pod without its GPUs waits for the others
# to find the same (they start together: a second is plenty) before it reports it.
GPU_CHECK_WAIT_S = 30.0
_CHECKPOINT = re.compile(r"epoch-(\d+)(?:-batch-(\d+))?\.pt")


class Preempted(BaseException):
    """SIGTERM stopped the training and a checkpoint is written: exit with PREEMPTED_EXIT.

    A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on the way out
    (the step runner's "unexpected error" among them) mistakes it for a failure.
    """


def run_key(digest: str, params: ModelConfig, reason: str | None = None) -> str:
    """The default identity of a training run: same data and parameters, same run.

    A retraining on drift (a ``--reason`` that names drift) is a run of its own even on the
    same data: it trains afresh instead of returning the earlier run; the same reason (a
    retried task) resumes it.
    """
    from mlkube.retrain import names_drift

    identity: dict[str, Any] = {"dataset": digest, "params": asdict(params)}
    if reason and names_drift(reason):
        identity["reason"] = reason
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _position(path: Path) -> tuple[int, int]:
    """A checkpoint file's place: (epochs completed, batches done of the next).

    ``epoch-0003.pt`` is (3, 0); ``epoch-0003-batch-000120.pt`` is (2, 120).
    """
    found = _CHECKPOINT.fullmatch(path.name)
    assert found is not None
    epoch, batch = int(found[1]), int(found[2] or 0)
    return (epoch - 1, batch) if found[2] else (epoch, 0)


def checkpoints(directory: Path) -> list[Path]:
    """The complete checkpoint files (written aside, then renamed), newest last."""
    return sorted((p for p in directory.glob("epoch-*.pt") if _CHECKPOINT.fullmatch(p.name)),
                  key=_position)


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint file: a mid-epoch one beats the epoch before it."""
    found = checkpoints(directory)
    return found[-1] if found else None


def checkpoint_name(state: dict[str, Any]) -> str:
    """``epoch-NNNN.pt`` after epoch N, ``epoch-NNNN-batch-BBBBBB.pt`` stopped within it."""
    if state.get("batch"):
        return f"epoch-{state['epoch'] + 1:04d}-batch-{state['batch']:06d}.pt"
    return f"epoch-{state['epoch']:04d}.pt"


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    """Write the state's checkpoint atomically and durably; keep only the newest few.

    A checkpoint replaces the mid-epoch ones before it; a mid-epoch one leaves the epoch
    checkpoints in place (a retry that cannot go on from it starts from those).
    """
    import torch

    path = directory / checkpoint_name(state)
    tmp = directory / f".{path.name}.tmp"
    with tmp.open("wb") as out:
        torch.save(state, out)
        out.flush()
        os.fsync(out.fileno())  # on disk before the rename: the node may go next
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # the rename itself (not every filesystem allows it)
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    found = checkpoints(directory)
    mid_epoch = [p for p in found if _position(p)[1] and _position(p) < _position(path)]
    whole = [p for p in found if not _position(p)[1]]
    for old in mid_epoch + ([] if state.get("batch") else whole[:-KEEP_CHECKPOINTS]):
        old.unlink(missing_ok=True)
    return path


def log_model(model: Any, x_example: Any, features: list[str], params: ModelConfig,
              classes: list[Any] | None = None, profile: dict[str, Any] | None = None) -> str:
    """Log the model as a self-contained pt2 program with a tensor signature.

    The 5-row input example (≥2 rows keeps the batch dimension dynamic) is what the model is
    traced with; feature order, for a classifier the class labels in the order of its
    probability columns, and the training data's profile (``profile.json`` of the dataset:
    histogram edges the serving runtime counts live rows on) travel in the model's metadata
    (keys ``features``, ``classes``, ``profile``). Requirements are explicit
    (inference costs seconds per model and mislabels the CPU build of torch).
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    model = model.cpu().eval()
    example = x_example[:5]
    with torch.no_grad():
        output = model(torch.tensor(example)).numpy()
    requirements = [f"torch=={torch.__version__.split('+')[0]}",
                    f"mlflow=={mlflow.__version__}", "numpy", "pandas"]
    info = mlflow.pytorch.log_model(
        model, name="model", signature=infer_signature(example, output),
        input_example=example, pip_requirements=requirements, params=asdict(params),
        metadata={"features": features} | ({"classes": classes} if classes else {})
        | ({"profile": profile} if profile else {}),
    )
    return str(info.model_uri)


def _start_run(ctx: Context, directory: Path, key: str, digest: str) -> tuple[Any, bool]:
    """The run's MLflow run: the one its marker names, or a new one; and whether it is new."""
    import mlflow

    from mlkube import tracking

    experiment_id = tracking.configure(ctx.state_dir, ctx.config.experiment)
    marker = directory / "run.json"
    if marker.exists():
        run_id = json.loads(marker.read_text())["mlflow_run_id"]
        if tracking.run_exists(run_id):
            run = mlflow.start_run(run_id=run_id)
            mlflow.set_tags(tracking.reason_tags(ctx.args.reason))
            return run, False
        ctx.log(f"{marker} names MLflow run {run_id}, which the tracking store "
                f"{mlflow.get_tracking_uri()} does not know; starting a new run there")
    tags = {**tracking.lineage_tags(SPEC.name, ctx.pipeline_run_id),
            tracking.TAG_DIGEST: digest, tracking.TAG_RUN_KEY: key,
            **tracking.reason_tags(ctx.args.reason)}
    run = mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{key[:8]}", tags=tags)
    atomic_write_text(marker, json.dumps({"mlflow_run_id": run.info.run_id}))
    return run, True


def _epoch(trainer: Any) -> float:
    """One epoch; a loss that is not finite stops the run (no checkpoint, no model)."""
    loss = float(trainer.run_epoch())
    if not math.isfinite(loss):
        raise MlkubeError(
            f"epoch {trainer.epoch}: the training loss is {loss}, not a finite number, so the "
            "model is unusable; check the data for extreme values or lower model.learning_rate"
        )
    return loss


@contextlib.contextmanager
def _stop_on_sigterm(trainer: Any) -> Iterator[None]:
    """While training, SIGTERM asks ``trainer`` to stop after its batch (then restored).

    Only the main thread may set a handler; elsewhere SIGTERM keeps whatever it does.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: trainer.request_stop())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _preempted(ctx: Context, trainer: Any, directory: Path) -> Preempted:
    """Stopped by SIGTERM: rank 0 writes the mid-epoch checkpoint, and every process waits."""
    import torch

    started = time.perf_counter()
    state = trainer.state()
    path = directory / checkpoint_name(state)  # between epochs: that epoch's, already there
    if trainer.batch and trainer.dist.leader:
        save_checkpoint(directory, state)
    if trainer.dist.world > 1:  # no process exits before the checkpoint is there
        torch.distributed.barrier()
    where = (f"at epoch {trainer.epoch + 1} batch {trainer.batch}" if trainer.batch
             else f"after epoch {trainer.epoch}")
    if trainer.dist.leader:
        ctx.log(f"SIGTERM: stopped {where}; wrote {path.name} in "
                f"{(time.perf_counter() - started) * 1000:.0f} ms" if trainer.batch
                else f"SIGTERM: stopped {where}; its checkpoint is {path.name}")
    return Preempted(f"stopped by SIGTERM {where}; checkpoint written to {path}; "
                     "a retried pod resumes from it")


def _train(ctx: Context, trainer: Any, directory: Path, params: ModelConfig,
           each_epoch: Callable[[float], None] | None = None) -> None:
    """Run the epochs left, calling ``each_epoch(loss)`` after each; SIGTERM stops it."""
    from mlkube import model as modelmod

    with _stop_on_sigterm(trainer):
        while trainer.epoch < params.epochs:
            try:
                loss = _epoch(trainer)
            except modelmod.Stopped:
                raise _preempted(ctx, trainer, directory) from None
            if each_epoch is not None:
                each_epoch(loss)
            if trainer.epoch < params.epochs and trainer.stop_agreed():
                raise _preempted(ctx, trainer, directory)


def _follow(ctx: Context, trainer: Any, directory: Path, params: ModelConfig) -> None:
    """A follower's part: train in step with rank 0. The first process of each pod says so,
    and logs its loss each epoch, so a follower pod's log shows it trained."""
    dist = trainer.dist
    if dist.local_rank != 0:
        _train(ctx, trainer, directory, params)
        return
    ctx.log(f"rank {dist.rank} of {dist.world}: training on {trainer.device.type} with rank 0, "
            "which logs to MLflow and writes the result")

    def each_epoch(loss: float) -> None:
        ctx.log(f"rank {dist.rank}: epoch {trainer.epoch}/{params.epochs} loss {loss:.4f}")

    _train(ctx, trainer, directory, params, each_epoch)
    ctx.log(f"rank {dist.rank}: done after {trainer.epoch} epochs")


def _epoch_end(ctx: Context, trainer: Any, directory: Path, params: ModelConfig, metric: str,
               loss: float) -> float:
    """After an epoch: its validation metric (the last epoch's on the whole split, the others'
    on :data:`EPOCH_EVAL_ROWS` of it), logged with the loss; its checkpoint; its log line."""
    import mlflow

    value = trainer.evaluate(None if trainer.epoch >= params.epochs else EPOCH_EVAL_ROWS)
    mlflow.log_metrics({"train_loss": loss, f"val_{metric}": value}, step=trainer.epoch)
    save_checkpoint(directory, trainer.state())
    ctx.log(f"epoch {trainer.epoch}/{params.epochs} loss {loss:.4f} val_{metric} {value:.4f}")
    return value


def _fit(ctx: Context, trainer: Any, directory: Path, params: ModelConfig, metric: str) -> float:
    value = float("nan")  # stays NaN when no epoch is left to run

    def logged(loss: float) -> None:
        nonlocal value
        value = _epoch_end(ctx, trainer, directory, params, metric, loss)

    _train(ctx, trainer, directory, params, logged)
    return value


def _finished(ctx: Context, finished: Path, key: str) -> dict[str, Any] | None:
    """The finished run's result, if the tracking store in use knows its run."""
    from mlkube import tracking

    if not finished.exists():
        return None
    result: dict[str, Any] = json.loads(finished.read_text())
    tracking.configure(ctx.state_dir, ctx.config.experiment)
    if tracking.run_exists(result["run_id"]):
        ctx.log(f"run {key} already finished as MLflow run {result['run_id']}; returning that "
                "run's result (nothing trained)")
        return result
    ctx.log(f"run {key} finished as MLflow run {result['run_id']}, which this tracking store "
            "does not know; logging the trained model there again")
    return None


class Reported(BaseException):
    """Another process of this pod reports the error in its one line; this one exits 1.

    A BaseException, as :class:`Preempted` is, so that the step runner prints nothing for it.
    """


def gpus_given(environ: Mapping[str, str]) -> int:
    """The GPUs this step's pod (or local process) was given: ``MLKUBE_GPUS``, unset = 0."""
    raw = environ.get(spec.GPUS_ENV, "").strip()
    try:
        given = int(raw or "0")
    except ValueError:
        given = -1
    if given < 0:
        raise MlkubeError(f"{spec.GPUS_ENV} is {raw!r}, not a whole number of GPUs; it says how "
                          "many GPUs the step was given (0 or unset for none) and is set from "
                          "the step's gpus")
    return given


def gpu_shortfall(asked: int, seen: int, *, torch_version: str, cuda: str | None,
                  environ: Mapping[str, str], cuda_warning: str | None = None) -> str | None:
    """Why the GPUs asked for are not there, in one line (None: torch sees them all).

    ``seen`` is what torch can use in this pod (every process of a torchrun pod sees all of
    its GPUs), ``cuda`` torch's CUDA version (None: a CPU-only build), ``cuda_warning`` what
    CUDA's initialization said, if it failed.
    """
    if seen >= asked:
        return None
    visible = environ.get("NVIDIA_VISIBLE_DEVICES")
    hidden = environ.get("CUDA_VISIBLE_DEVICES")
    if cuda is None:
        cause = (f"CPU-only torch build (torch {torch_version}); use a CUDA build of torch, "
                 f"as in the GPU image {spec.GPU_IMAGE}")
    elif visible is None or visible.strip().lower() in ("", "void", "none"):
        said = "unset" if visible is None else f"{visible!r}"
        cause = (f"no GPU exposed to the container (NVIDIA_VISIBLE_DEVICES is {said}); the "
                 "pod did not get the NVIDIA container runtime or a device from the device "
                 "plugin: check the node's runtimeClass and the nvidia.com/gpu request")
    elif hidden is not None and not cuda_warning:
        cause = (f"CUDA_VISIBLE_DEVICES={hidden!r} hides the others; unset it in the step's "
                 "environment")
    elif seen and not cuda_warning:
        cause = (f"only {seen} of the pod's GPUs are exposed to the container "
                 f"(NVIDIA_VISIBLE_DEVICES={visible})")
    else:
        said = f" (CUDA says: {cuda_warning})" if cuda_warning else ""
        cause = (f"the node's NVIDIA driver is missing or too old for torch's CUDA {cuda}"
                 f"{said}; NVIDIA_VISIBLE_DEVICES={visible}: check nvidia-smi on the node")
    return (f"asked for {asked} GPU{'s' if asked != 1 else ''} ({spec.GPUS_ENV}={asked}) but "
            f"torch sees {seen}: likely cause: {cause}; or set gpus to 0 to train on the CPU")


def check_gpus(environ: Mapping[str, str] | None = None) -> None:
    """Fail before any MLflow run when the step was given GPUs that torch cannot use.

    No GPU asked for: nothing to check (a CPU run, or CUDA where torch finds it). Under
    torchrun every process checks; the first process of each pod says why, the others exit.
    """
    import warnings

    import torch

    environ = os.environ if environ is None else environ
    asked = gpus_given(environ)
    if not asked:
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    said = next((str(w.message).splitlines()[0] for w in caught
                 if "CUDA initialization" in str(w.message)), None)
    problem = gpu_shortfall(asked, seen, torch_version=torch.__version__, cuda=torch.version.cuda,
                            environ=environ, cuda_warning=said)
    if problem is None:
        return
    _fail_once_per_pod(problem, environ)


def _fail_once_per_pod(problem: str, environ: Mapping[str, str]) -> NoReturn:
    """Raise ``problem`` as the step's one-line error, in one process of the pod.

    Under torchrun each process of the pod finds the same problem. Once one exits, torchrun
    stops the others with SIGTERM, and one stopped before it got here would say "interrupted"
    in its line and over the pod's termination message. So every process waits here (where
    SIGTERM ends it without a word) until all of the pod's have arrived; then the first one
    raises the error and exits, and torchrun stops the rest.
    """
    local_world = int(environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_world < 2 or threading.current_thread() is not threading.main_thread():
        raise MlkubeError(problem)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    arrived = Path(tempfile.gettempdir()) / (
        f"mlkube-gpus-{os.getppid()}-{environ.get('TORCHELASTIC_RESTART_COUNT', '0')}")
    arrived.mkdir(exist_ok=True)
    local_rank = environ.get("LOCAL_RANK", "0")
    (arrived / local_rank).touch()
    if local_rank != "0":
        time.sleep(2 * GPU_CHECK_WAIT_S)  # torchrun stops it once the first process exits
        raise Reported(problem)
    deadline = time.monotonic() + GPU_CHECK_WAIT_S
    while len(list(arrived.iterdir())) < local_world and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(arrived, ignore_errors=True)
    raise MlkubeError(problem)


class NotFinished(MlkubeError):
    """``--result-only`` for a run that has not finished: nothing to report yet."""

    exit_code = spec.NOT_FINISHED_EXIT


def run(ctx: Context) -> dict[str, Any]:
    """Train (or resume, or return the finished run's result)."""
    import torch

    from mlkube import data
    from mlkube import model as modelmod

    check_gpus()  # before the data, the tracking store and any MLflow run
    info = data.load_info(ctx.args.dataset)
    overrides = parse_json_option(ctx.args.params, "--params") if ctx.args.params else {}
    if not isinstance(overrides, dict):
        raise MlkubeError(f"--params must be a JSON object of hyperparameters, got {overrides!r}")
    if ctx.args.epochs is not None:
        overrides = {**overrides, "epochs": ctx.args.epochs}
    params = configmod.model_params(ctx.config.model, overrides)
    key = ctx.args.run_key or run_key(info.digest, params, ctx.args.reason)
    directory = ctx.artifact_root / "checkpoints" / key
    finished = directory / "result.json"
    done = _finished(ctx, finished, key)
    if done is not None:
        return done
    if ctx.args.result_only == "true":
        raise NotFinished(f"run {key} has not finished (no {finished}): the training job that "
                          "should have run it did not complete; see its pods' logs")
    directory.mkdir(parents=True, exist_ok=True)

    splits = modelmod.load_splits(ctx.args.dataset, info)
    dist = modelmod.init_distributed()
    trainer = modelmod.Trainer(modelmod.build(splits, params), splits, params, dist=dist)
    checkpoint = _resume(ctx, trainer, directory)
    if dist.leader:
        result = _lead(ctx, trainer, directory, key, checkpoint, info, params)
        atomic_write_text(finished, json.dumps(result))
    else:
        _follow(ctx, trainer, directory, params)
    if dist.world > 1:  # the followers return the leader's result
        shared = [result if dist.leader else None]
        torch.distributed.broadcast_object_list(shared, src=0)
        result = dict(shared[0] or {})
        torch.distributed.destroy_process_group()
    return result


def _resume(ctx: Context, trainer: Any, directory: Path) -> Path | None:
    """Load the newest checkpoint ``trainer`` can go on from; which one, if any."""
    import torch

    for path in reversed(checkpoints(directory)):
        state = torch.load(path, map_location=trainer.device)
        reason = trainer.cannot_continue(state)
        if reason is None:
            trainer.load_state(state)
            return path
        if trainer.dist.leader:
            ctx.log(f"not resuming from {path.name}: {reason}; trying an earlier checkpoint")
    return None


def _profile(dataset_uri: str) -> dict[str, Any] | None:
    """The dataset's training profile (``profile.json``), or ``None`` for a dataset prepared
    before profiles existed."""
    from mlkube import data

    path = data.local_path(dataset_uri) / data.PROFILE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _lead(ctx: Context, trainer: Any, directory: Path, key: str, checkpoint: Path | None,
          info: Any, params: ModelConfig) -> dict[str, Any]:
    """The leader's part: MLflow run, per-epoch metrics, checkpoints, the logged model."""
    import mlflow

    from mlkube import model as modelmod

    metric, _ = modelmod.metric_for(info.task)
    active_run, new = _start_run(ctx, directory, key, info.digest)
    with active_run as active:
        if checkpoint is not None:
            within = f" batch {trainer.batch}" if trainer.batch else ""
            ctx.log(f"resumed run {key} from {checkpoint.name} (epoch {trainer.epoch}{within})")
        if new:
            mlflow.log_params({**asdict(params), "dataset_uri": ctx.args.dataset,
                               "world_size": trainer.dist.world})
        ctx.log(f"training on {trainer.device.type} x{trainer.dist.world} for "
                f"{params.epochs} epochs")
        try:
            value = _fit(ctx, trainer, directory, params, metric)
        except Preempted:
            mlflow.end_run("KILLED")  # a retry sets it RUNNING again
            raise
        if math.isnan(value):  # every epoch ran before the restart
            value = trainer.evaluate()
        model_uri = log_model(trainer.model, trainer.splits.x_val, info.features, params,
                              info.classes, _profile(ctx.args.dataset))
        return {"run_id": active.info.run_id, "model_uri": model_uri, "metric": metric,
                "value": value, "epochs": trainer.epoch, "device": trainer.device.type}


def main(argv: list[str] | None = None) -> int:
    """Run the step; after a SIGTERM that left a checkpoint, say where and exit 143."""
    try:
        return run_step(SPEC, run, argv)
    except Reported:  # the pod's first process printed the error
        return 1
    except Preempted as stopped:
        if os.environ.get("RANK", "0") != "0":  # a torchrun follower: rank 0 reports
            return PREEMPTED_EXIT
        line = f"mlkube {SPEC.name}: {stopped}"
        print(line, file=sys.stderr, flush=True)
        write_termination_message(line)
        return PREEMPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
