"""What the node filters share: the pod being placed, and the scheduler's one line when no node
fits ("0/N nodes are available: ...", reasons counted per class of node).

Mirrors the scheduler framework's CycleState (``pkg/scheduler/framework/cycle_state.go``) and
FitError's message (``pkg/scheduler/framework/types.go``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import V1Pod

from mlkube.kube.preflight.resources import Resources


@dataclass
class _Placing:
    pod: V1Pod
    requests: Resources
    tolerations: list[Any]
    pods_per_node: Mapping[str, int] | None
    volume_affinities: list[tuple[str, Any]] = field(default_factory=list)


def _classes(reasons: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "; ".join(f"{n} node{'s' if n != 1 else ''}: {r}" for r, n in ranked)
