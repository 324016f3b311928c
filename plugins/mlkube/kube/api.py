"""The cluster API, as mlkube reaches it: which namespace, which connection, one line per
refusal.

:func:`api_client` connects (in-cluster in a pod, else the current kubeconfig);
:func:`dynamic` gives the dynamic client over it (API discovery that is never cached on disk);
:func:`call` runs one request and turns the API server's refusal or silence into one
:class:`~mlkube.errors.MlkubeError` line. Whatever mlkube applies, it applies as
:data:`FIELD_MANAGER`. Users: the cluster serving targets (:mod:`mlkube.targets`), the
multi-node training Job (:mod:`mlkube.kube.multinode`) and ``mlkube preflight``.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.discovery import LazyDiscoverer

from mlkube.errors import MlkubeError, first_line
from mlkube.kube.diagnosis import last_line

FIELD_MANAGER = "mlkube"
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


def dynamic(client: ApiClient) -> DynamicClient:
    """The dynamic client over ``client``, its API discovery never cached on disk."""
    cache = os.path.join(tempfile.gettempdir(), f"mlkube-discovery-{uuid.uuid4().hex}.json")
    return call("discover the cluster's APIs", client.configuration.host,
                lambda: DynamicClient(client, cache_file=cache, discoverer=_Discoverer))


def call(what: str, where: str, fn: Callable[[], Any], passing: tuple[int, ...] = ()) -> Any:
    """``fn()``, with the API server's refusal or unreachability as one line. A refusal whose
    status is in ``passing`` (a 404 or a 409 the caller handles) is raised as it is."""
    from urllib3.exceptions import HTTPError

    try:
        return fn()
    except ApiException as exc:  # (the dynamic client's DynamicApiError is one too)
        if exc.status in passing:
            raise
        message = api_message(exc)
        hint = ""
        if exc.status == 403:
            hint = ("; give the deploy step's service account mlkube's deploy Role "
                    "(mlkube.kube.serving.deploy_rbac)")
        raise MlkubeError(f"could not {what} in {where}: {message}{hint}") from None
    except HTTPError as exc:
        raise MlkubeError(f"could not {what}: the Kubernetes API at {where} does not answer "
                          f"({first_line(exc)})") from None


def api_message(exc: Any) -> str:
    """The API server's own message of a refused request (``ApiException``, ``DynamicApiError``)."""
    try:
        body = json.loads(exc.body)
    except (TypeError, ValueError):
        body = {}
    text = body.get("message") if isinstance(body, dict) else None
    return last_line(str(text or f"{exc.status} {exc.reason}"))


def meta_of(obj: dict[str, Any]) -> dict[str, Any]:
    """The ``metadata`` of an object as the API returns it (empty when it has none)."""
    return obj.get("metadata") or {}
