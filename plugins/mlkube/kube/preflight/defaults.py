"""API defaulting: container requests from limits, then the pod-level requests and limits.

Mirrors ``pkg/apis/core/v1/defaults.go`` (SetDefaults_Pod, defaultHugePagePodLimits,
defaultPodRequests, defaultPodLimits).
"""

from __future__ import annotations

from mlkube.kube.preflight.podspec import _aggregate, _Spec
from mlkube.kube.preflight.resources import HUGEPAGES, _overcommit, _pod_level


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
