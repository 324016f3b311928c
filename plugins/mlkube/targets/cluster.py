"""What the Deployment and KServe serving targets share: apply, remember, wait, explain.

Both keep the contract of :class:`mlkube.targets.base.ServingTarget`:

- ``roll_out`` remembers the live objects, applies the new ones server-side (field manager
  ``mlkube``, forced: the same version applied twice changes nothing) and waits until the new
  *generation* is ready (a status written for an older generation never counts). A Deployment
  rolls one pod at a time with ``maxUnavailable: 0``, so the old pods serve until new ones are
  ready, and its replica count belongs to its HPA: set when it is created, never applied again
  (see :meth:`mlkube.targets.deployment.DeploymentTarget._hand_replicas_over`); KServe keeps
  routing to the last ready revision. When the new version fails or time runs out, the error
  says why in the container's own words: the new pods' waiting reasons (CrashLoopBackOff,
  ImagePullBackOff...) and last termination messages (:mod:`mlkube.kube.diagnosis`), their
  Warning events (FailedScheduling...), KServe's ``lastFailureInfo`` and condition messages.
- ``roll_back(previous)`` re-applies what mlkube had applied before (read back from the live
  objects' ``managedFields`` by :mod:`mlkube.kube.applied`, so nothing the API server or a
  controller owns is claimed) and waits until it serves; ``roll_back(None)`` deletes what
  ``roll_out`` created.
- ``live_version()`` is the version annotation of the serving object once it is ready.

Both also hold a ``canary`` and a ``shadow`` slot in the runtime of each serving pod (the
``_load_into_pods``, ``_unload_from_pods`` and ``_pooled_slot`` family below; a target names
the pods, :meth:`ClusterTarget._slot_pods`): see :mod:`mlkube.targets.deployment` and
:mod:`mlkube.targets.kserve` for which slot each uses.

:func:`mlkube.targets.choose` picks the target (KServe where the cluster serves its API) and
:mod:`mlkube.kube.api` connects. What the rollout may do on the cluster is
:data:`mlkube.kube.serving.DEPLOY_RULES`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.dynamic.exceptions import NotFoundError

from mlkube.errors import MlkubeError
from mlkube.kube import podproxy, validation
from mlkube.kube.api import FIELD_MANAGER, call, dynamic, meta_of
from mlkube.kube.applied import restorable
from mlkube.kube.diagnosis import REDUNDANT_EVENTS, fatal_problems, last_line, problems_of
from mlkube.kube.serving import (
    KSERVE_API_VERSION,
    MODEL_VERSION_ANNOTATION,
    SERVER_PORT,
    ModelServing,
)
from mlkube.spec import model_lock
from mlkube.targets.base import ServingTarget

DEPLOYMENT = ("apps/v1", "Deployment")
SERVICE = ("v1", "Service")
AUTOSCALER = ("autoscaling/v2", "HorizontalPodAutoscaler")
INFERENCE_SERVICE = (KSERVE_API_VERSION, "InferenceService")
POD = ("v1", "Pod")
EVENT = ("v1", "Event")
REPLICA_SET = ("apps/v1", "ReplicaSet")
_MAX_PODS = 3  # pods whose statuses and events are read for a reason
_MAX_REASONS = 4

Log = Callable[[str], Any]


def version_of(obj: dict[str, Any] | None) -> str | None:
    """The model version a serving object carries (its annotation), or ``None``."""
    if obj is None:
        return None
    return (meta_of(obj).get("annotations") or {}).get(MODEL_VERSION_ANNOTATION) or None


def conditions_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An object's status conditions, by type."""
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


@dataclass
class Progress:
    """One read of a serving object: ready, failed for good (``failure``), or still going."""

    ready: bool
    failure: str | None = None
    note: str = ""


