"""The retraining DAG runs end to end under dag.test() on the local backend, twice: the second
run skips training on unchanged data (the lifecycle DAG's run is tests/dags/test_demo.py).

Real Airflow 3, real MLflow (SQLite), real Optuna and PyTorch, and a real model server on
loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dag_runs import get_dag, result, small_config, stop_servers, task_states

from mlkube.airflow import pools

pytestmark = pytest.mark.slow


@pytest.fixture
def local_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    airflow_db: None) -> Iterator[Path]:
    """The local backend with a throwaway state directory and a small config."""
    state = tmp_path / "state"
    monkeypatch.setenv("MLKUBE_BACKEND", "local")
    monkeypatch.setenv("MLKUBE_STATE_DIR", str(state))
    monkeypatch.setenv("MLKUBE_CONFIG", str(small_config(tmp_path / "lifecycle.yaml")))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLKUBE_MLFLOW_CONN_ID", raising=False)
    try:
        yield state
    finally:
        stop_servers(state)


def test_retraining_skips_unchanged_data(local_lifecycle: Path) -> None:
    dag = get_dag("scheduled_retraining")
    # register and deploy take the model's pool; it exists, as README.md has users create it
    assert pools.create_pools([dag]) == ["mlkube-mlkube-demo"]
    first = dag.test()
    assert task_states(first) == {task: "success" for task in (
        "prepare_data", "data_changed", "train", "register", "deploy")}
    assert result(first, "prepare_data")["changed"] == "true"
    assert str(result(first, "register")["promoted"]).lower() == "true"
    second = dag.test()
    assert result(second, "prepare_data")["changed"] == "false"
    # deploy runs on every run: the champion, already serving, changes nothing
    assert task_states(second) == {"prepare_data": "success", "data_changed": "success",
                                   "train": "skipped", "register": "skipped",
                                   "deploy": "success"}
    assert result(second, "deploy") == result(first, "deploy")
