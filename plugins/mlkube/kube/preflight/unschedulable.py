"""NodeUnschedulable: a cordoned node (``spec.unschedulable``) takes no new pods, unless the pod
tolerates ``node.kubernetes.io/unschedulable:NoSchedule``.

Mirrors ``pkg/scheduler/framework/plugins/nodeunschedulable/node_unschedulable.go``.
"""

from __future__ import annotations

from kubernetes.client import V1Node

from mlkube.kube.preflight.framework import _Placing
from mlkube.kube.preflight.taints import NO_SCHEDULE, _tolerates

UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"


def _cordoned(p: _Placing, node: V1Node) -> str | None:
    """The Filter: the node is cordoned and the pod does not tolerate it."""
    if node.spec and node.spec.unschedulable and not any(
            _tolerates(t, UNSCHEDULABLE_TAINT, "", NO_SCHEDULE) for t in p.tolerations):
        return "cordoned (spec.unschedulable)"
    return None
