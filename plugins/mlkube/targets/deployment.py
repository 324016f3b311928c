"""The Deployment target: Deployment + Service + HPA, rolled one pod at a time.

The old pods serve until new ones are ready (``maxSurge: 1``, ``maxUnavailable: 0``); the
Service's URL never changes; the replica count belongs to the HPA once the Deployment exists.
What it shares with the KServe target is :mod:`mlkube.targets.cluster`.
"""

from __future__ import annotations

from typing import Any

from kubernetes.dynamic.exceptions import ConflictError

from mlkube.kube import serving as manifests
from mlkube.kube.api import FIELD_MANAGER, call, meta_of
from mlkube.kube.applied import identified, owns, restorable
from mlkube.kube.diagnosis import fatal_problems, last_line
from mlkube.kube.serving import ModelServing
from mlkube.targets.cluster import (
    AUTOSCALER,
    DEPLOYMENT,
    POD,
    REPLICA_SET,
    SERVICE,
    ClusterTarget,
    Progress,
    conditions_of,
)

# Takes a Deployment's replica count over from mlkube's apply until the HPA writes it.
HANDOVER_MANAGER = "mlkube-handover-to-hpa"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"


class DeploymentTarget(ClusterTarget):
    """Deployment + Service + HPA: pods rolled one at a time, old ones serving until new ones
    are ready (``maxSurge: 1``, ``maxUnavailable: 0``); the Service's URL never changes."""

    name = "deployment"
    kinds = (DEPLOYMENT, SERVICE, AUTOSCALER)

    @property
    def base_url(self) -> str:
        """The Service's cluster address (port 80)."""
        return f"http://{self.serving.name}.{self.namespace}.svc.cluster.local"

    def _bodies(self, serving: ModelServing, live: dict[str, dict[str, Any] | None]
                ) -> list[dict[str, Any]]:
        deployment = manifests.to_dict(manifests.deployment(serving))
        if live["Deployment"] is not None:  # the HPA's: min_replicas only when created
            del deployment["spec"]["replicas"]
        return [deployment, manifests.to_dict(manifests.service(serving)),
                manifests.to_dict(manifests.autoscaler(serving))]

    def _restore_body(self, before: dict[str, Any]) -> dict[str, Any]:
        body = restorable(before)
        if before["kind"] == "Deployment":
            spec = body.setdefault("spec", {})
            if self._get(DEPLOYMENT) is not None:  # the HPA's count stays
                spec.pop("replicas", None)
            else:  # deleted meanwhile: created again at the size it had
                spec["replicas"] = (before.get("spec") or {}).get("replicas", 1)
            # Back the same way forward: no old pod goes before a restored one is ready.
            spec["strategy"] = manifests.to_dict(manifests.ROLLING_STRATEGY)
        return body

    def _apply(self, body: dict[str, Any]) -> dict[str, Any]:
        if body["kind"] == "Deployment" and "replicas" not in (body.get("spec") or {}):
            self._hand_replicas_over()
        return super()._apply(body)

    def _hand_replicas_over(self) -> None:
        """Let an apply without ``spec.replicas`` leave the live count alone.

        Re-applying the count read a moment before would undo an HPA that scaled in between
        (the apply is forced), and dropping a field mlkube's apply owns alone resets it to the
        default, 1. So, as Kubernetes documents for handing a field over to a controller: a
        second manager applies the live count first, not forced. A conflict means the HPA has
        just written the count and owns it: nothing to do. Either way mlkube's own apply can
        then leave the field out; the HPA's next write takes it from the second manager.
        """
        live = self._get(DEPLOYMENT)
        if live is None or not owns(live, FIELD_MANAGER, "spec", "replicas"):
            return
        body = identified({"spec": {"replicas": (live.get("spec") or {}).get("replicas", 1)}},
                          live)
        resource = self._resource(*DEPLOYMENT)

        def hand_over() -> None:
            try:
                resource.server_side_apply(body=body, name=self.serving.name,
                                           namespace=self.namespace,
                                           field_manager=HANDOVER_MANAGER, force_conflicts=False)
            except ConflictError:
                return  # the HPA scaled since: the count is its own already

        call(f"hand the replica count of {self._where('Deployment')} over to its autoscaler",
             self._host, hand_over)

    def _progress(self, live: dict[str, Any], *, full_traffic: bool = False) -> Progress:
        spec, status = live.get("spec") or {}, live.get("status") or {}
        generation = meta_of(live).get("generation", 0)
        observed = status.get("observedGeneration", 0)
        if observed < generation:
            return Progress(False, note=f"the Deployment controller has not yet observed "
                                         f"generation {generation} (its status is of {observed})")
        conditions = conditions_of(live)
        replica_failure = conditions.get("ReplicaFailure", {})
        if replica_failure.get("status") == "True":
            return Progress(False, failure=f"{replica_failure.get('reason')}: "
                                            f"{last_line(replica_failure.get('message', ''))}")
        progressing = conditions.get("Progressing", {})
        if progressing.get("status") == "False":
            return Progress(False, failure=f"{progressing.get('reason')}: "
                                            f"{last_line(progressing.get('message', ''))}")
        want = spec.get("replicas", 1)
        updated = status.get("updatedReplicas", 0)
        available = status.get("availableReplicas", 0)
        total = status.get("replicas", 0)
        if updated == available == total == want:
            return Progress(True)
        fatal = fatal_problems(self._pods(live)[0])
        if fatal:
            return Progress(False, failure=fatal[0])
        return Progress(False, note=f"{updated} of {want} pods updated, {available} available, "
                                     f"{total - updated} old ones still running")

    def _pod_starts(self, live: dict[str, Any]) -> int:
        """maxSurge 1: each replica's new pod starts after the one before is ready."""
        return max(1, int((live.get("spec") or {}).get("replicas") or 1))

    def _serves(self, live: dict[str, Any]) -> bool:
        status = live.get("status") or {}
        if status.get("observedGeneration", 0) < meta_of(live).get("generation", 0):
            return False
        total = status.get("replicas", 0)
        return bool(total and status.get("updatedReplicas", 0) == total
                    and status.get("availableReplicas", 0) >= 1)

    def _new_replica_set(self, live: dict[str, Any]) -> dict[str, Any] | None:
        revision = (meta_of(live).get("annotations") or {}).get(REVISION_ANNOTATION)
        if revision is None:
            return None
        labels = ((live.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        uid = meta_of(live).get("uid")
        for rs in self._list(REPLICA_SET, labels=labels):
            owners = {o.get("uid") for o in meta_of(rs).get("ownerReferences") or []}
            if uid in owners and (meta_of(rs).get("annotations") or {}).get(
                    REVISION_ANNOTATION) == revision:
                return rs
        return None

    def _pods(self, live: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        status = live.get("status") or {}
        if status.get("observedGeneration", 0) < meta_of(live).get("generation", 0):
            return [], []  # the controller has not made the new ReplicaSet yet
        rs = self._new_replica_set(live)
        if rs is None:
            return [], []
        labels = dict(((rs.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
        pods = self._list(POD, labels=labels) if labels else []
        return pods, [f"ReplicaSet/{meta_of(rs).get('name')}"]

    def _object_reasons(self, live: dict[str, Any]) -> list[str]:
        reasons = []
        for condition in conditions_of(live).values():
            failed = (condition.get("type") == "ReplicaFailure" and condition.get("status") == "True"
                      or condition.get("type") == "Progressing" and condition.get("status") == "False")
            if failed:
                reasons.append(f"{condition.get('reason')}: "
                               f"{last_line(condition.get('message', ''))}")
        return reasons
