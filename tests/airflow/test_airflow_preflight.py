"""Preflight: a pod no node (or quota) can take fails before it is submitted."""

from __future__ import annotations

import pytest
from kubernetes.client import (
    V1Node,
    V1NodeSpec,
    V1NodeStatus,
    V1ObjectMeta,
    V1Pod,
    V1ResourceQuota,
    V1ResourceQuotaStatus,
)

from mlkube.airflow import PrepareDataOperator, TrainOperator
from mlkube.errors import MlkubeError
from mlkube.kube.preflight import check_nodes, check_quotas, pod_requests


def node(name: str, labels: dict[str, str] | None = None, unschedulable: bool = False,
         gpus: str | None = None, **allocatable: str) -> V1Node:
    if gpus:
        allocatable["nvidia.com/gpu"] = gpus
    return V1Node(metadata=V1ObjectMeta(name=name, labels=labels or {}),
                  spec=V1NodeSpec(unschedulable=unschedulable),
                  status=V1NodeStatus(allocatable=allocatable))


def train_pod(**kwargs: object) -> V1Pod:
    op = TrainOperator(task_id="train", dataset="/d", **kwargs)  # type: ignore[arg-type]
    return op.build_pod_request_obj(dry_run=True)


CPU_NODE = node("cpu-1", cpu="8", memory="32Gi")
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_requests_are_read_from_the_pod() -> None:
    requests = pod_requests(train_pod(gpus=2, cpu="4", memory="16Gi"))
    assert requests == {"cpu": 4, "memory": 16 * 2**30, "nvidia.com/gpu": 2}


def test_gpu_pod_fits_a_gpu_node() -> None:
    check_nodes(train_pod(gpus=2), [CPU_NODE, node("gpu-1", cpu="32", memory="256Gi",
                                                   gpus="8")])


def test_too_many_gpus_names_the_largest_node() -> None:
    nodes = [CPU_NODE, node("gpu-1", cpu="32", memory="256Gi", gpus="4")]
    with pytest.raises(MlkubeError, match=r"asks cpu=4, memory=16Gi, nvidia.com/gpu=8.*"
                                          r"largest node gpu-1 has cpu=32, memory=256Gi, "
                                          r"nvidia.com/gpu=4"):
        check_nodes(train_pod(gpus=8), nodes)


def test_gpu_product_must_exist() -> None:
    nodes = [node("a100", {"nvidia.com/gpu.product": "NVIDIA-A100"}, cpu="32", memory="256Gi",
                  gpus="8")]
    with pytest.raises(MlkubeError, match="no schedulable node with labels.*H100"):
        check_nodes(train_pod(gpu_product=H100["nvidia.com/gpu.product"]), nodes)


def test_cordoned_nodes_do_not_count() -> None:
    with pytest.raises(MlkubeError, match="no schedulable node"):
        check_nodes(train_pod(gpus=0), [node("big", unschedulable=True, cpu="64", memory="1Ti")])


def test_cpu_step_fits() -> None:
    check_nodes(PrepareDataOperator(task_id="p").build_pod_request_obj(dry_run=True), [CPU_NODE])


def test_quota_left_is_checked() -> None:
    quota = V1ResourceQuota(metadata=V1ObjectMeta(name="team-ml"), status=V1ResourceQuotaStatus(
        hard={"requests.nvidia.com/gpu": "4", "requests.memory": "64Gi"},
        used={"requests.nvidia.com/gpu": "3", "requests.memory": "8Gi"}))
    check_quotas(train_pod(gpus=1), [quota])
    with pytest.raises(MlkubeError, match="quota team-ml has nvidia.com/gpu=1 left"):
        check_quotas(train_pod(gpus=2), [quota])
