"""The pod as the API server sees it: its containers' and pod-level requests and limits, and
their aggregation into the pod's effective requests and limits.

Mirrors ``staging/src/k8s.io/component-helpers/resource/helpers.go`` (PodRequests, PodLimits,
AggregateContainerRequests/Limits, IsPodLevelResourcesSet).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import V1Pod

from mlkube.kube.preflight.resources import Resources, _add, _max, _parse, _pod_level


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


def _pod_field(pod: V1Pod, name: str) -> Any:
    return _g(_g(pod, "spec"), name)


def _ref(pod: V1Pod) -> str:
    meta = _g(pod, "metadata")
    name = _g(meta, "name") or _g(meta, "generate_name") or "pod"
    namespace = _g(meta, "namespace")
    return f"{namespace}/{name}" if namespace else name


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
