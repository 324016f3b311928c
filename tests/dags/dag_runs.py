"""Helpers for the dag.test() runs: a throwaway lifecycle setup, run states and results."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from mlkube_testing import free_port

REPO = Path(__file__).resolve().parents[2]


def small_config(path: Path) -> Path:
    """A lifecycle config that runs in about a minute on two CPU cores."""
    path.write_text(yaml.safe_dump({
        "tune": {"n_trials": 2, "epochs": 2, "workers": 1},
        "model": {"epochs": 3},
        "serving": {"port": free_port()},
    }))
    return path


def get_dag(dag_id: str) -> Any:
    """Parse dags/ (with the current environment) and return one DAG."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def task_states(dag_run: Any) -> dict[str, str]:
    """Final state per task (mapped tasks: the set of their instances' states)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(select(TaskInstance.task_id, TaskInstance.state).where(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id)).all()
    states: dict[str, set[str]] = {}
    for task_id, state in rows:
        states.setdefault(task_id, set()).add(str(state))
    return {task_id: "/".join(sorted(s)) for task_id, s in states.items()}


def result(dag_run: Any, task_id: str, map_index: int = -1) -> Any:
    """A task's return value (the step's result document)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(
            run_id=dag_run.run_id, key="return_value", dag_ids=dag_run.dag_id,
            task_ids=task_id, map_indexes=map_index)).first()
        assert row is not None, f"no result for {task_id}"
        return XComModel.deserialize_value(row)


def stop_servers(state_dir: Path) -> None:
    """Stop the model servers the local deploy step started under ``state_dir``."""
    from mlkube.targets import local

    for server in local.servers(state_dir):
        local.stop(server)
        local.forget(state_dir, server.model_name)


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


def recorded_run(airflow_db: Path) -> tuple[dict[str, str], dict[tuple[str, int], Any]]:
    """What an Airflow home's metadata database (SQLite) recorded of its one DAG run: each
    task's state (mapped tasks: the set of their states) and return values by (task, index)."""
    import sqlite3

    with sqlite3.connect(airflow_db) as db:
        rows = db.execute("SELECT task_id, state FROM task_instance").fetchall()
        values = db.execute("SELECT task_id, map_index, value FROM xcom "
                            "WHERE key = 'return_value'").fetchall()
    states: dict[str, set[str]] = {}
    for task_id, state in rows:
        states.setdefault(task_id, set()).add(str(state))
    return ({task_id: "/".join(sorted(s)) for task_id, s in states.items()},
            {(task_id, index): json.loads(value) for task_id, index, value in values})
