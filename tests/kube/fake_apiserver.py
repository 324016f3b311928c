"""A small Kubernetes API server on 127.0.0.1, for the real ``kubernetes`` client.

It answers what :mod:`mlkube.kube.rollout` uses, the way a v1.36 API server does:

- discovery (``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/apis/apps/v1``,
  ``/apis/autoscaling/v2``, and ``/apis/serving.kserve.io/v1beta1`` only with ``kserve=True``);
- server-side apply (``PATCH`` as ``application/apply-patch+yaml`` with a ``fieldManager``):
  creates or updates the object, applies the API server's defaults, records the manager's
  fields in ``managedFields`` (``fieldsV1``), bumps ``metadata.generation`` when the spec
  changes; ``GET`` (one object, or a list filtered by label and field selectors) and
  ``DELETE`` (cascading to owned ReplicaSets and pods);
- the controllers, as far as a test scripts them: after ``ready_after`` reads of a changed
  Deployment (InferenceService) the Deployment (KServe) controller observes the generation,
  creates the ReplicaSet and pods (the revision), and writes the status real controllers
  write; what the pods do is ``outcome(pod_spec)``: ready, crash-looping with a termination
  message, unschedulable (FailedScheduling), failing to pull its image, or still starting.

- pods created through the API (``POST``, as KubernetesPodOperator creates a step's pod): the
  API server's defaults and QoS class, then the scheduler and the kubelet on their own clock
  (a thread, every ``tick`` seconds, whether or not anybody reads): bound to a node (or left
  Pending with the scheduler's FailedScheduling event, or gated by Kueue's webhook with
  ``kueue=True`` until :meth:`FakeApiServer.admit`), running, then exited 0 or 1 with the
  outcome's termination message; ``pods/<name>/log`` (``timestamps``, ``sinceSeconds``);
  strategic-merge and JSON merge ``PATCH``; watches (``?watch=true``) of any list, streamed
  one JSON line an event until ``timeoutSeconds``.

Where it still differs from a real API server: strategic-merge patches merge as JSON merge
patches (lists are replaced, not merged by key); deleting a pod removes it at once (no grace
period, no ``deletionTimestamp``); a pod's log is all there when its container starts; watches
resend an object when its resourceVersion changes but do not send BOOKMARKs or 410 Gone; the
Deployment, Job and KServe controllers still act when an object is read, not on the clock.

Every object it stores (status included) can be checked against the real schemas:
:meth:`FakeApiServer.schema_errors` (``kubernetes_validate`` for built-in kinds, KServe's CRD
for InferenceServices). Run it as a context manager; it serves from one daemon thread and
stops at exit.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import yaml

K8S_VERSION = "1.36.0"
REVISION = "deployment.kubernetes.io/revision"
MAX_REQUESTS = 20_000  # a runaway poll loop gets 503s, not an endless test
STUCK = 1_000  # the kubelet stage of a pod that goes no further (its image does not pull)
WATCH_SECONDS = 30  # a watch ends after timeoutSeconds, at most this long


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    short: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS = {k.kind: k for k in (
    Kind("", "v1", "pods", "Pod", ("po",)),
    Kind("", "v1", "services", "Service", ("svc",)),
    Kind("", "v1", "events", "Event", ("ev",)),
    Kind("apps", "v1", "deployments", "Deployment", ("deploy",)),
    Kind("apps", "v1", "replicasets", "ReplicaSet", ("rs",)),
    Kind("batch", "v1", "jobs", "Job"),
    Kind("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", ("hpa",)),
    Kind("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService", ("isvc",)),
)}
KSERVE_GROUP = "serving.kserve.io"
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass
class Outcome:
    """What the kubelet and scheduler make of a pod spec."""

    state: Literal["ready", "crash", "unschedulable", "image-pull", "starting",
                   "forbidden"] = "ready"
    message: str = ""
    #: what the container prints (a step pod's log, read through ``pods/<name>/log``)
    logs: str = ""


READY = Outcome()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def version_of(pod_spec: dict[str, Any]) -> str:
    """The ``--version`` the serving runtime's command line names."""
    command = pod_spec["containers"][0].get("command") or []
    return str(command[command.index("--version") + 1]) if "--version" in command else ""


# --- server-side apply: fieldsV1 and defaults -----------------------------------------------

_LIST_KEYS = {"containers": ("name",), "initContainers": ("name",), "env": ("name",),
              "volumeMounts": ("mountPath",), "volumes": ("name",)}


def _list_keys(name: str, item: Any, crd: bool, inside_container: bool) -> tuple[str, ...] | None:
    if crd and name in ("containers", "volumes"):  # KServe's CRD leaves these atomic
        return None
    if name == "ports" and isinstance(item, dict):
        return ("containerPort", "protocol") if inside_container else ("port", "protocol")
    return _LIST_KEYS.get(name)


def fields_v1(value: Any, crd: bool = False, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """The field set an applied configuration owns, as the API server records it."""
    if isinstance(value, dict):
        if path and path[-1] in ("selector",) and "matchLabels" in value:  # atomic LabelSelector
            return {}
        out: dict[str, Any] = {}
        for key, sub in value.items():
            if not path and key in ("apiVersion", "kind"):
                continue
            if path == ("metadata",) and key in ("name", "namespace"):
                continue
            out[f"f:{key}"] = fields_v1(sub, crd, (*path, key))
        return out
    if isinstance(value, list) and path:
        inside = "containers" in path or "initContainers" in path
        keys = _list_keys(path[-1], value[0] if value else None, crd, inside)
        if keys is None:
            return {}
        out = {}
        for item in value:
            ident = {k: item[k] for k in keys if k in item}
            out["k:" + json.dumps(ident, separators=(",", ":"))] = {
                ".": {}, **fields_v1(item, crd, (*path, "[]"))}
        return out
    return {}


def _probe_defaults(probe: dict[str, Any] | None) -> None:
    if not probe:
        return
    if "httpGet" in probe:
        probe["httpGet"].setdefault("scheme", "HTTP")
    for key, default in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1),
                         ("failureThreshold", 3)):
        probe.setdefault(key, default)


def _pod_defaults(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for container in spec.get("containers", []):
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        image = container.get("image", "")
        container.setdefault("imagePullPolicy",
                             "Always" if image.endswith(":latest") or ":" not in image
                             else "IfNotPresent")
        container.setdefault("resources", {})
        for port in container.get("ports", []):
            port.setdefault("protocol", "TCP")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            _probe_defaults(container.get(probe))


def apply_defaults(kind: str, obj: dict[str, Any], cluster_ip: str) -> None:
    """What the API server's defaulting adds (the fields nobody applied)."""
    spec = obj.get("spec")
    if spec is None:
        return
    if kind == "Deployment":
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
        if strategy.get("type") == "RollingUpdate":
            strategy.setdefault("rollingUpdate", {"maxSurge": "25%", "maxUnavailable": "25%"})
        _pod_defaults(spec["template"]["spec"])
    elif kind == "Service":
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("clusterIP", cluster_ip)
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports", []):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port["port"])
    elif kind == "HorizontalPodAutoscaler":
        spec.setdefault("behavior", {
            "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                {"type": "Pods", "value": 4, "periodSeconds": 15},
                {"type": "Percent", "value": 100, "periodSeconds": 15}]},
            "scaleDown": {"selectPolicy": "Max", "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 15}]},
        })


