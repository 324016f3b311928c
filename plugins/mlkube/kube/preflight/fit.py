"""NodeResourcesFit: the pod's requests against the node's allocatable (never capacity), for
every resource it requests, extended ones included, and the node's pod-count limit.

Mirrors ``pkg/scheduler/framework/plugins/noderesources/fit.go`` (fitsRequest).
"""

from __future__ import annotations

from decimal import Decimal

from kubernetes.client import V1Node

from mlkube.errors import MlkubeError
from mlkube.kube.preflight.framework import _Placing
from mlkube.kube.preflight.resources import (
    CPU,
    EPHEMERAL,
    MEMORY,
    PODS,
    Resources,
    _is_scalar,
    _order,
    _parse,
    _Rejected,
    _show,
    _units,
)


def _allocatable(node: V1Node) -> Resources:
    """Allocatable (the API defaults it to capacity only when a node reports none)."""
    status = node.status
    values = status and (status.allocatable if status.allocatable is not None else status.capacity)
    try:
        return _parse(values, f"node {node.metadata.name}")
    except _Rejected as exc:
        raise MlkubeError(f"preflight: {exc}") from None


def _fit(p: _Placing, node: V1Node, requests: Resources) -> list[str]:
    """NodeResourcesFit (fitsRequest) against an otherwise empty node."""
    allocatable = _allocatable(node)
    found: list[str] = []
    if PODS in allocatable:
        allowed = _units(PODS, allocatable[PODS])
        already = (p.pods_per_node or {}).get(node.metadata.name, 0)
        if already + 1 > allowed:
            found.append(f"Too many pods (allows {allowed}, has {already})")
    for name in _order(requests):
        if name not in (CPU, MEMORY, EPHEMERAL) and not _is_scalar(name):
            continue
        asks = _units(name, requests[name])
        has = allocatable.get(name, Decimal(0))
        if asks > 0 and asks > _units(name, has):
            found.append(f"Insufficient {name} (has {_show(name, has)}, asks "
                         f"{_show(name, requests[name])})")
    return found
