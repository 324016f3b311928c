"""LimitRanger: its mutation (Container defaults fill what is unset) and its validation
(``min``, ``max`` and ``maxLimitRequestRatio`` per Container and Pod).

Mirrors ``plugin/pkg/admission/limitranger/admission.go`` and, for a LimitRange item's own
defaults, SetDefaults_LimitRangeItem in ``pkg/apis/core/v1/defaults.go``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from kubernetes.client import V1LimitRange

from mlkube.kube.preflight.podspec import _limits_of, _requests_of, _Spec
from mlkube.kube.preflight.resources import Resources, _parse, _show


def _limit_items(limit_ranges: Iterable[V1LimitRange]) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for lr in limit_ranges:
        name = (lr.metadata and lr.metadata.name) or "?"
        items.extend((name, item) for item in (lr.spec and lr.spec.limits) or [])
    return items


def _item_defaults(item: Any, where: str) -> tuple[Resources, Resources]:
    """SetDefaults_LimitRangeItem for a Container item: its default limits and requests."""
    default = _parse(item.default, where)
    default_request = _parse(item.default_request, where)
    for name, value in _parse(item.max, where).items():
        default.setdefault(name, value)
    for name, value in default.items():
        default_request.setdefault(name, value)
    for name, value in _parse(item.min, where).items():
        default_request.setdefault(name, value)
    return default, default_request


def _apply_limit_ranges(spec: _Spec, limit_ranges: Sequence[V1LimitRange]) -> None:
    """LimitRanger's mutation: per LimitRange, its Container defaults fill what is unset."""
    for lr in limit_ranges:
        limits: Resources = {}
        requests: Resources = {}
        for name, item in _limit_items([lr]):
            if item.type == "Container":
                default, default_request = _item_defaults(item, f"LimitRange {name}")
                limits.update(default)
                requests.update(default_request)
        for c in spec.every:
            for name, value in limits.items():
                c.limits.setdefault(name, value)
            for name, value in requests.items():
                c.requests.setdefault(name, value)


def _min_violation(kind: str, name: str, floor: Decimal, req: Resources,
                   lim: Resources) -> str | None:
    if name not in req:
        return f"minimum {name} usage per {kind} is {_show(name, floor)}. No request is specified"
    if req[name] < floor:
        return (f"minimum {name} usage per {kind} is {_show(name, floor)}, but request is "
                f"{_show(name, req[name])}")
    if name in lim and lim[name] < floor:
        return (f"minimum {name} usage per {kind} is {_show(name, floor)}, but limit is "
                f"{_show(name, lim[name])}")
    return None


def _max_violation(kind: str, name: str, ceiling: Decimal, req: Resources,
                   lim: Resources) -> str | None:
    if name not in lim:
        return f"maximum {name} usage per {kind} is {_show(name, ceiling)}. No limit is specified"
    if lim[name] > ceiling:
        return (f"maximum {name} usage per {kind} is {_show(name, ceiling)}, but limit is "
                f"{_show(name, lim[name])}")
    if name in req and req[name] > ceiling:
        return (f"maximum {name} usage per {kind} is {_show(name, ceiling)}, but request is "
                f"{_show(name, req[name])}")
    return None


def _ratio_violation(kind: str, name: str, ratio: Decimal, req: Resources,
                     lim: Resources) -> str | None:
    head = f"{name} max limit to request ratio per {kind} is {_show(name, ratio)}"
    if not req.get(name):
        return f"{head}, but no request is specified or request is 0"
    if not lim.get(name):
        return f"{head}, but no limit is specified or limit is 0"
    if lim[name] / req[name] > ratio:
        return f"{head}, but provided ratio is {lim[name] / req[name]:f}"
    return None


def _item_violations(item: Any, kind: str, req: Resources, lim: Resources, where: str) -> list[str]:
    found: list[str] = []
    for rule, bounds in ((_min_violation, item.min), (_max_violation, item.max),
                         (_ratio_violation, item.max_limit_request_ratio)):
        for name, bound in _parse(bounds, where).items():
            problem = rule(kind, name, bound, req, lim)
            if problem:
                found.append(problem)
    return found


def _limit_range_violations(spec: _Spec, limit_ranges: Sequence[V1LimitRange]) -> list[str]:
    """PodValidateLimitFunc: Container items per container, Pod items on the pod's totals."""
    found: list[str] = []
    for name, item in _limit_items(limit_ranges):
        where = f"LimitRange {name}"
        if item.type == "Container":
            for c in spec.every:
                found += [f"{where}: {c.what}: {p}" for p in
                          _item_violations(item, "Container", c.requests, c.limits, where)]
        elif item.type == "Pod":
            found += [f"{where}: {p}" for p in _item_violations(
                item, "Pod", _requests_of(spec, overhead=False), _limits_of(spec, overhead=False),
                where)]
    return found