def _owned_keys(fields: dict[str, Any], *path: str) -> set[str]:
    for part in path:
        fields = fields.get(f"f:{part}", {})
    return {k[2:] for k in fields if k.startswith("f:")}


# --- selectors ------------------------------------------------------------------------------


def _dig(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def label_match(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_match(selector: str, obj: dict[str, Any]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        key, value = term.replace("!=", "=").replace("==", "=").split("=", 1)
        actual = _dig(obj, key)
        if (str(actual) == value) == negate:
            return False
    return True


# --- the server -----------------------------------------------------------------------------


@dataclass
class FakeApiServer:
    """The fake cluster: its store, its controllers, and an HTTP front on 127.0.0.1."""

    kserve: bool = False
    outcome: Callable[[dict[str, Any]], Outcome] = lambda pod_spec: READY
    ready_after: int = 1
    #: what the Job controller makes of a Job after ``ready_after`` reads: Complete or Failed
    job_outcome: Literal["Complete", "Failed"] = "Complete"
    #: (method, kind) pairs RBAC refuses, e.g. ("PATCH", "Deployment").
    forbidden: set[tuple[str, str]] = field(default_factory=set)
    requests: list[Request] = field(default_factory=list)
    store: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: the clock of the scheduler and kubelet for pods created through the API (seconds a step)
    tick: float = 0.05
    #: Kueue's pod webhook: a created pod naming a queue gets its scheduling gate (see admit)
    kueue: bool = False

    def __post_init__(self) -> None:
        self._rv = itertools.count(1000)
        self._ips = itertools.count(10)
        self._reads: Counter[tuple[str, str, str, int]] = Counter()
        self._revisions: dict[tuple[str, str], tuple[int, str]] = {}
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clock: threading.Thread | None = None
        self._stopping = threading.Event()
        self._created_pods: dict[tuple[str, str, str], int] = {}  # key → kubelet stage

    # -- lifecycle --

    def __enter__(self) -> FakeApiServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._http.daemon_threads = True
        self._http.timeout = 5
        self._thread = threading.Thread(target=self._http.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="fake-apiserver")
        self._thread.start()
        self._clock = threading.Thread(target=self._run_clock, daemon=True,
                                       name="fake-controllers")
        self._clock.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for thread in (self._thread, self._clock):
            if thread is not None:
                thread.join(timeout=5)

    def _run_clock(self) -> None:
        """The scheduler and the kubelet: one step of every created pod a tick, on their own
        thread, whether or not anybody reads the pod."""
        while not self._stopping.wait(self.tick):
            with self.lock:
                for key in list(self._created_pods):
                    self._step_pod(key)

    @property
    def url(self) -> str:
        assert self._http is not None, "start the server first (with FakeApiServer() as s)"
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def api_client(self) -> Any:
        from kubernetes.client import ApiClient, Configuration

        return ApiClient(Configuration(host=self.url))

    def kubeconfig(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                          "namespace": "ml"}}]}

    # -- the store --

    def _kinds(self) -> dict[str, Kind]:
        return {k: v for k, v in KINDS.items() if self.kserve or v.group != KSERVE_GROUP}

    def get(self, kind: str, name: str, namespace: str = "ml") -> dict[str, Any] | None:
        with self.lock:
            obj = self.store.get((kind, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, kind: str, namespace: str = "ml") -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(o) for (k, ns, _), o in sorted(self.store.items())
                    if k == kind and ns == namespace]

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as a controller would create it (uid, resourceVersion, timestamp)."""
        with self.lock:
            meta = obj.setdefault("metadata", {})
            meta.setdefault("namespace", "ml")
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            meta["resourceVersion"] = str(next(self._rv))
            self.store[(obj["kind"], meta["namespace"], meta["name"])] = obj
            return obj

    def applies(self, kind: str | None = None) -> list[Request]:
        """The server-side applies received (of ``kind``)."""
        return [r for r in self.requests if r.method == "PATCH"
                and (kind is None or (isinstance(r.body, dict) and r.body.get("kind") == kind))]

    def schema_errors(self) -> list[str]:
        """Where a stored object breaks the real schemas (Kubernetes 1.36, KServe's CRD)."""
        import kubernetes_validate

        errors = []
        for (kind, ns, name), obj in sorted(self.store.items()):
            if kind == "InferenceService":
                errors += [f"{kind} {ns}/{name} {e}" for e in _crd_validator().isvc_errors(obj)]
                continue
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                errors.append(f"{kind} {ns}/{name} at {path}: {exc.message}")
        return errors

    # -- API semantics --

    def apply(self, kind: Kind, namespace: str, name: str, body: dict[str, Any],
              manager: str) -> tuple[int, dict[str, Any]]:
        if body.get("kind") != kind.kind or body.get("apiVersion") != kind.group_version:
            return 400, _status(400, "BadRequest", f"the body is {body.get('apiVersion')}/"
                                f"{body.get('kind')}, the URL {kind.group_version}/{kind.kind}")
        meta_in = body.get("metadata") or {}
        if meta_in.get("name") != name or meta_in.get("namespace", namespace) != namespace:
            return 400, _status(400, "BadRequest", "the name or namespace of the body does "
                                                   "not match the URL")
        with self.lock:
            key = (kind.kind, namespace, name)
            existing = self.store.get(key)
            entry = {"manager": manager, "operation": "Apply", "apiVersion": kind.group_version,
                     "time": now(), "fieldsType": "FieldsV1",
                     "fieldsV1": fields_v1(body, kind.group == KSERVE_GROUP)}
            if existing is None:
                obj, code = self._created(kind, namespace, body, entry), 201
            else:
                obj, code = self._updated(kind, existing, body, entry), 200
            error = _invalid(kind, name, obj)
            if error:
                return 422, _status(422, "Invalid", error)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self.store[key] = obj
            return code, copy.deepcopy(obj)

    def create(self, kind: Kind, namespace: str, body: dict[str, Any],
               manager: str) -> tuple[int, dict[str, Any]]:
        """``POST``: a new object (409 when the name is taken); a Pod starts Pending, and the
        scheduler and kubelet take it from there on their own clock (:meth:`_step_pod`)."""
        if body.get("kind") != kind.kind or body.get("apiVersion") != kind.group_version:
            return 400, _status(400, "BadRequest", f"the body is {body.get('apiVersion')}/"
                                f"{body.get('kind')}, the URL {kind.group_version}/{kind.kind}")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name or meta.setdefault("namespace", namespace) != namespace:
            return 400, _status(400, "BadRequest", "the name of the body is missing, or its "
                                                   "namespace does not match the URL")
        with self.lock:
            key = (kind.kind, namespace, name)
            if key in self.store:
                return 409, _status(409, "AlreadyExists",
                                    f'{kind.plural} "{name}" already exists')
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), managedFields=[{
                "manager": manager, "operation": "Update", "apiVersion": kind.group_version,
                "time": now(), "fieldsType": "FieldsV1", "fieldsV1": fields_v1(body)}])
            if kind.kind == "Pod":
                spec = obj["spec"]
                _pod_defaults(spec)
                spec.setdefault("serviceAccountName", "default")
                spec.setdefault("enableServiceLinks", True)
                spec.setdefault("priority", 0)
                spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
                obj["status"] = {"phase": "Pending", "qosClass": _qos(spec)}
                if self.kueue and "kueue.x-k8s.io/queue-name" in (meta.get("labels") or {}):
                    spec["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
            error = _invalid(kind, name, obj)
            if error:
                return 422, _status(422, "Invalid", error)
            meta["resourceVersion"] = str(next(self._rv))
            self.store[key] = obj
            if kind.kind == "Pod":
                self._created_pods[key] = 0
            return 201, copy.deepcopy(obj)

    def merge_patch(self, kind: Kind, namespace: str, name: str,
                    patch: Any) -> tuple[int, dict[str, Any]]:
        """``PATCH`` as a strategic-merge or JSON merge patch (RFC 7386)."""
        if not isinstance(patch, dict):
            return 400, _status(400, "BadRequest", "json: cannot unmarshal array into Go value "
                                                   "of type map[string]interface {}")
        with self.lock:
            key = (kind.kind, namespace, name)
            existing = self.store.get(key)
            if existing is None:
                return 404, _status(404, "NotFound", f'{kind.plural} "{name}" not found')
            obj = _merged(existing, patch)
            error = _invalid(kind, name, obj)
            if error:
                return 422, _status(422, "Invalid", error)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self.store[key] = obj
            return 200, copy.deepcopy(obj)

    def logs(self, namespace: str, name: str, timestamps: bool,
             since_seconds: int | None = None) -> tuple[int, str | dict[str, Any]]:
        """``pods/<name>/log``: what the container printed, once it has started (all of it
        at its start), or nothing when that was more than ``since_seconds`` ago."""
        with self.lock:
            pod = self.store.get(("Pod", namespace, name))
            if pod is None:
                return 404, _status(404, "NotFound", f'pods "{name}" not found')
            container = pod["spec"]["containers"][0]["name"]
            statuses = pod.get("status", {}).get("containerStatuses") or []
            if not statuses or "waiting" in statuses[0]["state"]:
                why = (statuses[0]["state"]["waiting"].get("reason") if statuses
                       else "ContainerCreating")
                return 400, _status(400, "BadRequest", f'container "{container}" in pod '
                                                       f'"{name}" is waiting to start: {why}')
            text = self.outcome(pod["spec"]).logs
            state = statuses[0]["state"]
            started = (state.get("running") or state.get("terminated") or {})["startedAt"]
        stamp = datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if since_seconds is not None and (datetime.now(UTC) - stamp).total_seconds() > since_seconds:
            return 200, ""
        if timestamps:
            text = "".join(f"{started} {line}\n" for line in text.splitlines())
        return 200, text

    def _created(self, kind: Kind, namespace: str, body: dict[str, Any],
                 entry: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        obj["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), generation=1,
                               creationTimestamp=now(), managedFields=[entry])
        apply_defaults(kind.kind, obj, f"10.96.{next(self._ips)}.{next(self._ips) % 250}")
        status = {"Deployment": {}, "Service": {"loadBalancer": {}},
                  "HorizontalPodAutoscaler": {"currentReplicas": 0, "desiredReplicas": 0}}
        if kind.kind in status:
            obj["status"] = status[kind.kind]
        return obj

    def _updated(self, kind: Kind, existing: dict[str, Any], body: dict[str, Any],
                 entry: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply over ``existing``: what the manager no longer applies goes."""
        obj = copy.deepcopy(existing)
        meta, meta_in, manager = obj["metadata"], body.get("metadata") or {}, entry["manager"]
        mine = next((m for m in meta.get("managedFields", [])
                     if m["manager"] == manager and m["operation"] == "Apply"), None)
        owned = mine["fieldsV1"] if mine else {}
        for part in ("labels", "annotations"):
            current = meta.get(part) or {}
            for gone in _owned_keys(owned, "metadata", part) - set(meta_in.get(part) or {}):
                current.pop(gone, None)
            current.update(meta_in.get(part) or {})
            if current:
                meta[part] = current
            else:
                meta.pop(part, None)
        if "spec" in body:  # in these tests only the applier writes spec
            obj["spec"] = copy.deepcopy(body["spec"])
            apply_defaults(kind.kind, obj, "")
            if kind.kind == "Service":  # allocated fields stay
                for allocated in ("clusterIP", "clusterIPs"):
                    obj["spec"][allocated] = existing["spec"][allocated]
        if obj.get("spec") != existing.get("spec"):
            meta["generation"] = meta.get("generation", 1) + 1
        meta["managedFields"] = [m for m in meta.get("managedFields", [])
                                 if not (m["manager"] == manager and m["operation"] == "Apply")]
        meta["managedFields"].append(entry)
        return obj

    def read(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.store.get((kind.kind, namespace, name))
            if obj is None:
                return None
            if kind.kind == "Deployment":
                self._deployment_controller(obj)
            elif kind.kind == "Job":
                self._job_controller(obj)
            elif kind.kind == "InferenceService":
                self._kserve_controller(obj)
            return copy.deepcopy(obj)

    def list(self, kind: Kind, namespace: str, labels: str | None,
             fields: str | None) -> dict[str, Any]:
        with self.lock:
            items = []
            for (k, ns, _), obj in sorted(self.store.items()):
                if k != kind.kind or ns != namespace:
                    continue
                if labels and not label_match(labels, _meta(obj).get("labels") or {}):
                    continue
                if fields and not field_match(fields, obj):
                    continue
                item = copy.deepcopy(obj)
                if kind.group != KSERVE_GROUP:  # typed lists carry no kind per item
                    item.pop("apiVersion", None)
                    item.pop("kind", None)
                items.append(item)
            return {"kind": f"{kind.kind}List", "apiVersion": kind.group_version,
                    "metadata": {"resourceVersion": str(next(self._rv))}, "items": items}

    def delete(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.store.pop((kind.kind, namespace, name), None)
            if obj is None:
                return None
            uid = _meta(obj)["uid"]
            for key, other in list(self.store.items()):  # the garbage collector, at once
                owners = {o.get("uid") for o in _meta(other).get("ownerReferences") or []}
                if uid in owners:
                    self.delete(KINDS[key[0]], key[1], key[2])
            if kind.kind == "InferenceService":
                for key, other in list(self.store.items()):
                    if (_meta(other).get("labels") or {}).get(
                            "serving.kserve.io/inferenceservice") == name:
                        self.store.pop(key, None)
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": kind.group, "kind": kind.plural,
                                "uid": uid}}

    # -- controllers --

    def _observe(self, obj: dict[str, Any]) -> bool:
        """Whether the controller acts on this read (after ``ready_after`` reads)."""
        meta = _meta(obj)
        generation = meta.get("generation", 1)
        if (obj.get("status") or {}).get("observedGeneration", 0) >= generation:
            return False
        key = (obj["kind"], meta["namespace"], meta["name"], generation)
        self._reads[key] += 1
        return self._reads[key] >= self.ready_after

    def _job_controller(self, job: dict[str, Any]) -> None:
        """All the Job's pods succeed (or it fails: BackoffLimitExceeded), as a status says."""
        status = job.setdefault("status", {})
        if status.get("conditions") or not self._observe(job):
            return
        spec, stamp = job["spec"], now()
        status.update(startTime=stamp, ready=0, terminating=0)
        if self.job_outcome == "Complete":
            status.update(succeeded=spec["completions"], completionTime=stamp,
                          completedIndexes=f"0-{spec['completions'] - 1}")
            types = [("SuccessCriteriaMet", "CompletionsReached"), ("Complete", "CompletionsReached")]
            message = "Reached expected number of succeeded pods"
        else:
            status.update(failed=spec.get("backoffLimit", 6) + 1, failedIndexes="0")
            types = [("FailureTarget", "BackoffLimitExceeded"), ("Failed", "BackoffLimitExceeded")]
            message = "Job has reached the specified backoff limit"
        status["conditions"] = [{"type": t, "status": "True", "reason": r, "message": message,
                                 "lastProbeTime": stamp, "lastTransitionTime": stamp}
                                for t, r in types]

    def _deployment_controller(self, dep: dict[str, Any]) -> None:
        if not self._observe(dep):
            return
        meta, spec = dep["metadata"], dep["spec"]
        ns, name = meta["namespace"], meta["name"]
        template = spec["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        owned = [rs for (k, n, _), rs in self.store.items() if k == "ReplicaSet" and n == ns
                 and meta["uid"] in {o["uid"] for o in rs["metadata"].get("ownerReferences", [])}]
        top = max((int(rs["metadata"]["annotations"][REVISION]) for rs in owned), default=0)
        new = next((rs for rs in owned
                    if rs["metadata"]["labels"]["pod-template-hash"] == digest), None)
        want = spec.get("replicas", 1)
        if new is None:
            labels = {**(template["metadata"].get("labels") or {}), "pod-template-hash": digest}
            new = self.put({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {
                    "name": f"{name}-{digest}", "namespace": ns, "labels": labels, "generation": 1,
                    "annotations": {REVISION: str(top + 1),
                                    "deployment.kubernetes.io/desired-replicas": str(want),
                                    "deployment.kubernetes.io/max-replicas": str(want + 1)},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                         "name": name, "uid": meta["uid"], "controller": True,
                                         "blockOwnerDeletion": True}],
                },
                "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                         "template": {**copy.deepcopy(template),
                                      "metadata": {**template["metadata"], "labels": labels}}},
                "status": {"replicas": 0, "observedGeneration": 1},
            })
        elif int(new["metadata"]["annotations"][REVISION]) != top:  # rolling back to it
            new["metadata"]["annotations"][REVISION] = str(top + 1)
        revision = new["metadata"]["annotations"][REVISION]
        meta.setdefault("annotations", {})[REVISION] = revision
        meta["managedFields"] = [m for m in meta["managedFields"]
                                 if m["manager"] != "kube-controller-manager"] + [
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
             "time": now(), "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, f"f:{REVISION}": {}}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
             "time": now(), "fieldsType": "FieldsV1", "subresource": "status",
             "fieldsV1": {"f:status": {"f:observedGeneration": {}, "f:replicas": {}}}}]
        old = [rs for rs in owned if rs is not new]
        old_ready = sum(len(self._pods_of(rs, ready_only=True)) for rs in old)
        outcome = self.outcome(template["spec"])
        rs_name = new["metadata"]["name"]
        if outcome.state == "ready":
            self._scale(new, want, outcome)
            for rs in old:
                self._scale(rs, 0, READY)
            dep["status"] = {
                "observedGeneration": meta["generation"], "replicas": want,
                "updatedReplicas": want, "readyReplicas": want, "availableReplicas": want,
                "conditions": [
                    _condition("Available", "True", "MinimumReplicasAvailable",
                               "Deployment has minimum availability."),
                    _condition("Progressing", "True", "NewReplicaSetAvailable",
                               f'ReplicaSet "{rs_name}" has successfully progressed.')]}
            return
        surge = want if not old_ready else 1
        available = old_ready
        if outcome.state == "forbidden":  # admission refuses the pods: none is created
            refusal = f'pods "{rs_name}-{uuid.uuid4().hex[:5]}" is forbidden: ' + (
                outcome.message or "exceeded quota: compute, requested: requests.memory=1Gi, "
                                   "used: requests.memory=4Gi, limited: requests.memory=4Gi")
            new["status"] = {"replicas": 0, "observedGeneration": 1, "conditions": [
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                 "message": refusal, "lastTransitionTime": now()}]}
            self.event(ns, "ReplicaSet", rs_name, "FailedCreate", f"Error creating: {refusal}",
                       component="replicaset-controller")
            dep["status"] = {
                "observedGeneration": meta["generation"], "replicas": old_ready,
                "updatedReplicas": 0, "unavailableReplicas": max(want - available, 0) or None,
                "conditions": [
                    _condition("Progressing", "True", "ReplicaSetUpdated",
                               f'ReplicaSet "{rs_name}" is progressing.'),
                    _condition("ReplicaFailure", "True", "FailedCreate", refusal)]}
            if available:
                dep["status"].update(readyReplicas=available, availableReplicas=available)
            dep["status"] = {k: v for k, v in dep["status"].items() if v is not None}
            return
        self._scale(new, surge, outcome)
        dep["status"] = {
            "observedGeneration": meta["generation"], "replicas": old_ready + surge,
            "updatedReplicas": surge, "unavailableReplicas": max(want - available, 0) or None,
            "conditions": [
                _condition("Available", "True" if available >= want else "False",
                           "MinimumReplicasAvailable" if available >= want
                           else "MinimumReplicasUnavailable",
                           "Deployment has minimum availability." if available >= want
                           else "Deployment does not have minimum availability."),
                _condition("Progressing", "True", "ReplicaSetUpdated",
                           f'ReplicaSet "{rs_name}" is progressing.')]}
        if available:
            dep["status"].update(readyReplicas=available, availableReplicas=available)
        dep["status"] = {k: v for k, v in dep["status"].items() if v is not None}

    def _pods_of(self, rs: dict[str, Any], ready_only: bool = False) -> list[dict[str, Any]]:
        uid = rs["metadata"]["uid"]
        pods = [p for (k, _, _), p in self.store.items() if k == "Pod"
                and uid in {o["uid"] for o in p["metadata"].get("ownerReferences", [])}]
        if ready_only:
            pods = [p for p in pods if all(c.get("ready") for c in
                                           p.get("status", {}).get("containerStatuses") or [{}])]
        return pods

    def _scale(self, rs: dict[str, Any], replicas: int, outcome: Outcome) -> None:
        pods = self._pods_of(rs)
        for pod in pods[replicas:]:
            self.store.pop(("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"]), None)
        for _ in range(replicas - len(pods)):
            owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs["metadata"]["name"],
                     "uid": rs["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
            self.pod(rs["metadata"]["namespace"], rs["metadata"]["name"],
                     rs["spec"]["template"], outcome, owner=owner)
        ready = replicas if outcome.state == "ready" else 0
        rs["spec"]["replicas"] = replicas
        rs["status"] = {"replicas": replicas, "fullyLabeledReplicas": replicas,
                        "observedGeneration": rs["metadata"].get("generation", 1)}
        if ready:
            rs["status"].update(readyReplicas=ready, availableReplicas=ready)

    def pod(self, namespace: str, prefix: str, template: dict[str, Any], outcome: Outcome,
            owner: dict[str, Any] | None = None) -> dict[str, Any]:
        """A pod of ``template`` as the kubelet reports it for ``outcome``, with its events."""
        suffix = uuid.uuid4().hex[:5]
        name = f"{prefix}-{suffix}"
        spec = copy.deepcopy(template["spec"])
        _pod_defaults(spec)
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        meta: dict[str, Any] = {"name": name, "namespace": namespace,
                                "labels": dict(template["metadata"].get("labels") or {}),
                                "annotations": dict(template["metadata"].get("annotations") or {})}
        if owner:
            meta["ownerReferences"] = [owner]
        container = spec["containers"][0]
        started = now()
        events: list[tuple[str, str, str]] = []  # reason, message, component
        status: dict[str, Any] = {"phase": "Pending", "qosClass": "Burstable", "startTime": started}
        if outcome.state != "unschedulable":
            spec["nodeName"] = "worker-1"
            status.update(hostIP="172.18.0.3", hostIPs=[{"ip": "172.18.0.3"}],
                          podIP="10.244.1.17", podIPs=[{"ip": "10.244.1.17"}])
        image_id = f"{container['image'].split(':')[0]}@sha256:{'ab' * 32}"
        base = {"name": container["name"], "image": container["image"], "imageID": image_id,
                "containerID": f"containerd://{uuid.uuid4().hex}"}
        if outcome.state == "ready":
            status["phase"] = "Running"
            status["conditions"] = _pod_conditions(True)
            status["containerStatuses"] = [{**base, "ready": True, "started": True,
                                            "restartCount": 0,
                                            "state": {"running": {"startedAt": started}},
                                            "lastState": {}}]
        elif outcome.state == "crash":
            status["phase"] = "Running"
            status["conditions"] = _pod_conditions(False, f"containers with unready status: "
                                                          f"[{container['name']}]")
            status["containerStatuses"] = [{
                **base, "ready": False, "started": False, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff",
                                      "message": f"back-off 1m20s restarting failed container="
                                                 f"{container['name']} pod={name}_{namespace}"
                                                 f"({uuid.uuid4()})"}},
                "lastState": {"terminated": {
                    "exitCode": 1, "reason": "Error", "startedAt": started,
                    "finishedAt": started, "containerID": base["containerID"],
                    "message": outcome.message}}}]
            events.append(("BackOff", f"Back-off restarting failed container "
                                      f"{container['name']} in pod {name}_{namespace}"
                                      f"({uuid.uuid4()})", "kubelet"))
        elif outcome.state == "image-pull":
            status["conditions"] = _pod_conditions(False, "containers with unready status: "
                                                          f"[{container['name']}]")
            base.pop("containerID")
            base["imageID"] = ""
            pull = outcome.message or (f'failed to pull and unpack image "{container["image"]}": '
                                       "not found")
            status["containerStatuses"] = [{
                **base, "ready": False, "started": False, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff",
                                      "message": f'Back-off pulling image "{container["image"]}": '
                                                 f"ErrImagePull: {pull}"}},
                "lastState": {}}]
            events.append(("Failed", f'Failed to pull image "{container["image"]}": {pull}',
                           "kubelet"))
        elif outcome.state == "unschedulable":
            message = outcome.message or ("0/3 nodes are available: 3 Insufficient memory. "
                                          "preemption: 0/3 nodes are available: 3 No preemption "
                                          "victims found for incoming pod.")
            status["conditions"] = [{"type": "PodScheduled", "status": "False",
                                     "reason": "Unschedulable", "message": message,
                                     "lastTransitionTime": started}]
            events.append(("FailedScheduling", message, "default-scheduler"))
        else:  # starting: loading the model, not ready yet
            status["phase"] = "Running"
            status["conditions"] = _pod_conditions(False, "containers with unready status: "
                                                          f"[{container['name']}]")
            status["containerStatuses"] = [{**base, "ready": False, "started": False,
                                            "restartCount": 0,
                                            "state": {"running": {"startedAt": started}},
                                            "lastState": {}}]
            events.append(("Unhealthy", outcome.message or "Startup probe failed: HTTP probe "
                           "failed with statuscode: 503", "kubelet"))
        pod = self.put({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
                        "status": status})
        for reason, message, component in events:
            self.event(namespace, "Pod", name, reason, message, component=component)
        return pod

    def _step_pod(self, key: tuple[str, str, str]) -> None:
        """One tick of the scheduler and the kubelet for a pod created through the API.

        A gated pod (Kueue) waits with ``SchedulingGated`` until its gates are removed; an
        ``unschedulable`` outcome stays Pending with the scheduler's FailedScheduling event;
        otherwise the pod is bound to a node, pulls (``image-pull`` stops there), runs, and its
        container exits 0 (``ready``) or 1 (``crash``) with ``message`` as its termination
        message, one stage a tick.
        """
        pod = self.store.get(key)
        if pod is None:
            self._created_pods.pop(key, None)
            return
        stage = self._created_pods[key]
        spec, status, ns, name = pod["spec"], pod["status"], key[1], key[2]
        container = spec["containers"][0]
        stamp = now()
        outcome = self.outcome(spec)
        if stage == 0 and spec.get("schedulingGates"):
            condition = {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated",
                         "message": "Scheduling is blocked due to non-empty scheduling gates",
                         "lastTransitionTime": stamp}
            if status.get("conditions") != [condition]:
                status["conditions"] = [condition]
                self._touch(pod)
            return
        if stage == 0 and outcome.state == "unschedulable":
            message = outcome.message or ("0/1 nodes are available: 1 Insufficient cpu. "
                                          "preemption: 0/1 nodes are available: 1 No preemption "
                                          "victims found for incoming pod.")
            if not status.get("conditions"):
                status["conditions"] = [{"type": "PodScheduled", "status": "False",
                                         "reason": "Unschedulable", "message": message,
                                         "lastTransitionTime": stamp}]
                self._touch(pod)
                self.event(ns, "Pod", name, "FailedScheduling", message,
                           component="default-scheduler")
            return
        self._created_pods[key] = stage + 1
        image_id = f"{container['image'].split(':')[0]}@sha256:{'ab' * 32}"
        base = {"name": container["name"], "image": container["image"], "imageID": image_id,
                "containerID": f"containerd://{uuid.uuid5(uuid.NAMESPACE_OID, name).hex}"}
        if stage == 0:  # bound to a node
            spec["nodeName"] = "worker-1"
            status.update(hostIP="172.18.0.3", hostIPs=[{"ip": "172.18.0.3"}],
                          podIP="10.244.1.23", podIPs=[{"ip": "10.244.1.23"}], startTime=stamp,
                          conditions=_pod_conditions(False, "containers with unready status: "
                                                            f"[{container['name']}]"))
            waiting = {k: v for k, v in base.items() if k != "containerID"}
            status["containerStatuses"] = [{
                **waiting, "imageID": "", "ready": False, "started": False, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}, "lastState": {}}]
            self.event(ns, "Pod", name, "Scheduled", f"Successfully assigned {ns}/{name} to "
                       "worker-1", component="default-scheduler", type_="Normal")
        elif stage == 1 and outcome.state == "image-pull":
            pull = outcome.message or (f'failed to pull and unpack image "{container["image"]}"'
                                       ": not found")
            status["containerStatuses"][0]["state"] = {"waiting": {
                "reason": "ErrImagePull", "message": pull}}
            self._created_pods[key] = STUCK
            self.event(ns, "Pod", name, "Failed", f'Failed to pull image '
                       f'"{container["image"]}": {pull}')
        elif stage == 1:  # running
            status.update(phase="Running", conditions=_pod_conditions(True))
            status["containerStatuses"] = [{**base, "ready": True, "started": True,
                                            "restartCount": 0,
                                            "state": {"running": {"startedAt": stamp}},
                                            "lastState": {}}]
            self.event(ns, "Pod", name, "Started", f"Started container {container['name']}",
                       type_="Normal")
        elif stage == 2:  # the container exits
            code = 0 if outcome.state == "ready" else 1
            terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                          "startedAt": status["containerStatuses"][0]["state"]["running"][
                              "startedAt"], "finishedAt": stamp,
                          "containerID": base["containerID"]}
            if outcome.message:
                terminated["message"] = outcome.message
            status.update(phase="Succeeded" if code == 0 else "Failed",
                          conditions=_pod_conditions(False, "PodCompleted"))
            status["containerStatuses"] = [{**base, "ready": False, "started": False,
                                            "restartCount": 0,
                                            "state": {"terminated": terminated},
                                            "lastState": {}}]
        else:
            return
        self._touch(pod)

    def _touch(self, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._rv))

    def admit(self, name: str, namespace: str = "ml") -> None:
        """Kueue admits a gated pod: its scheduling gates go."""
        with self.lock:
            pod = self.store[("Pod", namespace, name)]
            pod["spec"].pop("schedulingGates", None)
            pod["status"].pop("conditions", None)
            self._touch(pod)

    def event(self, namespace: str, kind: str, name: str, reason: str, message: str, *,
              component: str = "kubelet", type_: str = "Warning") -> dict[str, Any]:
        """A core/v1 Event about ``kind/name``, as ``component`` records it."""
        involved = self.get(kind, name, namespace) or {"metadata": {}}
        stamp = now()
        event: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {"apiVersion": KINDS[kind].group_version, "kind": kind,
                               "name": name, "namespace": namespace,
                               "uid": involved["metadata"].get("uid", str(uuid.uuid4())),
                               "resourceVersion": involved["metadata"].get("resourceVersion", "1")},
            "reason": reason, "message": message, "type": type_,
            "reportingComponent": component,
            "reportingInstance": "worker-1" if component == "kubelet" else "",
        }
        if component == "default-scheduler":  # events.k8s.io/v1 events, seen through core/v1
            event.update(eventTime=micro_now(), action="Scheduling",
                         reportingInstance="default-scheduler-control-plane", source={})
        else:
            source = {"component": component}
            if component == "kubelet":
                source["host"] = "worker-1"
            event.update(firstTimestamp=stamp, lastTimestamp=stamp, count=1, source=source)
        return self.put(event)

    def _kserve_controller(self, isvc: dict[str, Any]) -> None:
        if not self._observe(isvc):
            return
        meta = isvc["metadata"]
        ns, name = meta["namespace"], meta["name"]
        predictor = isvc["spec"]["predictor"]
        config = {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"}
        key = (ns, name)
        number, last_config = self._revisions.get(key, (0, ""))
        status = isvc.get("status") or {}
        component = dict((status.get("components") or {}).get("predictor") or {})
        previous_ready = component.get("latestReadyRevision")
        config_json = json.dumps(config, sort_keys=True)
        if config_json != last_config:
            number += 1
            self._revisions[key] = (number, config_json)
        revision = f"{name}-predictor-{number:05d}"
        pod_spec = {k: v for k, v in predictor.items()
                    if k in ("containers", "volumes", "securityContext",
                             "automountServiceAccountToken")}
        outcome = self.outcome(pod_spec)
        labels = {"serving.kserve.io/inferenceservice": name, "component": "predictor",
                  "serving.knative.dev/revision": revision,
                  "serving.knative.dev/configuration": f"{name}-predictor",
                  "serving.knative.dev/service": f"{name}-predictor"}
        for (k, n, _), pod in list(self.store.items()):
            if k == "Pod" and n == ns and pod["metadata"]["labels"].get(
                    "serving.knative.dev/revision") == revision:
                self.store.pop(("Pod", n, pod["metadata"]["name"]), None)
        self.pod(ns, f"{revision}-deployment-7c9d8f6b5", {"metadata": {"labels": labels},
                                                          "spec": pod_spec}, outcome)
        stamp = now()
        canary = predictor.get("canaryTrafficPercent")
        component.update(latestCreatedRevision=revision,
                         address={"url": f"http://{name}-predictor.{ns}.svc.cluster.local"},
                         url=f"http://{name}-predictor-{ns}.example.com")
        if outcome.state == "ready":
            rolled = component.get("latestRolledoutRevision")
            component["latestReadyRevision"] = revision
            if canary is not None and canary < 100 and rolled and rolled != revision:
                component["traffic"] = [
                    {"revisionName": rolled, "percent": 100 - canary, "latestRevision": False,
                     "tag": "prev", "url": f"http://prev-{name}-predictor-{ns}.example.com"},
                    {"revisionName": revision, "percent": canary, "latestRevision": True,
                     "tag": "latest", "url": f"http://latest-{name}-predictor-{ns}.example.com"}]
            else:
                if rolled and rolled != revision:
                    component["previousRolledoutRevision"] = rolled
                component["latestRolledoutRevision"] = revision
                component["traffic"] = [{"revisionName": revision, "percent": 100,
                                         "latestRevision": True}]
            conditions = [_knative(kind, "True", stamp) for kind in (
                "IngressReady", "LatestDeploymentReady", "PredictorConfigurationReady",
                "PredictorReady", "PredictorRouteReady", "Ready", "RoutesReady")]
            model_status = {"copies": {"failedCopies": 0, "totalCopies": 1},
                            "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
                            "transitionStatus": "UpToDate"}
        else:
            message = (f'Revision "{revision}" failed with message: Container failed with: '
                       f"{outcome.message}.")
            conditions = [_knative("IngressReady", "True", stamp),
                          _knative("LatestDeploymentReady", "False", stamp, "RevisionFailed",
                                   message),
                          _knative("PredictorConfigurationReady", "False", stamp,
                                   "RevisionFailed", message),
                          _knative("PredictorReady", "False", stamp, "RevisionFailed", message),
                          _knative("PredictorRouteReady", "True", stamp),
                          _knative("Ready", "False", stamp, "RevisionFailed", message),
                          _knative("RoutesReady", "True", stamp)]
            model_status = {
                "copies": {"failedCopies": 1, "totalCopies": 1},
                "lastFailureInfo": {"exitCode": 1, "message": outcome.message,
                                    "reason": "ModelLoadFailed", "modelRevisionName": revision,
                                    "location": revision, "time": stamp},
                "states": {"activeModelState": "Loaded" if previous_ready else "",
                           "targetModelState": "FailedToLoad"},
                "transitionStatus": "BlockedByFailedLoad"}
        isvc["status"] = {
            "address": {"url": f"http://{name}.{ns}.svc.cluster.local"},
            "url": f"http://{name}-{ns}.example.com",
            "components": {"predictor": component},
            "conditions": conditions,
            "deploymentMode": "Serverless",
            "modelStatus": model_status,
            "observedGeneration": meta["generation"],
        }


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _qos(spec: dict[str, Any]) -> str:
    """The pod's QoS class, as the API server computes it at creation."""
    resources = [c.get("resources") or {} for c in spec.get("containers", [])]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        set(r.get("limits") or {}) >= {"cpu", "memory"}
        and all((r.get("requests") or {}).get(k, v) == v for k, v in (r.get("limits") or {}).items())
        for r in resources)
    return "Guaranteed" if guaranteed else "Burstable"


