"""The whole ML lifecycle: prepare → tune (parallel workers) → train on a GPU → register → deploy.

Runs on Kubernetes by default (each step a pod; the steps share the artifact volume) and on
this machine with ``MLKUBE_BACKEND=local``. Settings from the environment, all optional:
``MLKUBE_CONFIG`` (lifecycle YAML), ``MLKUBE_TUNE_WORKERS`` (default 2),
``MLKUBE_ARTIFACT_PVC`` (default ``mlkube-artifacts``), ``MLKUBE_MLFLOW_CONN_ID`` (an
``mlflow`` connection; unset = the steps' embedded MLflow).

register and deploy take the model's pool (``mlkube-<model name>``, one slot): one of them at
a time across runs of this DAG and of scheduled_retraining. Create the pool once, else they
never start: ``airflow pools set mlkube-mlkube-demo 1 "mlkube: one model's register and
deploy, one at a time" --include-deferred`` (docs/airflow.md, "One register or deploy of a
model at a time").
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG

from mlkube.airflow import (
    DeployModelOperator,
    PrepareDataOperator,
    RegisterModelOperator,
    TrainOperator,
    model_pool,
    tune_fan_out,
)

common = {
    "config": os.environ.get("MLKUBE_CONFIG"),
    "artifact_pvc": os.environ.get("MLKUBE_ARTIFACT_PVC", "mlkube-artifacts"),
    "mlflow_conn_id": os.environ.get("MLKUBE_MLFLOW_CONN_ID"),
}
pool = model_pool(common["config"])  # one slot: one champion gate or rollout of the model

with DAG(dag_id="ml_lifecycle", schedule=None, start_date=datetime(2025, 1, 1), catchup=False,
         tags=["mlkube"], doc_md=__doc__):
    prepare = PrepareDataOperator(task_id="prepare_data", **common)
    dataset = prepare.output["dataset_uri"]
    _, best = tune_fan_out(workers=int(os.environ.get("MLKUBE_TUNE_WORKERS", "2")),
                           dataset=dataset, **common)
    # one GPU in a pod (the train step's default); the local backend trains on this machine
    train = TrainOperator(task_id="train", dataset=dataset,
                          hyperparameters=best.output["best_params"], **common)
    register = RegisterModelOperator(task_id="register", dataset=dataset,
                                     run_id=train.output["run_id"], pool=pool, **common)
    DeployModelOperator(task_id="deploy", dataset=dataset,
                        model_name=register.output["model_name"],
                        version=register.output["champion_version"], pool=pool, **common)
