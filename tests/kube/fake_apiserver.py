"""A small Kubernetes API server on 127.0.0.1, for the real ``kubernetes`` client.

It answers what the cluster serving targets (:mod:`mlkube.targets`), :mod:`mlkube.kube.multinode`
and KubernetesPodOperator use, the way a v1.36 API server does:

- discovery (``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/apis/apps/v1`` with
  ``deployments/scale``, ``/apis/autoscaling/v2``, ``/apis/batch/v1``, and
  ``/apis/serving.kserve.io/v1beta1`` only with ``kserve=True``);
- server-side apply (``PATCH`` as ``application/apply-patch+yaml`` with a ``fieldManager``):
  creates the object or merges the body into it (maps key by key; containers, initContainers,
  env, volumeMounts, volumes and ports item by item, by their keys; LabelSelectors and other
  lists whole), applies the API server's defaults, bumps ``metadata.generation`` when the spec
  changes, and keeps who owns which field in ``managedFields`` (``fieldsV1``), per manager:

  - a field another manager owns (an applier, or an updater such as the HPA through
    ``scale``) whose value the body changes is a 409 Conflict in the API server's words
    (``Apply failed with 1 conflict: conflict with "kube-controller-manager" with subresource
    "scale" using apps/v1: .spec.replicas``) unless ``force=true``, which takes the field;
    applying the value it has makes the field shared;
  - fields the body leaves out stay as they are (another manager's, or defaulted);
  - a field the manager applied before and no longer applies is removed unless another manager
    owns it (and defaulted again: ``replicas`` becomes 1);
  - every other write is an ``Update`` that takes the fields whose values it changed from
    everybody (updates never conflict): merge patches (manager ``fieldManager``, else the
    User-Agent's first word), the scale subresource, the Deployment controller's revision
    annotation and its status (subresource ``status``);

  an apply that creates needs RBAC's ``create`` as well as ``patch``;
- ``deployments/<name>/scale`` (``GET``, ``PUT`` of a Scale, merge ``PATCH``): the autoscaling/v1
  Scale; a write is an Update of ``spec.replicas`` with subresource ``scale``;
- ``PUT`` of an object (an Update; 409 Conflict when the body's ``resourceVersion`` is no
  longer the stored one), as the deploy step renews and takes over its ``Lease``
  (``coordination.k8s.io/v1``, stored, no controller);
- ``GET`` of one object (what is stored: reading changes nothing) or of a list filtered by
  label and field selectors; ``DELETE`` (cascading to owned ReplicaSets and pods);
- controllers on their own clock: a thread runs :meth:`FakeApiServer.step` every ``tick``
  seconds whether or not anybody reads (with ``clock=False`` only a test's ``step()`` does):

  - the HPA controller keeps the target Deployment's replicas at what its metrics ask for
    (``hpa_wants[name]``; none: the current count) within minReplicas..maxReplicas, written
    through the scale subresource as ``kube-controller-manager``, and writes its status;
  - the Deployment controller observes a new generation ``ready_after`` ticks after it, makes a
    ReplicaSet per pod template (the revision; rolling back reuses the old one with a new
    revision) and rolls as Kubernetes does, one action a step: the new ReplicaSet grows while
    all pods stay within replicas + maxSurge, old ones shrink (their unavailable pods first)
    while replicas - maxUnavailable pods stay available, so with mlkube's maxSurge 1 /
    maxUnavailable 0 one new pod comes, gets ready, one old pod goes, and so on (old and new
    pods serve together; a new pod that never gets ready leaves the old ReplicaSet whole);
    Recreate takes the old pods down first. Its status counts come from the ReplicaSets'
    statuses; its conditions are Available, Progressing (NewReplicaSetCreated,
    ReplicaSetUpdated on progress, NewReplicaSetAvailable when complete, False with
    ProgressDeadlineExceeded after ``spec.progressDeadlineSeconds`` without progress) and
    ReplicaFailure (a ReplicaSet's FailedCreate);
  - the ReplicaSet controller creates or deletes pods (not-ready and newest first) to match
    ``spec.replicas`` (admission may refuse them: ``forbidden``, FailedCreate) and counts them;
  - the kubelet: a ReplicaSet's pod is scheduled and ``ContainerCreating``, then a step later
    what ``outcome(pod_spec)`` says: ready, crash-looping with a termination message,
    unschedulable (FailedScheduling at once), failing to pull its image, or still starting;
  - the Job and KServe controllers, ``ready_after`` ticks after a new generation: a Job
    Complete or Failed (``job_outcome``); an InferenceService's revision, its pod and the status
    KServe writes (traffic split for a canary between ``latestRolledoutRevision`` and the new
    revision, with ``prev``/``latest`` tags where the InferenceService has
    ``serving.kserve.io/enable-tag-routing: "true"``; ``lastFailureInfo`` for a failed
    revision). A change of ``canaryTrafficPercent`` alone makes no revision and keeps a ready
    revision's pod (Knative: the traffic block is not the template); the pods carry KServe's and
    Knative's labels (``serving.kserve.io/inferenceservice``, ``component: predictor``,
    ``serving.knative.dev/revision``), and ``serving_pods.KubeProxy`` routes the traffic split.
    In raw-deployment mode (``kserve_mode="RawDeployment"``, KServe's default mode, or the
    InferenceService's ``serving.kserve.io/deploymentMode`` annotation; ``Standard`` too), as
    recent KServe: a new generation is applied (manager ``manager``, owned by the
    InferenceService) to a Deployment ``<name>-predictor`` (replicas ``minReplicas``, the
    Kubernetes default rolling strategy) and a Service of that name on port 80, whose pods
    carry ``serving.kserve.io/inferenceservice``, ``component: predictor`` and ``app:
    <name>-predictor`` and no revision; the Deployment controller rolls it; the status follows
    the Deployment every step: ``deploymentMode``, ``address.url`` the Service's,
    ``latestCreatedRevision`` the Deployment's revision, Ready while it is Available;
- pods created through the API (``POST``, as KubernetesPodOperator creates a step's pod): the
  API server's defaults and QoS class, then the scheduler and the kubelet on the same clock:
  bound to a node (or left Pending with the scheduler's FailedScheduling event, or gated by
  Kueue's webhook with ``kueue=True`` until :meth:`FakeApiServer.admit`), running, then exited
  0 or 1 with the outcome's termination message; ``pods/<name>/log`` (``timestamps``,
  ``sinceSeconds``); strategic-merge and JSON merge ``PATCH``; watches (``?watch=true``) of any
  list, streamed one JSON line an event until ``timeoutSeconds``;
- the pod proxy, ``/api/v1/namespaces/<ns>/pods/<name>[:<port>]/proxy/<path>`` (what
  ``kubectl get --raw`` and the Deployment target's slots use), any method: checked by RBAC as
  ``pods/proxy`` (``get`` for a GET, ``create`` for a POST, the name as given, port included),
  then forwarded to the pod's IP and port, i.e. to :attr:`FakeApiServer.pod_network` (the real
  runtimes of ``serving_pods.KubeProxy``), its status, content type and body passed through;
  the API server's own failures as its ``Status``: no such pod 404, no IP yet 400 ``address not
  allowed``, and 503 ``error trying to reach service: dial tcp <ip>:<port>: connect: connection
  refused`` where nothing listens (the container not running, a port other than its command's
  ``--port``, no ``pod_network``);
- RBAC: given Roles and RoleBindings (``rbac=``, e.g. the deploy Role ``mlkube argo render``
  writes; ClusterRoles and ClusterRoleBindings too; objects without a namespace count for
  ``ml``), every request of ``user`` is checked as the RBAC authorizer checks it (apiGroups,
  resources with subresources such as ``deployments/scale`` or ``pods/log``, verbs get, list,
  watch, create, update, patch, delete, deletecollection, resourceNames; a ServiceAccount
  subject without a namespace is the binding's) and refused with the API server's 403
  (``deployments.apps "churn" is forbidden: User "system:serviceaccount:ml:mlkube-deploy"
  cannot patch resource "deployments" in API group "apps" in the namespace "ml"``);
  ``refusals`` and ``granted`` record what it decided. ``forbidden`` refuses (method, kind)
  pairs whatever the Roles say.

Where it still differs from a real API server:

- server-side apply: lists other than those named above are atomic (``args``, ``tolerations``,
  ``conditions``...: owned and replaced whole, where Kubernetes keys some of them); the only
  map kept whole is a LabelSelector; the applied body is not defaulted before its field set is
  taken, except a port's ``protocol`` key (TCP); conflicts compare the body's value with the
  live one field by field, not the merged typed objects; the applied items of a keyed list
  come first in the merged list; a conflict message with several managers sorts them by name;
- managedFields: ReplicaSets, pods and Events the controllers create carry none, and the HPA's,
  ReplicaSet's, Job's and KServe's status writes are not recorded;
- ``<kind>/status`` is listed in discovery but not served; ``scale`` is served for Deployments
  only, and an apply patch of it is refused (415); JSON patches are refused (415);
- strategic-merge patches merge as JSON merge patches (lists are replaced, not merged by key);
- the controllers all step together under one lock, every ``tick``: the HPA acts every step
  (not every 15 s) on ``hpa_wants``, with no stabilization window, scaling policies or
  ``currentMetrics``; a Deployment scaled while old pods still run rolls rather than scaling
  its ReplicaSets proportionally; ``minReadySeconds``, ``paused``, ``revisionHistoryLimit``
  clean-up and ``collisionCount`` are ignored; a started pod is what its outcome says at once
  (no probes or restarts: ready is available); the KServe controller writes a revision's final
  state in one step (serverless mode, one pod a revision, no autoscaling: a revision out of
  the traffic keeps its pod, where Knative scales it to zero; no queue-proxy container, no
  activator); in raw mode it makes no HPA, Ingress or PodDisruptionBudget, ignores
  ``maxReplicas`` and the scaling fields, and never switches an InferenceService between
  modes; the Job controller runs no pods;
- deleting a pod removes it at once (no grace period, no ``deletionTimestamp``, no terminating
  replicas), and so do scale-downs; a pod's log is all there when its container starts;
  watches resend an object when its resourceVersion changes but send no BOOKMARKs or 410 Gone;
- the pod proxy: every pod has the same IP, so the pod is found by name, not by address;
  responses are read whole before they are passed on (no streaming, no upgrades), only the
  content type of the pod's headers is passed through, and no timeout applies (the real one:
  none either, the proxy is a long-running request); ``https:`` targets always fail the TLS
  handshake;
- there is no authentication: every request is ``user``'s; the Roles are given to the fake, not
  served (no ``rbac.authorization.k8s.io`` API, no escalation checks, no aggregated
  ClusterRoles), and discovery is open to every request.

Every object it stores (status included) can be checked against the real schemas:
:meth:`FakeApiServer.schema_errors` (``kubernetes_validate`` for built-in kinds, KServe's CRD
for InferenceServices). Run it as a context manager; it serves from one daemon thread and
stops at exit. ``on_request`` lets a test act between two requests (a controller's write
between a client's read and its write).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

K8S_VERSION = "1.36.0"
REVISION = "deployment.kubernetes.io/revision"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
MAX_REQUESTS = 20_000  # a runaway poll loop gets 503s, not an endless test
STUCK = 1_000  # the kubelet stage of a pod that goes no further (its image does not pull)
WATCH_SECONDS = 30  # a watch ends after timeoutSeconds, at most this long
NAMESPACE = "ml"  # where RBAC objects rendered without a namespace are bound
CONTROLLER_MANAGER = "kube-controller-manager"
APPLY = "application/apply-patch+yaml"
MERGE = ("application/strategic-merge-patch+json", "application/merge-patch+json")
#: who calls, unless a test says otherwise: the deploy step's service account
DEPLOY_USER = "system:serviceaccount:ml:mlkube-deploy"
#: the pod proxy: namespace, ``name[:port]`` (or ``scheme:name:port``), the path in the pod
POD_PROXY = re.compile(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/proxy(/.*)?")


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    short: tuple[str, ...] = ()
    namespaced: bool = True

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``deployments.apps``, ``pods``: the resource as API errors name it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


KINDS = {k.kind: k for k in (
    Kind("", "v1", "pods", "Pod", ("po",)),
    Kind("", "v1", "services", "Service", ("svc",)),
    Kind("", "v1", "events", "Event", ("ev",)),
    Kind("apps", "v1", "deployments", "Deployment", ("deploy",)),
    Kind("apps", "v1", "replicasets", "ReplicaSet", ("rs",)),
    Kind("batch", "v1", "jobs", "Job"),
    Kind("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", ("hpa",)),
    Kind("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService", ("isvc",)),
    # what preflight reads (a test stores them with put(); no controller touches them)
    Kind("", "v1", "nodes", "Node", ("no",), namespaced=False),
    Kind("", "v1", "persistentvolumes", "PersistentVolume", ("pv",), namespaced=False),
    Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", ("pvc",)),
    Kind("", "v1", "resourcequotas", "ResourceQuota", ("quota",)),
    Kind("", "v1", "limitranges", "LimitRange", ("limits",)),
    # what the deploy step holds while it changes what serves (mlkube.kube.lease)
    Kind("coordination.k8s.io", "v1", "leases", "Lease"),
)}
KSERVE_GROUP = "serving.kserve.io"
KSERVE_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
RAW_MODES = ("RawDeployment", "Standard")  # raw-deployment mode: its older and newer name
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass
class Outcome:
    """What the kubelet and scheduler make of a pod spec."""

    state: Literal["ready", "crash", "unschedulable", "image-pull", "starting",
                   "forbidden"] = "ready"
    message: str = ""
    #: what the container prints (a step pod's log, read through ``pods/<name>/log``)
    logs: str = ""
    #: what a created pod's container exits with when it crashes
    exit_code: int = 1


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


# --- server-side apply: field sets, merging, ownership -----------------------------------------
#
# A field set is what ``fieldsV1`` holds, as paths of its keys from the root, e.g.
# ("f:spec", "f:replicas") or ("f:spec", "f:template", "f:spec", "f:containers",
# 'k:{"name":"server"}', "f:image"); a keyed list item's own path stands for the item (its "."
# entry). Lists the fake does not key are atomic: owned, compared and replaced whole.

Path = tuple[str, ...]
_MISSING: Any = object()
#: metadata the API server writes: never part of an applied configuration or a field set
SYSTEM_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
                   "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink")
_LIST_KEYS = {"containers": ("name",), "initContainers": ("name",), "env": ("name",),
              "volumeMounts": ("mountPath",), "volumes": ("name",)}


def _list_keys(name: str, item: Any, crd: bool, inside_container: bool) -> tuple[str, ...] | None:
    if crd and name in ("containers", "volumes"):  # KServe's CRD leaves these atomic
        return None
    if name == "ports" and isinstance(item, dict):
        return ("containerPort", "protocol") if inside_container else ("port", "protocol")
    return _LIST_KEYS.get(name)


def _keys_at(path: tuple[str, ...], items: list[Any], crd: bool) -> tuple[str, ...] | None:
    """The keys of the list at ``path`` (a path of plain names, ``[]`` for an item)."""
    inside = "containers" in path or "initContainers" in path
    return _list_keys(path[-1], items[0] if items else None, crd, inside)


def _key_value(item: dict[str, Any], key: str) -> Any:
    value = item.get(key)
    return "TCP" if value is None and key == "protocol" else value  # a defaulted key


def _ident(item: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: _key_value(item, k) for k in keys if k in item or k == "protocol"}


def _atomic_map(path: tuple[str, ...], value: dict[str, Any]) -> bool:
    """A LabelSelector (``x-kubernetes-map-type: atomic``): owned whole."""
    return bool(path) and path[-1] == "selector" and (
        "matchLabels" in value or "matchExpressions" in value)


def fields_v1(value: Any, crd: bool = False, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """The field set an applied configuration owns, as the API server records it."""
    if isinstance(value, dict):
        if _atomic_map(path, value):
            return {}
        out: dict[str, Any] = {}
        for key, sub in value.items():
            if not path and key in ("apiVersion", "kind"):
                continue
            if path == ("metadata",) and key in ("name", "namespace", *SYSTEM_METADATA):
                continue
            out[f"f:{key}"] = fields_v1(sub, crd, (*path, key))
        return out
    if isinstance(value, list) and path:
        keys = _keys_at(path, value, crd)
        if keys is None:
            return {}
        out = {}
        for item in value:
            ident = _ident(item, keys)
            out["k:" + json.dumps(ident, separators=(",", ":"))] = {
                ".": {}, **fields_v1(item, crd, (*path, "[]"))}
        return out
    return {}


def field_set(fields: dict[str, Any] | None, prefix: Path = ()) -> set[Path]:
    """The paths a ``fieldsV1`` entry owns."""
    out: set[Path] = set()
    for key, sub in (fields or {}).items():
        if key == ".":
            out.add(prefix)
        elif sub:
            out |= field_set(sub, (*prefix, key))
        else:
            out.add((*prefix, key))
    return out


def fields_of(paths: set[Path]) -> dict[str, Any]:
    """``fieldsV1`` for a field set (the inverse of :func:`field_set`)."""
    root: dict[str, Any] = {}
    for path in sorted(paths, key=len):
        node = root
        for part in path:
            node = node.setdefault(part, {})

    def mark(node: dict[str, Any], prefix: Path) -> None:
        for key in list(node):
            if key == ".":
                continue
            path = (*prefix, key)
            if node[key]:
                if path in paths:
                    node[key] = {".": {}, **node[key]}
                mark(node[key], path)

    mark(root, ())
    return root


def _leaves(paths: set[Path]) -> set[Path]:
    """The paths no other path extends: fields with a value (not a keyed item's own path)."""
    inner = {p[:i] for p in paths for i in range(1, len(p))}
    return paths - inner


def _child(node: Any, part: str) -> Any:
    if part.startswith("f:") and isinstance(node, dict):
        return node.get(part[2:], _MISSING)
    if part.startswith("k:") and isinstance(node, list):
        ident = json.loads(part[2:])
        return next((item for item in node if isinstance(item, dict)
                     and all(_key_value(item, k) == v for k, v in ident.items())), _MISSING)
    if part.startswith("v:") and isinstance(node, list):
        value = json.loads(part[2:])
        return value if value in node else _MISSING
    return _MISSING


def value_at(obj: Any, path: Path) -> Any:
    """The value at a field-set path, or ``_MISSING``."""
    for part in path:
        obj = _child(obj, part)
        if obj is _MISSING:
            break
    return obj


def _remove_child(node: Any, part: str) -> None:
    child = _child(node, part)
    if child is _MISSING:
        return
    if isinstance(node, dict):
        node.pop(part[2:], None)
    else:
        node[:] = [item for item in node if item is not child]


def _delete_at(obj: dict[str, Any], path: Path, owned: set[Path]) -> None:
    """Remove the field at ``path``, and the maps and lists that leaves empty (none owned)."""
    trail = [obj]
    for part in path[:-1]:
        node = _child(trail[-1], part)
        if node is _MISSING:
            return
        trail.append(node)
    _remove_child(trail[-1], path[-1])
    for depth in range(len(path) - 1, 1, -1):  # never spec or metadata themselves
        if trail[depth] or path[:depth] in owned:
            break
        _remove_child(trail[depth - 1], path[depth - 1])


def path_string(path: Path) -> str:
    """A field-set path as API errors write it: ``.spec.containers[name="server"].image``."""
    out = ""
    for part in path:
        if part.startswith("f:"):
            out += "." + part[2:]
        elif part.startswith("k:"):
            ident = json.loads(part[2:])
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(ident.items())) + "]"
        else:
            out += f"[={part[2:]}]"
    return out


