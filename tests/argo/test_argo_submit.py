"""Submission through Hera's client against real sockets on loopback (no mocks)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlkube.argo.submit import ArgoServer, submit
from mlkube.cli import main
from mlkube.errors import MlkubeError


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Rejecting(BaseHTTPRequestHandler):
    """An Argo Server stand-in that answers every request as a forbidding server does."""

    seen: list[str] = []

    def _reject(self) -> None:
        self.seen.append(f"{self.command} {self.path} {self.headers.get('Authorization')}")
        body = json.dumps({"code": 7, "message": 'workflowtemplates.argoproj.io is forbidden: '
                           'User "system:serviceaccount:argo:ci" cannot create'}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _reject

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def rejecting_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Rejecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_unreachable_server_is_one_clear_error() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(MlkubeError, match=r"cannot reach the Argo Server at http://127\.0\.0\.1:"
                                          r"\d+ \(ConnectionError\): check --server") as caught:
        submit("lifecycle", ArgoServer(url=url, namespace="argo"))
    assert "\n" not in str(caught.value)


def test_the_cli_reports_an_unreachable_server_on_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    assert main(["argo", "submit", "retrain", "--server", url, "--namespace", "ml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mlkube argo: error: cannot reach the Argo Server at {url}")
    assert err.count("\n") == 1


def test_a_rejection_names_the_target_and_the_servers_reason(rejecting_server: str) -> None:
    server = ArgoServer(url=rejecting_server, namespace="ml", token="s3cret")
    with pytest.raises(MlkubeError) as caught:
        submit("templates", server)
    message = str(caught.value)
    assert message.startswith(f"the Argo Server at {rejecting_server} rejected the templates "
                              "submission: ")
    assert "403" in message and "forbidden" in message
    assert _Rejecting.seen[-1] == "GET /api/v1/workflow-templates/ml/mlkube-steps Bearer s3cret"


def test_server_settings_come_from_flags_then_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARGO_SERVER", "https://argo.example.com:2746/")
    monkeypatch.setenv("ARGO_NAMESPACE", "ml")
    monkeypatch.setenv("ARGO_TOKEN", "from-env")
    server = ArgoServer.from_env()
    assert (server.url, server.namespace, server.token) == ("https://argo.example.com:2746", "ml",
                                                            "from-env")
    flagged = ArgoServer.from_env(url="http://localhost:2746", namespace="x", token="t")
    assert (flagged.url, flagged.namespace, flagged.token) == ("http://localhost:2746", "x", "t")


@pytest.mark.parametrize(("url", "message"), [
    (None, "no Argo Server given: pass --server"),
    ("argo.example.com:2746", "has no scheme: write https://argo.example.com:2746"),
])
def test_missing_or_schemeless_server(monkeypatch: pytest.MonkeyPatch, url: str | None,
                                      message: str) -> None:
    monkeypatch.delenv("ARGO_SERVER", raising=False)
    with pytest.raises(MlkubeError, match=message):
        ArgoServer.from_env(url=url)


def test_an_unknown_target_is_named() -> None:
    with pytest.raises(MlkubeError, match="nothing to submit called 'everything'"):
        submit("everything", ArgoServer(url="http://127.0.0.1:1", namespace="argo"))


def test_without_namespace_or_argo_namespace_it_submits_to_the_platforms_namespace(
        rejecting_server: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from mlkube.kube.platform import PlatformOptions, render

    monkeypatch.delenv("ARGO_NAMESPACE", raising=False)
    monkeypatch.delenv("ARGO_TOKEN", raising=False)
    platform = PlatformOptions().namespace
    assert f"\n  name: {platform}\n" in render()["00-namespace.yaml"]  # where the platform lives
    assert ArgoServer.from_env(url=rejecting_server).namespace == platform == "ml"
    assert main(["argo", "submit", "templates", "--server", rejecting_server]) == 1
    assert _Rejecting.seen[-1] == f"GET /api/v1/workflow-templates/{platform}/mlkube-steps None"
    assert "rejected the templates submission" in capsys.readouterr().err