def _merged(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge key by key, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merged(out.get(key), value)
    return out


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    stamp = now()
    return {"type": kind, "status": status, "lastUpdateTime": stamp, "lastTransitionTime": stamp,
            "reason": reason, "message": message}


def _knative(kind: str, status: str, stamp: str, reason: str | None = None,
             message: str | None = None) -> dict[str, Any]:
    condition = {"type": kind, "status": status, "lastTransitionTime": stamp}
    if kind not in ("IngressReady", "PredictorReady", "Ready"):
        condition["severity"] = "Info"
    if reason:
        condition.update(reason=reason, message=message or "")
    return condition


def _pod_conditions(ready: bool, why: str = "") -> list[dict[str, Any]]:
    stamp = now()
    out = [{"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": stamp},
           {"type": "Initialized", "status": "True", "lastTransitionTime": stamp}]
    for kind in ("Ready", "ContainersReady"):
        condition = {"type": kind, "status": "True" if ready else "False",
                     "lastTransitionTime": stamp}
        if not ready:
            condition.update(reason="ContainersNotReady", message=why)
        out.append(condition)
    out.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp})
    return out


def _invalid(kind: Kind, name: str, obj: dict[str, Any]) -> str | None:
    """Why the API server refuses ``obj``: its schema, the CRD's for a custom resource."""
    if kind.group == KSERVE_GROUP:
        errors = _crd_validator().isvc_errors(obj)
        return f"InferenceService.serving.kserve.io {name!r} is invalid: {errors[0]}" if errors \
            else None
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{kind.kind}.{kind.group or 'core'} {name!r} is invalid: {exc.message}"
    return None