def _merge_applied(live: Any, applied: Any, crd: bool, path: tuple[str, ...] = ()) -> Any:
    """``applied`` merged into ``live`` as server-side apply merges: maps key by key, keyed
    lists item by item (the applied items in their order, then the others), the rest whole."""
    if isinstance(applied, dict) and isinstance(live, dict) and not _atomic_map(path, applied):
        out = copy.deepcopy(live)
        for key, value in applied.items():
            out[key] = _merge_applied(live.get(key, _MISSING), value, crd, (*path, key))
        return out
    if isinstance(applied, list) and isinstance(live, list) and path:
        keys = _keys_at(path, applied or live, crd)
        if keys is not None:
            merged, used = [], set()
            for item in applied:
                ident = _ident(item, keys)
                match = next((i for i, old in enumerate(live) if i not in used
                              and isinstance(old, dict) and _ident(old, keys) == ident), None)
                if match is None:
                    merged.append(copy.deepcopy(item))
                else:
                    used.add(match)
                    merged.append(_merge_applied(live[match], item, crd, (*path, "[]")))
            return merged + [copy.deepcopy(old) for i, old in enumerate(live) if i not in used]
    return copy.deepcopy(applied)


def _identity(entry: dict[str, Any]) -> tuple[str, str, str, str]:
    """Who a managedFields entry is: an applier whatever its apiVersion, an updater per
    apiVersion (the API server's manager identifier)."""
    operation = entry.get("operation", "")
    return (entry.get("manager", ""), operation, entry.get("subresource", ""),
            "" if operation == "Apply" else entry.get("apiVersion", ""))


