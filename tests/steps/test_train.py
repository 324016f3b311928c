"""train: real PyTorch on real data; checkpoints, resume after a kill, the logged model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

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
                         "--params", '{"hidden_sizes": "16"}', tmp=tmp_path, capsys=capsys)
    assert again == 0 and same == result
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


def test_resumes_from_checkpoint_after_kill(state: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20_000, 20))
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(20)])
    frame["y"] = (features[:, 0] + features[:, 1] > 0).astype(int)
    frame.to_csv(tmp_path / "big.csv", index=False)
    _, prepared, _ = run("prepare-data", "--input", str(tmp_path / "big.csv"), "--target", "y",
                         tmp=tmp_path)
    assert prepared is not None
    command = [sys.executable, "-m", "mlkube.steps.train", "--dataset", prepared["dataset_uri"],
               "--epochs", "8", "--params", '{"hidden_sizes": "256,256", "batch_size": 32}',
               "--run-key", "resume-test", "--result-file", str(tmp_path / "train.json")]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    _read_until(first, "epoch 2/8")
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
    assert epochs_run[-1].startswith("[train] epoch 8/8")
    assert len(epochs_run) == 8 - int(saved[-1][6:10])
    result = json.loads((tmp_path / "train.json").read_text())
    assert result["epochs"] == 8 and result["run_id"] == run_id
    steps = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_accuracy")}
    assert steps == set(range(1, 9))


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
