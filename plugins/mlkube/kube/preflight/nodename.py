"""A pod with ``spec.nodeName`` preset skips the scheduler: its node must exist and the kubelet's
admission must pass (resources, node affinity, untolerated NoExecute taints; extended resources
the node does not list at all are dropped, as the kubelet does).

Mirrors the kubelet's admission in ``pkg/kubelet/lifecycle/predicate.go``.
"""

from __future__ import annotations

from collections.abc import Sequence

from kubernetes.client import V1Node

from mlkube.errors import MlkubeError
from mlkube.kube.preflight.fit import _allocatable, _fit
from mlkube.kube.preflight.framework import _Placing
from mlkube.kube.preflight.nodeaffinity import _selection
from mlkube.kube.preflight.podspec import _Container, _requests_of, _Spec
from mlkube.kube.preflight.resources import _is_extended
from mlkube.kube.preflight.taints import NO_EXECUTE, _untolerated


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


def _admit_bound(p: _Placing, spec: _Spec, nodes: Sequence[V1Node], head: str,
                 bound: str) -> tuple[str, ...]:
    """The node named by ``spec.nodeName``, if it exists and its kubelet admits the pod."""
    node = next((n for n in nodes if n.metadata.name == bound), None)
    if node is None:
        raise MlkubeError(f"{head}: spec.nodeName is {bound}, which is not in the cluster")
    reasons = _kubelet_reasons(p, spec, node)
    if reasons:
        raise MlkubeError(f"{head}: spec.nodeName is {bound}, whose kubelet rejects it: "
                          + ", ".join(reasons))
    return (bound,)
