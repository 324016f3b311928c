"""Preflight: can this pod ever be admitted and scheduled, decided the way Kubernetes decides it.

Before a pod is submitted, :func:`verdict` runs what the API server and kube-scheduler (v1.36)
would run on it, as pure functions of typed ``kubernetes.client`` objects the caller has listed:

1. API defaulting (``pkg/apis/core/v1/defaults.go``): quantities rounded up to milli units,
   container requests defaulted from limits, pod-level requests and limits defaulted.
2. LimitRanger's mutation (``plugin/pkg/admission/limitranger/admission.go``): each container's
   unset limits take the LimitRange's ``default`` and its unset requests ``defaultRequest`` (with
   the LimitRange item's own defaulting: ``default`` from ``max``, ``defaultRequest`` from
   ``default``, then from ``min``). This happens before every other check.
3. Validation (``pkg/apis/core/validation/validation.go``): resource names, no negative values,
   requests at most limits, extended resources whole and with requests equal to limits,
   hugepages with cpu or memory, pod-level resources, tolerations and required node affinity.
4. LimitRanger's validation: ``min``, ``max`` and ``maxLimitRequestRatio`` per Container and Pod.
5. ResourceQuota admission (``plugin/pkg/admission/resourcequota``, the pod evaluator in
   ``pkg/quota/v1/evaluator/core/pods.go``): for every quota whose scopes match the pod
   (Terminating, NotTerminating, BestEffort, NotBestEffort, PriorityClass,
   CrossNamespacePodAffinity), the "must specify" rule (a quota that tracks cpu or memory
   requests or limits rejects a pod with a container that leaves them unset, unless pod-level
   resources are set), then ``status.used`` plus the pod's usage against the hard limit for
   ``requests.*``, ``limits.*``, bare names, hugepages, ``requests.<extended>``, ``pods`` and
   ``count/pods``.
6. Volumes (the scheduler's VolumeBinding PreFilter): each PersistentVolumeClaim the pod mounts
   exists, is not Lost and is not being deleted; and (its Filter) a claim already bound to a
   PersistentVolume with required node affinity (a local or zonal disk) admits only the nodes
   that affinity matches.
7. Nodes, filter by filter in the scheduler's order, the first failing filter naming why a node
   is rejected: NodeUnschedulable (cordon, unless ``node.kubernetes.io/unschedulable`` is
   tolerated), TaintToleration (NoSchedule and NoExecute taints; PreferNoSchedule never blocks;
   the not-ready/unreachable NoExecute tolerations that DefaultTolerationSeconds adds to every
   pod are added here too), NodeAffinity (nodeSelector and required node affinity: terms ORed,
   expressions ANDed, In/NotIn/Exists/DoesNotExist/Gt/Lt, matchFields on metadata.name) and
   NodeResourcesFit (allocatable, never capacity, for every resource the pod requests, extended
   ones included; the node's pod-count limit). A pod with ``spec.nodeName`` preset skips the
   scheduler: its node must exist and the kubelet's admission must pass (resources, node
   affinity, untolerated NoExecute taints; extended resources the node does not list at all are
   dropped, as the kubelet does).

"Can never" means "not even on an empty node": the scheduler compares a node's allocatable
minus the requests of the pods already there, but nodes are listed without their pods, so
preflight compares with allocatable alone. Likewise the pod-count limit (allocatable ``pods``)
is compared with the pods already on a node only when ``pods_per_node`` says how many there
are; without it, with none (a node that allows no pods at all still fails; one that reports no
allocatable ``pods`` is not checked for it). Quotas are taken as they are now (``status.used``),
since admission happens once, now.

Not modelled: host ports, pod (anti-)affinity and topology spread (they depend on other pods),
the topology of claims not bound yet (WaitForFirstConsumer) and attach limits, DRA, scheduling gates, admission webhooks and policies,
RuntimeClass admission (``spec.overhead`` is taken as given), the ResourceQuota admission
configuration's limitedResources, whether a named PriorityClass exists (Priority admission),
and quotas whose status the controller has not written yet (they are taken at ``spec.hard`` with
nothing used, as they will be once it has). Tolerations with the Lt/Gt operators are compared as
``toleration.go`` does with the TaintTolerationComparisonOperators feature gate on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal, localcontext
from typing import Any

from kubernetes.client import (
    V1LimitRange,
    V1Node,
    V1PersistentVolume,
    V1PersistentVolumeClaim,
    V1Pod,
    V1ResourceQuota,
    V1Toleration,
)
from kubernetes.utils import parse_quantity

from mlkube.errors import MlkubeError

Resources = dict[str, Decimal]
Requests = Resources

CPU, MEMORY, EPHEMERAL, PODS = "cpu", "memory", "ephemeral-storage", "pods"
HUGEPAGES = "hugepages-"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE = "NoSchedule", "PreferNoSchedule", "NoExecute"
_NATIVE_PREFIX = "kubernetes.io/"
_DRA_IMPLICIT_PREFIX = "deviceclass.resource.kubernetes.io/"
_QUALIFIED = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_INT64 = re.compile(r"^[+-]?[0-9]+$")


@dataclass(frozen=True)
class Verdict:
    """What preflight found for a pod that may run.

    Attributes:
        nodes: the nodes it fits (empty node sense), in the order given; for a pod with
            ``spec.nodeName``, that node. Empty when the node check was skipped.
        requests: the effective requests the scheduler uses (every resource name).
        limits: the effective limits ResourceQuota counts.
        skipped: the checks that were not made (``"nodes"``, ``"claims"``, ``"volumes"``).
    """

    nodes: tuple[str, ...]
    requests: Resources
    limits: Resources
    skipped: tuple[str, ...] = ()

    @property
    def asks(self) -> str:
        """The requests as the "never" lines write them: ``cpu=4, memory=16Gi``."""
        return _asks(self.requests)


def _g(obj: Any, name: str) -> Any:
    """An attribute of a kubernetes.client model, or the key of a plain dict standing in for one
    (KubernetesPodOperator leaves some pod parts as dicts, in snake or camel case)."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        if name in obj:
            return obj[name]
        head, *rest = name.split("_")
        return obj.get(head + "".join(w.title() for w in rest))
    return getattr(obj, name, None)


