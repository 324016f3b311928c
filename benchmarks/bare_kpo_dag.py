"""Baseline for benchmarks/dag_parse.py: dags/ml_lifecycle.py written with bare KubernetesPodOperators.

Same tasks, same wiring (a mapped tune worker task included), same images and resources,
hand-written commands; it is only parsed, never run.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG
from kubernetes.client import models as k8s

IMAGE = "ghcr.io/mlkube/mlkube:0.1.0"


def resources(cpu: str, memory: str, gpus: int = 0) -> k8s.V1ResourceRequirements:
    extra = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return k8s.V1ResourceRequirements(requests={"cpu": cpu, "memory": memory, **extra},
                                      limits={"memory": memory, **extra})


def step(module: str, *args: str) -> dict[str, object]:
    return {"image": IMAGE, "cmds": ["python", "-m", f"mlkube.steps.{module}"],
            "arguments": ["--result-file", "/tmp/mlkube/result.json", *args],
            "do_xcom_push": True}


with DAG(dag_id="bare_kpo_lifecycle", schedule=None, start_date=datetime(2025, 1, 1),
         catchup=False):
    prepare = KubernetesPodOperator(task_id="prepare_data", container_resources=resources("1", "2Gi"),
                                    **step("prepare_data"))
    dataset = "{{ ti.xcom_pull('prepare_data')['dataset_uri'] }}"
    workers = KubernetesPodOperator.partial(
        task_id="tune_workers", container_resources=resources("2", "4Gi"),
        **step("tune", "--role", "worker", "--dataset", dataset),
    ).expand(env_vars=[{"MLKUBE_TUNE_WORKER": str(i)} for i in range(2)])
    select = KubernetesPodOperator(task_id="tune_select", container_resources=resources("2", "4Gi"),
                                   **step("tune", "--role", "select", "--dataset", dataset))
    train = KubernetesPodOperator(
        task_id="train", container_resources=resources("4", "16Gi", gpus=1),
        tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        **step("train", "--dataset", dataset,
               "--params", "{{ ti.xcom_pull('tune_select')['best_params'] | tojson }}"))
    register = KubernetesPodOperator(
        task_id="register", container_resources=resources("1", "2Gi"),
        **step("register", "--dataset", dataset, "--run-id", "{{ ti.xcom_pull('train')['run_id'] }}"))
    deploy = KubernetesPodOperator(task_id="deploy", container_resources=resources("500m", "1Gi"),
                                   **step("deploy", "--dataset", dataset))
    prepare >> workers >> select >> train >> register >> deploy
