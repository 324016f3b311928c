"""The train step's pod through KubernetesPodOperator's own lifecycle, in both modes.

The tests in tests/airflow/test_airflow_pod_lifecycle.py run these DAGs with ``dag.test()``
against the fake API server (tests/kube/fake_apiserver.py), whose kubeconfig comes in the run's
conf: the provider's real ``execute``, trigger and cleanup create, poll, log and delete the pod.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG

from mlkube.airflow import TrainOperator

#: the exception each failed task ended with, for the tests to read (callbacks run in-process)
FAILURES: list[BaseException | None] = []


def _failed(context: Any) -> None:
    FAILURES.append(context.get("exception"))


def _dag(dag_id: str, deferrable: bool, **kwargs: Any) -> DAG:
    kwargs = {"gpus": 0, "preflight": False, **kwargs}
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1),
             catchup=False) as dag:
        TrainOperator(task_id="train", dataset="/mnt/mlkube/ds", namespace="ml",
                      config_file="{{ dag_run.conf['kubeconfig'] }}",
                      in_cluster=False, schedule_timeout_seconds=1,
                      startup_check_interval_seconds=1, poll_interval=1,
                      deferrable=deferrable, retries=0, on_failure_callback=_failed, **kwargs)
    return dag


DAGS = {"sync": _dag("mlkube_pod_sync", deferrable=False),
        "deferrable": _dag("mlkube_pod_deferrable", deferrable=True),
        "queued": _dag("mlkube_pod_queued", deferrable=False, queue_name="team-a"),
        # multi-node training: the Job, with preflight, around the task's own result-only pod
        "nodes2": _dag("mlkube_pod_nodes2", deferrable=False, nodes=2, gpus=1, preflight=True),
        "nodes3": _dag("mlkube_pod_nodes3", deferrable=False, nodes=3, gpus=1, preflight=True)}