class _Rejected(Exception):
    """The API server refuses the pod (validation or admission); the text says why."""


# -- quantities and resource names ----------------------------------------------------------


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


# -- the pod as the API server sees it --------------------------------------------------------


@dataclass
class _Container:
    name: str
    requests: Resources
    limits: Resources
    init: bool = False
    sidecar: bool = False

    @property
    def what(self) -> str:
        kind = "sidecar" if self.sidecar else "init container" if self.init else "container"
        return f"{kind} {self.name}"


@dataclass
class _Spec:
    containers: list[_Container]
    inits: list[_Container]
    pod_requests: Resources = field(default_factory=dict)
    pod_limits: Resources = field(default_factory=dict)
    overhead: Resources = field(default_factory=dict)

    @property
    def every(self) -> list[_Container]:
        return [*self.inits, *self.containers]

    @property
    def pod_level(self) -> bool:
        """IsPodLevelResourcesSet: pod-level requests or limits for a supported resource."""
        return any(_pod_level(n) for n in [*self.pod_requests, *self.pod_limits])


def _read_container(container: Any, init: bool) -> _Container:
    res = _g(container, "resources")
    name = _g(container, "name") or "?"
    where = f"{'init container' if init else 'container'} {name}"
    return _Container(name=name, requests=_parse(_g(res, "requests"), where),
                      limits=_parse(_g(res, "limits"), where), init=init,
                      sidecar=init and _g(container, "restart_policy") == "Always")


