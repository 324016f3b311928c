"""VolumeBinding: PreFilter (each mounted PersistentVolumeClaim exists, is not Lost and is not
being deleted) and Filter (a claim bound to a PersistentVolume with required node affinity admits
only the nodes that affinity matches).

Mirrors ``pkg/scheduler/framework/plugins/volumebinding/volume_binding.go`` (PreFilter,
podHasPVCs; Filter) and ``binder.go`` (checkBoundClaims, the PersistentVolume's node affinity as
``staging/src/k8s.io/component-helpers/storage/volume/pv_helpers.go`` CheckNodeAffinity checks it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubernetes.client import V1Node, V1PersistentVolume, V1PersistentVolumeClaim, V1Pod

from mlkube.kube.preflight.framework import _Placing
from mlkube.kube.preflight.nodeaffinity import _term_matches
from mlkube.kube.preflight.podspec import _g, _pod_field


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


def _volume_conflict(p: _Placing, node: V1Node) -> str | None:
    for what, required in p.volume_affinities:
        if not any(_term_matches(t, node) for t in _g(required, "node_selector_terms") or []):
            return f"didn't match PersistentVolume's node affinity ({what})"
    return None
