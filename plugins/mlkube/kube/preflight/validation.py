"""Validation: resource names, no negative values, requests at most limits, extended resources
whole and with requests equal to limits, hugepages with cpu or memory, pod-level resources,
tolerations and required node affinity.

Mirrors ``pkg/apis/core/validation/validation.go``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from kubernetes.client import V1Pod
from kubernetes.utils import parse_quantity

from mlkube.kube.preflight.nodeaffinity import _required_affinity
from mlkube.kube.preflight.podspec import _aggregate, _Container, _g, _pod_field, _Spec
from mlkube.kube.preflight.resources import (
    CPU,
    EPHEMERAL,
    HUGEPAGES,
    MEMORY,
    Resources,
    _is_extended,
    _is_native,
    _order,
    _overcommit,
    _pod_level,
    _show,
)
from mlkube.kube.preflight.taints import NO_EXECUTE, NO_SCHEDULE, PREFER_NO_SCHEDULE


def _name_problem(name: str) -> str | None:
    if "/" not in name:
        if name in (CPU, MEMORY, EPHEMERAL):
            return None
        if name.startswith(HUGEPAGES) and _page_size(name) is not None:
            return None
        return "is not a standard resource for containers"
    if _is_native(name) or _is_extended(name):
        return None
    return "does not follow the extended resource name standard"


def _page_size(name: str) -> Decimal | None:
    try:
        size = parse_quantity(name[len(HUGEPAGES):])
    except (ValueError, TypeError, ArithmeticError):
        return None
    return size if size > 0 else None


def _value_problem(name: str, value: Decimal) -> str | None:
    if value < 0:
        return "must be greater than or equal to 0"
    if _is_extended(name) and value != value.to_integral_value():
        return "must be an integer (extended resources such as GPUs are whole)"
    size = _page_size(name) if name.startswith(HUGEPAGES) else None
    if size is not None and value % size != 0:
        return f"is not a positive integer multiple of {name[len(HUGEPAGES):]}"
    return None


def _pairing_problems(what: str, requests: Resources, limits: Resources) -> list[str]:
    """Requests at most limits; equal for resources that cannot be overcommitted."""
    found: list[str] = []
    for name, value in requests.items():
        limit = limits.get(name)
        if limit is None:
            if not _overcommit(name):
                found.append(f"{what}: {name} is requested without a limit; resources that "
                             "cannot be overcommitted need their limit set (equal to the request)")
        elif value != limit and not _overcommit(name):
            found.append(f"{what}: {name} request {_show(name, value)} must equal its limit "
                         f"{_show(name, limit)} (it cannot be overcommitted)")
        elif value > limit:
            found.append(f"{what}: {name} request {_show(name, value)} must be less than or "
                         f"equal to its limit {_show(name, limit)}")
    return found


def _container_problems(c: _Container) -> list[str]:
    found: list[str] = []
    for kind, values in (("request", c.requests), ("limit", c.limits)):
        for name, value in values.items():
            problem = _name_problem(name) or _value_problem(name, value)
            if problem:
                found.append(f"{c.what}: {name} {kind} {_show(name, value)} {problem}")
    found += _pairing_problems(c.what, c.requests, c.limits)
    names = [*c.requests, *c.limits]
    if any(n.startswith(HUGEPAGES) for n in names) and not any(n in (CPU, MEMORY) for n in names):
        found.append(f"{c.what}: hugepages require a cpu or memory request or limit")
    return found


def _pod_level_problems(spec: _Spec) -> list[str]:
    found = [f"spec.resources: {n} is not supported at pod level (only cpu, memory, hugepages-*)"
             for n in _order([*spec.pod_requests, *spec.pod_limits]) if not _pod_level(n)]
    found += _pairing_problems("spec.resources", spec.pod_requests, spec.pod_limits)
    for name, value in _aggregate(spec, "requests").items():
        pod = spec.pod_requests.get(name)
        if pod and value > pod:
            found.append(f"spec.resources: {name} request {_show(name, pod)} must be at least "
                         f"the containers' aggregate requests of {_show(name, value)}")
    for c in spec.containers:
        for name, value in c.limits.items():
            pod = spec.pod_limits.get(name)
            if pod is not None and value > pod:
                found.append(f"{c.what}: {name} limit {_show(name, value)} must be at most the "
                             f"pod-level limit {_show(name, pod)}")
    return found


def _toleration_problems(pod: V1Pod) -> list[str]:
    found: list[str] = []
    for t in _pod_field(pod, "tolerations") or []:
        key, op, effect = _g(t, "key"), _g(t, "operator") or "Equal", _g(t, "effect")
        if not key and op != "Exists":
            found.append("a toleration without a key must have operator Exists")
        if _g(t, "toleration_seconds") is not None and effect != NO_EXECUTE:
            found.append(f"toleration {key}: tolerationSeconds needs effect NoExecute")
        if op == "Exists" and _g(t, "value"):
            found.append(f"toleration {key}: value must be empty with operator Exists")
        if op not in ("Equal", "Exists", "Lt", "Gt"):
            found.append(f"toleration {key}: operator {op!r} is not supported")
        if effect and effect not in (NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE):
            found.append(f"toleration {key}: effect {effect!r} is not supported")
    return found


def _requirement_problem(r: Any, is_field: bool) -> str | None:
    key, op, values = _g(r, "key"), _g(r, "operator"), _g(r, "values") or []
    if is_field:
        if key != "metadata.name" or op not in ("In", "NotIn") or len(values) != 1:
            return "matchFields supports only metadata.name with In or NotIn and one value"
        return None
    if op in ("In", "NotIn"):
        return None if values else f"{key} {op} needs values"
    if op in ("Exists", "DoesNotExist"):
        return f"{key} {op} takes no values" if values else None
    if op in ("Gt", "Lt"):
        return None if len(values) == 1 else f"{key} {op} needs one value"
    return f"{key}: {op!r} is not a node selector operator"


def _affinity_problems(pod: V1Pod) -> list[str]:
    required = _required_affinity(pod)
    if required is None:
        return []
    terms = _g(required, "node_selector_terms") or []
    if not terms:
        return ["required node affinity must have at least one nodeSelectorTerm"]
    found: list[str] = []
    for term in terms:
        for r, is_field in [*((e, False) for e in _g(term, "match_expressions") or []),
                            *((f, True) for f in _g(term, "match_fields") or [])]:
            problem = _requirement_problem(r, is_field)
            if problem:
                found.append(f"required node affinity: {problem}")
    return found


def _invalid(pod: V1Pod, spec: _Spec) -> list[str]:
    found: list[str] = []
    for c in spec.every:
        found += _container_problems(c)
    found += _pod_level_problems(spec)
    return found + _toleration_problems(pod) + _affinity_problems(pod)
