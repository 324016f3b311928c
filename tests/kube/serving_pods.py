"""The fake API server's serving pods made real: a kube-proxy in front of real runtimes.

The fake (``fake_apiserver.py``) runs the Deployment and ReplicaSet controllers and a kubelet,
but its pods run nothing. :class:`KubeProxy` gives them what a cluster gives a client of a
Service: ``http://<service>.<namespace>.svc.cluster.local/...`` reaches one ready pod of the
Service, and the pod answers with the model version its own command line names. A process
uses it as its HTTP proxy (``HTTP_PROXY``; ``NO_PROXY=127.0.0.1,localhost`` keeps MLflow and
the fake's API direct), which Python's ``urllib`` (the deploy step's smoke test) honours.

For each request the proxy, as kube-proxy would with the Service's endpoints:

- finds the Service in the fake (none: 502, as a name that does not resolve), and the port
  the request names among its ports (none: 502, a refused connection);
- takes the Service's endpoints: the pods its selector matches whose ``Ready`` condition is
  ``True`` (none: 503 ``no endpoints available for service``, where a real Service refuses
  the connection);
- picks one of them round-robin, and forwards the request to a real ``mlkube serve model``
  process running that pod's container command (its ``--model-uri``, ``--name``,
  ``--version``, ``--verify-batch``...; ``--host``/``--port`` replaced by a loopback port) with
  the container's plain ``env`` values (its ``MLFLOW_TRACKING_URI``). One process serves every
  pod with the same command and env; it is started when a pod first needs it (the request
  waits until the container's readiness probe path answers 200) and kept until :meth:`close`.
  With ``per_pod=True`` each pod gets its own process instead (a pod's state, such as the
  canary and shadow slots its runtime holds, is its own), taken from spares a test starts ahead
  (:meth:`Runtimes.start` of a pod without a name) when one is there.

It is also what listens in the pods for the fake's pod proxy (``FakeApiServer.pod_network``,
set when a test sets :attr:`KubeProxy.fake`): a request the API server proxies to a pod goes to
that pod's process the same way (recorded in :attr:`KubeProxy.pod_routes`). And
:meth:`KubeProxy.front` gives a Service a loopback URL of its own (as a NodePort would), for
clients that cannot use an HTTP proxy (``mlkube_testing.Load`` in the test process).

In KServe's raw-deployment mode the fake makes a Service ``<isvc>-predictor`` (the
InferenceService's address), routed as any Service. An InferenceService in serverless mode has
no Service in the fake: a host that names
none, ``<isvc>.<ns>`` (its ``status.address.url``) or ``<isvc>-predictor.<ns>`` (the
predictor's), is routed as Knative routes it, by the predictor's ``status.components.predictor.
traffic``: each request goes to a revision drawn with the entries' percents as weights (a
seeded random draw, as Knative's activator and Istio's weighted routes draw), then round-robin
to that revision's ready pods (label ``serving.knative.dev/revision``); ``latest-`` and
``prev-`` before the predictor's name reach the revision its traffic entry tags so (KServe's
tag routing), and nothing where no entry has that tag (no such host).

Where it differs from kube-proxy:

- endpoints are read from the fake at each request: no EndpointSlice controller and no lag,
  so a pod that stops being ready (or is deleted: the fake deletes at once, without a grace
  period or ``preStop``) takes no request after that instant;
- round-robin over the ready pods (IPVS's default), not iptables' random choice; no session
  affinity, no ``internalTrafficPolicy``, no topology;
- pods with the same command and env share one process unless ``per_pod``, so a pod's own
  state (its memory, its slots) is not modelled then; restarts never are (a pod's process runs
  until :meth:`close`, even after the pod is deleted); the fake's readiness (its ``outcome``) is
  taken as given: a pod the fake says is ready may still be loading its process here, and the
  request waits;
- it is an HTTP proxy (absolute-URI requests, HTTP/1.0, one request a connection), not packet
  forwarding; no ``CONNECT``/TLS, only ``*.svc.cluster.local`` names;
- an InferenceService's requests go straight to its revisions' runtimes: no Istio gateway or
  Knative activator, no queue-proxy (so no concurrency limit or request buffering), no
  scale-from-zero; the split is read from the status at each request (no propagation delay).
"""

from __future__ import annotations

