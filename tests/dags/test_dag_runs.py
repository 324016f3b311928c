"""The retraining DAG runs end to end under dag.test() on the local backend, three times: the
second skips training on unchanged data with no live traffic; the third, on unchanged data but
live windows shifted away from the champion's training profile, retrains on drift and emits
the drift asset's event (the lifecycle DAG's run is tests/dags/test_demo.py).

Real Airflow 3, real MLflow (SQLite), real Optuna and PyTorch, and a real model server on
loopback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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


def _drift_events() -> list[Any]:
    """The events of the ``mlkube_drift`` asset in Airflow's metadata database."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id ==
                                                        AssetModel.id)
                               .where(AssetModel.name == "mlkube_drift")).all()
        return [(row.source_task_id, row.source_run_id, dict(row.extra or {})) for row in rows]


def _shifted_windows(state: Path, model_name: str, version: str) -> None:
    """Live windows, as the runtime writes them, with every feature far above its training
    range: all live values in each feature's last training bin."""
    from mlflow.models import get_model_info

    from mlkube import drift, tracking

    tracking.configure(state, "mlkube")
    profile = get_model_info(f"models:/{model_name}/{version}").metadata["profile"]
    profile = json.loads(profile) if isinstance(profile, str) else profile
    rows = 600
    features = {}
    for name, stats in profile["features"].items():
        counts = [0] * len(stats["counts"])
        counts[-1] = rows
        features[name] = {"edges": stats["edges"], "counts": counts, "missing": 0,
                          "count": rows, "mean": float(stats["edges"][-1]), "var": 0.0}
    end = datetime.now(UTC)
    doc = {"version": 1, "model": model_name, "model_version": version,
           "start": (end - timedelta(minutes=5)).isoformat(), "end": end.isoformat(),
           "requests": rows, "rows": rows, "features": features}
    directory = state / "monitoring" / drift.safe_name(model_name) / version
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"window-{end.strftime('%Y%m%dT%H%M%S%fZ')}.json").write_text(json.dumps(doc))


def _tags(state: Path, run_id: str, model_name: str, version: str) -> tuple[dict, dict]:
    """The train run's tags and the model version's."""
    from mlkube import tracking

    tracking.configure(state, "mlkube")
    client = tracking.client()
    return (client.get_run(run_id).data.tags,
            client.get_model_version(model_name, version).tags)


def test_retraining_on_changed_data_then_on_drift(local_lifecycle: Path) -> None:
    dag = get_dag("scheduled_retraining")
    # register and deploy take the model's pool; it exists, as README.md has users create it
    assert pools.create_pools([dag]) == ["mlkube-mlkube-demo"]
    first = dag.test()
    # a fresh deployment: nothing served yet, so nothing drifted (and no event)
    assert task_states(first) == {**{task: "success" for task in (
        "prepare_data", "monitor", "should_retrain", "train", "register", "deploy")},
        "drift_detected": "skipped"}
    assert result(first, "prepare_data")["changed"] == "true"
    assert result(first, "monitor")["drifted"] is False
    assert str(result(first, "register")["promoted"]).lower() == "true"
    name, champion = result(first, "register")["model_name"], result(first, "register")["version"]
    train_tags, version_tags = _tags(local_lifecycle, result(first, "train")["run_id"], name,
                                     champion)
    assert train_tags["mlkube.retrain_reason"] == "data changed"
    assert version_tags["mlkube.retrain_reason"] == "data changed"

    second = dag.test()
    assert result(second, "prepare_data")["changed"] == "false"
    monitored = result(second, "monitor")
    assert (monitored["drifted"], monitored["rows"]) == (False, 0)
    assert monitored["champion_version"] == champion
    # deploy runs on every run: the champion, already serving, changes nothing
    assert task_states(second) == {"prepare_data": "success", "monitor": "success",
                                   "should_retrain": "success", "drift_detected": "skipped",
                                   "train": "skipped", "register": "skipped",
                                   "deploy": "success"}
    assert result(second, "deploy") == result(first, "deploy")
    assert _drift_events() == []

    # the same data, but what the champion is asked has moved far from its training data
    _shifted_windows(local_lifecycle, name, champion)
    third = dag.test()
    assert result(third, "prepare_data")["changed"] == "false"
    monitored = result(third, "monitor")
    assert monitored["drifted"] is True and monitored["champion_version"] == champion
    assert task_states(third) == {task: "success" for task in (
        "prepare_data", "monitor", "should_retrain", "drift_detected", "train", "register",
        "deploy")}
    reason = result(third, "should_retrain")
    assert reason.startswith(f"drift (v{champion}): psi "), reason
    trained = result(third, "train")
    assert trained["run_id"] != result(first, "train")["run_id"]  # trained afresh, not reused
    registered = result(third, "register")
    train_tags, version_tags = _tags(local_lifecycle, trained["run_id"], name,
                                     registered["version"])
    assert train_tags["mlkube.retrain_reason"] == reason
    assert version_tags["mlkube.retrain_reason"] == reason
    ((task_id, run_id, extra),) = _drift_events()
    assert (task_id, run_id) == ("drift_detected", third.run_id)
    assert extra["champion_version"] == champion and extra["report_uri"].endswith("report.html")
