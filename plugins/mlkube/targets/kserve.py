"""The KServe target: an ``InferenceService`` running mlkube's runtime as its predictor (V2).

KServe keeps routing to the last ready revision while a new one starts; a canary takes its
share of traffic until :meth:`KServeTarget.promote`. :func:`kserve_served` tells whether a
cluster serves the API at all. What it shares with the Deployment target is
:mod:`mlkube.targets.cluster`.

**The canary phase on live traffic** (:func:`mlkube.live_gates.canary`, issue 17 item 5): on
KServe the canary is a *revision*, not a slot in the runtime. ``load_slot("canary", v, uri,
share)`` applies the InferenceService with version ``v`` and ``canaryTrafficPercent`` =
``share`` in percent, and waits until the new revision is Ready and routed its share (Knative
splits the traffic between the last rolled-out revision and the new one). The canary's smoke
test goes to the new revision alone by its tag URL (:attr:`KServeTarget.slot_url`: the
InferenceService carries ``serving.kserve.io/enable-tag-routing: "true"``, so Knative names
the revisions' routes ``latest-`` and ``prev-``). ``live_numbers`` reads each ready predictor
pod of both revisions (labels ``serving.kserve.io/inferenceservice``, ``component:
predictor``, ``serving.knative.dev/revision``; the revisions named by
``status.components.predictor.latestReadyRevision`` and ``latestRolledoutRevision``) through
the API server's pod proxy, as the Deployment target does, and pools the runtime's numbers of
its main model: the new revision's are the ``canary``'s, the old one's the ``main``'s (a
canary in raw-deployment mode is a pod slot instead: below).
``promote_slot`` drops ``canaryTrafficPercent`` (all traffic to the new revision); a rollback
(:meth:`KServeTarget.unload_slot`, then :meth:`KServeTarget.roll_back`) first sets it to 0
(the previous revision takes all the traffic again at once), then applies the previous
version again behind ``canaryTrafficPercent: 0`` (Knative makes a revision of it; the canary's
spec is gone) and gives that revision all the traffic once it is Ready, so the rejected
version never takes more than its share meanwhile. While a canary revision shares the
traffic, :meth:`KServeTarget.live_version` is the version the rolled-out revision's pods run, so
a deploy killed in its canary phase is judged again by its retry (``load_slot`` finds the split
in place), never rolled out unjudged.

**The shadow gate** (:func:`mlkube.live_gates.judge_shadow`): every predictor pod runs mlkube's
runtime, which holds a ``shadow`` beside its main model, so the shadow is the Deployment
target's pod slot (:mod:`mlkube.targets.cluster`, the same code): ``load_slot("shadow", ...)``
loads and verifies the challenger into each *ready* pod of the serving revision (the last
rolled out; the one a canary split leaves the rest of the traffic to) through the pod proxy;
``live_numbers()["shadow"]`` pools those pods' shadow numbers (mirrored requests summed,
agreement and mean difference weighted by compared rows, the largest p99; a pod gone since
keeps its last numbers counted); ``unload_slot("shadow")`` empties it in every running
predictor pod, after the gate either way. A deploy killed with the shadow loaded leaves it
mirroring in the pods; the retry loads the same version again, which the runtime keeps as it
is (its numbers counted on), and judges it. What differs from the Deployment target: a pod
Knative adds while the shadow is loaded (its autoscaler scaling up, a pod replaced) holds no
shadow and mirrors nothing, so fewer requests are mirrored, never wrong ones; a revision
scaled to zero has no pod to load into (the deploy fails in one line, the champion stays;
with ``minReplicas: 0`` the gate needs traffic keeping a pod up).

**Raw-deployment mode** (``serving.kserve.io/deploymentMode: RawDeployment``, called
``Standard`` and the default mode in recent KServe; read from ``status.deploymentMode``,
else the annotation: :func:`raw_mode`): KServe makes a Deployment and a Service
``<name>-predictor``, no Knative revisions, and no traffic split, so a canary revision cannot
take a share. The canary is then a pod slot, as on the Deployment target: ``load_slot``
loads it into every ready predictor pod (labels ``serving.kserve.io/inferenceservice``,
``component: predictor``, which KServe gives them in both modes; raw mode adds ``app:
<name>-predictor``, ``isvc.<name>-predictor`` in older releases), its smoke test goes to the
published address (each pod answers the canary's versioned URL), ``live_numbers`` pools the
pods' slots, ``promote_slot`` applies the InferenceService with the canary's version (KServe
rolls its Deployment; each old pod answers its canary share until a new one replaces it), a
rollback unloads it (the InferenceService was never applied with it). ``canaryTrafficPercent``
is never applied in raw mode. A rollout there is judged on the predictor Deployment's own
status (its generation observed, every pod updated and available), because KServe's
``Ready`` follows the Deployment's ``Available``, which an old pod still serving keeps True.

What this does not cover: pods scaled to zero have no numbers (KServe's default
``minReplicas`` is 1 in mlkube's manifest); in raw mode, a pod started during the canary's
window holds no slot (as on the Deployment target).
"""

