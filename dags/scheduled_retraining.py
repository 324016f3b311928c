"""Scheduled retraining: nightly and whenever the training data asset is updated.

prepare-data computes the dataset digest and compares it with the one the current champion
was trained on; when they are equal, training, registration and deployment are skipped.
Otherwise a challenger is trained and registered, and the champion gate (register's margin)
decides whether it goes live; deploy serves whatever the champion then is.

Settings from the environment, all optional: ``MLKUBE_DATA`` (CSV/Parquet to train on; unset =
the bundled demo data), ``MLKUBE_RETRAIN_CRON`` (default ``0 3 * * *``), ``MLKUBE_CONFIG``,
``MLKUBE_ARTIFACT_PVC``, ``MLKUBE_MLFLOW_CONN_ID`` (see ml_lifecycle.py). register and deploy
take the model's pool, shared with ml_lifecycle's (see ml_lifecycle.py).
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, task

from mlkube.airflow import (
    DeployModelOperator,
    PrepareDataOperator,
    RegisterModelOperator,
    TrainOperator,
    model_pool,
)
from mlkube.schedule import check_schedule

DATA = os.environ.get("MLKUBE_DATA")
training_data = Asset(name="mlkube_training_data", uri=DATA or "mlkube://demo/bundled-dataset")
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
def data_changed(changed: str | bool) -> bool:
    """Train only when the data differs from the champion's (prepare's ``changed``); deploy
    runs either way (its trigger rule), so what serves converges to the champion."""
    return str(changed).lower() == "true"


with DAG(dag_id="scheduled_retraining", schedule=schedule, start_date=datetime(2025, 1, 1),
         catchup=False, max_active_runs=1, tags=["mlkube"], doc_md=__doc__):
    prepare = PrepareDataOperator(task_id="prepare_data", input_uri=DATA, inlets=[training_data],
                                  **common)
    dataset = prepare.output["dataset_uri"]
    train = TrainOperator(task_id="train", dataset=dataset, **common)  # a GPU in a pod
    data_changed(prepare.output["changed"]) >> train
    register = RegisterModelOperator(task_id="register", dataset=dataset,
                                     run_id=train.output["run_id"], pool=pool, **common)
    # the champion, on every run: idempotent (seconds when it already serves), and a champion
    # whose earlier deploy failed is deployed now
    register >> DeployModelOperator(task_id="deploy", dataset=dataset, pool=pool,
                                    trigger_rule="none_failed", **common)
