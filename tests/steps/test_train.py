"""train: real PyTorch on real data; checkpoints, resume after a kill or a SIGTERM, the model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, cast

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from mlkube import spec
from mlkube.config import ModelConfig
from mlkube.model import EVAL_ROWS, Splits, Stopped, Trainer, build, score
from mlkube.steps.train import PREEMPTED_EXIT, latest_checkpoint, save_checkpoint
from mlkube_testing import error_lines, run


def test_trains_logs_model_and_returns_same_result_again(dataset: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, result, _ = run("train", "--dataset", dataset, "--epochs", "3",
                          "--params", '{"hidden_sizes": "16"}', tmp=tmp_path, capsys=capsys)
    assert code == 0 and result is not None
    assert result["epochs"] == 3 and result["metric"] == "accuracy" and result["device"] == "cpu"
    assert result["value"] > 0.8  # a real model on real data, not a placeholder
    history = mlflow.MlflowClient().get_metric_history(result["run_id"], "val_accuracy")
    assert sorted({m.step for m in history}) == [1, 2, 3]
    model = mlflow.pyfunc.load_model(result["model_uri"])
    assert model.metadata.get_input_schema() is not None
    assert model.metadata.metadata["features"][0] == "mean_radius"
    rows = pd.read_parquet(Path(dataset) / "test.parquet").drop(columns="target").head(7)
    assert np.asarray(model.predict(rows.to_numpy(dtype="float32"))).shape == (7, 2)

    again, same, _ = run("train", "--dataset", dataset, "--epochs", "3",
                         "--params", '{"hidden_sizes": "16"}', tmp=tmp_path)
    assert again == 0 and same == result
    said = [line for line in capsys.readouterr().out.splitlines() if "already finished" in line]
    # the run it names is the run it returns, and nothing was trained
    assert len(said) == 1 and f"as MLflow run {result['run_id']};" in said[0], said
    assert said[0].endswith("(nothing trained)")
    assert len(mlflow.search_runs(experiment_names=["mlkube"], filter_string="tags.`mlkube.step` = 'train'",
                                  output_format="list")) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--epochs", "-2"], "'model.epochs' must be positive"),
    (["--params", '{"batch_size": 0}'], "'model.batch_size' must be positive"),
    (["--params", "[1, 2]"], "--params must be a JSON object"),
    (["--params", "{oops"], "--params is not valid JSON"),
])
def test_bad_hyperparameters(dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             args: list[str], message: str) -> None:
    code, result, err = run("train", "--dataset", dataset, *args, tmp=tmp_path, capsys=capsys)
    assert code == 1 and result is None
    assert len(error_lines(err)) == 1 and message in error_lines(err)[0]
    assert not (Path(dataset).parents[1] / "checkpoints").exists()


def test_not_a_dataset(state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run("train", "--dataset", str(tmp_path), tmp=tmp_path, capsys=capsys)
    assert code == 1 and "is not a prepared dataset" in error_lines(err)[0]


def _read_until(process: subprocess.Popen[str], marker: str) -> list[str]:
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} never printed: {lines[-5:]}")


def _big_dataset(tmp_path: Path, rows: int = 20_000) -> str:
    """A prepared dataset big enough that an epoch takes a while."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(rows, 20))
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(20)])
    frame["y"] = (features[:, 0] + features[:, 1] > 0).astype(int)
    frame.to_csv(tmp_path / "big.csv", index=False)
    _, prepared, _ = run("prepare-data", "--input", str(tmp_path / "big.csv"), "--target", "y",
                         tmp=tmp_path)
    assert prepared is not None
    return str(prepared["dataset_uri"])