from __future__ import annotations

import copy
import time
from typing import Any
from urllib.parse import urlsplit

from kubernetes.client import ApiClient
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from mlkube.errors import MlkubeError
from mlkube.kube import serving as manifests
from mlkube.kube.api import meta_of
from mlkube.kube.applied import restorable
from mlkube.kube.diagnosis import fatal_problems, last_line
from mlkube.kube.serving import ModelServing
from mlkube.targets.cluster import (
    DEPLOYMENT,
    INFERENCE_SERVICE,
    POD,
    ClusterTarget,
    Log,
    Progress,
    conditions_of,
    deployment_progress,
    pooled,
    version_of,
)

KSERVE_ISVC_LABEL = "serving.kserve.io/inferenceservice"
KNATIVE_REVISION_LABEL = "serving.knative.dev/revision"
KSERVE_COMPONENT_LABEL = "component"
#: Knative names each revision's route by its tag (``latest-``, ``prev-``): KServe's tag routing
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
CANARY_PERCENT = "canaryTrafficPercent"
#: the InferenceService's deployment mode: KServe records it in ``status.deploymentMode``; this
#: annotation asks for one (else the cluster's ``inferenceservice-config`` default)
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
#: raw-deployment mode's names: ``RawDeployment``, ``Standard`` in recent KServe
RAW_MODES = frozenset({"RawDeployment", "Standard"})
_KSERVE_FAILED = frozenset({"BlockedByFailedLoad", "InvalidSpec"})


def raw_mode(live: dict[str, Any] | None) -> bool:
    """Whether KServe serves the InferenceService in raw-deployment mode (a Deployment, no
    Knative revisions, no traffic split): ``status.deploymentMode``, else the annotation."""
    if live is None:
        return False
    recorded = (live.get("status") or {}).get("deploymentMode")
    if recorded:
        return str(recorded) in RAW_MODES
    return (meta_of(live).get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION) in RAW_MODES


def kserve_served(client: DynamicClient) -> bool:
    """Whether the cluster serves KServe's ``InferenceService`` API."""
    try:
        client.resources.get(api_version=INFERENCE_SERVICE[0], kind=INFERENCE_SERVICE[1])
    except ResourceNotFoundError:
        return False
    return True


