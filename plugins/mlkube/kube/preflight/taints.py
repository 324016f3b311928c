"""TaintToleration: NoSchedule and NoExecute taints must be tolerated (PreferNoSchedule never
blocks), with the not-ready/unreachable NoExecute tolerations DefaultTolerationSeconds adds.

Mirrors ``pkg/scheduler/framework/plugins/tainttoleration/taint_toleration.go``,
Toleration.ToleratesTaint in ``staging/src/k8s.io/api/core/v1/toleration.go`` (Lt/Gt as with
the TaintTolerationComparisonOperators feature gate on) and
``plugin/pkg/admission/defaulttolerationseconds/admission.go``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubernetes.client import V1Node, V1Pod, V1Toleration

from mlkube.kube.preflight.framework import _Placing
from mlkube.kube.preflight.podspec import _g, _pod_field
from mlkube.kube.preflight.resources import _int64

NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE = "NoSchedule", "PreferNoSchedule", "NoExecute"


def _tolerations(pod: V1Pod) -> list[Any]:
    """The pod's tolerations plus what DefaultTolerationSeconds admission adds to each pod."""
    tolerations = list(_pod_field(pod, "tolerations") or [])
    for key in (NOT_READY_TAINT, UNREACHABLE_TAINT):
        if not any(_g(t, "key") in (key, None, "") and _g(t, "effect") in (NO_EXECUTE, None, "")
                   for t in tolerations):
            tolerations.append(V1Toleration(key=key, operator="Exists", effect=NO_EXECUTE,
                                            toleration_seconds=300))
    return tolerations


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


def _taint_filter(p: _Placing, node: V1Node) -> str | None:
    """The Filter: the node's first NoSchedule or NoExecute taint the pod does not tolerate."""
    return _untolerated(node, p.tolerations, (NO_SCHEDULE, NO_EXECUTE))
