"""Quantities and resource names: parsing, showing, the :data:`Resources` type.

Mirrors ``staging/src/k8s.io/apimachinery/pkg/api/resource/quantity.go`` (quantities, rounded up to
milli units as the ResourceList defaulting in ``pkg/apis/core/v1/defaults.go`` does) and the
resource-name helpers of ``pkg/apis/core/helper/helpers.go`` (IsNativeResource,
IsExtendedResourceName, IsHugePageResourceName, IsOvercommitAllowed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import ROUND_CEILING, Decimal, localcontext
from typing import Any

from kubernetes.utils import parse_quantity

Resources = dict[str, Decimal]
Requests = Resources

CPU, MEMORY, EPHEMERAL, PODS = "cpu", "memory", "ephemeral-storage", "pods"
HUGEPAGES = "hugepages-"
_NATIVE_PREFIX = "kubernetes.io/"
_DRA_IMPLICIT_PREFIX = "deviceclass.resource.kubernetes.io/"
_QUALIFIED = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_INT64 = re.compile(r"^[+-]?[0-9]+$")


class _Rejected(Exception):
    """The API server refuses the pod (validation or admission); the text says why."""


def _ceil_milli(value: Decimal) -> Decimal:
    """Round up to milli units, as the API server's ResourceList defaulting does."""
    with localcontext() as ctx:
        ctx.prec = 100
        return (value * 1000).to_integral_value(rounding=ROUND_CEILING) / 1000


def _parse(values: Mapping[str, Any] | None, where: str) -> Resources:
    out: Resources = {}
    for name, value in (values or {}).items():
        try:
            quantity = parse_quantity(value)
        except (ValueError, TypeError, ArithmeticError):
            raise _Rejected(f"{where}: {name}={value!r} is not a quantity") from None
        out[str(name)] = _ceil_milli(quantity)
    return out


def _units(name: str, value: Decimal) -> int:
    """The scheduler's integer units: millicores for cpu, whole units (rounded up) otherwise."""
    with localcontext() as ctx:
        ctx.prec = 100
        scaled = value * 1000 if name == CPU else value
        return int(scaled.to_integral_value(rounding=ROUND_CEILING))


def _int64(text: str | None) -> int | None:
    if text is None or not _INT64.match(text):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def _is_native(name: str) -> bool:
    return "/" not in name or _NATIVE_PREFIX in name


def _is_extended(name: str) -> bool:
    return (not _is_native(name) and not name.startswith("requests.")
            and bool(_QUALIFIED.match(f"requests.{name}")))


def _is_scalar(name: str) -> bool:
    """Resources the scheduler counts beyond cpu, memory and ephemeral-storage."""
    return (_is_extended(name) or name.startswith(HUGEPAGES)
            or (_NATIVE_PREFIX in name and "/" in name) or name.startswith("attachable-volumes-"))


def _overcommit(name: str) -> bool:
    return _is_native(name) and not name.startswith(HUGEPAGES)


def _pod_level(name: str) -> bool:
    return name in (CPU, MEMORY) or name.startswith(HUGEPAGES)


_BINARY = [("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)]
_DECIMAL = [("E", 10**18), ("P", 10**15), ("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)]


def _show(name: str, value: Decimal) -> str:
    """A quantity as a person writes it: ``4``, ``500m``, ``16Gi``."""
    if value != value.to_integral_value():
        milli = value * 1000
        return f"{int(milli)}m" if milli == milli.to_integral_value() else f"{value.normalize():f}"
    whole = int(value)
    resource = name.split(".", 1)[1] if name.startswith(("requests.", "limits.")) else name
    if whole and (resource in (MEMORY, EPHEMERAL) or resource.startswith(HUGEPAGES)):
        for suffix, size in _BINARY + _DECIMAL:
            if whole % size == 0:
                return f"{whole // size}{suffix}"
    return str(whole)


def _order(names: Iterable[str]) -> list[str]:
    first = {CPU: 0, MEMORY: 1, EPHEMERAL: 2}
    return sorted(set(names), key=lambda n: (first.get(n, 3), n))


def _asks(requests: Mapping[str, Decimal]) -> str:
    shown = [f"{n}={_show(n, requests[n])}" for n in _order(requests) if requests[n]]
    return ", ".join(shown) if shown else "no resources"


def _add(total: Resources, more: Mapping[str, Decimal]) -> None:
    for name, value in more.items():
        total[name] = total.get(name, Decimal(0)) + value


def _max(total: Resources, other: Mapping[str, Decimal]) -> None:
    for name, value in other.items():
        if name not in total or value > total[name]:
            total[name] = value