def _read(pod: V1Pod) -> _Spec:
    spec = _g(pod, "spec")
    res = _g(spec, "resources")
    return _Spec(
        containers=[_read_container(c, False) for c in _g(spec, "containers") or []],
        inits=[_read_container(c, True) for c in _g(spec, "init_containers") or []],
        pod_requests=_parse(_g(res, "requests"), "spec.resources"),
        pod_limits=_parse(_g(res, "limits"), "spec.resources"),
        overhead=_parse(_g(spec, "overhead"), "spec.overhead"),
    )


def _aggregate(spec: _Spec, which: str) -> Resources:
    """AggregateContainerRequests/Limits: app containers and sidecars summed, each regular init
    container with the sidecars started before it, the larger of the two."""
    total: Resources = {}
    for c in spec.containers:
        _add(total, getattr(c, which))
    sidecars: Resources = {}
    peak: Resources = {}
    for c in spec.inits:
        own = getattr(c, which)
        if c.sidecar:
            _add(total, own)
            _add(sidecars, own)
            phase = dict(sidecars)
        else:
            phase = dict(own)
            _add(phase, sidecars)
        _max(peak, phase)
    _max(total, peak)
    return total


def _requests_of(spec: _Spec, overhead: bool = True) -> Resources:
    """PodRequests (k8s.io/component-helpers/resource/helpers.go)."""
    requests = _aggregate(spec, "requests")
    if any(_pod_level(n) for n in spec.pod_requests):
        requests.update({n: v for n, v in spec.pod_requests.items() if _pod_level(n)})
    if overhead:
        _add(requests, spec.overhead)
    return requests


def _limits_of(spec: _Spec, overhead: bool = True) -> Resources:
    """PodLimits: overhead is added only to limits that are set and not zero."""
    limits = _aggregate(spec, "limits")
    if spec.pod_level:
        limits.update({n: v for n, v in spec.pod_limits.items() if _pod_level(n)})
    if overhead:
        for name, value in spec.overhead.items():
            if limits.get(name):
                limits[name] += value
    return limits


def _api_defaults(spec: _Spec) -> None:
    """SetDefaults_Pod: requests from limits, then the pod-level defaults."""
    for c in spec.every:
        for name, value in c.limits.items():
            c.requests.setdefault(name, value)
    if spec.pod_requests or spec.pod_limits:
        _default_pod_level(spec)


def _default_pod_level(spec: _Spec) -> None:
    """defaultHugePagePodLimits, defaultPodRequests and defaultPodLimits, in that order."""
    limits = _aggregate(spec, "limits")
    for name, value in limits.items():
        if name.startswith(HUGEPAGES) and name not in spec.pod_requests:
            spec.pod_limits.setdefault(name, value)
    if spec.pod_limits:
        for name, value in _aggregate(spec, "requests").items():
            if _pod_level(name) and _overcommit(name):
                spec.pod_requests.setdefault(name, value)
        for name, value in spec.pod_limits.items():
            if _pod_level(name):
                spec.pod_requests.setdefault(name, value)
    if any(map(_pod_level, spec.pod_limits)) or not any(map(_pod_level, spec.pod_requests)):
        return
    for name, value in limits.items():
        if _pod_level(name) and _overcommit(name) and all(name in c.limits for c in spec.every):
            spec.pod_limits[name] = value


# -- LimitRange ---------------------------------------------------------------------------------


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


# -- validation -------------------------------------------------------------------------------


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


# -- ResourceQuota ------------------------------------------------------------------------------

_QUOTA_POD_RESOURCES = {
    "count/pods", CPU, MEMORY, EPHEMERAL, "requests.cpu", "requests.memory",
    "requests.ephemeral-storage", "limits.cpu", "limits.memory", "limits.ephemeral-storage", PODS,
}
# Quotas on these make every container set them ("must specify"; pods.go validationSet).
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


# -- volumes ----------------------------------------------------------------------------------


