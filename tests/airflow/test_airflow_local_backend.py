"""The local backend runs the real step program as a subprocess with the same result contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlkube.airflow import PrepareDataOperator, TrainOperator
from mlkube.airflow import backend as backends
from mlkube.airflow.local_run import LocalStep
from mlkube.errors import MlkubeError
from mlkube.spec import PREPARE_DATA


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLKUBE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(backends.ENV, raising=False)
    return tmp_path / "state"


def test_prepare_runs_locally_and_returns_its_result(state: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    op = PrepareDataOperator(task_id="prepare", backend="local", pipeline_run_id="test-run")
    result = op.execute({})  # type: ignore[arg-type]
    assert set(result) == set(PREPARE_DATA.result_keys)
    assert Path(result["dataset_uri"]).is_dir()
    assert Path(result["dataset_uri"]).is_relative_to(state)
    assert result["changed"] == "true"
    assert "[prepare-data] dataset" in capsys.readouterr().out  # step output → task log
    assert op.mlflow_link is None  # embedded SQLite store: no UI to link to


def test_a_failing_step_fails_the_task_with_its_one_line_error(state: Path) -> None:
    op = PrepareDataOperator(task_id="prepare", backend="local", input_uri=str(state / "nope.csv"))
    with pytest.raises(MlkubeError) as failure:
        op.execute({})  # type: ignore[arg-type]
    message = str(failure.value)
    assert "nope.csv" in message and "\n" not in message
    assert "Traceback" not in message


def test_a_train_task_given_gpus_torch_cannot_see_fails_in_one_line(state: Path) -> None:
    """This machine's torch is a CPU build: gpus=1 must not quietly train on the CPU."""
    from mlkube.airflow import TrainOperator

    op = TrainOperator(task_id="train", backend="local", dataset=str(state / "none"), gpus=1)
    with pytest.raises(MlkubeError) as failure:
        op.execute({})  # type: ignore[arg-type]
    message = str(failure.value)
    assert "asked for 1 GPU (MLKUBE_GPUS=1) but torch sees 0" in message
    assert "CPU-only torch build" in message and "\n" not in message


def test_local_command_line_comes_from_the_spec(tmp_path: Path) -> None:
    step = LocalStep(PREPARE_DATA, {"target": "y", "features": ["a"]}, env={})
    argv = step.argv(tmp_path / "r.json")
    assert argv[1:3] == ["-m", "mlkube.steps.prepare_data"]
    assert argv[3:] == ["--target", "y", "--features", '["a"]', "--result-file", str(tmp_path / "r.json")]


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(backends.ENV, raising=False)
    monkeypatch.delenv("AIRFLOW__MLKUBE__BACKEND", raising=False)
    assert backends.resolve(None) == "kubernetes"
    monkeypatch.setenv("AIRFLOW__MLKUBE__BACKEND", "local")
    assert backends.resolve(None) == "local"
    monkeypatch.setenv(backends.ENV, "kubernetes")
    assert backends.resolve(None) == "kubernetes"  # the environment beats Airflow config
    assert backends.resolve("local") == "local"  # the operator beats both
    monkeypatch.setenv(backends.ENV, "k8s")
    with pytest.raises(MlkubeError, match="environment variable MLKUBE_BACKEND is 'k8s'"):
        backends.resolve(None)


def test_local_env_carries_mlflow_settings_and_plain_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_LOCAL", json.dumps({
        "conn_type": "mlflow", "host": "http://127.0.0.1:5000", "login": "bob", "password": "pw"}))
    op = TrainOperator(task_id="train", dataset="/d", mlflow_conn_id="mlflow_local",
                       env_vars={"A": "1"})
    settings = op.mlflow_settings()
    assert settings.local_env() == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
                                    "MLFLOW_TRACKING_USERNAME": "bob",
                                    "MLFLOW_TRACKING_PASSWORD": "pw"}
    assert "pw" not in repr(settings)