def manager_name(entry: dict[str, Any]) -> str:
    """A manager as a conflict names it: ``"kubectl"``, or
    ``"kube-controller-manager" with subresource "scale" using apps/v1``."""
    text = json.dumps(entry.get("manager", ""))
    if entry.get("subresource"):
        text += f' with subresource {json.dumps(entry["subresource"])}'
    if entry.get("operation") == "Update":
        text += f" using {entry.get('apiVersion')}"
    return text


def conflict_status(conflicts: list[tuple[dict[str, Any], Path]]) -> dict[str, Any]:
    """The API server's 409 for an apply that would change fields others own."""
    if len(conflicts) == 1:
        entry, path = conflicts[0]
        message = (f"Apply failed with 1 conflict: conflict with {manager_name(entry)}: "
                   f"{path_string(path)}")
    else:
        by_manager: dict[str, list[str]] = {}
        for entry, path in conflicts:
            by_manager.setdefault(manager_name(entry), []).append(path_string(path))
        lines = []
        for manager in sorted(by_manager):
            lines += [f"conflicts with {manager}:", *(f"- {p}" for p in by_manager[manager])]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    causes = [{"reason": "FieldManagerConflict", "message": f"conflict with {manager_name(e)}",
               "field": path_string(p)} for e, p in conflicts]
    return {**_status(409, "Conflict", message), "details": {"causes": causes}}


def _scoped(obj: dict[str, Any], subresource: str) -> dict[str, Any]:
    """What a write to ``subresource`` ("" for the object itself) may change."""
    if subresource == "status":
        return {"status": obj["status"]} if "status" in obj else {}
    if subresource == "scale":
        return {"spec": {"replicas": (obj.get("spec") or {}).get("replicas")}}
    out = {k: v for k, v in obj.items() if k not in ("status", "apiVersion", "kind")}
    out["metadata"] = {k: v for k, v in _meta(obj).items() if k not in SYSTEM_METADATA}
    return out


def record_update(before: dict[str, Any], after: dict[str, Any], manager: str, api_version: str,
                  subresource: str = "", crd: bool = False) -> None:
    """An ``Update`` (anything but an apply) in ``after``'s managedFields: its manager now owns
    the fields whose values it changed, and nobody else does (updates never conflict);
    fields it removed are nobody's."""
    old, new = _scoped(before, subresource), _scoped(after, subresource)
    old_paths, new_paths = field_set(fields_v1(old, crd)), field_set(fields_v1(new, crd))
    leaves = _leaves(new_paths)
    changed = {p for p in new_paths if p not in old_paths
               or (p in leaves and value_at(old, p) != value_at(new, p))}
    gone = old_paths - new_paths
    if not changed and not gone:
        return
    me = (manager, "Update", subresource, api_version)
    kept, mine = [], set()
    for entry in _meta(after).get("managedFields") or []:
        paths = field_set(entry.get("fieldsV1"))
        if _identity(entry) == me:
            mine = paths
        elif paths & (changed | gone):
            rest = paths - changed - gone
            if rest:
                kept.append({**entry, "fieldsV1": fields_of(rest)})
        else:
            kept.append(entry)
    owned = (mine | changed) - gone
    if owned:
        entry = {"manager": manager, "operation": "Update", "apiVersion": api_version,
                 "time": now(), "fieldsType": "FieldsV1", "fieldsV1": fields_of(owned)}
        if subresource:
            entry["subresource"] = subresource
        kept.append(entry)
    after["metadata"]["managedFields"] = kept


def owners(obj: dict[str, Any], dotted: str) -> set[str]:
    """The managers owning the field ``dotted`` (``spec.replicas``) of ``obj``."""
    path = tuple(f"f:{part}" for part in dotted.split("."))
    return {e["manager"] for e in _meta(obj).get("managedFields") or []
            if path in field_set(e.get("fieldsV1"))}


# --- defaults -------------------------------------------------------------------------------


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



# --- RBAC -----------------------------------------------------------------------------------


def request_verb(method: str, name: str, query: dict[str, str]) -> str:
    """The verb RBAC checks for a request."""
    if method == "GET":
        return "get" if name else "watch" if _flag(query, "watch") else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection"}[method]


def forbidden_status(user: str, verb: str, kind: Kind, namespace: str, name: str,
                     sub: str = "") -> dict[str, Any]:
    """The API server's 403, word for word."""
    resource = f"{kind.plural}/{sub}" if sub else kind.plural
    subject = f'{kind.qualified} "{name}"' if name else kind.qualified
    message = (f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" in '
               f'API group "{kind.group}" in the namespace "{namespace}"')
    return {**_status(403, "Forbidden", message),
            "details": {"name": name, "group": kind.group, "kind": kind.plural}}


def _rule_allows(rule: dict[str, Any], verb: str, group: str, resource: str, name: str) -> bool:
    """One PolicyRule, matched as the RBAC authorizer matches it."""
    verbs = set(rule.get("verbs") or [])
    groups = set(rule.get("apiGroups") or [])
    resources = set(rule.get("resources") or [])
    base, _, sub = resource.partition("/")
    resource_ok = ("*" in resources or resource in resources
                   or bool(sub) and f"*/{sub}" in resources)
    names = rule.get("resourceNames") or []
    return bool(verbs & {verb, "*"} and groups & {group, "*"} and resource_ok
                and (not names or name in names))


def _subject_is(subject: dict[str, Any], user: str, namespace: str) -> bool:
    kind = subject.get("kind")
    if kind == "ServiceAccount":  # namespace defaults to the binding's
        account = f"system:serviceaccount:{subject.get('namespace') or namespace}:{subject['name']}"
        return account == user
    if kind == "User":
        return subject.get("name") == user
    if kind == "Group":
        groups = {"system:authenticated"}
        if user.startswith("system:serviceaccount:"):
            groups |= {"system:serviceaccounts",
                       f"system:serviceaccounts:{user.split(':')[2]}"}
        return subject.get("name") in groups
    return False


