"""train: fit the MLP, checkpoint every epoch, resume after a restart, log the model.

``python -m mlkube.steps.train --dataset DIR [--params JSON] [--epochs N] [--run-key KEY]``

The run's identity (``--run-key``, by default a digest of the dataset and hyperparameters)
names its checkpoint directory. Started again with the same identity, the step continues
from the newest checkpoint in the same MLflow run; once finished, it returns the same result
without training again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlkube import config as configmod
from mlkube import spec
from mlkube.config import ModelConfig, parse_json_option
from mlkube.errors import MlkubeError
from mlkube.result import atomic_write_text
from mlkube.steps._main import Context, run_step

SPEC = spec.TRAIN
KEEP_CHECKPOINTS = 2


def run_key(digest: str, params: ModelConfig) -> str:
    """The default identity of a training run: same data and parameters, same run."""
    text = json.dumps({"dataset": digest, "params": asdict(params)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint file (they are written aside, then renamed)."""
    found = sorted(directory.glob("epoch-*.pt"))
    return found[-1] if found else None


def save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """Write ``epoch-NNNN.pt`` atomically and keep only the newest few."""
    import torch

    path = directory / f"epoch-{state['epoch']:04d}.pt"
    tmp = directory / f".{path.name}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in sorted(directory.glob("epoch-*.pt"))[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)


def log_model(model: Any, x_example: Any, features: list[str], params: ModelConfig,
              classes: list[Any] | None = None) -> str:
    """Log the model as a self-contained pt2 program with a tensor signature.

    The 5-row input example (≥2 rows keeps the batch dimension dynamic) is what the model is
    traced with; feature order and, for a classifier, the class labels in the order of its
    probability columns travel in the model's metadata. Requirements are explicit
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
        metadata={"features": features} | ({"classes": classes} if classes else {}),
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
            return mlflow.start_run(run_id=run_id), False
        ctx.log(f"{marker} names MLflow run {run_id}, which the tracking store "
                f"{mlflow.get_tracking_uri()} does not know; starting a new run there")
    tags = {**tracking.lineage_tags(SPEC.name, ctx.pipeline_run_id),
            tracking.TAG_DIGEST: digest, tracking.TAG_RUN_KEY: key}
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


def _fit(ctx: Context, trainer: Any, directory: Path, params: ModelConfig, metric: str) -> float:
    import mlflow

    value = float("nan")  # stays NaN when no epoch is left to run
    while trainer.epoch < params.epochs:
        loss = _epoch(trainer)
        value = trainer.evaluate()
        mlflow.log_metrics({"train_loss": loss, f"val_{metric}": value}, step=trainer.epoch)
        save_checkpoint(directory, trainer.state())
        ctx.log(f"epoch {trainer.epoch}/{params.epochs} loss {loss:.4f} val_{metric} {value:.4f}")
    return value


def _finished(ctx: Context, finished: Path, key: str) -> dict[str, Any] | None:
    """The finished run's result, if the tracking store in use knows its run."""
    from mlkube import tracking

    if not finished.exists():
        return None
    result: dict[str, Any] = json.loads(finished.read_text())
    tracking.configure(ctx.state_dir, ctx.config.experiment)
    if tracking.run_exists(result["run_id"]):
        ctx.log(f"run {key} already finished; returning its result")
        return result
    ctx.log(f"run {key} finished as MLflow run {result['run_id']}, which this tracking store "
            "does not know; logging the trained model there again")
    return None


def run(ctx: Context) -> dict[str, Any]:
    """Train (or resume, or return the finished run's result)."""
    import torch

    from mlkube import data
    from mlkube import model as modelmod

    info = data.load_info(ctx.args.dataset)
    overrides = parse_json_option(ctx.args.params, "--params") if ctx.args.params else {}
    if not isinstance(overrides, dict):
        raise MlkubeError(f"--params must be a JSON object of hyperparameters, got {overrides!r}")
    if ctx.args.epochs is not None:
        overrides = {**overrides, "epochs": ctx.args.epochs}
    params = configmod.model_params(ctx.config.model, overrides)
    key = ctx.args.run_key or run_key(info.digest, params)
    directory = ctx.artifact_root / "checkpoints" / key
    finished = directory / "result.json"
    done = _finished(ctx, finished, key)
    if done is not None:
        return done
    directory.mkdir(parents=True, exist_ok=True)

    splits = modelmod.load_splits(ctx.args.dataset, info)
    dist = modelmod.init_distributed()
    trainer = modelmod.Trainer(modelmod.build(splits, params), splits, params, dist=dist)
    checkpoint = latest_checkpoint(directory)
    if checkpoint is not None:
        trainer.load_state(torch.load(checkpoint, map_location=trainer.device))
    if dist.leader:
        result = _lead(ctx, trainer, directory, key, checkpoint, info, params)
        atomic_write_text(finished, json.dumps(result))
    else:
        while trainer.epoch < params.epochs:
            _epoch(trainer)
    if dist.world > 1:  # the followers return the leader's result
        shared = [result if dist.leader else None]
        torch.distributed.broadcast_object_list(shared, src=0)
        result = dict(shared[0] or {})
        torch.distributed.destroy_process_group()
    return result


def _lead(ctx: Context, trainer: Any, directory: Path, key: str, checkpoint: Path | None,
          info: Any, params: ModelConfig) -> dict[str, Any]:
    """The leader's part: MLflow run, per-epoch metrics, checkpoints, the logged model."""
    import mlflow

    from mlkube import model as modelmod

    metric, _ = modelmod.metric_for(info.task)
    active_run, new = _start_run(ctx, directory, key, info.digest)
    with active_run as active:
        if checkpoint is not None:
            ctx.log(f"resumed run {key} from {checkpoint.name} (epoch {trainer.epoch})")
        if new:
            mlflow.log_params({**asdict(params), "dataset_uri": ctx.args.dataset,
                               "world_size": trainer.dist.world})
        ctx.log(f"training on {trainer.device.type} x{trainer.dist.world} for "
                f"{params.epochs} epochs")
        value = _fit(ctx, trainer, directory, params, metric)
        if math.isnan(value):  # every epoch ran before the restart
            value = trainer.evaluate()
        model_uri = log_model(trainer.model, trainer.splits.x_val, info.features, params,
                              info.classes)
        return {"run_id": active.info.run_id, "model_uri": model_uri, "metric": metric,
                "value": value, "epochs": trainer.epoch, "device": trainer.device.type}


def main(argv: list[str] | None = None) -> int:
    """Run the step."""
    return run_step(SPEC, run, argv)


if __name__ == "__main__":
    sys.exit(main())