def test_resumes_from_checkpoint_after_kill(state: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "mlkube.steps.train", "--dataset", _big_dataset(tmp_path),
               "--epochs", "4", "--params", '{"hidden_sizes": "256,256", "batch_size": 32}',
               "--run-key", "resume-test", "--result-file", str(tmp_path / "train.json")]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    _read_until(first, "epoch 2/4")
    first.send_signal(signal.SIGKILL)  # the node is lost: no chance to clean up
    first.wait()
    checkpoints = state / "artifacts" / "checkpoints" / "resume-test"
    saved = sorted(p.name for p in checkpoints.glob("epoch-*.pt"))
    assert saved and saved[-1] >= "epoch-0002.pt" and not (tmp_path / "train.json").exists()
    run_id = json.loads((checkpoints / "run.json").read_text())["mlflow_run_id"]

    second = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    resumed = [x for x in second.stdout.splitlines() if "resumed run resume-test" in x]
    assert resumed and f"from {saved[-1]}" in resumed[0]
    epochs_run = [x for x in second.stdout.splitlines() if x.startswith("[train] epoch ")]
    assert epochs_run[-1].startswith("[train] epoch 4/4")
    assert len(epochs_run) == 4 - int(saved[-1][6:10])
    result = json.loads((tmp_path / "train.json").read_text())
    assert result["epochs"] == 4 and result["run_id"] == run_id
    steps = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_accuracy")}
    assert steps == set(range(1, 5))


def test_non_finite_loss_stops_training(dataset: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    # A real divergence: AdamW steps of ~1e12 through three layers overflow float32 at once.
    code, result, err = run("train", "--dataset", dataset, "--epochs", "3", "--params",
                            '{"hidden_sizes": "64,32", "learning_rate": 1e12}',
                            "--run-key", "diverges", tmp=tmp_path, capsys=capsys)
    assert code == 1 and result is None
    lines = error_lines(err)
    assert len(lines) == 1 and "epoch 1" in lines[0] and "not a finite number" in lines[0]
    checkpoints = Path(dataset).parents[1] / "checkpoints" / "diverges"
    assert not (checkpoints / "result.json").exists() and not list(checkpoints.glob("epoch-*.pt"))
    run_id = json.loads((checkpoints / "run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    assert client.search_logged_models(experiment_ids=[experiment_id],
                                       filter_string=f"source_run_id = '{run_id}'") == []


def _splits() -> Splits:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2400, 8)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int64)
    return Splits(x_train=x[400:], y_train=y[400:], x_val=x[:400], y_val=y[:400],
                  task="classification", n_classes=2)


def _stop_after(trainer: Trainer, steps: int) -> None:
    """Ask ``trainer`` to stop once its optimizer has taken ``steps`` steps (as SIGTERM would)."""
    step, taken = trainer.optimizer.step, 0

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal taken
        out = step(*args, **kwargs)
        taken += 1
        if taken == steps:
            trainer.request_stop()
        return out

    trainer.optimizer.step = counted  # type: ignore[method-assign]


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_evaluate_in_blocks_scores_as_one_pass(task: str) -> None:
    rng = np.random.default_rng(1)
    rows = 2 * EVAL_ROWS + 123  # three blocks, the last one short
    x = rng.normal(size=(rows, 8)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int64) if task == "classification" else \
        (x[:, 0] * 3 + 1).astype(np.float32)
    splits = Splits(x_train=x[:200], y_train=y[:200], x_val=x, y_val=y, task=task,
                    n_classes=2 if task == "classification" else 0)
    params = ModelConfig(hidden_sizes=[16], epochs=1, batch_size=64)
    trainer = Trainer(build(splits, params), splits, params, on=torch.device("cpu"))
    trainer.run_epoch()
    with torch.no_grad():
        whole = trainer.model(torch.from_numpy(x)).numpy()
    assert trainer.evaluate() == pytest.approx(score(whole, y, task), rel=1e-6)


