"""ResourceQuota admission: for every quota whose scopes match the pod, the "must specify" rule,
then ``status.used`` plus the pod's usage against the hard limit.

Mirrors ``plugin/pkg/admission/resourcequota`` (the admission controller, CheckRequest) and the
pod evaluator in ``pkg/quota/v1/evaluator/core/pods.go`` (MatchingResources,
podComputeUsageHelper, PodUsageFunc, enforcePodContainerConstraints, podMatchesScopeFunc).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from kubernetes.client import V1Pod, V1ResourceQuota

from mlkube.kube.preflight.podspec import _g, _pod_field, _Spec
from mlkube.kube.preflight.resources import (
    _DRA_IMPLICIT_PREFIX,
    CPU,
    EPHEMERAL,
    HUGEPAGES,
    MEMORY,
    PODS,
    Resources,
    _is_extended,
    _is_native,
    _order,
    _parse,
    _show,
)

_QUOTA_POD_RESOURCES = {
    "count/pods", CPU, MEMORY, EPHEMERAL, "requests.cpu", "requests.memory",
    "requests.ephemeral-storage", "limits.cpu", "limits.memory", "limits.ephemeral-storage", PODS,
}
_MUST_SPECIFY = {CPU, MEMORY, "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"}


def _tracked(hard: Iterable[str]) -> list[str]:
    """podEvaluator.MatchingResources: the quota's resources that pods are charged for."""
    return [n for n in hard if n in _QUOTA_POD_RESOURCES or n.startswith(HUGEPAGES)
            or n.startswith(f"requests.{HUGEPAGES}")
            or (n.startswith("requests.") and (not _is_native(n) or n.startswith(
                f"requests.{_DRA_IMPLICIT_PREFIX}")))]


def _usage(requests: Resources, limits: Resources) -> Resources:
    """podComputeUsageHelper, with the object counts PodUsageFunc adds."""
    usage: Resources = {PODS: Decimal(1), "count/pods": Decimal(1)}
    for name in (CPU, MEMORY, EPHEMERAL):
        if name in requests:
            usage[name] = usage[f"requests.{name}"] = requests[name]
        if name in limits:
            usage[f"limits.{name}"] = limits[name]
    for name, value in requests.items():
        if name.startswith(HUGEPAGES):
            usage[name] = usage[f"requests.{name}"] = value
        if _is_extended(name) or name.startswith(_DRA_IMPLICIT_PREFIX):
            usage[f"requests.{name}"] = value
    return usage


def _hard_used(quota: V1ResourceQuota) -> tuple[Resources, Resources]:
    where = f"quota {quota.metadata.name if quota.metadata else '?'}"
    status = quota.status
    hard = (status and status.hard) or (quota.spec and quota.spec.hard) or {}
    return _parse(hard, where), _parse(status and status.used, where)


def _best_effort(spec: _Spec) -> bool:
    """ComputePodQOS: no positive cpu or memory request or limit (pod-level when set)."""
    lists = ([spec.pod_requests, spec.pod_limits] if spec.pod_level
             else [r for c in spec.every for r in (c.requests, c.limits)])
    return not any(v > 0 for r in lists for n, v in r.items() if n in (CPU, MEMORY))


def _cross_namespace(pod: V1Pod) -> bool:
    affinity = _pod_field(pod, "affinity")
    terms: list[Any] = []
    for part in (_g(affinity, "pod_affinity"), _g(affinity, "pod_anti_affinity")):
        terms += _g(part, "required_during_scheduling_ignored_during_execution") or []
        terms += [_g(w, "pod_affinity_term") for w in
                  _g(part, "preferred_during_scheduling_ignored_during_execution") or []]
    return any(_g(t, "namespaces") or _g(t, "namespace_selector") is not None for t in terms)


def _priority_class_matches(op: str, values: Sequence[str], name: str) -> bool:
    if op == "Exists":
        return bool(name)
    if op == "DoesNotExist":
        return not name
    if op == "In":
        return bool(name) and name in values
    if op == "NotIn":
        return not name or name not in values
    return False


def _scope_matches(scope: str, op: str, values: Sequence[str], pod: V1Pod, spec: _Spec) -> bool:
    deadline = _pod_field(pod, "active_deadline_seconds")
    checks: dict[str, Callable[[], bool]] = {
        "Terminating": lambda: deadline is not None and deadline >= 0,
        "NotTerminating": lambda: not (deadline is not None and deadline >= 0),
        "BestEffort": lambda: _best_effort(spec),
        "NotBestEffort": lambda: not _best_effort(spec),
        "PriorityClass": lambda: _priority_class_matches(
            op, values, _pod_field(pod, "priority_class_name") or ""),
        "CrossNamespacePodAffinity": lambda: _cross_namespace(pod),
    }
    check = checks.get(scope)
    return bool(check and check())


