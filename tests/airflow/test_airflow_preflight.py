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
    with pytest.raises(MlkubeError, match=r"asks cpu=4, memory=16Gi, nvidia\.com/gpu=8: 0/2 nodes "
                                          r"are available: .*1 node: Insufficient nvidia\.com/gpu "
                                          r"\(has 4, asks 8\)"):
        check_nodes(train_pod(gpus=8), nodes)


def test_gpu_product_must_exist() -> None:
    nodes = [node("a100", {"nvidia.com/gpu.product": "NVIDIA-A100"}, cpu="32", memory="256Gi",
                  gpus="8")]
    with pytest.raises(MlkubeError, match=r"1 node: labels do not match nodeSelector nvidia\.com/gpu\.product=NVIDIA-H100"):
        check_nodes(train_pod(gpu_product=H100["nvidia.com/gpu.product"]), nodes)


def test_cordoned_nodes_do_not_count() -> None:
    with pytest.raises(MlkubeError, match=r"0/1 nodes are available: 1 node: cordoned"):
        check_nodes(train_pod(gpus=0), [node("big", unschedulable=True, cpu="64", memory="1Ti")])


def test_cpu_step_fits() -> None:
    check_nodes(PrepareDataOperator(task_id="p").build_pod_request_obj(dry_run=True), [CPU_NODE])


def test_quota_left_is_checked() -> None:
    quota = V1ResourceQuota(metadata=V1ObjectMeta(name="team-ml"), status=V1ResourceQuotaStatus(
        hard={"requests.nvidia.com/gpu": "4", "requests.memory": "64Gi"},
        used={"requests.nvidia.com/gpu": "3", "requests.memory": "8Gi"}))
    check_quotas(train_pod(gpus=1), [quota])
    with pytest.raises(MlkubeError, match=r"exceeded quota team-ml: requests\.nvidia\.com/gpu used 3, limit 4, asks 2"):
        check_quotas(train_pod(gpus=2), [quota])


LIMITS_CPU_QUOTA = V1ResourceQuota(metadata=V1ObjectMeta(name="compute"), status=V1ResourceQuotaStatus(
    hard={"limits.cpu": "64", "requests.cpu": "64"}, used={"limits.cpu": "0", "requests.cpu": "0"}))


def test_a_quota_on_limits_cpu_needs_the_steps_cpu_limit() -> None:
    """The real API server rejects such a pod at admission ('must specify limits.cpu')."""
    with pytest.raises(MlkubeError, match=r"quota compute tracks limits\.cpu, which the pod leaves "
                                          r"unset: give the step a cpu_limit"):
        check_quotas(PrepareDataOperator(task_id="p").build_pod_request_obj(dry_run=True),
                     [LIMITS_CPU_QUOTA])
    pod = PrepareDataOperator(task_id="p", cpu_limit="2").build_pod_request_obj(dry_run=True)
    (container,) = [c for c in pod.spec.containers if c.name == "base"]
    assert container.resources.limits["cpu"] == "2"
    check_quotas(pod, [LIMITS_CPU_QUOTA])


def test_a_cpu_limit_below_the_request_is_refused_at_parse_time() -> None:
    with pytest.raises(MlkubeError, match=r"task 'p': cpu_limit 500m is below the cpu request 2"):
        PrepareDataOperator(task_id="p", cpu="2", cpu_limit="500m").build_pod_request_obj(
            dry_run=True)


class _Api:
    """Stands in for the CoreV1Api the operator's hook gives: what a cluster lists."""

    def __init__(self, *, nodes: list[V1Node], quotas: list[V1ResourceQuota],
                 forbidden: tuple[str, ...] = ()) -> None:
        self.lists = {"node": nodes, "resource_quota": quotas, "limit_range": [],
                      "persistent_volume_claim": [], "persistent_volume": []}
        self.forbidden = forbidden

    def __getattr__(self, name: str) -> object:
        kind = name.removeprefix("list_").removeprefix("namespaced_")
        if kind not in self.lists:
            raise AttributeError(name)

        def read(*args: object, **kwargs: object) -> object:
            from kubernetes.client import ApiException

            if kind in self.forbidden:
                raise ApiException(status=403, reason="Forbidden")
            return type("List", (), {"items": self.lists[kind]})()

        return read


def test_the_operator_reads_the_cluster_and_fails_before_submitting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    op = PrepareDataOperator(task_id="p", namespace="ml")
    pod = op.build_pod_request_obj(dry_run=True)
    monkeypatch.setattr(type(op), "client", _Api(nodes=[CPU_NODE], quotas=[LIMITS_CPU_QUOTA]))
    with pytest.raises(MlkubeError, match=r"^task 'p': pod ml/.* rejected at admission: quota "
                                          r"compute tracks limits\.cpu"):
        op._preflight(pod)
    # a list the task may not read is skipped (with a warning), the rest still decides
    monkeypatch.setattr(type(op), "client", _Api(nodes=[CPU_NODE], quotas=[LIMITS_CPU_QUOTA],
                                                 forbidden=("resource_quota",)))
    op._preflight(pod)


def _event(reason: str, message: str, when: str) -> object:
    from datetime import datetime

    from kubernetes.client import CoreV1Event, V1ObjectReference

    return CoreV1Event(metadata=V1ObjectMeta(name=f"e-{when}"), reason=reason, message=message,
                       involved_object=V1ObjectReference(kind="Pod", name="p-1"),
                       last_timestamp=datetime.fromisoformat(f"2026-12-01T{when}+00:00"))


def test_the_schedulers_reason_is_its_latest_failedscheduling_event() -> None:
    """The one line a never-scheduled pod fails with (the whole path, against the fake API
    server: tests/airflow/test_airflow_pod_lifecycle.py)."""
    from kubernetes.client import ApiClient

    from mlkube.kube.pod import scheduler_reason

    def pending_reason(typed: list[object]) -> str | None:  # as the API serves them
        return scheduler_reason([ApiClient().sanitize_for_serialization(e) for e in typed])

    events = [_event("Scheduled", "", "10:00:00"),
              _event("FailedScheduling", "0/3 nodes are available: 3 Insufficient memory.",
                     "10:00:05"),
              _event("FailedScheduling", "0/3 nodes are available: 3 Insufficient "
                     "nvidia.com/gpu. preemption: 0/3 nodes are available.", "10:01:05")]
    assert pending_reason(events) == ("0/3 nodes are available: 3 Insufficient nvidia.com/gpu. "
                                      "preemption: 0/3 nodes are available.")
    assert pending_reason(events[:1]) is None