def rbac_allows(objects: Iterable[dict[str, Any]], user: str, verb: str, group: str,
                resource: str, namespace: str, name: str) -> bool:
    """Whether the Roles and RoleBindings (ClusterRoles and ClusterRoleBindings too) in
    ``objects`` let ``user`` do ``verb`` on ``resource`` (``deployments/scale``) in
    ``namespace``. Objects rendered without a namespace count for :data:`NAMESPACE`."""
    objects = list(objects)

    def where(obj: dict[str, Any]) -> str:
        return _meta(obj).get("namespace") or NAMESPACE

    def rules(ref: dict[str, Any], bound_in: str) -> list[dict[str, Any]]:
        for obj in objects:
            if obj.get("kind") == ref.get("kind") and _meta(obj).get("name") == ref.get("name") \
                    and (ref.get("kind") == "ClusterRole" or where(obj) == bound_in):
                return list(obj.get("rules") or [])
        return []

    for binding in objects:
        if binding.get("kind") == "RoleBinding" and where(binding) == namespace:
            bound_in = namespace
        elif binding.get("kind") == "ClusterRoleBinding":
            bound_in = ""
        else:
            continue
        if not any(_subject_is(s, user, bound_in) for s in binding.get("subjects") or []):
            continue
        if any(_rule_allows(rule, verb, group, resource, name)
               for rule in rules(binding.get("roleRef") or {}, bound_in)):
            return True
    return False


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
    #: KServe's default deployment mode (``inferenceservice-config``'s ``deploy``): an
    #: InferenceService without the ``serving.kserve.io/deploymentMode`` annotation gets it;
    #: ``RawDeployment`` (``Standard``): a Deployment and a Service, no revisions
    kserve_mode: str = "Serverless"
    outcome: Callable[[dict[str, Any]], Outcome] = lambda pod_spec: READY
    #: ticks a controller takes to act on a generation it has not observed yet
    ready_after: int = 1
    #: what the Job controller makes of a Job ``ready_after`` ticks after it: Complete or Failed
    job_outcome: Literal["Complete", "Failed"] = "Complete"
    #: (method, kind) pairs refused whatever RBAC says, e.g. ("PATCH", "Deployment").
    forbidden: set[tuple[str, str]] = field(default_factory=set)
    #: RBAC: Roles, RoleBindings (ClusterRoles, ClusterRoleBindings) every request is checked
    #: against, as :attr:`user`; none: everything is allowed
    rbac: list[dict[str, Any]] = field(default_factory=list)
    #: who makes every request (the fake has no authentication)
    user: str = DEPLOY_USER
    #: the HPA controller's metrics: the replica count they ask for, by HPA name (none: the
    #: current count, kept within minReplicas and maxReplicas)
    hpa_wants: dict[str, int] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    #: the requests RBAC (or ``forbidden``) refused: (verb, resource, namespace, name)
    refusals: list[tuple[str, str, str, str]] = field(default_factory=list)
    #: what RBAC allowed: (verb, resource)
    granted: set[tuple[str, str]] = field(default_factory=set)
    store: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: seconds between two steps of the controllers, the scheduler and the kubelet
    tick: float = 0.05
    #: whether they step on their own (a thread); without, a test calls :meth:`step`
    clock: bool = True
    #: Kueue's pod webhook: a created pod naming a queue gets its scheduling gate (see admit)
    kueue: bool = False
    #: called with each request before it is served (a test interleaves a controller's write)
    on_request: Callable[[Request], None] | None = None
    #: what listens in the pods, for the pod proxy (``pods/<name>:<port>/proxy/<path>``):
    #: called with the pod, the port, the method, the path (with its query), the body and the
    #: headers, it answers (status, headers, body); ``None``: nothing listens (503, as a refused
    #: connection). ``serving_pods.KubeProxy`` sets it to its real runtimes.
    pod_network: Callable[[dict[str, Any], int, str, str, bytes | None, dict[str, str]],
                          tuple[int, dict[str, str], bytes]] | None = None

    def __post_init__(self) -> None:
        self._rv = itertools.count(1000)
        self._ips = itertools.count(10)
        self._waited: Counter[tuple[str, str, str, int]] = Counter()
        self._revisions: dict[tuple[str, str], tuple[int, str]] = {}
        self._progress_at: dict[tuple[str, str], float] = {}  # Deployment → last progress
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clock: threading.Thread | None = None
        self._stopping = threading.Event()
        self._created_pods: dict[tuple[str, str, str], int] = {}  # key → kubelet stage
        self._serving_pods: dict[tuple[str, str], Outcome] = {}  # ContainerCreating → outcome

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
        if self.clock:
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
        """The controllers, the scheduler and the kubelet: one step a tick, on their own
        thread, whether or not anybody reads."""
        while not self._stopping.wait(self.tick):
            self.step()

    def step(self, ticks: int = 1) -> None:
        """``ticks`` steps of everything that acts on its own, now: the scheduler and kubelet
        of created pods, the kubelet of ReplicaSet pods, then the HPA, Deployment, ReplicaSet,
        Job and KServe controllers (what the clock does every :attr:`tick` seconds)."""
        for _ in range(ticks):
            with self.lock:
                for key in list(self._created_pods):
                    self._step_pod(key)
                self._kubelet()
                for kind, controller in (
                        ("HorizontalPodAutoscaler", self._hpa_controller),
                        ("Deployment", self._deployment_controller),
                        ("ReplicaSet", self._replicaset_controller),
                        ("Job", self._job_controller),
                        ("InferenceService", self._kserve_controller)):
                    for key in [k for k in self.store if k[0] == kind]:
                        obj = self.store.get(key)
                        if obj is None:
                            continue
                        before = json.dumps(obj, sort_keys=True)
                        controller(obj)
                        if self.store.get(key) is obj and json.dumps(obj, sort_keys=True) != before:
                            self._touch(obj)

    def wait_for(self, what: Callable[[], Any], timeout: float = 5) -> Any:
        """Poll ``what()`` until it is truthy: its value (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            value = what()
            if value:
                return value
            assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
            time.sleep(self.tick / 5)

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
            if KINDS[obj["kind"]].namespaced:
                meta.setdefault("namespace", "ml")
            else:  # cluster-scoped: stored without a namespace
                meta.pop("namespace", None)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            meta["resourceVersion"] = str(next(self._rv))
            self.store[(obj["kind"], meta.get("namespace", ""), meta["name"])] = obj
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
              manager: str, force: bool = False) -> tuple[int, dict[str, Any]]:
        """Server-side apply of ``body`` by ``manager`` (see the module doc)."""
        if body.get("kind") != kind.kind or body.get("apiVersion") != kind.group_version:
            return 400, _status(400, "BadRequest", f"the body is {body.get('apiVersion')}/"
                                f"{body.get('kind')}, the URL {kind.group_version}/{kind.kind}")
        meta_in = body.get("metadata") or {}
        if meta_in.get("name") != name or meta_in.get("namespace", namespace) != namespace:
            return 400, _status(400, "BadRequest", "the name or namespace of the body does "
                                                   "not match the URL")
        body = {k: copy.deepcopy(v) for k, v in body.items() if k != "status"}  # status: ignored
        body["metadata"] = {k: v for k, v in body["metadata"].items() if k not in SYSTEM_METADATA}
        with self.lock:
            key = (kind.kind, namespace, name)
            existing = self.store.get(key)
            entry = {"manager": manager, "operation": "Apply", "apiVersion": kind.group_version,
                     "time": now(), "fieldsType": "FieldsV1",
                     "fieldsV1": fields_v1(body, kind.group == KSERVE_GROUP)}
            if existing is None:
                obj, code = self._created(kind, namespace, body, entry), 201
            else:
                updated = self._updated(kind, existing, body, entry, force)
                if isinstance(updated, tuple):
                    return updated
                obj, code = updated, 200
            error = _invalid(kind, name, obj)
            if error:
                return 422, _status(422, "Invalid", error)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self.store[key] = obj
            return code, copy.deepcopy(obj)

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
                 entry: dict[str, Any], force: bool
                 ) -> dict[str, Any] | tuple[int, dict[str, Any]]:
        """Server-side apply over ``existing``: the merged object, or the 409 of a conflict.

        A field another manager owns whose value the body changes conflicts (``force`` takes
        it from them); what the body leaves out stays; what this manager applied before and
        no longer applies goes, unless another manager owns it too.
        """
        crd = kind.group == KSERVE_GROUP
        me = _identity(entry)
        applied = field_set(entry["fieldsV1"])
        entries = _meta(existing).get("managedFields") or []
        previous: set[Path] = set()
        others = []
        for other in entries:
            if _identity(other) == me:
                previous = field_set(other.get("fieldsV1"))
            else:
                others.append((other, field_set(other.get("fieldsV1"))))
        conflicts = [(other, path) for other, owned in others
                     for path in sorted(_leaves(applied) & owned)
                     if value_at(body, path) != value_at(existing, path)]
        if conflicts and not force:
            return 409, conflict_status(conflicts)
        taken = {path for _, path in conflicts}
        kept = []
        for other, owned in others:
            if owned & taken:
                if owned - taken:
                    kept.append({**other, "fieldsV1": fields_of(owned - taken)})
            else:
                kept.append(other)
        obj = _merge_applied(existing, body, crd)
        still = applied.union(*(field_set(o.get("fieldsV1")) for o in kept))
        atomic = _leaves(still)
        for path in sorted(previous - applied, key=len):  # an item before its fields
            claimed = any(q[:len(path)] == path for q in still)  # by another, or below it
            inside = any(path[:len(q)] == q for q in atomic)  # in a list or map kept whole
            key = len(path) > 1 and path[-2].startswith("k:") \
                and path[-1][2:] in json.loads(path[-2][2:])  # goes with its item only
            if not claimed and not inside and not key:
                _delete_at(obj, path, still)
        apply_defaults(kind.kind, obj, "")
        meta = obj["metadata"]
        if obj.get("spec") != existing.get("spec"):
            meta["generation"] = meta.get("generation", 1) + 1
        meta["managedFields"] = [*kept, entry]
        return obj

    def merge_patch(self, kind: Kind, namespace: str, name: str, patch: Any,
                    manager: str = "unknown") -> tuple[int, dict[str, Any]]:
        """``PATCH`` as a strategic-merge or JSON merge patch (RFC 7386): an Update."""
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
            if obj.get("spec") != existing.get("spec") and "generation" in obj["metadata"]:
                obj["metadata"]["generation"] += 1
            record_update(existing, obj, manager, kind.group_version,
                          crd=kind.group == KSERVE_GROUP)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self.store[key] = obj
            return 200, copy.deepcopy(obj)

    def scale(self, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        """``deployments/<name>/scale``: the Deployment's autoscaling/v1 Scale."""
        with self.lock:
            dep = self.store.get(("Deployment", namespace, name))
            if dep is None:
                return 404, _status(404, "NotFound", f'deployments.apps "{name}" not found')
            return 200, _scale_of(dep)

    def write_scale(self, namespace: str, name: str, replicas: Any,
                    manager: str) -> tuple[int, dict[str, Any]]:
        """A write of the scale subresource (``PUT``, ``PATCH``, the HPA): ``spec.replicas``,
        an Update by ``manager`` with subresource ``scale`` that takes the field from whoever
        owned it."""
        with self.lock:
            dep = self.store.get(("Deployment", namespace, name))
            if dep is None:
                return 404, _status(404, "NotFound", f'deployments.apps "{name}" not found')
            if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
                return 422, _status(422, "Invalid", (
                    f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                    f"{json.dumps(replicas)}: must be greater than or equal to 0"))
            if dep["spec"].get("replicas") != replicas:
                before = copy.deepcopy(dep)
                dep["spec"]["replicas"] = replicas
                dep["metadata"]["generation"] = dep["metadata"].get("generation", 1) + 1
                record_update(before, dep, manager, "apps/v1", "scale")
                self._touch(dep)
            return 200, _scale_of(dep)

    def update(self, kind: Kind, namespace: str, name: str, body: dict[str, Any],
               manager: str) -> tuple[int, dict[str, Any]]:
        """``PUT``: the object replaced by ``body`` (an Update), only while ``body``'s
        ``resourceVersion`` (when given) is still the stored one, else 409 Conflict, as the API
        server's optimistic concurrency answers a writer that read a stale object."""
        if body.get("kind") not in (None, kind.kind) or (body.get("metadata") or {}).get(
                "name") != name:
            return 400, _status(400, "BadRequest", "the name of the body does not match the URL")
        with self.lock:
            key = (kind.kind, namespace, name)
            existing = self.store.get(key)
            if existing is None:
                return 404, _status(404, "NotFound", f'{kind.qualified} "{name}" not found')
            meta = body.get("metadata") or {}
            if meta.get("resourceVersion") not in (None, existing["metadata"]["resourceVersion"]):
                return 409, _status(409, "Conflict", (
                    f'Operation cannot be fulfilled on {kind.qualified} "{name}": the object has '
                    "been modified; please apply your changes to the latest version and try "
                    "again"))
            obj = copy.deepcopy(body)
            obj["apiVersion"], obj["kind"] = kind.group_version, kind.kind
            kept = {k: v for k, v in existing["metadata"].items() if k in SYSTEM_METADATA}
            obj["metadata"] = {**meta, **kept, "namespace": namespace}
            error = _invalid(kind, name, obj)
            if error:
                return 422, _status(422, "Invalid", error)
            if obj.get("spec") != existing.get("spec") and "generation" in obj["metadata"]:
                obj["metadata"]["generation"] += 1
            record_update(existing, obj, manager, kind.group_version)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self.store[key] = obj
            return 200, copy.deepcopy(obj)

    def read(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        """``GET`` of one object: what is stored (reading changes nothing)."""
        with self.lock:
            obj = self.store.get((kind.kind, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def allowed(self, verb: str, kind: Kind, namespace: str, name: str = "",
                sub: str = "") -> bool:
        """Whether :attr:`rbac` lets :attr:`user` make this request (no rbac: yes)."""
        if not self.rbac:
            return True
        resource = f"{kind.plural}/{sub}" if sub else kind.plural
        return rbac_allows(self.rbac, self.user, verb, kind.group, resource, namespace, name)

    def refusal(self, verb: str, kind: Kind, namespace: str, name: str = "", sub: str = "",
                method: str | None = None) -> dict[str, Any] | None:
        """The 403 for a request RBAC (or :attr:`forbidden`) does not allow, else ``None``."""
        resource = f"{kind.plural}/{sub}" if sub else kind.plural
        if (method, kind.kind) not in self.forbidden and self.allowed(verb, kind, namespace,
                                                                      name, sub):
            if self.rbac:
                with self.lock:
                    self.granted.add((verb, resource))
            return None
        with self.lock:
            self.refusals.append((verb, resource, namespace, name))
        return forbidden_status(self.user, verb, kind, namespace, name, sub)

    def proxy_to_pod(self, namespace: str, target: str, method: str, path: str,
                     body: bytes | None, headers: dict[str, str]
                     ) -> tuple[int, dict[str, str], bytes]:
        """The pod proxy (``pods/<target>/proxy<path>``, ``target`` is ``name``,
        ``name:port`` or ``scheme:name:port``), as the API server's: the pod's IP and port
        (none given: its first container port), then what :attr:`pod_network` answers there
        (status, headers, body passed through). The API server's own failures are a
        ``Status``: no such pod (404), no IP yet (400 ``address not allowed``), nothing
        listening (503 ``error trying to reach service``: the container is not running, or the
        port is not the one its command listens on)."""
        parts = target.split(":")
        scheme, name, port = (parts if len(parts) == 3 else
                              ["", *parts] if len(parts) == 2 else ["", parts[0], ""])
        pod = self.get("Pod", name, namespace)
        if pod is None:
            return _json(404, _status(404, "NotFound", f'pods "{name}" not found'))
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        ip = status.get("podIP")
        if not ip:
            return _json(400, _status(400, "BadRequest", "address not allowed"))
        container = (spec.get("containers") or [{}])[0]
        if not port:
            ports = [p for c in spec.get("containers") or [] for p in c.get("ports") or []]
            port = str(ports[0]["containerPort"]) if ports else ""
        if port and not port.isdigit():
            return _json(503, _status(503, "ServiceUnavailable", "error trying to reach service: "
                                      f"dial tcp: address {ip}:{port}: unknown port"))
        address = f"{ip}:{port}" if port else ip
        if scheme == "https":
            return _json(503, _status(503, "ServiceUnavailable", "error trying to reach service: "
                                      "tls: first record does not look like a TLS handshake"))
        command = [*(container.get("command") or []), *(container.get("args") or [])]
        listens = command[command.index("--port") + 1] if "--port" in command[:-1] else "8080"
        running = "running" in (((status.get("containerStatuses") or [{}])[0]).get("state") or {})
        if not running or port != listens or self.pod_network is None:
            return _json(503, _status(503, "ServiceUnavailable", "error trying to reach service: "
                                      f"dial tcp {address}: connect: connection refused"))
        return self.pod_network(pod, int(port), method, path, body, headers)

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

    def list_objects(self, kind: Kind, namespace: str, labels: str | None,
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

    def _due(self, obj: dict[str, Any]) -> bool:
        """Whether a controller acts on a generation it has not observed yet: once it has
        waited ``ready_after`` ticks."""
        meta = _meta(obj)
        generation = meta.get("generation", 1)
        if (obj.get("status") or {}).get("observedGeneration", 0) >= generation:
            return False
        key = (obj["kind"], meta["namespace"], meta["name"], generation)
        self._waited[key] += 1
        return self._waited[key] >= self.ready_after

    def _job_controller(self, job: dict[str, Any]) -> None:
        """All the Job's pods succeed (or it fails: BackoffLimitExceeded), as a status says."""
        status = job.setdefault("status", {})
        if status.get("conditions") or not self._due(job):
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

    def _hpa_controller(self, hpa: dict[str, Any]) -> None:
        """The HPA: the replica count its metrics ask for (:attr:`hpa_wants`; none: the
        current one) within minReplicas..maxReplicas, written through the target's scale
        subresource as ``kube-controller-manager``; its status."""
        spec, meta = hpa["spec"], hpa["metadata"]
        ref = spec.get("scaleTargetRef") or {}
        status = hpa.setdefault("status", {"desiredReplicas": 0})
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        dep = (self.store.get(("Deployment", meta["namespace"], ref.get("name", "")))
               if ref.get("kind") == "Deployment" else None)
        if dep is None:
            _set_condition(conditions, "AbleToScale", "False", "FailedGetScale",
                           "the HPA controller was unable to get the target's current scale: "
                           f'deployments/scale.apps "{ref.get("name")}" not found', False)
            status["conditions"] = list(conditions.values())
            return
        current = dep["spec"].get("replicas", 1)
        low, high = spec.get("minReplicas", 1), spec["maxReplicas"]
        wanted = self.hpa_wants.get(meta["name"], current)
        desired = 0 if current == 0 else min(max(wanted, low), high)  # 0: scaling disabled
        if desired != current:
            self.write_scale(meta["namespace"], ref["name"], desired, CONTROLLER_MANAGER)
            status["lastScaleTime"] = now()
            _set_condition(conditions, "AbleToScale", "True", "SucceededRescale",
                           f"the HPA controller was able to update the target scale to {desired}",
                           False)
        else:
            _set_condition(conditions, "AbleToScale", "True", "ReadyForNewScale",
                           "recommended size matches current size", False)
        _set_condition(conditions, "ScalingActive", "True", "ValidMetricFound",
                       "the HPA was able to successfully calculate a replica count from cpu "
                       "resource utilization (percentage of request)", False)
        if wanted < low:
            _set_condition(conditions, "ScalingLimited", "True", "TooFewReplicas",
                           "the desired replica count is less than the minimum replica count",
                           False)
        elif wanted > high:
            _set_condition(conditions, "ScalingLimited", "True", "TooManyReplicas",
                           "the desired replica count is more than the maximum replica count",
                           False)
        else:
            _set_condition(conditions, "ScalingLimited", "False", "DesiredWithinRange",
                           "the desired count is within the acceptable range", False)
        status.update(currentReplicas=(dep.get("status") or {}).get("replicas", 0),
                      desiredReplicas=desired)
        status["conditions"] = [conditions[t] for t in
                                ("AbleToScale", "ScalingActive", "ScalingLimited")]

    def _deployment_controller(self, dep: dict[str, Any]) -> None:
        """The Deployment controller's sync: a ReplicaSet per pod template (the revision), a
        rolling update by maxSurge and maxUnavailable (one action a sync: scale the new
        ReplicaSet up, else the old ones down), then the status and its conditions."""
        meta, spec = dep["metadata"], dep["spec"]
        generation = meta.get("generation", 1)
        new_generation = (dep.get("status") or {}).get("observedGeneration", 0) < generation
        if new_generation and not self._due(dep):
            return
        before = copy.deepcopy(dep)
        ns, name = meta["namespace"], meta["name"]
        template = spec["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        owned = self._replica_sets_of(dep)
        top = max((_revision(rs) for rs in owned), default=0)
        new = next((rs for rs in owned if rs["metadata"]["labels"].get("pod-template-hash")
                    == digest), None)
        want = spec.get("replicas", 1)
        surge, unavailable = _fenceposts(spec, want)
        created = new is None
        if new is None:
            new = self._new_replica_set(dep, digest, top + 1, want, surge)
            owned.append(new)
        elif _revision(new) != top:  # rolling back to it
            new["metadata"]["annotations"][REVISION] = str(top + 1)
            self._touch(new)
        if new_generation:
            self._progress_at[(ns, name)] = time.monotonic()
        meta.setdefault("annotations", {})[REVISION] = new["metadata"]["annotations"][REVISION]
        record_update(before, dep, CONTROLLER_MANAGER, "apps/v1")
        old = [rs for rs in owned if rs is not new]
        rolling = (spec.get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"
        if not any(rs["spec"]["replicas"] for rs in old):
            self._scale_replica_set(dep, new, want, surge)
        elif not rolling:  # Recreate: the old pods go before any new one comes
            for rs in old:
                self._scale_replica_set(dep, rs, 0, surge)
        elif not self._scale_up(dep, new, owned, want, surge):
            self._scale_down(dep, new, old, owned, want, unavailable, surge)
        self._deployment_status(dep, new, owned, want, unavailable, created)
        record_update(before, dep, CONTROLLER_MANAGER, "apps/v1", "status")

    def _replica_sets_of(self, dep: dict[str, Any]) -> list[dict[str, Any]]:
        uid, ns = dep["metadata"]["uid"], dep["metadata"]["namespace"]
        owned = [rs for (k, n, _), rs in self.store.items() if k == "ReplicaSet" and n == ns
                 and uid in {o["uid"] for o in rs["metadata"].get("ownerReferences", [])}]
        return sorted(owned, key=_revision)

    def _new_replica_set(self, dep: dict[str, Any], digest: str, revision: int, want: int,
                         surge: int) -> dict[str, Any]:
        meta, template = dep["metadata"], dep["spec"]["template"]
        labels = {**((template.get("metadata") or {}).get("labels") or {}),
                  "pod-template-hash": digest}
        rs = self.put({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": f"{meta['name']}-{digest}", "namespace": meta["namespace"],
                "labels": labels, "generation": 1,
                "annotations": {REVISION: str(revision), DESIRED_REPLICAS: str(want),
                                MAX_REPLICAS: str(want + surge)},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": meta["name"], "uid": meta["uid"],
                                     "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                     "template": {**copy.deepcopy(template),
                                  "metadata": {**(template.get("metadata") or {}),
                                               "labels": labels}}},
            "status": {"replicas": 0, "observedGeneration": 1},
        })
        return rs

    def _scale_replica_set(self, dep: dict[str, Any], rs: dict[str, Any], replicas: int,
                           surge: int) -> bool:
        current = rs["spec"]["replicas"]
        want = dep["spec"].get("replicas", 1)
        annotations = rs["metadata"].setdefault("annotations", {})
        if current == replicas and annotations.get(DESIRED_REPLICAS) == str(want):
            return False
        rs["spec"]["replicas"] = replicas
        annotations.update({DESIRED_REPLICAS: str(want), MAX_REPLICAS: str(want + surge)})
        if current != replicas:
            rs["metadata"]["generation"] = rs["metadata"].get("generation", 1) + 1
            self.event(dep["metadata"]["namespace"], "Deployment", dep["metadata"]["name"],
                       "ScalingReplicaSet", f"Scaled {'up' if replicas > current else 'down'} "
                       f"replica set {rs['metadata']['name']} from {current} to {replicas}",
                       component="deployment-controller", type_="Normal")
        self._touch(rs)
        return current != replicas

    def _scale_up(self, dep: dict[str, Any], new: dict[str, Any], owned: list[dict[str, Any]],
                  want: int, surge: int) -> bool:
        """The new ReplicaSet grows while all pods stay within replicas + maxSurge."""
        current = new["spec"]["replicas"]
        if current >= want:
            return current > want and self._scale_replica_set(dep, new, want, surge)
        total = sum(rs["spec"]["replicas"] for rs in owned)
        if total >= want + surge:
            return False
        return self._scale_replica_set(dep, new, current + min(want + surge - total,
                                                               want - current), surge)

    def _scale_down(self, dep: dict[str, Any], new: dict[str, Any], old: list[dict[str, Any]],
                    owned: list[dict[str, Any]], want: int, unavailable: int, surge: int) -> None:
        """Old ReplicaSets shrink while replicas - maxUnavailable pods stay available: their
        unavailable pods first, then available ones for each new pod that became available."""
        all_pods = sum(rs["spec"]["replicas"] for rs in owned)
        minimum = want - unavailable
        new_unavailable = new["spec"]["replicas"] - _rs_status(new, "availableReplicas")
        most = all_pods - minimum - new_unavailable
        if most <= 0:
            return
        cleaned = 0
        for rs in old:
            replicas, available = rs["spec"]["replicas"], _rs_status(rs, "availableReplicas")
            if cleaned >= most or replicas == available:
                continue
            down = min(most - cleaned, replicas - available)
            self._scale_replica_set(dep, rs, replicas - down, surge)
            cleaned += down
        available = sum(_rs_status(rs, "availableReplicas") for rs in owned)
        if available <= minimum:
            return
        total, done = available - minimum, 0
        for rs in old:
            if done >= total or not rs["spec"]["replicas"]:
                continue
            down = min(rs["spec"]["replicas"], total - done)
            self._scale_replica_set(dep, rs, rs["spec"]["replicas"] - down, surge)
            done += down

    def _deployment_status(self, dep: dict[str, Any], new: dict[str, Any],
                           owned: list[dict[str, Any]], want: int, unavailable: int,
                           created: bool) -> None:
        """Counts from the ReplicaSets' statuses; Available, Progressing (with its deadline)
        and ReplicaFailure as the Deployment controller writes them."""
        meta, spec = dep["metadata"], dep["spec"]
        key = (meta["namespace"], meta["name"])
        old_status = dep.get("status") or {}
        counts = {
            "replicas": sum(_rs_status(rs, "replicas") for rs in owned),
            "updatedReplicas": _rs_status(new, "replicas"),
            "readyReplicas": sum(_rs_status(rs, "readyReplicas") for rs in owned),
            "availableReplicas": sum(_rs_status(rs, "availableReplicas") for rs in owned),
        }
        counts["unavailableReplicas"] = max(sum(rs["spec"]["replicas"] for rs in owned)
                                            - counts["availableReplicas"], 0)
        status: dict[str, Any] = {"observedGeneration": meta.get("generation", 1),
                                  **{k: v for k, v in counts.items() if v}}
        conditions = {c["type"]: c for c in old_status.get("conditions") or []}
        if counts["availableReplicas"] >= want - unavailable:
            _set_condition(conditions, "Available", "True", "MinimumReplicasAvailable",
                           "Deployment has minimum availability.")
        else:
            _set_condition(conditions, "Available", "False", "MinimumReplicasUnavailable",
                           "Deployment does not have minimum availability.")
        rs_name = new["metadata"]["name"]
        old_out = old_status.get("replicas", 0) - old_status.get("updatedReplicas", 0)
        progressed = (counts["updatedReplicas"] > old_status.get("updatedReplicas", 0)
                      or counts["replicas"] - counts["updatedReplicas"] < old_out
                      or counts["readyReplicas"] > old_status.get("readyReplicas", 0)
                      or counts["availableReplicas"] > old_status.get("availableReplicas", 0))
        deadline = spec.get("progressDeadlineSeconds")
        since = self._progress_at.setdefault(key, time.monotonic())
        if counts["updatedReplicas"] == counts["replicas"] == counts["availableReplicas"] == want:
            _set_condition(conditions, "Progressing", "True", "NewReplicaSetAvailable",
                           f'ReplicaSet "{rs_name}" has successfully progressed.')
        elif created:
            _set_condition(conditions, "Progressing", "True", "NewReplicaSetCreated",
                           f'Created new replica set "{rs_name}"')
        elif progressed:
            self._progress_at[key] = time.monotonic()
            _set_condition(conditions, "Progressing", "True", "ReplicaSetUpdated",
                           f'ReplicaSet "{rs_name}" is progressing.')
        elif deadline is not None and time.monotonic() - since > deadline:
            _set_condition(conditions, "Progressing", "False", "ProgressDeadlineExceeded",
                           f'ReplicaSet "{rs_name}" has timed out progressing.')
        failure = next((c for rs in owned for c in (rs.get("status") or {}).get("conditions") or []
                        if c["type"] == "ReplicaFailure" and c["status"] == "True"), None)
        if failure:
            _set_condition(conditions, "ReplicaFailure", "True", failure["reason"],
                           failure["message"])
        else:
            conditions.pop("ReplicaFailure", None)
        status["conditions"] = [conditions[t] for t in ("Available", "Progressing",
                                                        "ReplicaFailure") if t in conditions]
        dep["status"] = status

    def _replicaset_controller(self, rs: dict[str, Any]) -> None:
        """Pods up or down to ``spec.replicas`` (not-ready and newest ones go first; admission
        may refuse new ones: FailedCreate), and the counts of the status."""
        meta, spec = rs["metadata"], rs["spec"]
        ns, name = meta["namespace"], meta["name"]
        pods = self._pods_of(rs)
        want = spec.get("replicas", 1)
        failure = next((c for c in (rs.get("status") or {}).get("conditions") or []
                        if c["type"] == "ReplicaFailure"), None)
        if len(pods) < want:
            outcome = self.outcome(spec["template"]["spec"])
            if outcome.state == "forbidden":  # admission refuses the pods: none is created
                if failure is None:
                    refusal = f'pods "{name}-{uuid.uuid4().hex[:5]}" is forbidden: ' + (
                        outcome.message or "exceeded quota: compute, requested: "
                        "requests.memory=1Gi, used: requests.memory=4Gi, limited: "
                        "requests.memory=4Gi")
                    failure = {"type": "ReplicaFailure", "status": "True",
                               "reason": "FailedCreate", "message": refusal,
                               "lastTransitionTime": now()}
                    self.event(ns, "ReplicaSet", name, "FailedCreate", f"Error creating: {refusal}",
                               component="replicaset-controller")
            else:
                failure = None
                owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name,
                         "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}
                for _ in range(want - len(pods)):
                    self.pod(ns, name, spec["template"], outcome, owner=owner, creating=True)
        else:
            failure = None
            doomed = sorted(range(len(pods)), key=lambda i: (_ready(pods[i]), -i))
            for i in doomed[:len(pods) - want]:
                self.store.pop(("Pod", ns, pods[i]["metadata"]["name"]), None)
                self._serving_pods.pop((ns, pods[i]["metadata"]["name"]), None)
        pods = self._pods_of(rs)
        ready = sum(1 for p in pods if _ready(p))
        status = {"replicas": len(pods), "fullyLabeledReplicas": len(pods),
                  "readyReplicas": ready, "availableReplicas": ready,
                  "observedGeneration": meta.get("generation", 1)}
        rs["status"] = {k: v for k, v in status.items() if v or k == "replicas"}
        if failure:
            rs["status"]["conditions"] = [failure]

    def _pods_of(self, rs: dict[str, Any]) -> list[dict[str, Any]]:
        uid = rs["metadata"]["uid"]
        return [p for (k, _, _), p in self.store.items() if k == "Pod"
                and uid in {o["uid"] for o in p["metadata"].get("ownerReferences", [])}]

    def _kubelet(self) -> None:
        """ReplicaSet pods a tick after their creation: started, as ``outcome`` has them."""
        for key, outcome in list(self._serving_pods.items()):
            del self._serving_pods[key]
            pod = self.store.get(("Pod", *key))
            if pod is None:
                continue
            pod["status"], events = self._pod_status(pod["metadata"]["name"], key[0],
                                                     pod["spec"], outcome,
                                                     pod["status"].get("startTime") or now())
            self._touch(pod)
            for reason, message, component in events:
                self.event(key[0], "Pod", key[1], reason, message, component=component)

    def pod(self, namespace: str, prefix: str, template: dict[str, Any], outcome: Outcome,
            owner: dict[str, Any] | None = None, *, creating: bool = False) -> dict[str, Any]:
        """A pod of ``template`` as the kubelet reports it for ``outcome``, with its events;
        ``creating``: scheduled, its container still being created (``ContainerCreating``),
        and ``outcome`` a tick later."""
        suffix = uuid.uuid4().hex[:5]
        name = f"{prefix}-{suffix}"
        spec = copy.deepcopy(template["spec"])
        _pod_defaults(spec)
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        template_meta = template.get("metadata") or {}
        meta: dict[str, Any] = {"name": name, "namespace": namespace,
                                "labels": dict(template_meta.get("labels") or {}),
                                "annotations": dict(template_meta.get("annotations") or {})}
        if owner:
            meta["ownerReferences"] = [owner]
        started = now()
        if creating and outcome.state != "unschedulable":
            container = spec["containers"][0]
            spec["nodeName"] = "worker-1"
            status: dict[str, Any] = {
                "phase": "Pending", "qosClass": _qos(spec), "startTime": started,
                "hostIP": "172.18.0.3", "hostIPs": [{"ip": "172.18.0.3"}],
                "podIP": "10.244.1.17", "podIPs": [{"ip": "10.244.1.17"}],
                "conditions": _pod_conditions(False, "containers with unready status: "
                                                     f"[{container['name']}]"),
                "containerStatuses": [{
                    "name": container["name"], "image": container["image"], "imageID": "",
                    "ready": False, "started": False, "restartCount": 0,
                    "state": {"waiting": {"reason": "ContainerCreating"}}, "lastState": {}}]}
            pod = self.put({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
                            "status": status})
            self._serving_pods[(namespace, name)] = outcome
            self.event(namespace, "Pod", name, "Scheduled", f"Successfully assigned "
                       f"{namespace}/{name} to worker-1", component="default-scheduler",
                       type_="Normal")
            return pod
        status, events = self._pod_status(name, namespace, spec, outcome, started)
        pod = self.put({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
                        "status": status})
        for reason, message, component in events:
            self.event(namespace, "Pod", name, reason, message, component=component)
        return pod

    @staticmethod
    def _pod_status(name: str, namespace: str, spec: dict[str, Any], outcome: Outcome,
                    started: str) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
        """The status the kubelet (or the scheduler) reports for ``outcome``, and the events
        (reason, message, component) that come with it; binds ``spec`` to a node."""
        container = spec["containers"][0]
        events: list[tuple[str, str, str]] = []
        status: dict[str, Any] = {"phase": "Pending", "qosClass": _qos(spec),
                                  "startTime": started}
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
        return status, events


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
            code = 0 if outcome.state == "ready" else outcome.exit_code
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
        mode = ((isvc.get("status") or {}).get("deploymentMode")
                or (_meta(isvc).get("annotations") or {}).get(KSERVE_MODE_ANNOTATION)
                or self.kserve_mode)
        if mode in RAW_MODES:
            self._kserve_raw(isvc, mode)
            return
        if not self._due(isvc):
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
        running = [pod for (k, n, _), pod in self.store.items()
                   if k == "Pod" and n == ns and pod["metadata"]["labels"].get(
                       "serving.knative.dev/revision") == revision]
        # A change of the traffic split alone (canaryTrafficPercent) makes no revision and
        # leaves a ready revision's pod running, as Knative does; anything else: a new pod.
        if not (outcome.state == "ready" and config_json == last_config and running
                and all(_ready(pod) for pod in running)):
            for pod in running:
                self.store.pop(("Pod", ns, pod["metadata"]["name"]), None)
            self.pod(ns, f"{revision}-deployment-7c9d8f6b5", {"metadata": {"labels": labels},
                                                              "spec": pod_spec}, outcome)
        stamp = now()
        canary = predictor.get("canaryTrafficPercent")
        tagged = (meta.get("annotations") or {}).get(
            "serving.kserve.io/enable-tag-routing") == "true"
        component.update(latestCreatedRevision=revision,
                         address={"url": f"http://{name}-predictor.{ns}.svc.cluster.local"},
                         url=f"http://{name}-predictor-{ns}.example.com")
        if outcome.state == "ready":
            rolled = component.get("latestRolledoutRevision")
            component["latestReadyRevision"] = revision
            if canary is not None and canary < 100 and rolled and rolled != revision:
                component["traffic"] = [
                    {"revisionName": rolled, "percent": 100 - canary, "latestRevision": False},
                    {"revisionName": revision, "percent": canary, "latestRevision": True}]
                if tagged:  # Knative's tag routes, by KServe's annotation
                    for entry, tag in zip(component["traffic"], ("prev", "latest"), strict=True):
                        entry.update(tag=tag,
                                     url=f"http://{tag}-{name}-predictor-{ns}.example.com")
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


    def _kserve_raw(self, isvc: dict[str, Any], mode: str) -> None:
        """KServe's raw-deployment mode: a new generation (once due) applied to a Deployment
        ``<name>-predictor`` (rolled by the Deployment controller) and a Service of that name;
        the status follows the Deployment every step, as KServe's does (Ready while it is
        Available, an old pod serving included)."""
        meta = isvc["metadata"]
        ns, name = meta["namespace"], meta["name"]
        component = f"{name}-predictor"
        status = isvc.get("status") or {}
        if status.get("observedGeneration", 0) < meta["generation"]:
            if not self._due(isvc):
                return
            predictor = isvc["spec"]["predictor"]
            labels = {"serving.kserve.io/inferenceservice": name, "component": "predictor",
                      "app": component}
            owner = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                     "name": name, "uid": meta["uid"], "controller": True,
                     "blockOwnerDeletion": True}
            pod_spec = {k: v for k, v in predictor.items()
                        if k in ("containers", "volumes", "securityContext",
                                 "automountServiceAccountToken")}
            port = ((pod_spec["containers"][0].get("ports") or [{}])[0]
                    .get("containerPort", 8080))
            objects = (("Deployment", {
                "spec": {"replicas": predictor.get("minReplicas") or 1,
                         "selector": {"matchLabels": {"app": component}},
                         "template": {"metadata": {"labels": labels}, "spec": pod_spec}}}),
                ("Service", {"spec": {"selector": {"app": component},
                                      "ports": [{"name": "http", "port": 80,
                                                 "targetPort": port}]}}))
            for kind, body in objects:
                code, answer = self.apply(KINDS[kind], ns, component, {
                    "apiVersion": KINDS[kind].group_version, "kind": kind,
                    "metadata": {"name": component, "namespace": ns, "labels": labels,
                                 "ownerReferences": [owner]}, **body},
                    "manager", force=True)
                assert code in (200, 201), answer
        deployment = self.store.get(("Deployment", ns, component)) or {}
        available = {c["type"]: c for c in (deployment.get("status") or {}).get(
            "conditions") or []}.get("Available") or {}
        ready = "True" if available.get("status") == "True" else "False"
        previous = {c["type"]: c for c in status.get("conditions") or []}
        conditions = []
        for kind in ("IngressReady", "PredictorReady", "Ready"):
            state = "True" if kind == "IngressReady" else ready
            kept = previous.get(kind)
            why: tuple[str, ...] = () if state == "True" else (
                available.get("reason") or "MinimumReplicasUnavailable",
                available.get("message") or "Deployment does not have minimum availability.")
            conditions.append(kept if kept and kept["status"] == state
                              else _knative(kind, state, now(), *why))
        url = f"http://{component}.{ns}.svc.cluster.local"
        isvc["status"] = {
            "address": {"url": url},
            "url": f"http://{name}-{ns}.example.com",
            "components": {"predictor": {
                "latestCreatedRevision": ((deployment.get("metadata") or {}).get(
                    "annotations") or {}).get(REVISION, ""), "url": url}},
            "conditions": conditions,
            "deploymentMode": mode,
            "modelStatus": {"copies": {"failedCopies": 0, "totalCopies": 1},
                            "states": {"activeModelState": "Loaded" if ready == "True"
                                       else "Pending", "targetModelState": "Loaded"},
                            "transitionStatus": "UpToDate" if ready == "True"
                            else "InProgress"},
            "observedGeneration": meta["generation"],
        }


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _set_condition(conditions: dict[str, dict[str, Any]], kind: str, status: str, reason: str,
                   message: str, update_time: bool = True) -> None:
    """Set a condition as controllers do: its transition time moves only when its status
    does (Deployments' conditions also carry lastUpdateTime; ReplicaSets' and HPAs' do not)."""
    old = conditions.get(kind)
    if old and (old["status"], old.get("reason"), old.get("message")) == (status, reason, message):
        return
    stamp = now()
    condition: dict[str, Any] = {"type": kind, "status": status}
    if update_time:
        condition["lastUpdateTime"] = stamp
    condition["lastTransitionTime"] = (old["lastTransitionTime"] if old and old["status"] == status
                                       else stamp)
    condition.update(reason=reason, message=message)
    conditions[kind] = condition


def _scaled(value: Any, total: int, round_up: bool) -> int:
    """An int-or-percent (maxSurge, maxUnavailable) of ``total``."""
    if isinstance(value, str) and value.endswith("%"):
        share = total * int(value[:-1]) / 100
        return math.ceil(share) if round_up else math.floor(share)
    return int(value)


def _fenceposts(spec: dict[str, Any], want: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) resolved against ``want`` replicas, as the controller does
    (both 0 would never move: maxUnavailable becomes 1)."""
    strategy = spec.get("strategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate" or want == 0:
        return 0, 0
    rolling = strategy.get("rollingUpdate") or {}
    surge = _scaled(rolling.get("maxSurge", "25%"), want, True)
    unavailable = _scaled(rolling.get("maxUnavailable", "25%"), want, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, min(unavailable, want)


def _revision(rs: dict[str, Any]) -> int:
    return int((rs["metadata"].get("annotations") or {}).get(REVISION, 0))


def _rs_status(rs: dict[str, Any], field_name: str) -> int:
    return int((rs.get("status") or {}).get(field_name, 0))


def _ready(pod: dict[str, Any]) -> bool:
    return all(c.get("ready") for c in (pod.get("status") or {}).get("containerStatuses") or [{}])


def _scale_of(dep: dict[str, Any]) -> dict[str, Any]:
    """A Deployment's autoscaling/v1 Scale, as ``deployments/<name>/scale`` serves it."""
    meta = dep["metadata"]
    labels = ((dep["spec"].get("selector") or {}).get("matchLabels") or {})
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                              "creationTimestamp") if k in meta},
            "spec": {"replicas": dep["spec"].get("replicas", 1)},
            "status": {"replicas": (dep.get("status") or {}).get("replicas", 0),
                       "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))}}


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


def _json(code: int, body: Any) -> tuple[int, dict[str, str], bytes]:
    return code, {"Content-Type": "application/json"}, json.dumps(body).encode()


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
                                  "namespaced": k.namespaced, "kind": k.kind, "verbs": VERBS,
                                  "shortNames": list(k.short),
                                  "storageVersionHash": hashlib.sha1(k.plural.encode()).hexdigest()[:11]})
                if k.kind not in ("Event", "LimitRange"):
                    resources.append({"name": f"{k.plural}/status", "singularName": "",
                                      "namespaced": k.namespaced, "kind": k.kind,
                                      "verbs": ["get", "patch", "update"]})
                if k.kind == "Deployment":
                    resources.append({"name": "deployments/scale", "singularName": "",
                                      "namespaced": True, "group": "autoscaling",
                                      "version": "v1", "kind": "Scale",
                                      "verbs": ["get", "patch", "update"]})
                if k.kind == "Pod":
                    resources.append({"name": "pods/log", "singularName": "",
                                      "namespaced": True, "kind": "Pod", "verbs": ["get"]})
                    resources.append({"name": "pods/proxy", "singularName": "",
                                      "namespaced": True, "kind": "PodProxyOptions",
                                      "verbs": ["create", "delete", "get", "patch", "update"]})
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                    "resources": resources}
    return None



