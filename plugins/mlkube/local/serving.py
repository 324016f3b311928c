"""The embedded serving backend: MLflow's scoring server as a process on loopback.

A deployment is recorded in ``<state_dir>/serving/<model>.json``; the record is replaced only
after the new server has answered a prediction, so a failed rollout leaves the old server and
its record untouched. Servers alternate between two ports (blue/green), so the new one starts
while the old one still serves.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlkube.errors import MlkubeError
from mlkube.result import atomic_write_text


@dataclass(kw_only=True)
class Deployment:
    """A model server process serving one fixed model version."""

    model_name: str
    version: str
    host: str
    port: int
    pid: int
    log: str

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """Where predictions are posted."""
        return f"{self.url}/invocations"


def _safe(model_name: str) -> str:
    """The model name as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)


def _record(state_dir: Path, model_name: str) -> Path:
    return state_dir / "serving" / f"{_safe(model_name)}.json"


def current(state_dir: Path, model_name: str) -> Deployment | None:
    """The recorded deployment of ``model_name``, or ``None``."""
    path = _record(state_dir, model_name)
    if not path.is_file():
        return None
    return Deployment(**json.loads(path.read_text()))


def deployments(state_dir: Path) -> list[Deployment]:
    """Every recorded deployment."""
    folder = state_dir / "serving"
    return [Deployment(**json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except (urllib.error.URLError, OSError):
        return 0


def alive(deployment: Deployment) -> bool:
    """Whether the process runs and answers its health check."""
    try:
        os.kill(deployment.pid, 0)
    except OSError:
        return False
    return _get(f"{deployment.url}/ping") == 200


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) != 0


def start(state_dir: Path, model_name: str, version: str, host: str, port: int) -> Deployment:
    """Start a server for ``models:/<name>/<version>`` in its own process group."""
    if not port_free(host, port):
        raise MlkubeError(f"port {port} on {host} is taken by another program; "
                          "set serving.port / --port to a free pair of ports")
    logs = state_dir / "serving" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{_safe(model_name)}-v{version}-{port}.log"
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [sys.executable, "-m", "mlflow", "models", "serve",
               "-m", f"models:/{model_name}/{version}", "--env-manager", "local",
               "-h", host, "-p", str(port), "--workers", "1"]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    return Deployment(model_name=model_name, version=str(version), host=host, port=port,
                      pid=process.pid, log=str(log))


def _log_tail(deployment: Deployment) -> str:
    lines = [x.strip() for x in Path(deployment.log).read_text(errors="replace").splitlines()]
    errors = [x for x in lines if "Error" in x or "error" in x] or lines
    return errors[-1] if errors else "no output"


def wait_ready(deployment: Deployment, timeout: float) -> None:
    """Wait until the server answers ``/ping``; fail at once if its process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, status = os.waitpid(deployment.pid, os.WNOHANG)
        except ChildProcessError:  # not our child (another process started it)
            finished, status = 0, 0
        if finished:
            raise MlkubeError(f"model server for version {deployment.version} exited "
                              f"(status {status >> 8}): {_log_tail(deployment)}")
        if _get(f"{deployment.url}/ping") == 200:
            return
        time.sleep(0.25)
    raise MlkubeError(f"model server for version {deployment.version} not ready after "
                      f"{timeout:.0f} s (log: {deployment.log}); raise serving.ready_timeout")


def predict(endpoint: str, rows: list[list[float]], timeout: float = 30.0) -> Any:
    """POST rows to a server's ``/invocations`` and return its predictions."""
    body = json.dumps({"inputs": rows}).encode()
    request = urllib.request.Request(endpoint, data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise MlkubeError(f"{endpoint} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise MlkubeError(f"{endpoint} did not answer: {exc}") from None


def record(state_dir: Path, deployment: Deployment) -> None:
    """Make ``deployment`` the recorded one for its model."""
    atomic_write_text(_record(state_dir, deployment.model_name), json.dumps(asdict(deployment)))


def stop(deployment: Deployment, timeout: float = 10.0) -> None:
    """Stop the server's process group: SIGTERM, then SIGKILL after ``timeout``."""
    try:
        os.killpg(deployment.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(deployment.pid, 0)
        except ProcessLookupError:
            break
        try:
            os.waitpid(deployment.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    else:
        os.killpg(deployment.pid, signal.SIGKILL)


def forget(state_dir: Path, model_name: str) -> None:
    """Remove the record of ``model_name``'s deployment."""
    _record(state_dir, model_name).unlink(missing_ok=True)