class ClusterTarget(ServingTarget):
    """What the Deployment and KServe targets share: apply, remember, wait, explain."""

    #: (apiVersion, kind) of the objects, in apply order; the first one serves.
    kinds: tuple[tuple[str, str], ...]

    def __init__(self, *, api_client: ApiClient, serving: ModelServing, namespace: str,
                 timeout: float = 600, poll: float = 2, log: Log = print) -> None:
        """Connect (API discovery); nothing is read or changed yet."""
        validation.dns1123_label(namespace, "serving namespace")
        validation.dns1123_label(serving.name, "serving name")
        self.namespace = namespace
        self.serving = dataclasses.replace(serving, namespace=namespace)
        self.timeout = timeout  # one pod's start; see _wait
        self._budget = (timeout, 1)  # the last wait's: seconds, pod starts
        self.poll = poll
        self.log = log
        self._host = str(api_client.configuration.host)
        self._api_client = api_client
        self._client = dynamic(api_client)
        # The live objects before the last roll_out (None: it did not exist), by kind.
        self._before: dict[str, dict[str, Any] | None] | None = None
        self._applied: dict[str, dict[str, Any]] = {}
        # The slots this process loaded into the pods' runtimes: role -> (version, model URI),
        # and the last numbers each pod reported for it since: role -> pod name -> numbers.
        self._slots: dict[str, tuple[str, str]] = {}
        self._seen: dict[str, dict[str, dict[str, Any]]] = {}

    @property
    def model_name(self) -> str:
        """The registered model's name, its name on the V2 server."""
        return self.serving.model_name

    @property
    def _main(self) -> tuple[str, str]:
        return self.kinds[0]

    def _where(self, kind: str) -> str:
        return f"{kind} {self.namespace}/{self.serving.name}"

    # -- API calls --

    def _resource(self, api_version: str, kind: str) -> Any:
        return call(f"find the {kind} API", self._host,
                    lambda: self._client.resources.get(api_version=api_version, kind=kind))

    def _get(self, which: tuple[str, str]) -> dict[str, Any] | None:
        resource = self._resource(*which)

        def read() -> dict[str, Any] | None:
            try:
                live = resource.get(name=self.serving.name, namespace=self.namespace)
            except NotFoundError:
                return None
            return dict(live.to_dict())

        return call(f"read {self._where(which[1])}", self._host, read)

    def _list(self, which: tuple[str, str], *, labels: dict[str, str] | None = None,
              fields: str | None = None) -> list[dict[str, Any]]:
        resource = self._resource(*which)
        found = call(f"list {which[1]}s in namespace {self.namespace}", self._host,
                     lambda: resource.get(namespace=self.namespace,
                                          label_selector=_selector(labels) if labels else None,
                                          field_selector=fields))
        return list(found.to_dict().get("items") or [])

    def _apply(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = self._resource(body["apiVersion"], body["kind"])
        self.log(f"applying {self._where(body['kind'])}")
        live = call(f"apply {self._where(body['kind'])}", self._host,
                    lambda: resource.server_side_apply(
                        body=body, name=self.serving.name, namespace=self.namespace,
                        field_manager=FIELD_MANAGER, force_conflicts=True))
        return dict(live.to_dict())

    def _delete(self, which: tuple[str, str]) -> None:
        resource = self._resource(*which)

        def delete() -> None:
            try:
                resource.delete(name=self.serving.name, namespace=self.namespace,
                                propagation_policy="Background")
            except NotFoundError:
                return
            self.log(f"deleted {self._where(which[1])}")

        call(f"delete {self._where(which[1])}", self._host, delete)

    def _events(self, kind: str, name: str) -> list[dict[str, Any]]:
        found = self._list(EVENT, fields=f"involvedObject.kind={kind},"
                                          f"involvedObject.name={name},type=Warning")
        return sorted(found, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime")
                                               or meta_of(e).get("creationTimestamp") or ""))

    # -- the runtime in each serving pod, through the API server's pod proxy ---------------
    # (the live gates of :mod:`mlkube.live_gates`: the slots in every serving pod, the Deployment
    # target's canary and shadow, the KServe target's shadow and raw-mode canary; the KServe
    # target's canary revision; :mod:`mlkube.kube.podproxy`)

    LIVE_TIMEOUT = 10.0  # seconds a pod's runtime has to answer its live numbers
    #: live numbers are read at most this often (seconds): each read lists the pods and asks
    #: every one through the API server, which a window of minutes must not flood
    LIVE_INTERVAL = 1.0
    _last_live = float("-inf")

    def _runtime_pods(self, labels: dict[str, str], *,
                      ready_only: bool = True) -> list[dict[str, Any]]:
        """The pods ``labels`` select whose runtime answers: running, with an IP, not being
        deleted (``ready_only``: and Ready, i.e. taking traffic), by name."""
        found = []
        for pod in self._list(POD, labels=labels):
            status = pod.get("status") or {}
            if meta_of(pod).get("deletionTimestamp") or not status.get("podIP") \
                    or status.get("phase") != "Running":
                continue
            if ready_only and not pod_ready(pod):
                continue
            found.append(pod)
        return sorted(found, key=lambda p: str(meta_of(p).get("name")))

    def _runtime(self, pod: dict[str, Any], parts: list[str], body: Any = None,
                 timeout: float = 30.0) -> Any:
        """``GET`` (``body`` None) or ``POST`` ``/<parts...>`` on ``pod``'s runtime."""
        return podproxy.call(self._api_client, self.namespace, str(meta_of(pod).get("name")),
                             runtime_port(pod), parts, body, timeout)

    def _live_answers(self, pods: list[dict[str, Any]], where: str
                      ) -> dict[str, dict[str, Any]]:
        """Each pod's ``GET /v2/models/{name}/live`` by pod name (the pods that answered; none
        did: the first problem, one line); at most one read a :attr:`LIVE_INTERVAL` (a sooner
        call waits for it)."""
        wait = self._last_live + self.LIVE_INTERVAL - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_live = time.monotonic()
        answers: dict[str, dict[str, Any]] = {}
        problems = []
        for pod in pods:
            try:
                answers[str(meta_of(pod).get("name"))] = self._runtime(
                    pod, ["v2", "models", self.model_name, "live"], timeout=self.LIVE_TIMEOUT)
            except MlkubeError as exc:
                problems.append(str(exc))
        if not answers:
            raise MlkubeError(problems[0] if problems else
                              f"no ready pod of {where} reports live numbers")
        return answers

    # -- slots in the serving pods' runtimes (the Deployment target's canary and shadow, the
    # KServe target's shadow and its raw-deployment canary): what a subclass gives is which
    # pods hold them (``_slot_pods``) and how to name those pods in a line (``_slot_where``)

    def _slot_pods(self, *, ready_only: bool = True) -> list[dict[str, Any]]:
        """The pods whose runtime holds the slots (see ``_runtime_pods``)."""
        raise NotImplementedError

    def _slot_where(self) -> str:
        """Those pods, in words (``Deployment ml/name``)."""
        raise NotImplementedError

    def _repository(self, action: str) -> list[str]:
        return ["v2", "repository", "models", self.model_name, action]

    def _load_into_pods(self, role: str, version: str, model_uri: str, share: float) -> None:
        """Load and verify ``version`` into the ``role`` slot of every ready slot pod's runtime,
        at once; a pod that refuses it: unloaded from the others, and one line naming it."""
        pods = self._slot_pods()
        where = self._slot_where()
        if not pods:
            raise MlkubeError(f"no ready pod of {where} to load the {role} v{version} into")
        self.log(f"loading version {version} as the {role} ({share:.0%} of each pod's live "
                 f"requests) into the runtime of the {len(pods)} ready pod"
                 f"{'s' if len(pods) != 1 else ''} of {where}")
        parameters: dict[str, Any] = {"model_uri": model_uri, "version": str(version),
                                      "role": role, "share": share}
        if self.serving.verify_batch is not None:
            parameters["verify_batch"] = self.serving.verify_batch

        def load(pod: dict[str, Any]) -> str | None:
            try:
                self._runtime(pod, self._repository("load"), {"parameters": parameters},
                              timeout=self.timeout)
            except MlkubeError as exc:
                return str(exc)
            return None

        with ThreadPoolExecutor(max_workers=min(8, len(pods))) as pool:
            outcomes = list(pool.map(load, pods))
        failed = [why for why in outcomes if why is not None]
        if failed:
            for pod, why in zip(pods, outcomes, strict=True):
                if why is None:
                    self._unload_from(pod, role)
            raise MlkubeError(f"the {role} v{version} did not load in {len(failed)} of "
                              f"{len(pods)} ready pods of {where} (unloaded from the others): "
                              f"{failed[0]}")
        self._slots[role] = (str(version), model_uri)
        self._seen[role] = {}

    def _unload_from(self, pod: dict[str, Any], role: str) -> bool:
        """Empty ``role`` in ``pod``'s runtime; whether it held one (an error: raised)."""
        try:
            self._runtime(pod, self._repository("unload"), {"parameters": {"role": role}})
        except podproxy.ProxyError as exc:
            if exc.from_runtime and exc.status == 404:  # it held none (any more)
                return False
            raise
        return True

    def _unload_from_pods(self, role: str) -> None:
        """Empty the ``role`` slot in every running slot pod that holds one; a ready pod that
        cannot be reached or refuses: one line, after the others were emptied."""
        problems = []
        emptied = 0
        for pod in self._slot_pods(ready_only=False):
            try:
                numbers = self._runtime(pod, ["v2", "models", self.model_name, "live"],
                                        timeout=self.LIVE_TIMEOUT)
                if (numbers or {}).get(role) is not None and self._unload_from(pod, role):
                    emptied += 1
            except MlkubeError as exc:
                if pod_ready(pod):  # an unready pod takes no traffic; it may not listen at all
                    problems.append(str(exc))
        self._slots.pop(role, None)
        self._seen.pop(role, None)
        if emptied:
            self.log(f"unloaded the {role} from {emptied} pod{'s' if emptied != 1 else ''} of "
                     f"{self._slot_where()}")
        if problems:
            raise MlkubeError(f"could not empty the {role} slot of every pod of "
                              f"{self._slot_where()}: {problems[0]}")

    def _pooled_slot(self, answers: dict[str, dict[str, Any]], role: str
                     ) -> dict[str, Any] | None:
        """The ``role`` slot's numbers pooled over the pods' ``answers`` (by pod name), with
        ``pods``: how many hold it now; a pod gone since keeps its last numbers counted while
        this process judges what it loaded (``None``: no pod holds it)."""
        expected = self._slots.get(role, (None, ""))[0]
        holding = {pod: a[role] for pod, a in answers.items() if a.get(role) is not None
                   and (expected is None or str(a[role].get("version")) == expected)}
        if not holding:
            return None
        if expected is None:  # not loaded by this process: what the pods hold now
            return {**pooled(list(holding.values()), role), "pods": len(holding)}
        counted = self._seen.setdefault(role, {})
        counted.update(holding)
        return {**pooled(list(counted.values()), role), "pods": len(holding)}

    def _slot_held(self, role: str) -> tuple[str, str] | None:
        """(version, model URI) of the ``role`` slot: what this process loaded, else what the
        ready slot pods hold (an earlier, killed deploy loaded it), else ``None``."""
        if role in self._slots:
            return self._slots[role]
        answers = self._live_answers(self._slot_pods(), self._slot_where())
        held = self._pooled_slot(answers, role)
        if held is None:
            return None
        version = str(held["version"])
        return version, f"models:/{self.model_name}/{version}"

    def _clear_slot(self, role: str) -> None:
        """Unload ``role`` from the slot pods: strict when this process loaded one; else one an
        earlier, killed deploy left (a failure to look is only said: the target serves without
        the pod proxy too)."""
        strict = role in self._slots
        try:
            self._unload_from_pods(role)
        except MlkubeError as exc:
            if strict:
                raise
            self.log(f"could not look for a {role} an earlier deploy left in the pods: {exc}")

    # -- what the subclasses define --

    def _bodies(self, serving: ModelServing, live: dict[str, dict[str, Any] | None]
                ) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _progress(self, live: dict[str, Any], *, full_traffic: bool = False) -> Progress:
        raise NotImplementedError

    def _pods(self, live: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        """The new version's pods, and what else explains the rollout (kind/name for events)."""
        raise NotImplementedError

    def _object_reasons(self, live: dict[str, Any]) -> list[str]:
        """What the object's own status says went wrong."""
        return []

    # -- the contract --

    def live_version(self) -> str | None:
        """The version the serving object carries, once it is ready; else ``None``."""
        live = self._get(self._main)
        if live is None or not self._serves(live):
            return None
        return version_of(live)

    def _serves(self, live: dict[str, Any]) -> bool:
        """Whether the object's current generation serves (a scaling HPA does not matter)."""
        return self._progress(live).ready

    def roll_out(self, version: str, model_uri: str) -> None:
        """Apply ``version`` and wait until its own generation is ready (see the module doc)."""
        target = dataclasses.replace(self.serving, version=str(version),
                                     model_uri=model_uri).validated()
        live = {kind: self._get((api_version, kind)) for api_version, kind in self.kinds}
        if self._before is None or version_of(live[self._main[1]]) != target.version:
            self._before = live
        bodies = self._bodies(target, live)
        for body in bodies:
            self._apply(body)
        self._applied = {body["kind"]: body for body in bodies}
        self._wait(target.version, "roll out")

    def roll_back(self, version: str | None) -> None:
        """Serve ``version`` again: what :meth:`roll_out` found, when that carried ``version``,
        else ``version`` rendered again (a killed deploy's retry finds the new version on the
        objects); ``None``: nothing served before: delete the serving objects."""
        main = self._main[1]
        if version is None:
            if self._before is None and self._get(self._main) is None:
                self.log(f"nothing to roll back for {self._where(main)}: nothing was rolled out")
                return
            for which in reversed(self.kinds):
                self._delete(which)
            self._applied = {}
            return
        before = self._before
        if before is not None and before[main] is not None and version_of(
                before[main]) == str(version):
            for _, kind in self.kinds:
                if before[kind] is not None:
                    self._apply(self._restore_body(before[kind] or {}))
            for which in reversed(self.kinds):
                if before[which[1]] is None:
                    self._delete(which)
        else:
            live = self._get(self._main)
            if live is not None and version_of(live) == str(version) and self._serves(live):
                return
            self.log(f"rolling {self._where(main)} back to v{version}, rendered again (the "
                     "objects no longer hold it)")
            target = dataclasses.replace(
                self.serving, version=str(version),
                model_uri=f"models:/{self.model_name}/{version}").validated()
            now = {kind: self._get((api_version, kind)) for api_version, kind in self.kinds}
            for body in self._bodies(target, now):
                self._apply(body)
        self._applied = {}
        self._wait(str(version), "roll back to")

    def _roll_back_past_slot(self, version: str | None) -> None:
        """:meth:`roll_back` for a target whose canary is a slot in the serving pods: the slot
        is emptied first; a slot that would not empty is said after the rollback, which goes
        on regardless."""
        problem = None
        if version is not None:
            try:
                self._clear_slot("canary")
            except MlkubeError as exc:
                problem = exc
        ClusterTarget.roll_back(self, version)
        if problem is not None:
            raise MlkubeError(f"v{version} serves again, but {problem}")

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model's Lease (:mod:`mlkube.kube.lease`, named :func:`mlkube.spec.model_lock`)
        in the serving namespace for the block."""
        from mlkube.kube.lease import Lease

        lease = Lease(self._api_client, self.namespace, model_lock(self.model_name), log=self.log)
        with lease.held():
            yield

    def _restore_body(self, before: dict[str, Any]) -> dict[str, Any]:
        return restorable(before)

    # -- waiting and explaining --

    def _pod_starts(self, live: dict[str, Any]) -> int:
        """How many pod starts one after the other this rollout takes (one, by default)."""
        return 1

    def _wait(self, version: str, action: str, *, full_traffic: bool = False) -> dict[str, Any]:
        """Poll until the serving object is ready; else raise with the reason. The wait is
        ``timeout`` (one pod's start) for each pod started one after the other."""
        main = self._main[1]
        first = self._get(self._main)
        starts = self._pod_starts(first) if first is not None else 1
        self._budget = (self.timeout * starts, starts)
        deadline = time.monotonic() + self.timeout * starts
        last_note = ""
        while True:
            live = self._get(self._main)
            if live is None:
                raise MlkubeError(f"{self._where(main)} is gone while waiting for "
                                  f"v{version} to serve: something deleted it")
            progress = self._progress(live, full_traffic=full_traffic)
            if progress.ready:
                self.log(f"{self._where(main)} serves {self.model_name} v{version}")
                return live
            if progress.failure or time.monotonic() >= deadline:
                raise MlkubeError(self._failure(live, version, action, progress))
            if progress.note and progress.note != last_note:
                self.log(f"waiting for {self._where(main)}: {progress.note}")
                last_note = progress.note
            time.sleep(self.poll)

    def _failure(self, live: dict[str, Any], version: str, action: str,
                 progress: Progress) -> str:
        reasons = self._reasons(live)
        if progress.failure and not any(progress.failure in r for r in reasons):
            reasons.append(progress.failure)
        if not progress.failure:
            budget, starts = self._budget
            reasons.insert(0, f"not ready after {budget:g}s" + (
                f" ({starts} pod starts of {self.timeout:g}s)" if starts > 1 else ""))
            if len(reasons) == 1:
                reasons.append(progress.note or "no pod, event or condition says why")
        previous = version_of((self._before or {}).get(self._main[1]))
        if action == "roll out" and previous == str(version):  # a retry: the deploy step knows
            after = "the deploy step rolls back to what its record says served"
        elif action == "roll out":
            after = (f"the previous version (v{previous}) keeps serving" if previous
                     else "nothing served before")
        else:
            after = "check the objects with kubectl describe"
        return (f"{self._where(self._main[1])} could not {action} {self.model_name} "
                f"v{version}: {'; '.join(reasons[:_MAX_REASONS + 1])}; {after}")

    def _reasons(self, live: dict[str, Any]) -> list[str]:
        """Why the new version does not serve: its containers first, then events, then status."""
        pods, others = self._pods(live)
        by_problem: dict[str, list[str]] = {}  # the same crash in every replica: said once
        for pod in pods:
            for name, problem in problems_of(pod):
                by_problem.setdefault(problem, []).append(name)
        reasons = [f"pod {names[0]} {problem}" + (f" (and {len(names) - 1} more pods)"
                                                   if len(names) > 1 else "")
                   for problem, names in by_problem.items()]
        seen: set[tuple[str, str]] = set()
        involved = [("Pod", meta_of(p).get("name", "")) for p in pods[:_MAX_PODS]]
        involved += [(kind, name) for kind, name in (o.split("/", 1) for o in others)]
        for kind, name in involved:
            for event in self._events(kind, name):
                reason, message = str(event.get("reason", "")), last_line(event.get("message", ""))
                said = any(message and message in r for r in reasons)  # a condition said it
                if reason not in REDUNDANT_EVENTS and (reason, message) not in seen and not said:
                    seen.add((reason, message))
                    reasons.append(f"{reason} on {kind.lower()} {name}: {message}")
        for reason in self._object_reasons(live):
            if reason not in reasons:
                reasons.append(reason)
        return _dedupe(reasons)


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def deployment_progress(live: dict[str, Any],
                        pods: Callable[[], list[dict[str, Any]]]) -> Progress:
    """A Deployment's rollout, read from its status: ready once its current generation's pods
    are all updated and available (old ones gone); failed for good on ``ReplicaFailure``,
    ``Progressing: False`` or a fatal problem of one of its ``pods()`` (listed only while the
    rollout is under way: CrashLoopBackOff, ImagePullBackOff...); else what is still going
    (the Deployment target's, and the KServe target's predictor Deployment in raw-deployment
    mode)."""
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
    fatal = fatal_problems(pods())
    if fatal:
        return Progress(False, failure=fatal[0])
    return Progress(False, note=f"{updated} of {want} pods updated, {available} available, "
                                 f"{total - updated} old ones still running")


def pod_ready(pod: dict[str, Any]) -> bool:
    """Whether the pod's ``Ready`` condition is ``True`` (it is among its Service's endpoints)."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def runtime_port(pod: dict[str, Any]) -> int:
    """The runtime's port: the first container's port named ``http`` or ``http1`` (KServe's),
    else its first port (Knative renames the user container's port ``user-port`` and appends
    its queue-proxy container after it), else 8080."""
    containers = (pod.get("spec") or {}).get("containers") or []
    ports = list((containers[0] if containers else {}).get("ports") or [])
    named = [p for p in ports if p.get("name") in ("http", "http1")] or ports
    return int(named[0]["containerPort"]) if named else SERVER_PORT


def pooled(docs: list[dict[str, Any]], role: str) -> dict[str, Any]:
    """One slot's live numbers over several pods: counts summed, the shadow's agreement and
    mean difference weighted by compared rows, p50 and p99 the largest of the pods' (an upper
    bound of the pooled quantile: a pooled p99 is never above the largest per-pod p99)."""
    requests = sum(int(d.get("requests") or 0) for d in docs)
    errors = sum(int(d.get("errors") or 0) for d in docs)
    versions = sorted({str(d.get("version")) for d in docs})

    def largest(key: str) -> float | None:
        values = [float(d[key]) for d in docs if d.get(key) is not None]
        return max(values) if values else None

    found: dict[str, Any] = {
        "version": "/".join(versions) if versions else None, "requests": requests,
        "rows": sum(int(d.get("rows") or 0) for d in docs), "errors": errors,
        "error_rate": errors / requests if requests else 0.0,
        "p50_ms": largest("p50_ms"), "p99_ms": largest("p99_ms")}
    if docs and "share" in docs[0]:
        found["share"] = docs[0]["share"]
    if role == "shadow":
        found["dropped"] = sum(int(d.get("dropped") or 0) for d in docs)
        found["compared_rows"] = sum(int(d.get("compared_rows") or 0) for d in docs)
        for key in ("agreement", "mean_abs_diff"):
            weighted = [(float(d[key]), int(d.get("compared_rows") or 0)) for d in docs
                        if d.get(key) is not None]
            rows = sum(n for _, n in weighted)
            found[key] = sum(v * n for v, n in weighted) / rows if rows else None
    return found
