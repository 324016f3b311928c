"""Both example DAGs run end to end under dag.test() on the local backend.

Real Airflow 3, real MLflow (SQLite), real Optuna and PyTorch, and a real model server on
loopback that answers a prediction.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dag_runs import get_dag, result, small_config, stop_servers, task_states

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


def predict(endpoint: str, dataset_uri: str) -> list[object]:
    """Class labels from the served model (V2) for two rows of the prepared test split."""
    from mlkube import data

    features, _, _ = data.load_split(dataset_uri, "test")
    body = {"inputs": [{"name": "input", "shape": [2, features.shape[1]], "datatype": "FP32",
                        "data": features[:2].reshape(-1).tolist()}]}
    request = urllib.request.Request(endpoint, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        outputs = {o["name"]: o for o in json.loads(response.read())["outputs"]}
    labels: list[object] = outputs["label"]["data"]
    return labels


def test_ml_lifecycle_runs_to_a_live_endpoint(local_lifecycle: Path) -> None:
    run = get_dag("ml_lifecycle").test()
    assert task_states(run) == {task: "success" for task in (
        "prepare_data", "tune_workers", "tune_select", "train", "register", "deploy")}
    prepared = result(run, "prepare_data")
    workers = [result(run, "tune_workers", i) for i in (0, 1)]
    best = result(run, "tune_select")
    assert {w["study_name"] for w in workers} == {best["study_name"]}  # one shared study
    assert best["trials"] == 2
    trained = result(run, "train")
    registered = result(run, "register")
    assert registered["version"] == "1" and str(registered["promoted"]).lower() == "true"
    deployed = result(run, "deploy")
    assert deployed["version"] == "1"
    assert deployed["endpoint"].startswith("http://127.0.0.1:")
    assert trained["run_id"] and trained["device"] in ("cpu", "cuda")
    assert len(predict(deployed["endpoint"], prepared["dataset_uri"])) == 2


def test_retraining_skips_unchanged_data(local_lifecycle: Path) -> None:
    dag = get_dag("scheduled_retraining")
    first = dag.test()
    assert task_states(first) == {task: "success" for task in (
        "prepare_data", "data_changed", "train", "register", "deploy")}
    assert result(first, "prepare_data")["changed"] == "true"
    assert str(result(first, "register")["promoted"]).lower() == "true"
    second = dag.test()
    assert result(second, "prepare_data")["changed"] == "false"
    assert task_states(second) == {"prepare_data": "success", "data_changed": "success",
                                   "train": "skipped", "register": "skipped",
                                   "deploy": "skipped"}