def _mounted_claims(pod: V1Pod) -> list[str]:
    return [name for volume in _pod_field(pod, "volumes") or []
            if (name := _g(_g(volume, "persistent_volume_claim"), "claim_name"))]


def _volume_affinities(pod: V1Pod, claims: Iterable[V1PersistentVolumeClaim],
                       volumes: Iterable[V1PersistentVolume]) -> list[tuple[str, Any]]:
    """VolumeBinding Filter: the required node affinity of each PersistentVolume a mounted claim
    is bound to, with what to call it (``persistentvolume pv-1 of claim data``)."""
    mounted = set(_mounted_claims(pod))
    bound = {c.spec.volume_name: c.metadata.name for c in claims
             if c.metadata and c.metadata.name in mounted and c.spec and c.spec.volume_name}
    found = []
    for volume in volumes:
        name = volume.metadata.name if volume.metadata else None
        required = _g(_g(volume.spec, "node_affinity"), "required")
        if name in bound and required is not None:
            found.append((f"persistentvolume {name} of claim {bound[name]}", required))
    return found


def _claims_problem(pod: V1Pod, claims: Iterable[V1PersistentVolumeClaim]) -> str | None:
    """VolumeBinding PreFilter (podHasPVCs): each mounted claim exists, is not Lost or going."""
    namespace = _g(_g(pod, "metadata"), "namespace")
    known = {}
    for claim in claims:
        meta = claim.metadata
        if meta and (not namespace or not meta.namespace or meta.namespace == namespace):
            known[meta.name] = claim
    for volume in _pod_field(pod, "volumes") or []:
        wanted = _g(_g(volume, "persistent_volume_claim"), "claim_name")
        if wanted is None:  # generic ephemeral volumes are created for the pod: may run
            continue
        claim = known.get(wanted)
        if claim is None:
            return f'persistentvolumeclaim "{wanted}" not found'
        if claim.status and claim.status.phase == "Lost":
            bound = claim.spec.volume_name if claim.spec else ""
            return (f'persistentvolumeclaim "{wanted}" bound to non-existent '
                    f'persistentvolume "{bound}"')
        if claim.metadata.deletion_timestamp is not None:
            return f'persistentvolumeclaim "{wanted}" is being deleted'
    return None


# -- nodes ------------------------------------------------------------------------------------


def _tolerations(pod: V1Pod) -> list[Any]:
    """The pod's tolerations plus what DefaultTolerationSeconds admission adds to each pod."""
    tolerations = list(_pod_field(pod, "tolerations") or [])
    for key in (NOT_READY_TAINT, UNREACHABLE_TAINT):
        if not any(_g(t, "key") in (key, None, "") and _g(t, "effect") in (NO_EXECUTE, None, "")
                   for t in tolerations):
            tolerations.append(V1Toleration(key=key, operator="Exists", effect=NO_EXECUTE,
                                            toleration_seconds=300))
    return tolerations


def _int64(text: str | None) -> int | None:
    if text is None or not _INT64.match(text):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def _tolerates(t: Any, key: str, value: str, effect: str) -> bool:
    """Toleration.ToleratesTaint (k8s.io/api/core/v1/toleration.go)."""
    mine_effect, mine_key = _g(t, "effect"), _g(t, "key")
    if (mine_effect and mine_effect != effect) or (mine_key and mine_key != key):
        return False
    op = _g(t, "operator") or "Equal"
    if op == "Equal":
        return (_g(t, "value") or "") == value
    if op == "Exists":
        return True
    mine, theirs = _int64(_g(t, "value")), _int64(value)
    if op not in ("Lt", "Gt") or mine is None or theirs is None:
        return False
    return theirs < mine if op == "Lt" else theirs > mine


def _untolerated(node: V1Node, tolerations: Sequence[Any], effects: Sequence[str]) -> str | None:
    for taint in (node.spec and node.spec.taints) or []:
        if taint.effect in effects and not any(
                _tolerates(t, taint.key, taint.value or "", taint.effect) for t in tolerations):
            shown = f"{taint.key}={taint.value}" if taint.value else taint.key
            return f"taint {shown}:{taint.effect} not tolerated"
    return None


