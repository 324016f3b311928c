"""The pod proxy as the deploy step uses it (:mod:`mlkube.kube.podproxy`, the real
``kubernetes`` client) against the fake API server's (RBAC, the API server's own failures, the
pod's answer passed through), and how the Deployment target pools the pods' live numbers.

What listens in the pod here is a stand-in that echoes the request (``pod_network``); the real
runtimes behind the pod proxy are in ``test_deploy_live_gates.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fake_apiserver import FakeApiServer
from test_deploy_kills import deploy_role

from mlkube.errors import MlkubeError
from mlkube.kube import podproxy
from mlkube.targets.deployment import pooled

POD = "churn-7d9f-abcde"


def _pod(state: dict[str, Any] | None = None, ip: str | None = "10.244.1.17") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running", "containerStatuses": [{
        "name": "server", "image": "mlkube:1", "imageID": "", "ready": True, "restartCount": 0,
        "state": state or {"running": {"startedAt": "2026-12-06T00:00:00Z"}}}]}
    if ip:
        status["podIP"] = ip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": POD, "namespace": "ml"},
            "spec": {"containers": [{
                "name": "server", "image": "mlkube:1",
                "command": ["mlkube", "serve", "model", "--port", "8080"],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": status}


class Echo:
    """What listens in the pod: answers ``answer`` (default: the request it got, as JSON)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, int, str, str, Any]] = []
        self.answer: tuple[int, dict[str, Any]] | None = None

    def __call__(self, pod: dict[str, Any], port: int, method: str, path: str,
                 body: bytes | None, headers: dict[str, str]
                 ) -> tuple[int, dict[str, str], bytes]:
        self.got.append((pod["metadata"]["name"], port, method, path,
                         json.loads(body) if body else None))
        code, answer = self.answer or (200, {"method": method, "path": path})
        return code, {"Content-Type": "application/json"}, json.dumps(answer).encode()


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    """A fake cluster with the deploy Role's RBAC, no clock, one running pod, and the echo
    listening in it."""
    with FakeApiServer(rbac=deploy_role(), clock=False) as server:
        server.put(_pod())
        server.pod_network = Echo()
        yield server


def _call(fake: FakeApiServer, parts: list[str], body: Any = None, pod: str = POD,
          port: int = 8080) -> Any:
    return podproxy.call(fake.api_client(), "ml", pod, port, parts, body, timeout=10)


def test_the_pod_proxy_passes_the_request_and_the_pods_answer_through(
        fake: FakeApiServer) -> None:
    echo = fake.pod_network
    assert isinstance(echo, Echo)
    assert _call(fake, ["v2", "models", "churn model", "live"]) == {
        "method": "GET", "path": "/v2/models/churn%20model/live"}
    body = {"parameters": {"role": "canary", "share": 0.5}}
    assert _call(fake, ["v2", "repository", "models", "churn", "load"], body)["method"] == "POST"
    assert echo.got[-1] == (POD, 8080, "POST", "/v2/repository/models/churn/load", body)
    assert {("get", "pods/proxy"), ("create", "pods/proxy")} <= fake.granted
    assert fake.refusals == []
    assert fake.requests[-1].path == f"/api/v1/namespaces/ml/pods/{POD}:8080/proxy/v2/" \
                                     "repository/models/churn/load"


def test_the_runtimes_refusal_is_one_line_naming_the_pod(fake: FakeApiServer) -> None:
    echo = fake.pod_network
    assert isinstance(echo, Echo)
    echo.answer = (409, {"error": "model churn has no main version to put a canary beside;\n"
                                  "load it first"})
    with pytest.raises(podproxy.ProxyError) as caught:
        _call(fake, ["v2", "repository", "models", "churn", "load"], {"parameters": {}})
    assert (caught.value.status, caught.value.from_runtime) == (409, True)
    assert str(caught.value) == (f"pod ml/{POD} answered POST /v2/repository/models/churn/load "
                                 "with 409: model churn has no main version to put a canary "
                                 "beside; load it first")