import http.client
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fake_apiserver import FakeApiServer, passed_headers, relay, version_of

from mlkube_testing import free_port

SERVICE_HOST = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)"
                          r"\.svc\.cluster\.local")
PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY",
                   "no_proxy", "ALL_PROXY", "all_proxy")
START_TIMEOUT = 180.0  # a runtime's start: its imports, the model's download, load and verify


@dataclass
class Route:
    """One request the proxy forwarded (or answered itself: ``pod`` empty)."""

    service: str
    pod: str
    version: str
    method: str
    path: str
    status: int


class Unavailable(Exception):
    """No answer from the pod's process (it exited, or never got ready): the proxy's 502."""


@dataclass
class Runtime:
    """One ``mlkube serve model`` process standing in for the pods of one container spec."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    ready_path: str

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the readiness probe's path answers 200; :class:`Unavailable` if it exits."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:  # not listening yet, or not ready (an HTTPError)
                pass
            if self.process.poll() is not None:
                raise Unavailable(f"the container exited ({self.process.returncode}): "
                                  f"{self.output()[-500:]}")
            if time.monotonic() > deadline:
                raise Unavailable(f"{self.ready_path} never answered 200 in {timeout:g} s")
            time.sleep(0.1)

    def stop(self) -> None:
        """Gone (SIGKILL: a test's process keeps nothing worth a graceful stop)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def _option(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command[:-1] else None


@dataclass
class Runtimes:
    """The processes behind the pods, one per (container command, env), started on demand."""

    workdir: Path
    #: the environment every process starts from (a pod's own env values go over it)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    started: dict[tuple[Any, ...], Runtime] = field(default_factory=dict)
    #: one process a pod (keys: (command, env, pod name)), not one a command and env
    per_pod: bool = False
    #: per_pod: processes started ahead for pods to come, by (command, env)
    spares: dict[tuple[Any, ...], list[Runtime]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._starting: dict[tuple[Any, ...], threading.Lock] = {}
        self.env = {k: v for k, v in self.env.items() if k not in PROXY_VARIABLES}

    def for_pod(self, pod: dict[str, Any]) -> Runtime:
        """The ready process running ``pod``'s container (started now if none runs it)."""
        runtime = self.start(pod)
        runtime.wait_ready()
        return runtime

    def start(self, pod: dict[str, Any]) -> Runtime:
        """The process running ``pod``'s container, started now if none runs it (not waited
        for: a test starts the ones it will need ahead, and the first request waits). With
        ``per_pod``, a pod without a name starts a spare, which the next pod of its command
        and env takes."""
        container = pod["spec"]["containers"][0]
        command = [*(container.get("command") or []), *(container.get("args") or [])]
        if command[:3] != ["mlkube", "serve", "model"]:
            raise Unavailable(f"the pod runs {command[:3]}, not mlkube's serving runtime")
        env = {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}
        kept = [a for i, a in enumerate(command) if a not in ("--host", "--port")
                and command[i - 1] not in ("--host", "--port")]
        key = (tuple(kept), tuple(sorted(env.items())))
        with self._lock:
            gate = self._starting.setdefault(key, threading.Lock())
        name = (pod.get("metadata") or {}).get("name")
        with gate:
            if self.per_pod and not name:
                spare = self._start(kept, env, container)
                self.spares.setdefault(key, []).append(spare)
                return spare
            if self.per_pod:
                key = (*key, name)
            runtime = self.started.get(key)
            if runtime is None or runtime.process.poll() is not None:
                spares = [r for r in self.spares.get(key[:2], []) if r.process.poll() is None]
                runtime = spares.pop(0) if spares else self._start(kept, env, container)
                self.spares[key[:2]] = spares
                self.started[key] = runtime
        return runtime

    def _start(self, command: list[str], env: dict[str, str],
               container: dict[str, Any]) -> Runtime:
        port = free_port()
        probe = ((container.get("readinessProbe") or {}).get("httpGet") or {}).get("path")
        name = _option(command, "--name") or "model"
        version = _option(command, "--version") or ""
        log = self.workdir / f"runtime-{re.sub(r'[^a-z0-9]+', '-', name.lower())}-v{version}-" \
                             f"{len(self.started)}.log"
        argv = [sys.executable, "-m", "mlkube.cli", *command[1:], "--host", "127.0.0.1",
                "--port", str(port)]
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                       env={**self.env, **env}, cwd=self.workdir,
                                       start_new_session=True)
        return Runtime(process=process, port=port, log=log,
                       ready_path=probe or f"/v2/models/{name}/ready")

    def stop_pods(self) -> None:
        """``per_pod``: stop every pod's process (a test's cluster is gone); spares stay."""
        if self.per_pod:
            for key in list(self.started):
                self.started.pop(key).stop()

    def close(self) -> None:
        for runtime in [*self.started.values(), *(r for rs in self.spares.values() for r in rs)]:
            runtime.stop()


class KubeProxy:
    """An HTTP proxy on loopback that routes ``*.svc.cluster.local`` to the fake's pods (see
    the module doc). :attr:`fake` is the cluster it reads; a test sets it."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None, *,
                 per_pod: bool = False) -> None:
        self._fake: FakeApiServer | None = None
        self.runtimes = Runtimes(workdir, dict(os.environ if env is None else env),
                                 per_pod=per_pod)
        self.routes: list[Route] = []
        #: the requests the fake's pod proxy forwarded to a pod's process
        self.pod_routes: list[Route] = []
        self._turn = itertools.count()
        self._draw = random.Random(17)  # an InferenceService's traffic split (see the module doc)
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._fronts: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    @property
    def fake(self) -> FakeApiServer | None:
        """The cluster the proxy reads; setting it also makes this proxy's runtimes what
        listens in that cluster's pods (its ``pod_network``, for the pod proxy)."""
        return self._fake

    @fake.setter
    def fake(self, fake: FakeApiServer | None) -> None:
        if self._fake is not None and self._fake.pod_network == self.pod_request:
            self._fake.pod_network = None
        self._fake = fake
        if fake is not None:
            fake.pod_network = self.pod_request

    def __enter__(self) -> KubeProxy:
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="kube-proxy")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server, thread in [*self._fronts, (self._http, self._thread)]:
            if server is not None:
                server.shutdown()
                server.server_close()
            if thread is not None:
                thread.join(timeout=5)
        self.runtimes.close()

    def front(self, service: str, namespace: str = "ml", port: int = 80) -> str:
        """A loopback URL that reaches ``service``'s ``port`` as a NodePort would: each request
        (a plain one, no proxy needed) is routed as one to ``http://<service>.<namespace>.svc.
        cluster.local:<port>`` (:meth:`route`)."""
        host = f"{service}.{namespace}.svc.cluster.local"
        handler = type("Front", (_Handler,), {"proxy": self, "service": (host, port)})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True, name=f"front-{service}")
        thread.start()
        self._fronts.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    def pod_request(self, pod: dict[str, Any], port: int, method: str, path: str,
                    body: bytes | None, headers: dict[str, str]
                    ) -> tuple[int, dict[str, str], bytes]:
        """What ``pod``'s process answers on ``port`` (the fake's pod proxy checked that the
        container runs and listens there); 502 if the process exited or never got ready."""
        answer = self._ask(pod, method, path, body, headers)
        self.pod_routes.append(Route("", pod["metadata"]["name"], version_of(pod["spec"]),
                                     method, path, answer[0]))
        return answer

    def _ask(self, pod: dict[str, Any], method: str, path: str, body: bytes | None,
             headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """What ``pod``'s runtime answers; 502 if the process exited or never got ready."""
        try:
            runtime = self.runtimes.for_pod(pod)
            return _forward(runtime.port, method, path, body, headers)
        except (Unavailable, OSError, http.client.HTTPException) as exc:
            return _text(502, f"pod {pod['metadata']['name']}: {exc}")

    @property
    def url(self) -> str:
        assert self._http is not None, "start the proxy first (with KubeProxy(...) as proxy)"
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def endpoints(self, service: dict[str, Any]) -> list[dict[str, Any]]:
        """The Service's ready pods (its selector, the ``Ready`` condition), by name."""
        assert self.fake is not None
        meta = service["metadata"]
        selector = (service.get("spec") or {}).get("selector") or {}
        ready = []
        for pod in self.fake.objects("Pod", meta["namespace"]):
            labels = pod["metadata"].get("labels") or {}
            conditions = {c.get("type"): c.get("status")
                          for c in (pod.get("status") or {}).get("conditions") or []}
            if selector and all(labels.get(k) == v for k, v in selector.items()) \
                    and conditions.get("Ready") == "True":
                ready.append(pod)
        return ready

    def revision(self, name: str, namespace: str) -> str | None:
        """The revision a request to the InferenceService host ``name`` goes to (see the module
        doc), ``None``: no InferenceService (or tag) of that name."""
        assert self.fake is not None
        tag = None
        for prefix in ("latest-", "prev-"):
            if name.startswith(prefix) and name.endswith("-predictor"):
                tag, name = prefix[:-1], name[len(prefix):]
        isvc_name = name[:-len("-predictor")] if name.endswith("-predictor") else name
        isvc = self.fake.get("InferenceService", isvc_name, namespace)
        if isvc is None:
            return None
        traffic = ((((isvc.get("status") or {}).get("components") or {}).get("predictor")
                    or {}).get("traffic") or [])
        if tag is not None:
            return next((t["revisionName"] for t in traffic if t.get("tag") == tag), None)
        weighted = [(t["revisionName"], int(t.get("percent") or 0)) for t in traffic
                    if t.get("revisionName") and t.get("percent")]
        if not weighted:
            return ""  # no revision takes traffic: no endpoints
        return self._draw.choices([r for r, _ in weighted], [w for _, w in weighted])[0]

    def revision_pods(self, revision: str, namespace: str) -> list[dict[str, Any]]:
        """A revision's ready pods, by name."""
        assert self.fake is not None
        return [p for p in self.fake.objects("Pod", namespace)
                if revision and (p["metadata"].get("labels") or {}).get(
                    "serving.knative.dev/revision") == revision
                and {c.get("type"): c.get("status") for c in (p.get("status") or {}).get(
                    "conditions") or []}.get("Ready") == "True"]

    def route(self, method: str, host: str, port: int, path: str, body: bytes | None,
              headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """Where kube-proxy would send the request, and that pod's answer."""
        match = SERVICE_HOST.fullmatch(host)
        fake = self.fake
        if match is None or fake is None:
            return _text(502, f"{host}: no such host (only <service>.<namespace>.svc.cluster."
                              "local names are routed)")
        name, namespace = match.group(1), match.group(3)
        service = fake.get("Service", name, namespace)
        if service is None:
            revision = self.revision(name, namespace)
            if revision is None:
                return _text(502, f"{host}: no such host (no Service {namespace}/{name})")
            if port != 80:
                return _text(502, f"{host}:{port}: connection refused (Knative serves port 80)")
            ready = self.revision_pods(revision, namespace)
            service = {"metadata": {"name": name, "namespace": namespace}}
        else:
            ports = [p.get("port") for p in (service.get("spec") or {}).get("ports") or []]
            if port not in ports:
                return _text(502, f"{host}:{port}: connection refused (the Service serves "
                                  f"{ports})")
            ready = self.endpoints(service)
        if not ready:
            self.routes.append(Route(name, "", "", method, path, 503))
            return _text(503, f'no endpoints available for service "{namespace}/{name}"')
        pod = ready[next(self._turn) % len(ready)]
        answer = self._ask(pod, method, path, body, headers)
        self.routes.append(Route(name, pod["metadata"]["name"], version_of(pod["spec"]), method,
                                 path, answer[0]))
        return answer

    def get(self, url: str, timeout: float = 30) -> tuple[int, bytes]:
        """``GET url`` through the proxy, from this process (its environment untouched)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": self.url}))
        try:
            with opener.open(url, timeout=timeout) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()


def _text(code: int, message: str) -> tuple[int, dict[str, str], bytes]:
    return code, {"Content-Type": "text/plain"}, (message + "\n").encode()


def _forward(port: int, method: str, path: str, body: bytes | None,
             headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        kept = {k: v for k, v in response.getheaders() if k.lower() == "content-type"}
        return response.status, kept, data
    finally:
        connection.close()


class _Handler(BaseHTTPRequestHandler):
    proxy: KubeProxy
    #: a front's Service (host, port): every request goes there (None: an HTTP proxy's)
    service: tuple[str, int] | None = None
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        host = parts.hostname or (self.headers.get("Host") or "").rsplit(":", 1)[0]
        port = parts.port or 80
        if self.service is not None:
            host, port = self.service
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        relay(self, self.proxy.route(method, host, port, path, body, passed_headers(self)))

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")
