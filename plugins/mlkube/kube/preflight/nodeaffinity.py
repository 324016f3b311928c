"""NodeAffinity: ``nodeSelector`` and required node affinity (terms ORed, expressions ANDed,
In/NotIn/Exists/DoesNotExist/Gt/Lt, matchFields on metadata.name).

Mirrors ``pkg/scheduler/framework/plugins/nodeaffinity/node_affinity.go`` and
``staging/src/k8s.io/component-helpers/scheduling/corev1/nodeaffinity/nodeaffinity.go``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client import V1Node, V1Pod

from mlkube.kube.preflight.podspec import _g, _pod_field
from mlkube.kube.preflight.resources import _int64


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
