"""The serving runtime in one pod, reached through the API server's pod proxy.

``/api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH`` is what ``kubectl get --raw`` reaches: the
API server forwards the request to the pod's IP and port and answers with the pod's own answer
(status, body). RBAC checks the ``pods/proxy`` subresource: ``get`` for a GET, ``create`` for a
POST (:data:`mlkube.kube.serving.DEPLOY_RULES` grants those two, nothing else of it). The
Deployment target drives each serving pod's runtime slots this way
(:class:`mlkube.targets.deployment.DeploymentTarget`), so the deploy step needs no route to the
pods of its own: it works from a laptop's kubeconfig as from a pod.

What it needs of the cluster: the control plane reaches pod IPs on the runtime's port. Where it
does not (a private GKE cluster without a firewall rule for port 8080, say), the API server
answers 503 ``error trying to reach service`` or times out, and the step fails in one line
saying so; the canary and shadow gates then fail safe (nothing is promoted).

Every failure is one :class:`~mlkube.errors.MlkubeError` line that says who answered: the API
server (it refused, or could not reach the pod) or the runtime (its own ``error``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from kubernetes.client import ApiClient

from mlkube.errors import MlkubeError, first_line
from mlkube.kube.diagnosis import last_line


class ProxyError(MlkubeError):
    """A non-2xx answer: ``status``, and whether the runtime gave it (``False``: the API
    server refused, or could not reach the pod)."""

    def __init__(self, message: str, status: int, from_runtime: bool) -> None:
        super().__init__(message)
        self.status = status
        self.from_runtime = from_runtime


RBAC_HINT = ("give the deploy step's service account mlkube's deploy Role, which allows get and "
             "create on pods/proxy (mlkube.kube.serving.deploy_rbac)")


def proxy_path(namespace: str, pod: str, port: int, parts: list[str]) -> str:
    """The API server's path that proxies to ``/<parts...>`` on ``pod``'s ``port``."""
    inner = "/".join(quote(str(p), safe="") for p in parts)
    return (f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}:{port}"
            f"/proxy/{inner}")


def call(api_client: ApiClient, namespace: str, pod: str, port: int, parts: list[str],
         body: Any = None, timeout: float = 30.0) -> Any:
    """``GET`` (``body`` None) or ``POST`` JSON ``/<parts...>`` on the pod's runtime through the
    API server; the decoded JSON answer."""
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    path = proxy_path(namespace, pod, port, parts)
    method = "GET" if body is None else "POST"
    runtime_path = "/" + "/".join(parts)
    where = f"pod {namespace}/{pod}"
    host = str(api_client.configuration.host)
    try:
        response = api_client.call_api(
            path, method, header_params={"Content-Type": "application/json",
                                         "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"], _preload_content=False,
            _return_http_data_only=True, _request_timeout=timeout)
        data = response.data
    except ApiException as exc:
        message, from_runtime = _refusal(exc, method, where, runtime_path, host)
        raise ProxyError(message, int(exc.status or 0), from_runtime) from None
    except HTTPError as exc:
        raise MlkubeError(f"could not reach {where} ({method} {runtime_path}): the Kubernetes "
                          f"API at {host} does not answer ({first_line(exc)})") from None
    try:
        return json.loads(data or b"null")
    except ValueError:
        raise MlkubeError(f"{where} answered {method} {runtime_path} with something that is not "
                          f"JSON: {last_line(data.decode(errors='replace'))!r}") from None


def _refusal(exc: Any, method: str, where: str, runtime_path: str,
             host: str) -> tuple[str, bool]:
    """One line for a non-2xx answer: the API server's own (a ``Status``) or the runtime's;
    and whether the runtime gave it."""
    raw = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":  # the API server answered
        message = last_line(str(body.get("message") or f"{exc.status} {exc.reason}"))
        hint = f"; {RBAC_HINT}" if exc.status == 403 else ""
        if exc.status == 503:
            hint = ("; the control plane must reach the pod's IP on the runtime's port (the pod "
                    "proxy)")
        return (f"the API server at {host} could not proxy {method} {runtime_path} to {where} "
                f"({exc.status}): {message}{hint}"), False
    detail = body.get("error") if isinstance(body, dict) else None
    detail = " ".join(str(detail or raw or exc.reason).split())[:300]
    return f"{where} answered {method} {runtime_path} with {exc.status}: {detail}", True
