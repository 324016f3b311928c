"""Roll a model version out on a cluster: the Deployment and KServe serving targets.

Both keep the contract of :class:`mlkube.targets.base.ServingTarget`:

- ``roll_out`` remembers the live objects, applies the new ones server-side (field manager
  ``mlkube``, forced: the same version applied twice changes nothing) and waits until the new
  *generation* is ready (a status written for an older generation never counts). A Deployment
  rolls one pod at a time with ``maxUnavailable: 0``, so the old pods serve until new ones are
  ready, and its replica count belongs to its HPA: set when it is created, never applied again
  (see :meth:`DeploymentTarget._hand_replicas_over`); KServe keeps routing to the last ready
  revision. When the new version fails or time runs out, the error says why in the
  container's own words: the new pods' waiting reasons (CrashLoopBackOff, ImagePullBackOff...)
  and last termination messages, their Warning events (FailedScheduling...), KServe's
  ``lastFailureInfo`` and condition messages.
- ``roll_back(previous)`` re-applies what mlkube had applied before (read back from the live
  objects' ``managedFields``, so nothing the API server or a controller owns is claimed) and
  waits until it serves; ``roll_back(None)`` deletes what ``roll_out`` created.
- ``live_version()`` is the version annotation of the serving object once it is ready.

:func:`cluster_target` picks the target (KServe where the cluster serves its API) and
:func:`api_client` connects (in-cluster in a pod, else the current kubeconfig). What the
rollout may do on the cluster is :data:`mlkube.kube.serving.DEPLOY_RULES`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from kubernetes.client import ApiClient
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.discovery import LazyDiscoverer
from kubernetes.dynamic.exceptions import (
    ConflictError,
    DynamicApiError,
    NotFoundError,
    ResourceNotFoundError,
)

from mlkube.errors import MlkubeError, first_line
from mlkube.kube import serving as manifests
from mlkube.kube import validation
from mlkube.kube.serving import MODEL_VERSION_ANNOTATION, ModelServing
from mlkube.targets.base import ServingTarget

Kind = Literal["auto", "deployment", "kserve"]
KINDS: tuple[Kind, ...] = ("auto", "deployment", "kserve")
FIELD_MANAGER = "mlkube"
# Takes a Deployment's replica count over from mlkube's apply until the HPA writes it.
HANDOVER_MANAGER = "mlkube-handover-to-hpa"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
KSERVE_ISVC_LABEL = "serving.kserve.io/inferenceservice"
KNATIVE_REVISION_LABEL = "serving.knative.dev/revision"
# Container waiting reasons that do not heal by waiting: the rollout fails at once.
FATAL_WAITING = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
    "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})
# Waiting reasons that only mean "starting".
_STARTING = frozenset({"ContainerCreating", "PodInitializing"})
# Events that repeat what the container status says (its waiting reason).
_REDUNDANT_EVENTS = frozenset({"BackOff"})
_KSERVE_FAILED = frozenset({"BlockedByFailedLoad", "InvalidSpec"})
_MAX_PODS = 3  # pods whose statuses and events are read for a reason
_MAX_REASONS = 4
_MAX_TEXT = 300

DEPLOYMENT = ("apps/v1", "Deployment")
SERVICE = ("v1", "Service")
AUTOSCALER = ("autoscaling/v2", "HorizontalPodAutoscaler")
INFERENCE_SERVICE = (manifests.KSERVE_API_VERSION, "InferenceService")
_POD = ("v1", "Pod")
_EVENT = ("v1", "Event")
_REPLICA_SET = ("apps/v1", "ReplicaSet")
# Fields the API server allocates: never re-applied from a live object.
_ALLOCATED = {"Service": ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy",
                          "healthCheckNodePort")}

Log = Callable[[str], Any]


# --- connecting ---------------------------------------------------------------------------


NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def own_namespace() -> str:
    """In a pod: the namespace it runs in (its service account's); elsewhere ``default``."""
    path = Path(NAMESPACE_FILE)
    return path.read_text().strip() if path.is_file() else "default"


def api_client() -> ApiClient:
    """A client for this pod's cluster (in-cluster config), else for the current kubeconfig."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise MlkubeError(
                f"in-cluster Kubernetes config is unusable ({first_line(exc)}): run the pod "
                "with its service account token mounted (automountServiceAccountToken: true)"
            ) from None
        return client.ApiClient(configuration)
    where = os.environ.get("KUBECONFIG") or None  # read now: the client reads it at import
    try:
        return config.new_client_from_config(config_file=where)
    except (ConfigException, OSError) as exc:
        where = where or "~/.kube/config"
        raise MlkubeError(
            f"no usable Kubernetes config at {where} ({first_line(exc)}): set KUBECONFIG or "
            "select a context with kubectl, or run inside the cluster"
        ) from None


class _Discoverer(LazyDiscoverer):
    """Discovery that never persists: a cached API list could claim KServe after removal."""

    def _write_cache(self) -> None:
        return None


def _dynamic(client: ApiClient) -> DynamicClient:
    cache = os.path.join(tempfile.gettempdir(), f"mlkube-discovery-{uuid.uuid4().hex}.json")
    return _call("discover the cluster's APIs", client.configuration.host,
                 lambda: DynamicClient(client, cache_file=cache, discoverer=_Discoverer))


def _call(what: str, where: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, with the API server's refusal or unreachability as one line."""
    from urllib3.exceptions import HTTPError

    try:
        return fn()
    except DynamicApiError as exc:
        message = _api_message(exc)
        hint = ""
        if exc.status == 403:
            hint = ("; give the deploy step's service account mlkube's deploy Role "
                    "(mlkube.kube.serving.deploy_rbac)")
        raise MlkubeError(f"could not {what} in {where}: {message}{hint}") from None
    except HTTPError as exc:
        raise MlkubeError(f"could not {what}: the Kubernetes API at {where} does not answer "
                          f"({first_line(exc)})") from None


def _api_message(exc: DynamicApiError) -> str:
    try:
        body = json.loads(exc.body)
    except (TypeError, ValueError):
        body = {}
    text = body.get("message") if isinstance(body, dict) else None
    return _line(str(text or f"{exc.status} {exc.reason}"))


def kserve_served(client: DynamicClient) -> bool:
    """Whether the cluster serves KServe's ``InferenceService`` API."""
    try:
        client.resources.get(api_version=INFERENCE_SERVICE[0], kind=INFERENCE_SERVICE[1])
    except ResourceNotFoundError:
        return False
    return True


def cluster_target(kind: Kind, *, api_client: ApiClient, serving: ModelServing, namespace: str,
                   canary_percent: int | None = None, timeout: float = 600, poll: float = 2,
                   log: Log = print) -> ServingTarget:
    """The cluster target to serve on: KServe where the cluster serves its API (``auto``).

    Args:
        kind: ``auto``, ``deployment`` or ``kserve``.
        api_client: the connection (see :func:`api_client`).
        serving: what to serve and how big; ``roll_out`` fills in version and model URI.
        namespace: where the serving objects live.
        canary_percent: KServe only: the share of traffic a new version takes until
            :meth:`~mlkube.targets.base.ServingTarget.promote`.
        timeout: seconds a rollout or roll-back may take to become ready.
        poll: seconds between status reads.
        log: where progress lines go.
    """
    if kind not in KINDS:
        raise MlkubeError(f"serving target is {kind!r}; use one of: {', '.join(KINDS)}")
    client = _dynamic(api_client)
    host = api_client.configuration.host
    served = _call("discover the cluster's APIs", host, lambda: kserve_served(client))
    if kind == "kserve" and not served:
        raise MlkubeError(
            f"serving target 'kserve' was asked for, but the cluster at {host} does not serve "
            f"{INFERENCE_SERVICE[0]} InferenceService (KServe is not installed): install KServe, "
            "or use the 'deployment' or 'auto' target"
        )
    common: dict[str, Any] = {"api_client": api_client, "serving": serving,
                              "namespace": namespace, "timeout": timeout, "poll": poll, "log": log}
    if kind == "kserve" or (kind == "auto" and served):
        return KServeTarget(canary_percent=canary_percent, **common)
    if canary_percent is not None:
        if kind == "deployment":
            raise MlkubeError(f"canary percent {canary_percent} needs the kserve target; a "
                              "Deployment rolls its pods over instead (drop the canary percent)")
        log(f"the cluster has no KServe: serving with a Deployment, which rolls its pods over "
            f"instead of a {canary_percent}% canary")
    return DeploymentTarget(**common)


# --- reading objects ----------------------------------------------------------------------


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _version(obj: dict[str, Any] | None) -> str | None:
    if obj is None:
        return None
    return (_meta(obj).get("annotations") or {}).get(MODEL_VERSION_ANNOTATION) or None


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


def _line(text: str, limit: int = _MAX_TEXT) -> str:
    """The last non-empty line of ``text`` (a log tail ends with the error), shortened."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= limit else last[: limit - 3] + "..."


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def applied_config(live: dict[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any] | None:
    """What ``manager`` last applied to ``live``, read back from its ``managedFields``.

    Like client-go's ``Extract*`` functions: only the fields the manager's apply owns, so
    re-applying it restores them and claims nothing that the API server (defaults, a Service's
    cluster IP) or a controller owns. ``None`` when ``manager`` never applied to it.
    """
    entries = [m for m in _meta(live).get("managedFields") or []
               if m.get("manager") == manager and m.get("operation") == "Apply"
               and not m.get("subresource") and m.get("fieldsV1")]
    if not entries:
        return None
    entry = next((m for m in entries if m.get("apiVersion") == live.get("apiVersion")), entries[0])
    config: dict[str, Any] = _extract(live, entry["fieldsV1"])
    return _identified(config, live)


def _identified(config: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    config["apiVersion"] = live["apiVersion"]
    config["kind"] = live["kind"]
    metadata = config.setdefault("metadata", {})
    metadata["name"] = _meta(live)["name"]
    if _meta(live).get("namespace"):
        metadata["namespace"] = _meta(live)["namespace"]
    return config


def _extract(value: Any, fields: dict[str, Any]) -> Any:
    """The part of ``value`` a ``fieldsV1`` set names (``f:``, ``k:``, ``v:`` keys)."""
    children = {k: v for k, v in fields.items() if k != "."}
    if not children:  # a leaf, or an atomic list/map: owned whole
        if "." in fields and isinstance(value, (dict, list)):
            return type(value)()
        return copy.deepcopy(value)
    if isinstance(value, dict):
        return {key[2:]: _extract(value[key[2:]], sub) for key, sub in children.items()
                if key.startswith("f:") and key[2:] in value}
    if isinstance(value, list):
        kept = []
        for item in value:
            for key, sub in children.items():
                if key.startswith("k:"):
                    ident = json.loads(key[2:])
                    if isinstance(item, dict) and all(item.get(k) == v for k, v in ident.items()):
                        kept.append({**ident, **_extract(item, sub)})
                        break
                elif key.startswith("v:") and item == json.loads(key[2:]):
                    kept.append(copy.deepcopy(item))
                    break
        return kept
    return copy.deepcopy(value)


def _owns(live: dict[str, Any], manager: str, *path: str) -> bool:
    """Whether ``manager``'s apply owns the field at ``path`` of ``live``."""
    for entry in _meta(live).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply" \
                or entry.get("subresource"):
            continue
        fields = entry.get("fieldsV1") or {}
        for part in path:
            fields = fields.get(f"f:{part}") if isinstance(fields, dict) else None
        if fields is not None:
            return True
    return False


def _fallback_config(live: dict[str, Any]) -> dict[str, Any]:
    """An object mlkube never applied: its labels, annotations and spec, minus what the API
    server allocated or controllers own."""
    meta = _meta(live)
    own = {k: v for k, v in (meta.get("annotations") or {}).items()
           if not k.startswith(("kubectl.kubernetes.io/", "deployment.kubernetes.io/"))}
    spec = copy.deepcopy(live.get("spec") or {})
    for field in _ALLOCATED.get(live["kind"], ()):
        spec.pop(field, None)
    config = {"metadata": {"labels": dict(meta.get("labels") or {}), "annotations": own},
              "spec": spec}
    return _identified(config, live)


def restorable(live: dict[str, Any]) -> dict[str, Any]:
    """What to apply to put ``live`` back as it is (see :func:`applied_config`)."""
    return applied_config(live) or _fallback_config(live)


# --- the targets --------------------------------------------------------------------------


@dataclass
class _Progress:
    ready: bool
    failure: str | None = None
    note: str = ""


class _ClusterTarget(ServingTarget):
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
        self._client = _dynamic(api_client)
        # The live objects before the last roll_out (None: it did not exist), by kind.
        self._before: dict[str, dict[str, Any] | None] | None = None
        self._applied: dict[str, dict[str, Any]] = {}

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
        return _call(f"find the {kind} API", self._host,
                     lambda: self._client.resources.get(api_version=api_version, kind=kind))

    def _get(self, which: tuple[str, str]) -> dict[str, Any] | None:
        resource = self._resource(*which)

        def read() -> dict[str, Any] | None:
            try:
                live = resource.get(name=self.serving.name, namespace=self.namespace)
            except NotFoundError:
                return None
            return dict(live.to_dict())

        return _call(f"read {self._where(which[1])}", self._host, read)

    def _list(self, which: tuple[str, str], *, labels: dict[str, str] | None = None,
              fields: str | None = None) -> list[dict[str, Any]]:
        resource = self._resource(*which)
        found = _call(f"list {which[1]}s in namespace {self.namespace}", self._host,
                      lambda: resource.get(namespace=self.namespace,
                                           label_selector=_selector(labels) if labels else None,
                                           field_selector=fields))
        return list(found.to_dict().get("items") or [])

    def _apply(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = self._resource(body["apiVersion"], body["kind"])
        self.log(f"applying {self._where(body['kind'])}")
        live = _call(f"apply {self._where(body['kind'])}", self._host,
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

        _call(f"delete {self._where(which[1])}", self._host, delete)

    def _events(self, kind: str, name: str) -> list[dict[str, Any]]:
        found = self._list(_EVENT, fields=f"involvedObject.kind={kind},"
                                          f"involvedObject.name={name},type=Warning")
        return sorted(found, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime")
                                               or _meta(e).get("creationTimestamp") or ""))

    # -- what the subclasses define --

    def _bodies(self, serving: ModelServing, live: dict[str, dict[str, Any] | None]
                ) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _progress(self, live: dict[str, Any], *, full_traffic: bool = False) -> _Progress:
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
        return _version(live)

    def _serves(self, live: dict[str, Any]) -> bool:
        """Whether the object's current generation serves (a scaling HPA does not matter)."""
        return self._progress(live).ready

    def roll_out(self, version: str, model_uri: str) -> None:
        """Apply ``version`` and wait until its own generation is ready (see the module doc)."""
        target = dataclasses.replace(self.serving, version=str(version),
                                     model_uri=model_uri).validated()
        live = {kind: self._get((api_version, kind)) for api_version, kind in self.kinds}
        if self._before is None or _version(live[self._main[1]]) != target.version:
            self._before = live
        bodies = self._bodies(target, live)
        for body in bodies:
            self._apply(body)
        self._applied = {body["kind"]: body for body in bodies}
        self._wait(target.version, "roll out")

    def roll_back(self, version: str | None) -> None:
        """Put back what served before :meth:`roll_out`; ``None``: delete what it created."""
        main = self._main[1]
        if self._before is None:
            live = self._get(self._main)
            if version is None:
                self.log(f"nothing to roll back for {self._where(main)}: nothing was rolled out")
                return
            if live is not None and _version(live) == str(version) and self._serves(live):
                return
            raise MlkubeError(
                f"cannot roll {self._where(main)} back to v{version}: this target rolled "
                "nothing out, so it knows no previous objects; roll that version out instead")
        before = self._before
        previous = _version(before[main])
        if version is not None and previous != str(version):
            was = f"v{previous}" if previous else "nothing"
            self.log(f"rolling back to what was there before the rollout ({was}), "
                     f"not to v{version}")
        for _, kind in self.kinds:
            if before[kind] is not None:
                self._apply(self._restore_body(before[kind] or {}))
        for which in reversed(self.kinds):
            if before[which[1]] is None:
                self._delete(which)
        self._applied = {}
        if version is not None and before[main] is not None:
            self._wait(previous or "?", "roll back to")

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
                 progress: _Progress) -> str:
        reasons = self._reasons(live)
        if progress.failure and not any(progress.failure in r for r in reasons):
            reasons.append(progress.failure)
        if not progress.failure:
            budget, starts = self._budget
            reasons.insert(0, f"not ready after {budget:g}s" + (
                f" ({starts} pod starts of {self.timeout:g}s)" if starts > 1 else ""))
            if len(reasons) == 1:
                reasons.append(progress.note or "no pod, event or condition says why")
        previous = _version((self._before or {}).get(self._main[1]))
        if action == "roll out":
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
            for name, problem in _pod_problems(pod):
                by_problem.setdefault(problem, []).append(name)
        reasons = [f"pod {names[0]} {problem}" + (f" (and {len(names) - 1} more pods)"
                                                   if len(names) > 1 else "")
                   for problem, names in by_problem.items()]
        seen: set[tuple[str, str]] = set()
        involved = [("Pod", _meta(p).get("name", "")) for p in pods[:_MAX_PODS]]
        involved += [(kind, name) for kind, name in (o.split("/", 1) for o in others)]
        for kind, name in involved:
            for event in self._events(kind, name):
                reason, message = str(event.get("reason", "")), _line(event.get("message", ""))
                said = any(message and message in r for r in reasons)  # a condition said it
                if reason not in _REDUNDANT_EVENTS and (reason, message) not in seen and not said:
                    seen.add((reason, message))
                    reasons.append(f"{reason} on {kind.lower()} {name}: {message}")
        for reason in self._object_reasons(live):
            if reason not in reasons:
                reasons.append(reason)
        return _dedupe(reasons)


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def pod_problems(pod: dict[str, Any]) -> list[str]:
    """What a pod's status says keeps it from serving, in the container's own words."""
    return [f"pod {name} {problem}" for name, problem in _pod_problems(pod)]


def _pod_problems(pod: dict[str, Any]) -> list[tuple[str, str]]:
    name = _meta(pod).get("name", "?")
    status = pod.get("status") or {}
    found: list[tuple[str, str]] = []
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    for container in statuses:
        parts = []
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        reason = waiting.get("reason")
        if reason and reason not in _STARTING:
            message = waiting.get("message") if reason != "CrashLoopBackOff" else None
            parts.append(f"{reason}" + (f" ({_line(message)})" if message else ""))
        terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated")
        if terminated and terminated.get("exitCode", 0) != 0:
            text = f"exited with code {terminated.get('exitCode')}"
            if terminated.get("reason"):
                text += f" ({terminated['reason']})"
            if terminated.get("message"):
                text += f": {_line(terminated['message'])}"
            parts.append(text)
        if not parts and state.get("running") and not container.get("ready"):
            parts.append(f"running, not ready yet (restarts: {container.get('restartCount', 0)})")
        if parts:
            found.append((name, f"container {container.get('name')}: {', '.join(parts)}"))
    if not statuses:
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                found.append((name, f"is not scheduled ({condition.get('reason')}): "
                                    f"{_line(condition.get('message', ''))}"))
    return found


def _fatal(pods: Iterable[dict[str, Any]]) -> list[str]:
    """The problems of pods whose containers wait for a reason that does not heal."""
    fatal = []
    for pod in pods:
        status = pod.get("status") or {}
        statuses = [*(status.get("initContainerStatuses") or []),
                    *(status.get("containerStatuses") or [])]
        if any(((c.get("state") or {}).get("waiting") or {}).get("reason") in FATAL_WAITING
               for c in statuses):
            fatal += pod_problems(pod)
    return fatal


class DeploymentTarget(_ClusterTarget):
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
        if live is None or not _owns(live, FIELD_MANAGER, "spec", "replicas"):
            return
        body = _identified({"spec": {"replicas": (live.get("spec") or {}).get("replicas", 1)}},
                           live)
        resource = self._resource(*DEPLOYMENT)

        def hand_over() -> None:
            try:
                resource.server_side_apply(body=body, name=self.serving.name,
                                           namespace=self.namespace,
                                           field_manager=HANDOVER_MANAGER, force_conflicts=False)
            except ConflictError:
                return  # the HPA scaled since: the count is its own already

        _call(f"hand the replica count of {self._where('Deployment')} over to its autoscaler",
              self._host, hand_over)

    def _progress(self, live: dict[str, Any], *, full_traffic: bool = False) -> _Progress:
        spec, status = live.get("spec") or {}, live.get("status") or {}
        generation = _meta(live).get("generation", 0)
        observed = status.get("observedGeneration", 0)
        if observed < generation:
            return _Progress(False, note=f"the Deployment controller has not yet observed "
                                         f"generation {generation} (its status is of {observed})")
        conditions = _conditions(live)
        replica_failure = conditions.get("ReplicaFailure", {})
        if replica_failure.get("status") == "True":
            return _Progress(False, failure=f"{replica_failure.get('reason')}: "
                                            f"{_line(replica_failure.get('message', ''))}")
        progressing = conditions.get("Progressing", {})
        if progressing.get("status") == "False":
            return _Progress(False, failure=f"{progressing.get('reason')}: "
                                            f"{_line(progressing.get('message', ''))}")
        want = spec.get("replicas", 1)
        updated = status.get("updatedReplicas", 0)
        available = status.get("availableReplicas", 0)
        total = status.get("replicas", 0)
        if updated == available == total == want:
            return _Progress(True)
        fatal = _fatal(self._pods(live)[0])
        if fatal:
            return _Progress(False, failure=fatal[0])
        return _Progress(False, note=f"{updated} of {want} pods updated, {available} available, "
                                     f"{total - updated} old ones still running")

    def _pod_starts(self, live: dict[str, Any]) -> int:
        """maxSurge 1: each replica's new pod starts after the one before is ready."""
        return max(1, int((live.get("spec") or {}).get("replicas") or 1))

    def _serves(self, live: dict[str, Any]) -> bool:
        status = live.get("status") or {}
        if status.get("observedGeneration", 0) < _meta(live).get("generation", 0):
            return False
        total = status.get("replicas", 0)
        return bool(total and status.get("updatedReplicas", 0) == total
                    and status.get("availableReplicas", 0) >= 1)

    def _new_replica_set(self, live: dict[str, Any]) -> dict[str, Any] | None:
        revision = (_meta(live).get("annotations") or {}).get(REVISION_ANNOTATION)
        if revision is None:
            return None
        labels = ((live.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        uid = _meta(live).get("uid")
        for rs in self._list(_REPLICA_SET, labels=labels):
            owners = {o.get("uid") for o in _meta(rs).get("ownerReferences") or []}
            if uid in owners and (_meta(rs).get("annotations") or {}).get(
                    REVISION_ANNOTATION) == revision:
                return rs
        return None

    def _pods(self, live: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        status = live.get("status") or {}
        if status.get("observedGeneration", 0) < _meta(live).get("generation", 0):
            return [], []  # the controller has not made the new ReplicaSet yet
        rs = self._new_replica_set(live)
        if rs is None:
            return [], []
        labels = dict(((rs.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
        pods = self._list(_POD, labels=labels) if labels else []
        return pods, [f"ReplicaSet/{_meta(rs).get('name')}"]

    def _object_reasons(self, live: dict[str, Any]) -> list[str]:
        reasons = []
        for condition in _conditions(live).values():
            failed = (condition.get("type") == "ReplicaFailure" and condition.get("status") == "True"
                      or condition.get("type") == "Progressing" and condition.get("status") == "False")
            if failed:
                reasons.append(f"{condition.get('reason')}: {_line(condition.get('message', ''))}")
        return reasons


class KServeTarget(_ClusterTarget):
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

    def _bodies(self, serving: ModelServing, live: dict[str, dict[str, Any] | None]
                ) -> list[dict[str, Any]]:
        current = live["InferenceService"]
        # A canary needs something to share the traffic with: a different version serving.
        canary = (self.canary_percent if current is not None and _version(current) != serving.version
                  else None)
        return [manifests.inference_service(serving, canary_percent=canary)]

    def _serves(self, live: dict[str, Any]) -> bool:
        """Live only with all the traffic: a canary left split by a killed deploy is not."""
        return self._progress(live, full_traffic=True).ready

    def promote(self) -> None:
        """Route all traffic to the new revision: drop ``canaryTrafficPercent``."""
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
        self._wait(_version(body) or "?", "promote", full_traffic=True)

    def _progress(self, live: dict[str, Any], *, full_traffic: bool = False) -> _Progress:
        status = live.get("status") or {}
        generation = _meta(live).get("generation", 0)
        observed = status.get("observedGeneration", 0)
        if observed != generation:
            return _Progress(False, note=f"KServe has not yet observed generation {generation} "
                                         f"(its status is of {observed})")
        model = status.get("modelStatus") or {}
        if model.get("transitionStatus") in _KSERVE_FAILED:
            return _Progress(False, failure=_failure_info(model))
        predictor = (status.get("components") or {}).get("predictor") or {}
        created = predictor.get("latestCreatedRevision")
        ready_revision = predictor.get("latestReadyRevision")
        ready = _conditions(live).get("Ready", {})
        if ready.get("status") == "True" and (not created or created == ready_revision):
            if not full_traffic or _full_traffic(predictor):
                return _Progress(True)
            return _Progress(False, note=f"traffic is moving to revision {ready_revision}")
        fatal = _fatal(self._pods(live)[0])
        if fatal:
            return _Progress(False, failure=fatal[0])
        waiting = _line(ready.get("message") or ready.get("reason") or "not ready yet")
        return _Progress(False, note=f"revision {created or '?'}: {waiting}")

    def _pods(self, live: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        labels = {KSERVE_ISVC_LABEL: self.serving.name}
        created = (((live.get("status") or {}).get("components") or {}).get("predictor")
                   or {}).get("latestCreatedRevision")
        if created:
            labels[KNATIVE_REVISION_LABEL] = created
        return self._list(_POD, labels=labels), [f"InferenceService/{self.serving.name}"]

    def _object_reasons(self, live: dict[str, Any]) -> list[str]:
        status = live.get("status") or {}
        reasons = []
        model = status.get("modelStatus") or {}
        told = ""
        if model.get("lastFailureInfo"):
            reasons.append(_failure_info(model))
            told = _line(model["lastFailureInfo"].get("message") or "")
        failed = [c for c in status.get("conditions") or []
                  if c.get("status") == "False" and c.get("message")]
        failed.sort(key=lambda c: c.get("type") != "Ready")  # Ready sums the others up
        for condition in failed[:1]:
            message = _line(condition["message"])
            if not told or told not in message:
                reasons.append(f"{condition.get('type')}: {message}")
        return reasons


def _failure_info(model_status: dict[str, Any]) -> str:
    info = model_status.get("lastFailureInfo") or {}
    text = str(info.get("reason") or model_status.get("transitionStatus"))
    if info.get("exitCode"):
        text += f" (exit code {info['exitCode']})"
    if info.get("message"):
        text += f": {_line(info['message'])}"
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
