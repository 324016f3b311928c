"""Preflight: will the cluster ever schedule this pod?

Before a pod is submitted, compare what it requests with what the cluster's nodes can allocate
and what the namespace's quotas have left. A pod that no node can hold would sit Pending until
a timeout; this fails at once instead, saying what was asked and what the largest node offers.
The checks are pure functions of typed ``kubernetes.client`` objects; the caller lists nodes and
quotas (and decides what to do when it may not).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal

from kubernetes.client import V1Node, V1Pod, V1ResourceQuota
from kubernetes.utils import parse_quantity

from mlkube.errors import MlkubeError

Requests = dict[str, Decimal]


def pod_requests(pod: V1Pod) -> Requests:
    """What the pod asks the scheduler for: containers summed, the largest init container."""
    total: Requests = {}
    for container in pod.spec.containers or []:
        for name, value in ((container.resources and container.resources.requests) or {}).items():
            total[name] = total.get(name, Decimal(0)) + parse_quantity(value)
    for container in pod.spec.init_containers or []:
        for name, value in ((container.resources and container.resources.requests) or {}).items():
            total[name] = max(total.get(name, Decimal(0)), parse_quantity(value))
    return total


def _show(requests: Mapping[str, Decimal], names: Iterable[str]) -> str:
    def one(name: str) -> str:
        value = requests.get(name, Decimal(0))
        if name == "memory" or name.endswith("storage"):
            return f"{name}={value / 2**30:.3g}Gi"
        return f"{name}={value.normalize():f}"

    return ", ".join(one(n) for n in names)


def _selected(node: V1Node, selector: Mapping[str, str]) -> bool:
    labels = node.metadata.labels or {}
    return not (node.spec and node.spec.unschedulable) and all(
        labels.get(k) == v for k, v in selector.items())


def _allocatable(node: V1Node) -> Requests:
    return {k: parse_quantity(v) for k, v in ((node.status and node.status.allocatable) or {}).items()}


def check_nodes(pod: V1Pod, nodes: Iterable[V1Node]) -> None:
    """Fail unless some schedulable node matching the pod's node selector can hold it.

    Raises:
        MlkubeError: naming the request and the largest matching node.
    """
    wanted = pod_requests(pod)
    if not wanted:
        return
    selector = pod.spec.node_selector or {}
    candidates = [n for n in nodes if _selected(n, selector)]
    name = pod.metadata.name if pod.metadata else "pod"
    if not candidates:
        where = f" with labels {dict(selector)}" if selector else ""
        raise MlkubeError(f"pod {name}: no schedulable node{where} in the cluster; add one or "
                          "change the node selection (gpu_product, node_selector)")
    for node in candidates:
        free = _allocatable(node)
        if all(free.get(k, Decimal(0)) >= v for k, v in wanted.items()):
            return
    largest = max(candidates, key=lambda n: tuple(_allocatable(n).get(k, Decimal(0)) for k in sorted(wanted)))
    raise MlkubeError(
        f"pod {name} asks {_show(wanted, sorted(wanted))}, but no node can allocate that; the "
        f"largest{' matching' if selector else ''} node {largest.metadata.name} has "
        f"{_show(_allocatable(largest), sorted(wanted))}: lower the request or add a node that fits"
    )


def check_quotas(pod: V1Pod, quotas: Iterable[V1ResourceQuota]) -> None:
    """Fail when the pod's requests exceed what a namespace quota has left.

    Raises:
        MlkubeError: naming the quota, the resource, the request and what is left.
    """
    wanted = pod_requests(pod)
    for quota in quotas:
        hard = (quota.status and quota.status.hard) or {}
        used = (quota.status and quota.status.used) or {}
        for resource, value in wanted.items():
            for key in (f"requests.{resource}", resource):
                if key in hard:
                    left = parse_quantity(hard[key]) - parse_quantity(used.get(key, "0"))
                    if value > left:
                        raise MlkubeError(
                            f"pod {pod.metadata.name} asks {_show(wanted, [resource])}, but quota "
                            f"{quota.metadata.name} has {_show({resource: left}, [resource])} "
                            f"left of {key}; free some up or ask for less"
                        )
                    break