class KServeTarget(ClusterTarget):
    """A KServe ``InferenceService`` running mlkube's runtime as its predictor (V2).

    KServe keeps routing to the last ready revision while a new one starts; with
    ``canary_percent`` a new version takes that share of traffic until :meth:`promote`.
    """

    name = "kserve"
    kinds = (INFERENCE_SERVICE,)

    def __init__(self, *, api_client: ApiClient, serving: ModelServing, namespace: str,
                 canary_percent: int | None = None, timeout: float = 600, poll: float = 2,
                 log: Log = print) -> None:
        """Connect; ``canary_percent`` (1-100) is the new version's share until promoted."""
        super().__init__(api_client=api_client, serving=serving, namespace=namespace,
                         timeout=timeout, poll=poll, log=log)
        if canary_percent is not None and (isinstance(canary_percent, bool)
                                           or not 1 <= canary_percent <= 100):
            raise MlkubeError(f"canary percent is {canary_percent!r}: use 1 to 100, or none")
        self.canary_percent = canary_percent
        self._canary: str | None = None  # the version load_slot made the canary revision
        self._seen_canary: dict[str, dict[str, Any]] = {}  # its pods' last numbers, by pod

    @property
    def base_url(self) -> str:
        """The InferenceService's cluster-local address (``status.address.url``).

        Before KServe has written one: the address it gives in its default (serverless)
        mode, ``http://<name>.<namespace>.svc.cluster.local``.
        """
        live = self._get(INFERENCE_SERVICE)
        url = (((live or {}).get("status") or {}).get("address") or {}).get("url")
        if not url:
            return f"http://{self.serving.name}.{self.namespace}.svc.cluster.local"
        parts = urlsplit(str(url))
        return f"{parts.scheme}://{parts.netloc}"

    def _serves(self, live: dict[str, Any]) -> bool:
        """Live only with all the traffic: a canary left split by a killed deploy is not."""
        return self._progress(live, full_traffic=True).ready

    def promote(self) -> None:
        """Route all traffic to the new revision: drop ``canaryTrafficPercent``. In raw mode:
        no canary stays in the pods beside the version that serves (one an earlier deploy,
        killed in its canary phase, left in pods this rollout did not replace)."""
        if raw_mode(self._get(INFERENCE_SERVICE)):
            self._clear_slot("canary")
            return
        body = self._applied.get("InferenceService")
        if body is None:
            live = self._get(INFERENCE_SERVICE)
            if live is None:
                raise MlkubeError(f"cannot promote {self._where('InferenceService')}: it does "
                                  "not exist (roll a version out first)")
            body = restorable(live)
        predictor = (body.get("spec") or {}).get("predictor") or {}
        if "canaryTrafficPercent" not in predictor:
            return
        body = copy.deepcopy(body)
        del body["spec"]["predictor"]["canaryTrafficPercent"]
        self._apply(body)
        self._applied["InferenceService"] = body
        self._wait(version_of(body) or "?", "promote", full_traffic=True)

    # -- the canary phase on live traffic (see the module doc) ------------------------------

    live_slots = True
    slot_roles = ("canary", "shadow")

    def _revisions(self) -> tuple[dict[str, Any], str | None, str | None]:
        """The InferenceService, its new revision (latest ready) and the one it shares the
        traffic with (the last rolled out), ``None`` where KServe names none."""
        live = self._get(INFERENCE_SERVICE)
        if live is None:
            raise MlkubeError(f"{self._where('InferenceService')} does not exist (roll a "
                              "version out first)")
        predictor = _predictor_status(live)
        return (live, predictor.get("latestReadyRevision"),
                predictor.get("latestRolledoutRevision"))

    def _predictor_labels(self) -> dict[str, str]:
        """What KServe labels every predictor pod with, in both modes (raw mode adds ``app:
        <name>-predictor``, ``isvc.<name>-predictor`` in older releases; Knative its
        revision)."""
        return {KSERVE_ISVC_LABEL: self.serving.name, KSERVE_COMPONENT_LABEL: "predictor"}

    def _revision_pods(self, revision: str, *, ready_only: bool = True
                       ) -> list[dict[str, Any]]:
        return self._runtime_pods({**self._predictor_labels(), KNATIVE_REVISION_LABEL: revision},
                                  ready_only=ready_only)

    def _serving_revision(self, live: dict[str, Any]) -> str | None:
        """The revision that serves (all the traffic, or the rest of a canary's split): the
        last rolled out, else the latest ready."""
        predictor = _predictor_status(live)
        return predictor.get("latestRolledoutRevision") or predictor.get("latestReadyRevision")

    # the slots in the pods' runtimes (the shadow; in raw mode the canary too), as on the
    # Deployment target (mlkube.targets.cluster)

    def _slot_pods(self, *, ready_only: bool = True) -> list[dict[str, Any]]:
        """The predictor pods whose runtime holds the slots: raw mode, every predictor pod;
        serverless, the serving revision's (with ``ready_only`` off: every revision's, so an
        unload finds a slot wherever it is)."""
        live = self._get(INFERENCE_SERVICE)
        if live is None:
            return []
        if raw_mode(live) or not ready_only:
            return self._runtime_pods(self._predictor_labels(), ready_only=ready_only)
        revision = self._serving_revision(live)
        return self._revision_pods(revision) if revision else []

    def _slot_where(self) -> str:
        live = self._get(INFERENCE_SERVICE)
        if raw_mode(live):
            return f"the predictor of {self._where('InferenceService')} (raw deployment)"
        revision = self._serving_revision(live or {})
        return (f"revision {revision} of {self._where('InferenceService')}" if revision
                else self._where("InferenceService"))

    def live_version(self) -> str | None:
        """The version that serves: with all the traffic, the InferenceService's; while a
        canary revision shares it (a deploy killed in its canary phase left it so), the
        version the rolled-out revision's pods run (their ``--version``), so that the retry
        judges the canary again instead of rolling it out unjudged."""
        live = self._get(INFERENCE_SERVICE)
        if live is None:
            return None
        if self._serves(live):
            return version_of(live)
        predictor = _predictor_status(live)
        new, old = predictor.get("latestReadyRevision"), predictor.get("latestRolledoutRevision")
        if CANARY_PERCENT not in _predictor(live) or not new or not old or new == old \
                or not _all_to(live, old, at_least=100 - int(_predictor(live)[CANARY_PERCENT])):
            return None
        for pod in self._revision_pods(old):
            container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
            command = [*(container.get("command") or []), *(container.get("args") or [])]
            if "--version" in command[:-1]:
                return str(command[command.index("--version") + 1])
        return None

    def load_slot(self, role: str, version: str, model_uri: str, share: float) -> None:
        """The shadow (and in raw mode the canary): loaded and verified into the slot of every
        ready predictor pod's runtime (of the serving revision), as on a Deployment. The
        serverless canary: a revision, ``version`` applied with ``canaryTrafficPercent`` =
        ``share`` in percent; returns once the new revision is Ready and takes its share."""
        if role not in self.slot_roles:
            raise MlkubeError(f"the kserve target has no {role} slot (only "
                              f"{' and '.join(self.slot_roles)})")
        live = self._get(INFERENCE_SERVICE)
        if live is None or version_of(live) is None:
            raise MlkubeError(f"a {role} needs a version serving on "
                              f"{self._where('InferenceService')} "
                              f"{'to share the traffic with' if role == 'canary' else 'beside it'}")
        if role == "shadow" or raw_mode(live):
            self._load_into_pods(role, version, model_uri, share)
            return
        percent = max(1, min(99, round(share * 100)))
        if str(version_of(live)) == str(version) and _predictor(live).get(CANARY_PERCENT):
            self._canary = str(version)
            _, new, old = self._revisions()
            self.log(f"the canary revision {new} (v{version}) an earlier deploy left takes "
                     f"{_predictor(live)[CANARY_PERCENT]}% of the traffic, revision {old} the "
                     "rest: judged from here")
            return
        self.log(f"rolling out version {version} as a canary revision of "
                 f"{self._where('InferenceService')} taking {percent}% of its traffic "
                 f"({CANARY_PERCENT})")
        saved, self.canary_percent = self.canary_percent, percent
        try:
            self.roll_out(version, model_uri)
        finally:
            self.canary_percent = saved
        live, new, old = self._revisions()
        if not new or not old or new == old:
            raise MlkubeError(f"{self._where('InferenceService')} did not split its traffic "
                              f"between two revisions (latest ready {new}, rolled out {old})")
        self._canary = str(version)
        self.log(f"revision {new} (v{version}) takes {percent}% of the traffic, revision {old} "
                 "the rest")

    def slot_url(self, role: str) -> str:
        """The base URL that reaches the canary revision alone: Knative's tag route
        ``latest-<predictor>`` (the predictor's cluster-local address, ``latest-`` before its
        host); in raw mode (the canary a slot in every pod) the published one."""
        live = self._get(INFERENCE_SERVICE) or {}
        if raw_mode(live) or role != "canary":
            return self.base_url
        predictor = _predictor_status(live)
        url = (predictor.get("address") or {}).get("url") or \
            f"http://{self.serving.name}-predictor.{self.namespace}.svc.cluster.local"
        parts = urlsplit(str(url))
        return f"{parts.scheme}://latest-{parts.netloc}"

    def live_numbers(self) -> dict[str, Any]:
        """The ready predictor pods' numbers, pooled (see the module doc): serverless, by
        revision (the new revision's main model is the ``canary``, the rolled-out one's the
        ``main``, each with ``pods`` and ``revision``), the ``shadow`` its slot in the serving
        revision's pods; raw mode, as on a Deployment (main, and the slots)."""
        live, new, old = self._revisions()
        if raw_mode(live):
            answers = self._live_answers(self._slot_pods(), self._slot_where())
            return {"name": self.model_name, "pods": len(answers),
                    "main": pooled([a["main"] for a in answers.values() if a.get("main")],
                                   "main"),
                    "canary": self._pooled_slot(answers, "canary"),
                    "shadow": self._pooled_slot(answers, "shadow")}
        canary_version = self._canary
        split = CANARY_PERCENT in _predictor(live) and new and old and new != old
        found: dict[str, Any] = {"name": self.model_name, "main": None, "canary": None,
                                 "shadow": None}
        groups = [("canary", new), ("main", old)] if split else [("main", new)]
        pods = {role: self._revision_pods(rev) for role, rev in groups if rev}
        answers = self._live_answers([p for ps in pods.values() for p in ps],
                                     self._where("InferenceService"))
        seen = self._seen_canary
        for role, revision in groups:
            names = {str(meta_of(p).get("name")) for p in pods.get(role, [])}
            docs = {n: a["main"] for n, a in answers.items() if n in names and a.get("main")}
            if role == "canary":
                docs = {n: d for n, d in docs.items()
                        if canary_version is None or str(d.get("version")) == canary_version}
                seen.update(docs)  # a pod gone since keeps its last numbers counted
                counted = list(seen.values())
            else:
                counted = list(docs.values())
            if counted:
                found[role] = {**pooled(counted, role), "pods": len(docs),
                               "revision": revision}
        main_pods = {str(meta_of(p).get("name")) for p in pods.get("main", [])}
        found["shadow"] = self._pooled_slot(
            {n: a for n, a in answers.items() if n in main_pods}, "shadow")
        if split:
            found["canary_percent"] = _predictor(live).get(CANARY_PERCENT)
        return found

    def promote_slot(self, role: str) -> None:
        """The canary revision takes all the traffic (``canaryTrafficPercent`` dropped); in
        raw mode the InferenceService is applied with the canary's version (KServe rolls its
        predictor Deployment to it; each old pod answers its canary share until replaced)."""
        if role != "canary":
            raise MlkubeError(f"the {self.name} target promotes a canary only, not a {role}")
        live, new, _ = self._revisions()
        if raw_mode(live):
            held = self._slot_held(role)
            if held is None:
                raise MlkubeError(f"no pod of {self._slot_where()} holds a {role} to promote")
            version, model_uri = held
            self.log(f"promoting the {role} v{version}: applying "
                     f"{self._where('InferenceService')} with it (KServe rolls its predictor "
                     "Deployment to it; each old pod answers its canary share until a new one "
                     "replaces it)")
            self.roll_out(version, model_uri)
            self._slots.pop(role, None)
            self._seen.pop(role, None)
            return
        self.log(f"promoting the canary revision {new}: all traffic of "
                 f"{self._where('InferenceService')} to it")
        self.promote()
        self._seen_canary = {}

    def unload_slot(self, role: str) -> None:
        """The shadow (and in raw mode the canary): emptied in every predictor pod that holds
        it. The serverless canary revision takes no more traffic: ``canaryTrafficPercent: 0``,
        waited for until the rolled-out revision has all of it (nothing split: nothing to do)."""
        live = self._get(INFERENCE_SERVICE)
        if role == "shadow" or raw_mode(live):
            self._unload_from_pods(role)
            return
        if role != "canary":
            return
        if live is None or not _predictor(live).get(CANARY_PERCENT):
            return
        _, new, old = self._revisions()
        body = copy.deepcopy(self._applied.get("InferenceService") or restorable(live))
        body["spec"]["predictor"][CANARY_PERCENT] = 0
        self._apply(body)
        self._applied["InferenceService"] = body
        deadline = time.monotonic() + self.timeout
        while True:
            now = self._get(INFERENCE_SERVICE) or {}
            if _all_to(now, old):
                break
            if time.monotonic() > deadline:
                raise MlkubeError(f"{self._where('InferenceService')} did not route all its "
                                  f"traffic back to revision {old} in {self.timeout:g} s")
            time.sleep(self.poll)
        self._seen_canary = {}
        self.log(f"the canary revision {new} takes no traffic ({CANARY_PERCENT}: 0): revision "
                 f"{old} has all of it")

    def _bodies(self, serving: ModelServing, live: dict[str, dict[str, Any] | None]
                ) -> list[dict[str, Any]]:
        current = live["InferenceService"]
        # A canary needs something to share the traffic with: a different version serving;
        # in raw mode nothing splits the traffic (the canary is a slot in the pods).
        canary = (self.canary_percent if current is not None and not raw_mode(current)
                  and version_of(current) != serving.version else None)
        body = manifests.inference_service(serving, canary_percent=canary)
        if self._behind_zero:
            body["spec"]["predictor"][CANARY_PERCENT] = 0
        return [body]

    def _restore_body(self, before: dict[str, Any]) -> dict[str, Any]:
        body = super()._restore_body(before)
        if self._behind_zero:
            body.setdefault("spec", {}).setdefault("predictor", {})[CANARY_PERCENT] = 0
        return body

    _behind_zero = False

    def roll_back(self, version: str | None) -> None:
        """As :meth:`mlkube.targets.cluster.ClusterTarget.roll_back`; where a canary revision
        shares the traffic: it takes none first (:meth:`unload_slot`), then ``version`` comes
        back as a revision behind ``canaryTrafficPercent: 0`` and takes all the traffic once
        Ready (the canary's spec is gone; see the module doc)."""
        live = self._get(INFERENCE_SERVICE) if version is not None else None
        if raw_mode(live):  # as the Deployment target: the canary slot emptied first
            self._roll_back_past_slot(version)
            return
        if live is None or CANARY_PERCENT not in _predictor(live) \
                or version_of(live) == str(version):
            super().roll_back(version)
            return
        self.unload_slot("canary")
        self._behind_zero = True
        try:
            super().roll_back(version)
        finally:
            self._behind_zero = False
        self.promote()

    def _progress(self, live: dict[str, Any], *, full_traffic: bool = False) -> Progress:
        status = live.get("status") or {}
        generation = meta_of(live).get("generation", 0)
        observed = status.get("observedGeneration", 0)
        if observed != generation:
            return Progress(False, note=f"KServe has not yet observed generation {generation} "
                                         f"(its status is of {observed})")
        model = status.get("modelStatus") or {}
        if model.get("transitionStatus") in _KSERVE_FAILED:
            return Progress(False, failure=_failure_info(model))
        if raw_mode(live):
            return self._raw_progress()
        predictor = _predictor_status(live)
        created = predictor.get("latestCreatedRevision")
        ready_revision = predictor.get("latestReadyRevision")
        ready = conditions_of(live).get("Ready", {})
        if ready.get("status") == "True" and (not created or created == ready_revision):
            if not full_traffic or _full_traffic(predictor):
                return Progress(True)
            return Progress(False, note=f"traffic is moving to revision {ready_revision}")
        fatal = fatal_problems(self._pods(live)[0])
        if fatal:
            return Progress(False, failure=fatal[0])
        waiting = last_line(ready.get("message") or ready.get("reason") or "not ready yet")
        return Progress(False, note=f"revision {created or '?'}: {waiting}")

    def _predictor_deployment(self) -> dict[str, Any] | None:
        """Raw mode: the predictor's Deployment (KServe labels it as its pods)."""
        found = self._list(DEPLOYMENT, labels=self._predictor_labels())
        return found[0] if found else None

    def _raw_progress(self) -> Progress:
        """Raw mode: the predictor Deployment's rollout (KServe's Ready follows the
        Deployment's Available, which an old pod still serving keeps True)."""
        deployment = self._predictor_deployment()
        if deployment is None:
            return Progress(False, note="KServe has not made the predictor's Deployment yet")
        return deployment_progress(
            deployment, lambda: self._list(POD, labels=self._predictor_labels()))

    def _pods(self, live: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        if raw_mode(live):
            deployment = self._predictor_deployment()
            return (self._list(POD, labels=self._predictor_labels()),
                    [f"InferenceService/{self.serving.name}"] + (
                        [f"Deployment/{meta_of(deployment).get('name')}"] if deployment else []))
        labels = {KSERVE_ISVC_LABEL: self.serving.name}
        created = _predictor_status(live).get("latestCreatedRevision")
        if created:
            labels[KNATIVE_REVISION_LABEL] = created
        return self._list(POD, labels=labels), [f"InferenceService/{self.serving.name}"]

    def _object_reasons(self, live: dict[str, Any]) -> list[str]:
        status = live.get("status") or {}
        reasons = []
        model = status.get("modelStatus") or {}
        told = ""
        if model.get("lastFailureInfo"):
            reasons.append(_failure_info(model))
            told = last_line(model["lastFailureInfo"].get("message") or "")
        failed = [c for c in status.get("conditions") or []
                  if c.get("status") == "False" and c.get("message")]
        failed.sort(key=lambda c: c.get("type") != "Ready")  # Ready sums the others up
        for condition in failed[:1]:
            message = last_line(condition["message"])
            if not told or told not in message:
                reasons.append(f"{condition.get('type')}: {message}")
        return reasons


def _failure_info(model_status: dict[str, Any]) -> str:
    info = model_status.get("lastFailureInfo") or {}
    text = str(info.get("reason") or model_status.get("transitionStatus"))
    if info.get("exitCode"):
        text += f" (exit code {info['exitCode']})"
    if info.get("message"):
        text += f": {last_line(info['message'])}"
    if info.get("modelRevisionName"):
        text += f" [revision {info['modelRevisionName']}]"
    return text


def _full_traffic(predictor: dict[str, Any]) -> bool:
    traffic = predictor.get("traffic")
    if not traffic:  # raw deployment mode: one Deployment, no revisions
        return True
    latest = predictor.get("latestReadyRevision")
    share = sum(t.get("percent") or 0 for t in traffic
                if t.get("revisionName") == latest or (t.get("latestRevision") and
                                                        not t.get("revisionName")))
    return bool(share >= 100)


def _predictor(live: dict[str, Any]) -> dict[str, Any]:
    return dict((live.get("spec") or {}).get("predictor") or {})


def _predictor_status(live: dict[str, Any]) -> dict[str, Any]:
    """``status.components.predictor``: its revisions, address and traffic."""
    return dict(((live.get("status") or {}).get("components") or {}).get("predictor") or {})


def _all_to(live: dict[str, Any], revision: str | None, at_least: int = 100) -> bool:
    """Whether ``revision`` takes all the predictor's traffic (``at_least`` percent of it;
    status.components.predictor)."""
    traffic = _predictor_status(live).get("traffic") or []
    return bool(revision) and sum(t.get("percent") or 0 for t in traffic
                                  if t.get("revisionName") == revision) >= at_least