def _flag(query: dict[str, str], name: str) -> bool:
    """A boolean query parameter, read as the API server reads it (Go's ParseBool)."""
    return query.get(name, "").lower() in ("1", "t", "true")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


_VALIDATOR: Any = None


def _crd_validator() -> Any:
    global _VALIDATOR
    if _VALIDATOR is None:
        from mlkube.argo.schema import (
            ARGO_SCHEMA_FILE,
            KSERVE_CRD_FILE,
            Validator,
            packaged_schema,
        )

        _VALIDATOR = Validator(argo_schema=packaged_schema(ARGO_SCHEMA_FILE),
                               kserve_crd=packaged_schema(KSERVE_CRD_FILE))
    return _VALIDATOR


# --- HTTP -----------------------------------------------------------------------------------


def _discovery(fake: FakeApiServer, path: str, host: str) -> dict[str, Any] | None:
    kinds = fake._kinds()
    if path == "/version":
        return {"major": "1", "minor": "36", "emulationMajor": "1", "emulationMinor": "36",
                "minCompatibilityMajor": "1", "minCompatibilityMinor": "35",
                "gitVersion": "v1.36.0", "gitCommit": "0" * 40, "gitTreeState": "clean",
                "buildDate": "2026-04-22T00:00:00Z", "goVersion": "go1.26.2",
                "compiler": "gc", "platform": "linux/amd64"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}
    if path == "/apis":
        groups = sorted({k.group for k in kinds.values() if k.group})
        out = []
        for group in groups:
            version = next(k.version for k in kinds.values() if k.group == group)
            gv = {"groupVersion": f"{group}/{version}", "version": version}
            out.append({"name": group, "versions": [gv], "preferredVersion": gv})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": out}
    for gv in {k.group_version for k in kinds.values()}:
        if path == ("/api/" if "/" not in gv else "/apis/") + gv:
            resources = []
            for k in kinds.values():
                if k.group_version != gv:
                    continue
                resources.append({"name": k.plural, "singularName": k.kind.lower(),
                                  "namespaced": True, "kind": k.kind, "verbs": VERBS,
                                  "shortNames": list(k.short),
                                  "storageVersionHash": hashlib.sha1(k.plural.encode()).hexdigest()[:11]})
                if k.kind not in ("Event",):
                    resources.append({"name": f"{k.plural}/status", "singularName": "",
                                      "namespaced": True, "kind": k.kind,
                                      "verbs": ["get", "patch", "update"]})
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                    "resources": resources}
    return None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeApiServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        fake = self.fake
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type", "")
        body = yaml.safe_load(raw) if raw else None
        with fake.lock:
            fake.requests.append(Request(method, parts.path, query, content_type, body))
            if len(fake.requests) > MAX_REQUESTS:
                self._send(503, _status(503, "ServiceUnavailable", "too many requests"))
                return
        if method == "GET":
            found = _discovery(fake, parts.path, f"127.0.0.1:{self.server.server_address[1]}")
            if found is not None:
                self._send(200, found)
                return
        route = self._route(parts.path)
        if route is None:
            self._send(404, _status(404, "NotFound", "the server could not find the requested "
                                                     "resource"))
            return
        kind, namespace, name, sub = route
        if (method, kind.kind) in fake.forbidden:
            verb = {"GET": "get" if name else "list", "PATCH": "patch", "DELETE": "delete",
                    "POST": "create"}[method]
            group = f'in API group "{kind.group}"'
            self._send(403, _status(403, "Forbidden", (
                f'{kind.plural}{"." + kind.group if kind.group else ""} "{name}" is forbidden: '
                f'User "system:serviceaccount:{namespace}:mlkube-deploy" cannot {verb} '
                f'resource "{kind.plural}" {group} in the namespace "{namespace}"')))
            return
        self._serve(method, kind, namespace, name, sub, query, content_type, body)

    def _serve(self, method: str, kind: Kind, namespace: str, name: str, sub: str,
               query: dict[str, str], content_type: str, body: Any) -> None:
        fake = self.fake
        missing = _status(404, "NotFound", f'{kind.plural}{"." + kind.group if kind.group else ""}'
                                           f' "{name}" not found')
        if method == "GET" and sub == "log" and kind.kind == "Pod":
            since = query.get("sinceSeconds")
            code, text = fake.logs(namespace, name, _flag(query, "timestamps"),
                                   int(since) if since else None)
            self._send_text(code, text)
        elif sub:
            self._send(404, _status(404, "NotFound", f"{kind.plural}/{sub} is not served here"))
        elif method == "GET" and name:
            obj = fake.read(kind, namespace, name)
            self._send(200, obj) if obj is not None else self._send(404, missing)
        elif method == "GET" and _flag(query, "watch"):
            self._watch(kind, namespace, query)
        elif method == "GET":
            self._send(200, fake.list(kind, namespace, query.get("labelSelector"),
                                      query.get("fieldSelector")))
        elif method == "POST" and not name:
            manager = query.get("fieldManager") or self.headers.get("User-Agent", "").split("/")[0]
            self._send(*fake.create(kind, namespace, body or {}, manager or "unknown"))
        elif method == "PATCH" and name:
            self._send(*self._patch(kind, namespace, name, query, content_type, body))
        elif method == "DELETE" and name:
            gone = fake.delete(kind, namespace, name)
            self._send(200, gone) if gone is not None else self._send(404, missing)
        else:
            self._send(405, _status(405, "MethodNotAllowed", f"{method} is not supported here"))

    def _patch(self, kind: Kind, namespace: str, name: str, query: dict[str, str],
               content_type: str, body: Any) -> tuple[int, dict[str, Any]]:
        if content_type in ("application/strategic-merge-patch+json",
                            "application/merge-patch+json"):
            return self.fake.merge_patch(kind, namespace, name, body)
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                return 400, _status(400, "BadRequest", "json: cannot unmarshal object into Go "
                                                       "value of type jsonpatch.Patch")
            return 415, _status(415, "UnsupportedMediaType", "JSON patch operations are not "
                                                             "served here")
        if content_type != "application/apply-patch+yaml":
            return 415, _status(415, "UnsupportedMediaType",
                                "the body of the request was in an unknown format - accepted "
                                "media types include: application/apply-patch+yaml, "
                                f"application/strategic-merge-patch+json; got {content_type}")
        if not query.get("fieldManager"):
            return 400, _status(400, "BadRequest", "PATCH, application/apply-patch+yaml: "
                                                   "fieldManager is required")
        return self.fake.apply(kind, namespace, name, body or {}, query["fieldManager"])

    def _send_text(self, code: int, body: str | dict[str, Any]) -> None:
        if isinstance(body, dict):
            self._send(code, body)
            return
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _watch(self, kind: Kind, namespace: str, query: dict[str, str]) -> None:
        """A watch: every matching object newer than ``resourceVersion`` as ADDED or MODIFIED,
        then what changes, one JSON line each, until ``timeoutSeconds``; then the stream ends."""
        fake = self.fake
        since = int(query.get("resourceVersion") or 0)
        seconds = min(float(query.get("timeoutSeconds") or WATCH_SECONDS), WATCH_SECONDS)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "identity")
        self.end_headers()
        seen: dict[str, int] = {}
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and not fake._stopping.is_set():
                listed = fake.list(kind, namespace, query.get("labelSelector"),
                                   query.get("fieldSelector"))["items"]
                for item in listed:
                    rv = int(item["metadata"]["resourceVersion"])
                    name = item["metadata"]["name"]
                    if rv <= since or seen.get(name) == rv:
                        continue
                    kind_of = "MODIFIED" if name in seen else "ADDED"
                    seen[name] = rv
                    item.update(apiVersion=kind.group_version, kind=kind.kind)
                    line = json.dumps({"type": kind_of, "object": item}) + "\n"
                    self.wfile.write(line.encode())
                    self.wfile.flush()
                for name in set(seen) - {i["metadata"]["name"] for i in listed}:
                    seen.pop(name)
                    gone = {"apiVersion": kind.group_version, "kind": kind.kind,
                            "metadata": {"name": name, "namespace": namespace}}
                    self.wfile.write((json.dumps({"type": "DELETED", "object": gone}) + "\n")
                                     .encode())
                    self.wfile.flush()
                time.sleep(fake.tick)
        except (BrokenPipeError, ConnectionResetError):
            return

    def _route(self, path: str) -> tuple[Kind, str, str, str] | None:
        segments = path.strip("/").split("/")
        if segments[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", segments[2:]
        elif segments[:1] == ["apis"] and len(segments) >= 3:
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            return None
        if len(rest) not in (3, 4, 5) or rest[0] != "namespaces":
            return None
        for kind in self.fake._kinds().values():
            if (kind.group, kind.version, kind.plural) == (group, version, rest[2]):
                return (kind, rest[1], rest[3] if len(rest) >= 4 else "",
                        rest[4] if len(rest) == 5 else "")
        return None

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")
