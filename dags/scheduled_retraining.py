"""Scheduled retraining: nightly and whenever the training data asset is updated.

prepare-data computes the dataset digest and compares it with the one the current champion
was trained on; monitor judges the served version's live windows against its training profile
(population stability index). When the data is unchanged and nothing drifted, training and
registration are skipped. Otherwise a challenger is trained and registered, with the reason
("data changed", "drift: psi <feature>=..", or both) printed by ``should_retrain`` and
recorded as the tag ``mlkube.retrain_reason`` on the train run and the model version; the
champion gate (register's margin) decides whether it goes live. deploy serves whatever the
champion then is, on every run. On drift, ``drift_detected`` emits an event of the asset
``mlkube_drift`` (skipped otherwise, so no event): schedule your own DAG on it. A deployment
that has served nothing yet (no champion, no live windows) is not drifted.

Settings from the environment, all optional: ``MLKUBE_DATA`` (CSV/Parquet to train on; unset =
the bundled demo data), ``MLKUBE_RETRAIN_CRON`` (default ``0 3 * * *``), ``MLKUBE_CONFIG``,
``MLKUBE_ARTIFACT_PVC``, ``MLKUBE_MLFLOW_CONN_ID`` (see ml_lifecycle.py). register and deploy
take the model's pool, shared with ml_lifecycle's (see ml_lifecycle.py).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, task

from mlkube import retrain
from mlkube.airflow import (
    DeployModelOperator,
    MonitorOperator,
    PrepareDataOperator,
    RegisterModelOperator,
    TrainOperator,
    model_pool,
)
from mlkube.schedule import check_schedule

DATA = os.environ.get("MLKUBE_DATA")
training_data = Asset(name="mlkube_training_data", uri=DATA or "mlkube://demo/bundled-dataset")
drift = Asset(name="mlkube_drift", uri="mlkube://monitor/drift")
schedule = AssetOrTimeSchedule(
    timetable=CronTriggerTimetable(
        check_schedule(os.environ.get("MLKUBE_RETRAIN_CRON", "0 3 * * *"),
                       "dag 'scheduled_retraining': MLKUBE_RETRAIN_CRON"),
        timezone="UTC"),
    assets=[training_data],
)
common = {
    "config": os.environ.get("MLKUBE_CONFIG"),
    "artifact_pvc": os.environ.get("MLKUBE_ARTIFACT_PVC", "mlkube-artifacts"),
    "mlflow_conn_id": os.environ.get("MLKUBE_MLFLOW_CONN_ID"),
}
pool = model_pool(common["config"])  # one slot: one champion gate or rollout of the model


@task.short_circuit(ignore_downstream_trigger_rules=False)
def should_retrain(changed: str | bool, monitor: dict[str, Any]) -> str:
    """Train when the data differs from the champion's (prepare's ``changed``) or the served
    version drifted (monitor's ``drifted``); the reason goes to train and register. Deploy runs
    either way (its trigger rule), so what serves converges to the champion."""
    why = retrain.reason(changed, monitor)
    print(f"retraining: {why}" if why else "not retraining: the data is unchanged and the "
          f"served version did not drift ({monitor.get('rows', 0)} live rows judged)")
    return why


@task(outlets=[drift])
def drift_detected(monitor: dict[str, Any]) -> dict[str, Any]:
    """An event of the ``mlkube_drift`` asset when the monitor says drifted; skipped (no
    event) otherwise. The event's extra carries the version judged, its PSI and the report."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowSkipException

    if not retrain.is_true(monitor.get("drifted")):
        raise AirflowSkipException("not drifted: no event")
    extra = {key: monitor.get(key) for key in (
        "model_name", "champion_version", "psi", "prediction_psi", "rows", "run_id",
        "report_uri")}
    get_current_context()["outlet_events"][drift].extra = extra
    print(retrain.drift_reason(monitor))
    return extra


with DAG(dag_id="scheduled_retraining", schedule=schedule, start_date=datetime(2025, 1, 1),
         catchup=False, max_active_runs=1, tags=["mlkube"], doc_md=__doc__):
    prepare = PrepareDataOperator(task_id="prepare_data", input_uri=DATA, inlets=[training_data],
                                  **common)
    dataset = prepare.output["dataset_uri"]
    # the served version's live windows; nothing served yet (a fresh deployment) is no drift
    monitor = MonitorOperator(task_id="monitor", no_data="not-drifted", **common)
    drift_detected(monitor.output)
    reason = should_retrain(prepare.output["changed"], monitor.output)
    train = TrainOperator(task_id="train", dataset=dataset, reason=reason,
                          **common)  # a GPU in a pod
    register = RegisterModelOperator(task_id="register", dataset=dataset,
                                     run_id=train.output["run_id"], reason=reason, pool=pool,
                                     **common)
    # the champion, on every run: idempotent (seconds when it already serves), and a champion
    # whose earlier deploy failed is deployed now
    register >> DeployModelOperator(task_id="deploy", dataset=dataset, pool=pool,
                                    trigger_rule="none_failed", **common)