def _quota_matches(quota: V1ResourceQuota, pod: V1Pod, spec: _Spec) -> bool:
    selectors: list[tuple[str, str, list[str]]] = [
        (s, "Exists", []) for s in (quota.spec and quota.spec.scopes) or []]
    scope_selector = quota.spec and quota.spec.scope_selector
    selectors += [(e.scope_name, e.operator, e.values or [])
                  for e in (scope_selector and scope_selector.match_expressions) or []]
    return all(_scope_matches(s, op, values, pod, spec) for s, op, values in selectors)


_SET_HINTS = {
    "limits.cpu": ("a cpu_limit", "cpu_limit=", "--cpu-limit"),
    "limits.memory": ("a memory_limit", "memory_limit=", "--memory-limit"),
    "requests.cpu": ("a cpu request", "cpu=", "--cpu"),
    CPU: ("a cpu request", "cpu=", "--cpu"),
    "requests.memory": ("a memory request", "memory=", "--memory"),
    MEMORY: ("a memory request", "memory=", "--memory"),
}


def _must_specify(quota: str, missing: Mapping[str, list[str]], spec: _Spec) -> str:
    names = sorted(missing)
    hints = list(dict.fromkeys(_SET_HINTS[n] for n in names))
    where = ""
    if len(spec.every) > 1:
        where = " (" + "; ".join(f"{n}: {', '.join(missing[n])}" for n in names) + ")"
    return (f"quota {quota} tracks {' and '.join(names)}, which the pod leaves unset{where}: "
            f"give the step {' and '.join(h[0] for h in hints)} (operators: "
            f"{', '.join(h[1] for h in hints)}; Argo: {', '.join(h[2] for h in hints)})")


def _missing(tracked: Iterable[str], spec: _Spec) -> dict[str, list[str]]:
    """enforcePodContainerConstraints: per tracked cpu/memory resource, containers without it."""
    required = set(tracked) & _MUST_SPECIFY
    missing: dict[str, list[str]] = {}
    for c in [*spec.containers, *spec.inits]:
        have = set(_usage(c.requests, c.limits))
        for name in sorted(required - have):
            missing.setdefault(name, []).append(c.name)
    return missing


def _exceeded_hint(key: str) -> str:
    resource = key.split(".", 1)[1] if key.startswith(("requests.", "limits.")) else key
    if key in (PODS, "count/pods"):
        return "wait for other pods in the namespace to finish"
    if resource in (CPU, MEMORY):
        return (f"set {resource}_limit lower" if key.startswith("limits.")
                else f"set {resource} (or {resource}_limit) lower")
    if resource == "nvidia.com/gpu":
        return "ask for fewer GPUs (gpus)"
    return f"ask for less {resource}"


def _quota_problem(pod: V1Pod, spec: _Spec, quotas: Sequence[V1ResourceQuota],
                   requests: Resources, limits: Resources) -> str | None:
    """ResourceQuota admission (CheckRequest): constraints for every matching quota first,
    then usage quota by quota; the first quota that fails is the answer."""
    matching: list[tuple[str, Resources, Resources]] = []
    for quota in quotas:
        name = (quota.metadata and quota.metadata.name) or "?"
        hard, used = _hard_used(quota)
        tracked = _tracked(hard)
        if not tracked or not _quota_matches(quota, pod, spec):
            continue
        missing = {} if spec.pod_level else _missing(tracked, spec)
        if missing:
            return _must_specify(name, missing, spec)
        matching.append((name, {n: hard[n] for n in tracked}, used))
    usage = {n: v for n, v in _usage(requests, limits).items() if v != 0}
    for name, hard, used in matching:
        over = [k for k in _order(set(hard) & set(usage))
                if used.get(k, Decimal(0)) + usage[k] > hard[k]]
        if over:
            detail = ", ".join(f"{k} used {_show(k, used.get(k, Decimal(0)))}, limit "
                               f"{_show(k, hard[k])}, asks {_show(k, usage[k])}" for k in over)
            hints = ", ".join(dict.fromkeys(_exceeded_hint(k) for k in over))
            return f"exceeded quota {name}: {detail}; {hints} or raise the quota"
    return None