def test_a_small_network_trains_on_one_thread_a_large_one_on_the_share_it_is_given(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlkube import model as modelmod

    def net(width: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(30, width), torch.nn.Linear(width, 2))

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert modelmod.cpu_threads(net(64), 64) == 1  # 64 rows x 30 x 64: microseconds a kernel
        assert modelmod.cpu_threads(net(256), 1024) == 3  # 1024 x 30 x 256 = 7.9M: the share
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert modelmod.cpu_threads(net(256), 1024) == modelmod._TORCH_THREADS
        splits = _splits()
        params = ModelConfig(hidden_sizes=[16], epochs=1, batch_size=64)
        torch.set_num_threads(2)
        Trainer(build(splits, params), splits, params, on=torch.device("cpu"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_each_epoch_but_the_last_is_scored_on_a_fixed_sample_of_the_validation_split(
        state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlkube.steps import train

    rng = np.random.default_rng(2)
    x = rng.normal(size=(900, 8)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=900) > 0).astype(np.int64)
    splits = Splits(x_train=x[:300], y_train=y[:300], x_val=x[300:], y_val=y[300:],
                    task="classification", n_classes=2)
    params = ModelConfig(hidden_sizes=[16], epochs=3, batch_size=64)
    trainer = Trainer(build(splits, params), splits, params, on=torch.device("cpu"))
    trainer.run_epoch()
    sample = trainer.evaluate(50)
    assert trainer._val_sample is not None and len(set(trainer._val_sample.tolist())) == 50
    picked = trainer._val_sample.copy()
    with torch.no_grad():
        out = trainer.model(torch.from_numpy(x[300:][picked])).numpy()
    assert sample == pytest.approx(score(out, y[300:][picked], "classification"), rel=1e-9)
    assert trainer.evaluate(50) == sample and np.array_equal(trainer._val_sample, picked)
    assert trainer.evaluate(600) == trainer.evaluate() == trainer.evaluate(10**6)  # the whole

    monkeypatch.setattr(train, "EPOCH_EVAL_ROWS", 50)
    scored: list[int | None] = []
    evaluate = trainer.evaluate

    def recorded(rows: int | None = None) -> float:
        scored.append(rows)
        return evaluate(rows)

    monkeypatch.setattr(trainer, "evaluate", recorded)
    (tmp_path / "checkpoints").mkdir()
    lines: list[str] = []
    ctx = cast(Any, types.SimpleNamespace(log=lines.append))
    with mlflow.start_run(experiment_id=mlflow.create_experiment(
            "sampled", artifact_location=str(tmp_path / "artifacts"))):
        value = train._fit(ctx, trainer, tmp_path / "checkpoints", params, "accuracy")
    assert scored == [50, None]  # epoch 2 of 3 on the sample, epoch 3 (the result) on all rows
    assert value == evaluate()
    assert [x.split(" loss")[0] for x in lines] == ["epoch 2/3", "epoch 3/3"]


def test_trainer_stopped_mid_epoch_resumes_to_the_same_weights_and_losses(tmp_path: Path) -> None:
    params = ModelConfig(hidden_sizes=[32, 16], epochs=3, batch_size=32)  # 63 batches an epoch
    splits = _splits()
    straight = Trainer(build(splits, params), splits, params)
    losses = [straight.run_epoch() for _ in range(3)]

    first = Trainer(build(splits, params), splits, params)
    _stop_after(first, 63 + 20)  # the 20th batch of epoch 2
    assert first.run_epoch() == losses[0]
    with pytest.raises(Stopped) as stopped:
        first.run_epoch()
    assert (stopped.value.epoch, stopped.value.batch) == (2, 20)
    assert (first.epoch, first.batch) == (1, 20)
    save_checkpoint(tmp_path, {**first.state(), "batch": 0})  # as if epoch 1's were written
    written = save_checkpoint(tmp_path, first.state())
    assert written.name == "epoch-0002-batch-000020.pt" == latest_checkpoint(tmp_path).name  # type: ignore[union-attr]

    resumed = Trainer(build(splits, params), splits, params)
    resumed.load_state(torch.load(written))
    assert (resumed.epoch, resumed.batch) == (1, 20)
    # Bit for bit on the CPU: the same operations on the same values in the same order (the
    # epoch's order is drawn again from its seed; the loss sum so far travels in the state).
    assert [resumed.run_epoch(), resumed.run_epoch()] == losses[1:]
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert resumed.evaluate() == straight.evaluate()

    save_checkpoint(tmp_path, resumed.state())  # epoch 3's replaces the mid-epoch one
    assert sorted(p.name for p in tmp_path.glob("epoch-*.pt")) == ["epoch-0001.pt", "epoch-0003.pt"]


def test_a_stop_in_the_last_batch_ends_the_epoch_and_a_stop_needs_the_same_batch_size() -> None:
    params = ModelConfig(hidden_sizes=[16], epochs=2, batch_size=500)  # 4 batches an epoch
    splits = _splits()
    trainer = Trainer(build(splits, params), splits, params)
    _stop_after(trainer, 4)
    trainer.run_epoch()  # no Stopped: the epoch is done, the caller stops between epochs
    assert (trainer.epoch, trainer.batch, trainer.stop_agreed()) == (1, 0, True)
    _stop_after(trainer, 1)
    with pytest.raises(Stopped):
        trainer.run_epoch()
    other = ModelConfig(hidden_sizes=[16], epochs=2, batch_size=250)
    different = Trainer(build(splits, other), splits, other)
    assert "batch size 500, not 250" in str(different.cannot_continue(trainer.state()))
    with pytest.raises(ValueError, match="batch size 500"):
        different.load_state(trainer.state())


class _Interrupted(Exception):
    pass


def _guard(signum: int, frame: Any) -> None:  # a SIGTERM the step did not catch
    raise _Interrupted


def test_sigterm_between_epochs_stops_after_that_epochs_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlkube.steps import train

    params = ModelConfig(hidden_sizes=[16], epochs=3, batch_size=500)
    splits = _splits()
    trainer = Trainer(build(splits, params), splits, params)
    epochs: list[float] = []

    def each_epoch(loss: float) -> None:  # what the leader does between epochs, then a SIGTERM
        save_checkpoint(tmp_path, trainer.state())
        epochs.append(loss)
        signal.raise_signal(signal.SIGTERM)

    ctx = cast(Any, types.SimpleNamespace(log=print))
    previous = signal.signal(signal.SIGTERM, _guard)
    try:
        with pytest.raises(train.Preempted) as stopped:
            train._train(ctx, trainer, tmp_path, params, each_epoch)
        assert signal.getsignal(signal.SIGTERM) is _guard  # the step's handler is gone again
        with pytest.raises(_Interrupted):
            signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert str(stopped.value) == (f"stopped by SIGTERM after epoch 1; checkpoint written to "
                                  f"{tmp_path / 'epoch-0001.pt'}; a retried pod resumes from it")
    assert len(epochs) == 1 and (trainer.epoch, trainer.batch) == (1, 0)
    assert "its checkpoint is epoch-0001.pt" in capsys.readouterr().out


def _uninterrupted(dataset: str, params: ModelConfig) -> tuple[Trainer, list[float]]:
    """What the step computes, never stopped, in this process: the trainer and epoch losses."""
    from mlkube import data
    from mlkube.model import load_splits

    splits = load_splits(dataset, data.load_info(dataset))
    trainer = Trainer(build(splits, params), splits, params)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the step's process: the same kernels, the same sums
    try:
        return trainer, [trainer.run_epoch() for _ in range(params.epochs)]
    finally:
        torch.set_num_threads(threads)


def test_sigterm_mid_epoch_checkpoints_and_the_retry_matches_an_uninterrupted_run(
        state: Path, tmp_path: Path) -> None:
    dataset = _big_dataset(tmp_path, rows=40_000)  # 875 batches an epoch
    result_file = tmp_path / "train.json"
    command = [sys.executable, "-m", "mlkube.steps.train", "--dataset", dataset, "--epochs", "2",
               "--params", '{"hidden_sizes": "256,256", "batch_size": 32}',
               "--run-key", "preempted", "--result-file", str(result_file)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with (tmp_path / "stderr").open("w") as stderr:
        first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                 env=env)
        _read_until(first, "training on cpu")
        started = time.monotonic()
        _read_until(first, "epoch 1/2")
        time.sleep((time.monotonic() - started) / 2)  # half way through epoch 2
        signalled = time.monotonic()
        first.send_signal(signal.SIGTERM)  # what the kubelet sends a pod it evicts
        out, _ = first.communicate(timeout=60)
        stopped_s = time.monotonic() - signalled
    assert first.returncode == PREEMPTED_EXIT == 143
    checkpoints = state / "artifacts" / "checkpoints" / "preempted"
    saved = latest_checkpoint(checkpoints)
    assert saved is not None and saved.name.startswith("epoch-0002-batch-"), out
    batch = int(saved.stem[-6:])
    lines = error_lines((tmp_path / "stderr").read_text())
    assert lines == [f"mlkube train: stopped by SIGTERM at epoch 2 batch {batch}; checkpoint "
                     f"written to {saved}; a retried pod resumes from it"]
    assert f"SIGTERM: stopped at epoch 2 batch {batch}; wrote {saved.name} in " in out
    assert sorted(p.name for p in checkpoints.glob("*.pt*")) == ["epoch-0001.pt", saved.name]
    assert not result_file.exists()
    run_id = json.loads((checkpoints / "run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).info.status == "KILLED"
    assert stopped_s < 15, stopped_s  # well inside the pod's grace period

    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env)  # the retried pod
    params = ModelConfig(hidden_sizes=[256, 256], batch_size=32, epochs=2)
    straight, straight_losses = _uninterrupted(dataset, params)  # meanwhile, here
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-2000:]
    assert f"resumed run preempted from {saved.name} (epoch 1 batch {batch})" in out
    assert [x.split(" loss")[0] for x in out.splitlines() if x.startswith("[train] epoch ")] == [
        "[train] epoch 2/2"]
    result = json.loads(result_file.read_text())
    assert result["run_id"] == run_id and result["epochs"] == 2
    assert client.get_run(run_id).info.status == "FINISHED"
    losses = client.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in losses) == [1, 2]  # each epoch's metrics logged once
    assert sorted(p.name for p in checkpoints.glob("*.pt*")) == ["epoch-0001.pt", "epoch-0002.pt"]

    # Bit for bit what a run never stopped gives: epoch losses (epoch 2's included), weights,
    # the validation metric.
    assert [m.value for m in sorted(losses, key=lambda m: m.step)] == straight_losses
    weights = torch.load(checkpoints / "epoch-0002.pt")["model"]
    expected = straight.model.state_dict()
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in weights)
    assert result["value"] == straight.evaluate()
    print(f"SIGTERM at batch {batch} of epoch 2: exited {stopped_s:.2f} s later; {out}")


def test_under_torchrun_sigterm_stops_every_process_at_one_batch_and_the_retry_matches(
        state: Path, tmp_path: Path) -> None:
    dataset = _big_dataset(tmp_path, rows=40_000)  # 437 batches an epoch in each process
    options = ["--dataset", dataset, "--epochs", "2", "--run-key", "preempted-ddp",
               "--params", '{"hidden_sizes": "256,256", "batch_size": 32}']
    torchrun = [*spec.TRAIN.command(sys.executable, processes=2), *options]  # a 2-GPU pod's
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    first = subprocess.Popen([*torchrun, "--result-file", str(tmp_path / "train.json")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    _read_until(first, "training on cpu x2")
    started = time.monotonic()
    _read_until(first, "epoch 1/2")
    time.sleep((time.monotonic() - started) / 2)
    first.send_signal(signal.SIGTERM)  # to torchrun, the container's first process: it passes
    out, _ = first.communicate(timeout=90)  # SIGTERM on to both workers
    # the launcher exits as one process would (143, what Argo's retry rule reads as stopped),
    # with one line of its own instead of torchrun's SignalException traceback
    assert first.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "Traceback" not in out and "SignalException" not in out, out[-3000:]
    assert "mlkube torchrun: stopped by SIGTERM; the workers were stopped with it" in out
    checkpoints = state / "artifacts" / "checkpoints" / "preempted-ddp"
    saved = latest_checkpoint(checkpoints)
    assert saved is not None and saved.name.startswith("epoch-0002-batch-"), out[-3000:]
    batch = int(saved.stem[-6:])
    assert batch % Trainer.STOP_CHECK_EVERY == 0  # where the processes compare flags
    assert [x for x in out.splitlines() if x.startswith("mlkube train:")] == [
        f"mlkube train: stopped by SIGTERM at epoch 2 batch {batch}; checkpoint written to "
        f"{saved}; a retried pod resumes from it"]  # once: rank 0 reports

    # The retried pod: both processes go on from the same batch (a mismatch would hang or fail
    # DistributedDataParallel). Its weights and losses match a run never stopped bit for bit,
    # as in one process (checked by hand: a third torchrun run costs too long for this test).
    second = subprocess.run([*torchrun, "--result-file", str(tmp_path / "train.json")],
                            capture_output=True, text=True, env=env, timeout=180)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed run preempted-ddp from {saved.name} (epoch 1 batch {batch})" in second.stdout
    result = json.loads((tmp_path / "train.json").read_text())
    assert result["epochs"] == 2 and result["value"] > 0.95
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(result["run_id"],
                                                                       "train_loss")]
    assert sorted(steps) == [1, 2]


def _train_runs() -> list[Any]:
    """Every MLflow run the train step created in the test's store (any experiment)."""
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(experiments, "tags.`mlkube.step` = 'train'"))


def test_given_a_gpu_torch_cannot_see_it_fails_in_one_line_before_any_mlflow_run(
        dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert torch.version.cuda is None  # this machine's torch is the CPU build
    before = {r.info.run_id for r in mlflow.MlflowClient().search_runs(
        [e.experiment_id for e in mlflow.MlflowClient().search_experiments()])}
    monkeypatch.setenv(spec.GPUS_ENV, "1")  # what a pod with nvidia.com/gpu: 1 carries
    code, result, err = run("train", "--dataset", dataset, "--epochs", "1", tmp=tmp_path,
                            capsys=capsys)
    assert code == 1 and result is None
    assert error_lines(err) == [
        f"mlkube train: error: asked for 1 GPU (MLKUBE_GPUS=1) but torch sees 0: likely cause: "
        f"CPU-only torch build (torch {torch.__version__}); use a CUDA build of torch, as in "
        f"the GPU image {spec.GPU_IMAGE}; or set gpus to 0 to train on the CPU"]
    after = {r.info.run_id for r in mlflow.MlflowClient().search_runs(
        [e.experiment_id for e in mlflow.MlflowClient().search_experiments()])}
    assert after == before and _train_runs() == []  # prepare-data's run only
    assert not (Path(dataset).parents[1] / "checkpoints").exists()


@pytest.mark.parametrize("given", ["0", None])
def test_no_gpu_asked_for_trains_on_the_cpu(dataset: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            given: str | None) -> None:
    if given is None:
        monkeypatch.delenv(spec.GPUS_ENV, raising=False)
    else:
        monkeypatch.setenv(spec.GPUS_ENV, given)
    code, result, _ = run("train", "--dataset", dataset, "--epochs", "1",
                          "--params", '{"hidden_sizes": "16"}', tmp=tmp_path)
    assert code == 0 and result is not None and result["device"] == "cpu"
    assert [r.info.run_id for r in _train_runs()] == [result["run_id"]]


def test_a_gpus_value_that_is_not_a_count_is_one_line(dataset: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(spec.GPUS_ENV, "two")
    code, _, err = run("train", "--dataset", dataset, tmp=tmp_path, capsys=capsys)
    assert code == 1 and error_lines(err) == [
        "mlkube train: error: MLKUBE_GPUS is 'two', not a whole number of GPUs; it says how "
        "many GPUs the step was given (0 or unset for none) and is set from the step's gpus"]
    assert _train_runs() == []


def test_under_torchrun_the_pods_gpus_are_checked_and_said_once(dataset: str,
                                                                 tmp_path: Path) -> None:
    # a 3-GPU pod's command and environment (kube.pod), on this CPU-only machine
    command = [*spec.TRAIN.command(sys.executable, processes=3), "--dataset", dataset,
               "--result-file", str(tmp_path / "train.json")]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **{spec.GPUS_ENV: "3"})
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [x for x in (done.stdout + done.stderr).splitlines() if x.startswith("mlkube train:")]
    # one line though every process checked: the pod's 3 GPUs, not one a process
    assert len(lines) == 1 and "asked for 3 GPUs (MLKUBE_GPUS=3) but torch sees 0" in lines[0]
    assert "CPU-only torch build" in lines[0]
    assert "interrupted" not in done.stdout + done.stderr
    assert _train_runs() == [] and not (tmp_path / "train.json").exists()


@pytest.mark.parametrize(("asked", "seen", "cuda", "environ", "warning", "cause"), [
    (1, 1, "12.8", {"NVIDIA_VISIBLE_DEVICES": "GPU-1"}, None, None),
    (2, 4, "12.8", {"NVIDIA_VISIBLE_DEVICES": "all"}, None, None),
    (1, 0, None, {"NVIDIA_VISIBLE_DEVICES": "all"}, None, "CPU-only torch build (torch 2.0)"),
    (1, 0, "12.8", {}, None, "no GPU exposed to the container (NVIDIA_VISIBLE_DEVICES is unset)"),
    (1, 0, "12.8", {"NVIDIA_VISIBLE_DEVICES": "void"}, None,
     "no GPU exposed to the container (NVIDIA_VISIBLE_DEVICES is 'void')"),
    (1, 0, "12.8", {"NVIDIA_VISIBLE_DEVICES": "none"}, None, "NVIDIA_VISIBLE_DEVICES is 'none'"),
    (1, 0, "12.8", {"NVIDIA_VISIBLE_DEVICES": "GPU-1"},
     "CUDA initialization: The NVIDIA driver on your system is too old (found version 11040).",
     "the node's NVIDIA driver is missing or too old for torch's CUDA 12.8 (CUDA says: CUDA "
     "initialization: The NVIDIA driver on your system is too old (found version 11040).); "
     "NVIDIA_VISIBLE_DEVICES=GPU-1: check nvidia-smi on the node"),
    (1, 0, "12.8", {"NVIDIA_VISIBLE_DEVICES": "GPU-1"}, None,
     "the node's NVIDIA driver is missing or too old for torch's CUDA 12.8; "),
    (4, 2, "12.8", {"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "0,1"}, None,
     "CUDA_VISIBLE_DEVICES='0,1' hides the others"),
    (4, 2, "12.8", {"NVIDIA_VISIBLE_DEVICES": "GPU-1,GPU-2"}, None,
     "only 2 of the pod's GPUs are exposed to the container (NVIDIA_VISIBLE_DEVICES=GPU-1,GPU-2)"),
])
def test_the_likely_cause_of_missing_gpus(asked: int, seen: int, cuda: str | None,
                                          environ: dict[str, str], warning: str | None,
                                          cause: str | None) -> None:
    from mlkube.steps.train import gpu_shortfall

    line = gpu_shortfall(asked, seen, torch_version="2.0", cuda=cuda, environ=environ,
                         cuda_warning=warning)
    if cause is None:
        assert line is None
        return
    assert line is not None and "\n" not in line
    assert line.startswith(f"asked for {asked} GPU{'s' if asked > 1 else ''} "
                           f"(MLKUBE_GPUS={asked}) but torch sees {seen}: likely cause: ")
    assert cause in line and line.endswith("; or set gpus to 0 to train on the CPU")