def _required_affinity(pod: V1Pod) -> Any:
    node_affinity = _g(_pod_field(pod, "affinity"), "node_affinity")
    return _g(node_affinity, "required_during_scheduling_ignored_during_execution")


def _expression_matches(r: Any, labels: Mapping[str, str]) -> bool:
    key, op, values = _g(r, "key"), _g(r, "operator"), _g(r, "values") or []
    present = key in labels
    value = labels.get(key)
    if op == "In":
        return present and value in values
    if op == "NotIn":
        return not present or value not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and len(values) == 1:
        have, bound = _int64(value), _int64(values[0])
        if have is not None and bound is not None:
            return have > bound if op == "Gt" else have < bound
    return False


def _term_matches(term: Any, node: V1Node) -> bool:
    expressions = _g(term, "match_expressions") or []
    fields = _g(term, "match_fields") or []
    if not expressions and not fields:
        return False  # an empty term matches no node
    labels = (node.metadata and node.metadata.labels) or {}
    name = {"metadata.name": node.metadata.name}
    return (all(_expression_matches(e, labels) for e in expressions)
            and all(_expression_matches(f, name) for f in fields))


def _selection(pod: V1Pod, node: V1Node) -> str | None:
    """NodeAffinity: nodeSelector, and the required terms (ORed; expressions ANDed)."""
    labels = (node.metadata and node.metadata.labels) or {}
    selector = _pod_field(pod, "node_selector") or {}
    wrong = {k: v for k, v in selector.items() if labels.get(k) != v}
    if wrong:
        return "labels do not match nodeSelector " + ", ".join(
            f"{k}={v}" for k, v in sorted(wrong.items()))
    required = _required_affinity(pod)
    if required is not None and not any(
            _term_matches(t, node) for t in _g(required, "node_selector_terms") or []):
        return "labels match no required nodeAffinity term"
    return None


def _allocatable(node: V1Node) -> Resources:
    """Allocatable (the API defaults it to capacity only when a node reports none)."""
    status = node.status
    values = status and (status.allocatable if status.allocatable is not None else status.capacity)
    try:
        return _parse(values, f"node {node.metadata.name}")
    except _Rejected as exc:
        raise MlkubeError(f"preflight: {exc}") from None


@dataclass
class _Placing:
    pod: V1Pod
    requests: Resources
    tolerations: list[Any]
    pods_per_node: Mapping[str, int] | None
    volume_affinities: list[tuple[str, Any]] = field(default_factory=list)


def _volume_conflict(p: _Placing, node: V1Node) -> str | None:
    for what, required in p.volume_affinities:
        if not any(_term_matches(t, node) for t in _g(required, "node_selector_terms") or []):
            return f"didn't match PersistentVolume's node affinity ({what})"
    return None


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


def _scheduler_reason(p: _Placing, node: V1Node) -> str | None:
    """The first filter (in kube-scheduler's order) that rejects ``node``."""
    if node.spec and node.spec.unschedulable and not any(
            _tolerates(t, UNSCHEDULABLE_TAINT, "", NO_SCHEDULE) for t in p.tolerations):
        return "cordoned (spec.unschedulable)"
    reason = (_untolerated(node, p.tolerations, (NO_SCHEDULE, NO_EXECUTE))
              or _selection(p.pod, node) or _volume_conflict(p, node))
    if reason:
        return reason
    return ", ".join(_fit(p, node, p.requests)) or None


