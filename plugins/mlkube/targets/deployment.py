"""The Deployment target: Deployment + Service + HPA, rolled one pod at a time.

The old pods serve until new ones are ready (``maxSurge: 1``, ``maxUnavailable: 0``); the
Service's URL never changes; the replica count belongs to the HPA once the Deployment exists.
What it shares with the KServe target is :mod:`mlkube.targets.cluster`.

**Slots beside the serving version** (the canary phase and the shadow gate of
:mod:`mlkube.live_gates`, issue 17 items 4 and 5): every serving pod runs mlkube's runtime, which
holds a ``canary`` and a ``shadow`` beside its main model. The target drives the runtime of
each pod through the API server's pod proxy (:mod:`mlkube.kube.podproxy`; the deploy Role's
``pods/proxy`` get and create), so the Service keeps sending every request to a ready pod and
each pod splits (or mirrors) its own share:

- ``load_slot`` loads and verifies the version aside in every *ready* pod of the Deployment, at
  once (as locally); when one pod refuses it, it is unloaded from the others and the line names
  the pod and its reason;
- ``live_numbers`` pools the pods' numbers: requests, rows and errors summed (a pod that goes
  away during the window keeps its last numbers counted), a shadow's agreement and mean
  difference weighted by the rows each pod compared, and the p99 (and p50) the *largest* of the
  pods' own: a pooled p99 is never above the largest per-pod p99, so the bound is judged
  conservatively (a pod that saw few, slow requests can fail a canary the pooled numbers would
  pass); read at most once a second (:attr:`DeploymentTarget.LIVE_INTERVAL`), one request per
  ready pod through the API server each time;
- ``promote_slot("canary")`` rolls the Deployment to the canary's version, one pod at a time
  (readiness-gated, ``maxUnavailable: 0``, as every rollout): each old pod keeps answering its
  share from its canary until a new pod, started on the new version, replaces it. The pods are
  not promoted in place first, so every pod always serves what its own template names: a pod
  restarted at any moment comes back on the version its ReplicaSet says, and a deploy killed at
  any point leaves at most a canary beside the old version (the next deploy replaces, promotes
  or unloads it; :meth:`DeploymentTarget.promote` and ``roll_back`` unload one they find);
- ``unload_slot`` empties the slot in every running pod that holds it.

What this does not cover: a pod started during the window (the HPA scaling up, a node drained)
has no slot and answers everything with the serving version, so the canary's share of all
traffic shrinks; a restarted container loses its slots the same way (its numbers so far stay
counted); the split is per pod, so the canary's share of the Service's traffic is ``share``
only while every ready pod holds it. A second Deployment behind the same Service would keep its
share across restarts, at the price of a second set of objects to roll back and its replicas
fixing the share in steps of one pod.
"""

from __future__ import annotations

from typing import Any

from kubernetes.dynamic.exceptions import ConflictError

from mlkube.errors import MlkubeError
from mlkube.kube import serving as manifests
from mlkube.kube.api import FIELD_MANAGER, call, meta_of
from mlkube.kube.applied import identified, owns, restorable
from mlkube.kube.diagnosis import last_line
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
    deployment_progress,
    pooled,
)

__all__ = ["DeploymentTarget", "pooled"]

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
        return deployment_progress(live, lambda: self._pods(live)[0])

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

    # -- the runtime's slots in every serving pod (see the module doc) -----------------------

    live_slots = True

    def _slot_pods(self, *, ready_only: bool = True) -> list[dict[str, Any]]:
        """The Deployment's pods whose runtime answers (see ``_runtime_pods``)."""
        live = self._get(DEPLOYMENT)
        if live is None:
            return []
        labels = (((live.get("spec") or {}).get("selector") or {}).get("matchLabels")
                  or self.serving.labels())
        return self._runtime_pods(labels, ready_only=ready_only)

    def _slot_where(self) -> str:
        return self._where("Deployment")

    def load_slot(self, role: str, version: str, model_uri: str, share: float) -> None:
        """Load and verify ``version`` into the ``role`` slot of every ready pod's runtime, at
        once; a pod that refuses it: unloaded from the others, and one line naming it."""
        self._load_into_pods(role, version, model_uri, share)

    def unload_slot(self, role: str) -> None:
        """Empty the ``role`` slot in every running pod that holds one; a ready pod that cannot
        be reached or refuses: one line, after the others were emptied."""
        self._unload_from_pods(role)

    def live_numbers(self) -> dict[str, Any]:
        """The ready pods' live numbers, pooled (see the module doc); ``pods``: how many
        answered; each slot's ``pods``: how many hold it now. At most one read a
        :attr:`LIVE_INTERVAL` (a sooner call waits for it)."""
        answers = self._live_answers(self._slot_pods(), self._slot_where())
        found: dict[str, Any] = {"name": self.model_name, "pods": len(answers),
                                 "main": pooled([a["main"] for a in answers.values()
                                                 if a.get("main")], "main")}
        for role in ("canary", "shadow"):
            found[role] = self._pooled_slot(answers, role)
        return found

    def promote_slot(self, role: str) -> None:
        """The canary's version serves: the Deployment rolled to it, one pod at a time (see
        the module doc); each old pod answers its canary share until it is replaced."""
        if role != "canary":
            raise MlkubeError(f"the {self.name} target promotes a canary only, not a {role}")
        held = self._slot_held(role)
        if held is None:
            raise MlkubeError(f"no pod of {self._where('Deployment')} holds a {role} to "
                              "promote")
        version, model_uri = held
        self.log(f"promoting the {role} v{version}: rolling {self._where('Deployment')} to it, "
                 "one pod at a time (each old pod answers its canary share until a new one "
                 "replaces it)")
        self.roll_out(version, model_uri)
        self._slots.pop(role, None)
        self._seen.pop(role, None)

    def promote(self) -> None:
        """After the smoke test: no canary stays beside the version that serves (one an earlier
        deploy, killed in its canary phase, left in pods this rollout did not replace)."""
        self._clear_slot("canary")

    def roll_back(self, version: str | None) -> None:
        """Unload the canary, then put ``version`` back (see
        :meth:`mlkube.targets.cluster.ClusterTarget.roll_back`)."""
        self._roll_back_past_slot(version)