def passed_headers(handler: BaseHTTPRequestHandler) -> dict[str, str]:
    """The request headers a proxy passes on to the pod (the body's type and length, what the
    client accepts)."""
    return {k: v for k, v in handler.headers.items()
            if k.lower() in ("content-type", "accept", "content-length")}


def relay(handler: BaseHTTPRequestHandler, answer: tuple[int, dict[str, str], bytes]) -> None:
    """Send a proxied ``(status, headers, body)`` back to the client, with its length."""
    code, headers, data = answer
    handler.send_response(code)
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)

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
        proxied = POD_PROXY.fullmatch(parts.path)
        body = yaml.safe_load(raw) if raw and proxied is None else None
        request = Request(method, parts.path, query, content_type, body)
        with fake.lock:
            fake.requests.append(request)
            if len(fake.requests) > MAX_REQUESTS:
                self._send(503, _status(503, "ServiceUnavailable", "too many requests"))
                return
        if fake.on_request is not None:
            fake.on_request(request)
        if proxied is not None:
            self._proxy(method, proxied, parts.query, raw or None)
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
        refusal = fake.refusal(request_verb(method, name, query), kind, namespace, name, sub,
                               method)
        if (refusal is None and method == "PATCH" and content_type == APPLY and not sub
                and fake.get(kind.kind, name, namespace) is None):
            refusal = fake.refusal("create", kind, namespace, name)  # an apply that creates
        if refusal is not None:
            self._send(403, refusal)
            return
        self._serve(method, kind, namespace, name, sub, query, content_type, body)

    def _proxy(self, method: str, match: Any, query: str, raw: bytes | None) -> None:
        """``pods/<name>:<port>/proxy/<path>``: RBAC's ``pods/proxy`` (get for a GET, create
        for a POST...), then :meth:`FakeApiServer.proxy_to_pod`."""
        fake = self.fake
        namespace, target = unquote(match.group(1)), unquote(match.group(2))
        refusal = fake.refusal(request_verb(method, target, {}), KINDS["Pod"], namespace, target,
                               "proxy", method)
        if refusal is not None:
            self._send(403, refusal)
            return
        path = (match.group(3) or "/") + (f"?{query}" if query else "")
        relay(self, fake.proxy_to_pod(namespace, target, method, path, raw,
                                      passed_headers(self)))

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
        elif sub == "scale" and kind.kind == "Deployment" and name:
            self._scale(method, namespace, name, query, content_type, body)
        elif sub:
            self._send(404, _status(404, "NotFound", f"{kind.plural}/{sub} is not served here"))
        elif method == "GET" and name:
            obj = fake.read(kind, namespace, name)
            self._send(200, obj) if obj is not None else self._send(404, missing)
        elif method == "GET" and _flag(query, "watch"):
            self._watch(kind, namespace, query)
        elif method == "GET":
            self._send(200, fake.list_objects(kind, namespace, query.get("labelSelector"),
                                      query.get("fieldSelector")))
        elif method == "POST" and not name:
            self._send(*fake.create(kind, namespace, body or {}, self._manager(query)))
        elif method == "PATCH" and name:
            self._send(*self._patch(kind, namespace, name, query, content_type, body))
        elif method == "PUT" and name:
            self._send(*fake.update(kind, namespace, name, body or {}, self._manager(query)))
        elif method == "DELETE" and name:
            gone = fake.delete(kind, namespace, name)
            self._send(200, gone) if gone is not None else self._send(404, missing)
        else:
            self._send(405, _status(405, "MethodNotAllowed", f"{method} is not supported here"))

    def _manager(self, query: dict[str, str]) -> str:
        """The field manager of a write: ``fieldManager``, else the User-Agent's first word."""
        return (query.get("fieldManager") or self.headers.get("User-Agent", "").split("/")[0]
                or "unknown")

    def _scale(self, method: str, namespace: str, name: str, query: dict[str, str],
               content_type: str, body: Any) -> None:
        """``deployments/<name>/scale``: GET, PUT (a Scale) or a merge PATCH of its spec."""
        fake = self.fake
        if method == "GET":
            self._send(*fake.scale(namespace, name))
        elif method == "PUT" or (method == "PATCH" and content_type in MERGE):
            replicas = ((body or {}).get("spec") or {}).get("replicas") \
                if isinstance(body, dict) else None
            self._send(*fake.write_scale(namespace, name, replicas, self._manager(query)))
        elif method == "PATCH":
            self._send(415, _status(415, "UnsupportedMediaType", f"{content_type} patches of "
                                                                  "deployments/scale are not "
                                                                  "served here"))
        else:
            self._send(405, _status(405, "MethodNotAllowed", f"{method} is not supported here"))

    def _patch(self, kind: Kind, namespace: str, name: str, query: dict[str, str],
               content_type: str, body: Any) -> tuple[int, dict[str, Any]]:
        if content_type in MERGE:
            return self.fake.merge_patch(kind, namespace, name, body, self._manager(query))
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                return 400, _status(400, "BadRequest", "json: cannot unmarshal object into Go "
                                                       "value of type jsonpatch.Patch")
            return 415, _status(415, "UnsupportedMediaType", "JSON patch operations are not "
                                                             "served here")
        if content_type != APPLY:
            return 415, _status(415, "UnsupportedMediaType",
                                "the body of the request was in an unknown format - accepted "
                                "media types include: application/apply-patch+yaml, "
                                f"application/strategic-merge-patch+json; got {content_type}")
        if not query.get("fieldManager"):
            return 400, _status(400, "BadRequest", "PATCH, application/apply-patch+yaml: "
                                                   "fieldManager is required")
        return self.fake.apply(kind, namespace, name, body or {}, query["fieldManager"],
                               force=_flag(query, "force"))

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
                listed = fake.list_objects(kind, namespace, query.get("labelSelector"),
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
        namespace = ""
        if rest[:1] == ["namespaces"] and len(rest) in (3, 4, 5):
            namespace, rest = rest[1], rest[2:]
        elif not 1 <= len(rest) <= 3:
            return None
        for kind in self.fake._kinds().values():
            if (kind.group, kind.version, kind.plural) == (group, version, rest[0]) \
                    and kind.namespaced == bool(namespace):
                return (kind, namespace, rest[1] if len(rest) >= 2 else "",
                        rest[2] if len(rest) == 3 else "")
        return None

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