def _kubelet_reasons(p: _Placing, spec: _Spec, node: V1Node) -> list[str]:
    """The kubelet's admission of a pod bound by spec.nodeName (lifecycle/predicate.go)."""
    known = set(_allocatable(node))
    kept = _Spec(containers=[], inits=[], pod_requests=spec.pod_requests,
                 pod_limits=spec.pod_limits, overhead=spec.overhead)
    for c in spec.every:
        wanted = {n: v for n, v in c.requests.items() if not _is_extended(n) or n in known}
        (kept.inits if c.init else kept.containers).append(
            _Container(c.name, wanted, c.limits, c.init, c.sidecar))
    found = _fit(p, node, _requests_of(kept))
    found += [r for r in (_selection(p.pod, node),
                          _untolerated(node, p.tolerations, (NO_EXECUTE,))) if r]
    return found


def _classes(reasons: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "; ".join(f"{n} node{'s' if n != 1 else ''}: {r}" for r, n in ranked)


def _place(p: _Placing, spec: _Spec, nodes: Sequence[V1Node], head: str) -> tuple[str, ...]:
    bound = _pod_field(p.pod, "node_name")
    if bound:
        node = next((n for n in nodes if n.metadata.name == bound), None)
        if node is None:
            raise MlkubeError(f"{head}: spec.nodeName is {bound}, which is not in the cluster")
        reasons = _kubelet_reasons(p, spec, node)
        if reasons:
            raise MlkubeError(f"{head}: spec.nodeName is {bound}, whose kubelet rejects it: "
                              + ", ".join(reasons))
        return (bound,)
    if not nodes:
        raise MlkubeError(f"{head}: 0/0 nodes are available: there are no nodes in the cluster")
    verdicts = [(n.metadata.name, _scheduler_reason(p, n)) for n in nodes]
    fitting = tuple(name for name, reason in verdicts if reason is None)
    if not fitting:
        raise MlkubeError(f"{head}: 0/{len(nodes)} nodes are available: "
                          + _classes([r for _, r in verdicts if r]))
    return fitting


# -- the entry point --------------------------------------------------------------------------


def _pod_field(pod: V1Pod, name: str) -> Any:
    return _g(_g(pod, "spec"), name)


def _ref(pod: V1Pod) -> str:
    meta = _g(pod, "metadata")
    name = _g(meta, "name") or _g(meta, "generate_name") or "pod"
    namespace = _g(meta, "namespace")
    return f"{namespace}/{name}" if namespace else name


def _prepared(pod: V1Pod, limit_ranges: Sequence[V1LimitRange]) -> _Spec:
    spec = _read(pod)
    _api_defaults(spec)
    _apply_limit_ranges(spec, limit_ranges)
    return spec


def effective_requests(pod: V1Pod, limit_ranges: Iterable[V1LimitRange] = ()) -> Resources:
    """What the scheduler asks nodes for: requests defaulted from limits and LimitRanges, app
    containers and sidecars summed, the largest init phase, pod-level requests, overhead.

    Raises:
        MlkubeError: when a quantity cannot be read.
    """
    try:
        return _requests_of(_prepared(pod, list(limit_ranges)))
    except _Rejected as exc:
        raise MlkubeError(f"pod {_ref(pod)}: rejected at admission: {exc}") from None


pod_requests = effective_requests


def verdict(pod: V1Pod, *, nodes: Iterable[V1Node] | None,
            quotas: Iterable[V1ResourceQuota] = (), limit_ranges: Iterable[V1LimitRange] = (),
            claims: Iterable[V1PersistentVolumeClaim] | None = None,
            volumes: Iterable[V1PersistentVolume] | None = None,
            pods_per_node: Mapping[str, int] | None = None) -> Verdict:
    """Decide whether ``pod`` can ever be admitted and scheduled (see the module docstring).

    Args:
        pod: the pod as it would be submitted (its namespace's objects are the ones passed).
        nodes: the cluster's nodes; ``None`` when they could not be listed (no node check).
        quotas: the namespace's ResourceQuotas (``status.used`` is what is used now).
        limit_ranges: the namespace's LimitRanges.
        claims: the namespace's PersistentVolumeClaims; ``None`` when unknown (no check).
        volumes: the cluster's PersistentVolumes, for the node affinity of bound claims;
            ``None`` when unknown (no check).
        pods_per_node: how many pods each node runs now, for its pod-count limit.

    Returns:
        What was found: the fitting nodes, the effective requests and limits, what was skipped.

    Raises:
        MlkubeError: one line saying what the pod asks and why it can never run.
    """
    limit_ranges = list(limit_ranges)
    claims = None if claims is None else list(claims)
    try:
        spec = _prepared(pod, limit_ranges)
    except _Rejected as exc:
        raise MlkubeError(f"pod {_ref(pod)}: rejected at admission: {exc}") from None
    requests, limits = _requests_of(spec), _limits_of(spec)
    head = f"pod {_ref(pod)} asks {_asks(requests)}"
    try:
        problems = _invalid(pod, spec) or _limit_range_violations(spec, limit_ranges)
        problem = "; ".join(problems) or _quota_problem(pod, spec, list(quotas), requests, limits)
    except _Rejected as exc:
        problem = str(exc)
    if problem:
        raise MlkubeError(f"{head}: rejected at admission: {problem}")
    node_list = None if nodes is None else list(nodes)
    skipped = tuple(what for what, absent in (("nodes", node_list is None),
                                              ("claims", claims is None),
                                              ("volumes", volumes is None and claims is not None
                                               and bool(_mounted_claims(pod)))) if absent)
    volume = None if claims is None else _claims_problem(pod, claims)
    if volume:
        where = "" if node_list is None else f"0/{len(node_list)} nodes are available: "
        raise MlkubeError(f"{head}: {where}{volume}")
    if node_list is None:
        return Verdict(nodes=(), requests=requests, limits=limits, skipped=skipped)
    placing = _Placing(pod=pod, requests=requests, tolerations=_tolerations(pod),
                       pods_per_node=pods_per_node,
                       volume_affinities=_volume_affinities(pod, claims or (), volumes or ()))
    fitting = _place(placing, spec, node_list, head)
    return Verdict(nodes=fitting, requests=requests, limits=limits, skipped=skipped)


def check_nodes(pod: V1Pod, nodes: Iterable[V1Node]) -> None:
    """Fail unless some node can ever take ``pod`` (:func:`verdict` with nodes only).

    Raises:
        MlkubeError: what the pod asks and, per class of node, why it was rejected.
    """
    verdict(pod, nodes=nodes)


def check_quotas(pod: V1Pod, quotas: Iterable[V1ResourceQuota]) -> None:
    """Fail when the namespace's quotas would reject ``pod`` (:func:`verdict` without nodes).

    Raises:
        MlkubeError: naming the quota, the resource, what is used, the limit and the ask.
    """
    verdict(pod, nodes=None, quotas=quotas)


def read_cluster(core: Any, namespace: str, warn: Callable[[str], Any]) -> dict[str, Any]:
    """What :func:`verdict` needs about ``namespace``, listed with ``core`` (a ``CoreV1Api``).

    A list the caller may not read (HTTP 401/403) is skipped with a warning: ``None`` for
    nodes and claims, nothing for quotas and LimitRanges. Both adapters and the CLI call this.
    """
    from kubernetes.client import ApiException

    reads = {
        "nodes": lambda: core.list_node().items,
        "quotas": lambda: core.list_namespaced_resource_quota(namespace).items,
        "limit_ranges": lambda: core.list_namespaced_limit_range(namespace).items,
        "claims": lambda: core.list_namespaced_persistent_volume_claim(namespace).items,
        "volumes": lambda: core.list_persistent_volume().items,
    }
    found: dict[str, Any] = {}
    for what, read in reads.items():
        try:
            found[what] = read()
        except ApiException as exc:
            if exc.status not in (401, 403):
                raise
            warn(f"preflight: may not list {what.replace('_', ' ')} (HTTP {exc.status}); that "
                 "check is skipped")
            found[what] = None if what in ("nodes", "claims", "volumes") else ()
    return found