@pytest.mark.parametrize(("pod", "port", "code", "message"), [
    (None, 8080, 404, 'pods "nope" not found'),
    (_pod(ip=None), 8080, 400, "address not allowed"),
    (_pod({"waiting": {"reason": "CrashLoopBackOff"}}), 8080, 503,
     "error trying to reach service: dial tcp 10.244.1.17:8080: connect: connection refused; "
     "the control plane must reach the pod's IP on the runtime's port (the pod proxy)"),
    (_pod(), 9090, 503, "error trying to reach service: dial tcp 10.244.1.17:9090: connect: "
                        "connection refused"),
])
def test_the_api_servers_own_failures_are_one_line(fake: FakeApiServer, pod: dict[str, Any] | None,
                                                   port: int, code: int, message: str) -> None:
    if pod is not None:
        fake.put(pod)
    name = POD if pod is not None else "nope"
    with pytest.raises(podproxy.ProxyError) as caught:
        _call(fake, ["v2", "models", "churn", "live"], pod=name, port=port)
    assert (caught.value.status, caught.value.from_runtime) == (code, False)
    assert str(caught.value).startswith(
        f"the API server at {fake.url} could not proxy GET /v2/models/churn/live to pod "
        f"ml/{name} ({code}): {message}"), str(caught.value)
    echo = fake.pod_network
    assert isinstance(echo, Echo) and echo.got == [], "nothing reached the pod"


def test_nothing_listening_in_the_fake_is_a_refused_connection(fake: FakeApiServer) -> None:
    fake.pod_network = None
    with pytest.raises(podproxy.ProxyError, match="connect: connection refused"):
        _call(fake, ["v2", "health", "live"])


def test_a_role_without_pods_proxy_is_refused_403_in_the_api_servers_words() -> None:
    role = deploy_role()
    for obj in role:
        if obj["kind"] == "Role":
            obj["rules"] = [r for r in obj["rules"] if r["resources"] != ["pods/proxy"]]
    with FakeApiServer(rbac=role, clock=False) as fake:
        fake.put(_pod())
        echo = Echo()
        fake.pod_network = echo
        for body, verb in ((None, "get"), ({"parameters": {}}, "create")):
            with pytest.raises(MlkubeError) as caught:
                _call(fake, ["v2", "models", "churn", "live"], body)
            assert str(caught.value) == (
                f"the API server at {fake.url} could not proxy "
                f"{'GET' if body is None else 'POST'} /v2/models/churn/live to pod ml/{POD} "
                f'(403): pods "{POD}:8080" is forbidden: User "system:serviceaccount:ml:'
                f'mlkube-deploy" cannot {verb} resource "pods/proxy" in API group "" in the '
                f"namespace \"ml\"; {podproxy.RBAC_HINT}")
        assert fake.refusals == [("get", "pods/proxy", "ml", f"{POD}:8080"),
                                 ("create", "pods/proxy", "ml", f"{POD}:8080")]
        assert echo.got == []


def test_pooled_numbers_sum_the_counts_weight_the_agreement_and_take_the_largest_p99() -> None:
    pods = [
        {"version": "2", "requests": 90, "rows": 270, "errors": 0, "error_rate": 0.0,
         "p50_ms": 1.0, "p99_ms": 3.0, "share": 0.5, "dropped": 1, "compared_rows": 270,
         "agreement": 1.0, "mean_abs_diff": None},
        {"version": "2", "requests": 10, "rows": 30, "errors": 2, "error_rate": 0.2,
         "p50_ms": 2.0, "p99_ms": 40.0, "share": 0.5, "dropped": 0, "compared_rows": 30,
         "agreement": 0.5, "mean_abs_diff": None},
        {"version": "2", "requests": 0, "rows": 0, "errors": 0, "error_rate": 0.0,
         "p50_ms": None, "p99_ms": None, "share": 0.5, "dropped": 0, "compared_rows": 0,
         "agreement": None, "mean_abs_diff": None},
    ]
    assert pooled(pods, "shadow") == {
        "version": "2", "requests": 100, "rows": 300, "errors": 2, "error_rate": 0.02,
        "p50_ms": 2.0, "p99_ms": 40.0, "share": 0.5, "dropped": 1, "compared_rows": 300,
        "agreement": pytest.approx((270 * 1.0 + 30 * 0.5) / 300), "mean_abs_diff": None}
    canary = pooled([{k: v for k, v in d.items() if k in ("version", "requests", "rows",
                                                          "errors", "p50_ms", "p99_ms")}
                     for d in pods[2:]], "canary")
    assert canary == {"version": "2", "requests": 0, "rows": 0, "errors": 0, "error_rate": 0.0,
                      "p50_ms": None, "p99_ms": None}
