"""State on the shared volume that points into a tracking store the steps no longer use.

A study or a training run's marker outlives a switch of MLFLOW_TRACKING_URI (a new MLflow
server, the embedded store of another machine). The step must start afresh or refuse in one
line, never fail with a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import pytest

from mlkube_testing import error_lines, run, write_config


def _switch_store(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{path}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    if "mlflow" in sys.modules:
        mlflow.set_tracking_uri(uri)


def test_train_starts_a_new_run_where_its_marker_names_an_unknown_run(
        dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--dataset", dataset, "--epochs", "3", "--params", '{"hidden_sizes": "16"}']
    code, first, _ = run("train", *args, tmp=tmp_path)
    assert code == 0 and first is not None
    (checkpoints,) = (Path(dataset).parents[1] / "checkpoints").iterdir()

    _switch_store(tmp_path / "other-mlflow.db", monkeypatch)
    code, finished, err = run("train", *args, tmp=tmp_path, capsys=capsys)
    assert code == 0 and finished is not None, err
    assert finished["run_id"] != first["run_id"]
    assert mlflow.get_run(finished["run_id"]).info.status == "FINISHED"
    assert mlflow.pyfunc.load_model(finished["model_uri"]) is not None

    (checkpoints / "result.json").unlink()  # as if the pod died before the end
    _switch_store(tmp_path / "third-mlflow.db", monkeypatch)
    code, resumed, _ = run("train", *args, tmp=tmp_path, capsys=capsys)
    assert code == 0 and resumed is not None
    assert mlflow.get_run(resumed["run_id"]).data.params["hidden_sizes"] == "[16]"


def test_tune_refuses_a_study_whose_parent_run_the_store_does_not_know(
        dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "c.yaml", tune={"n_trials": 2, "workers": 1, "epochs": 2})
    args = ["--config", str(config), "--dataset", dataset]
    code, result, _ = run("tune", *args, tmp=tmp_path)
    assert code == 0 and result is not None

    _switch_store(tmp_path / "other-mlflow.db", monkeypatch)
    for role in ("select", "worker"):
        code, again, err = run("tune", *args, "--role", role, "--study-name",
                               result["study_name"], tmp=tmp_path, capsys=capsys)
        lines = error_lines(err)
        assert code == 1 and again is None and "Traceback" not in err
        assert len(lines) == 1 and f"belongs to MLflow run {result['mlflow_run_id']}" in lines[0]
        assert "another --study-name" in lines[0]
