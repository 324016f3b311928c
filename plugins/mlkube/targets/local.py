"""The local target: mlkube's serving runtime as one process on loopback per model.

The first deployment of a model starts ``mlkube serve model`` on ``serving.port``; every later
version is hot-swapped into that running server (it loads and verifies the new version aside,
on its input example, 1 row and a batch of ``verify_batch`` rows, then switches), so the
published URL never changes and no request is refused. A record in
``<state_dir>/serving/<model>.json`` names the process; ``mlkube serve status|stop`` read it.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlkube.errors import Busy, MlkubeError
from mlkube.result import atomic_write_text
from mlkube.spec import MODEL_LOCK_WAIT, model_lock
from mlkube.targets.base import ServingTarget


@dataclass(kw_only=True)
class Server:
    """A local serving runtime process for one registered model."""

    model_name: str
    host: str
    port: int
    pid: int
    log: str

    @property
    def base_url(self) -> str:
        """Where the V2 server answers."""
        return f"http://{self.host}:{self.port}"


def safe_name(model_name: str) -> str:
    """The model name as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)


def _record(state_dir: Path, model_name: str) -> Path:
    return state_dir / "serving" / f"{safe_name(model_name)}.json"


def current(state_dir: Path, model_name: str) -> Server | None:
    """The recorded server of ``model_name``, or ``None``."""
    path = _record(state_dir, model_name)
    return Server(**json.loads(path.read_text())) if path.is_file() else None


def servers(state_dir: Path) -> list[Server]:
    """Every recorded server."""
    folder = state_dir / "serving"
    return [Server(**json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]


def running(server: Server) -> bool:
    """Whether the process is there and the server answers its liveness check."""
    from mlkube.serve import client

    try:
        os.kill(server.pid, 0)
    except OSError:
        return False
    return client.live(server.base_url)


def served_version(server: Server) -> str | None:
    """The version the running server answers with (its V2 model metadata), or ``None``."""
    from mlkube.serve import client

    versions = client.metadata(server.base_url, server.model_name).get("versions") or [None]
    return str(versions[0]) if versions[0] is not None else None


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) != 0


def stop(server: Server, timeout: float = 10.0) -> None:
    """Stop the server's process group: SIGTERM, then SIGKILL after ``timeout``."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(server.pid, 0)
            os.waitpid(server.pid, os.WNOHANG)
        except ProcessLookupError:
            return
        except ChildProcessError:  # not our child: it is reaped elsewhere
            pass
        time.sleep(0.1)
    os.killpg(server.pid, signal.SIGKILL)


def forget(state_dir: Path, model_name: str) -> None:
    """Remove the record of ``model_name``'s server."""
    _record(state_dir, model_name).unlink(missing_ok=True)


def _log_tail(log: str) -> str:
    lines = [x.strip() for x in Path(log).read_text(errors="replace").splitlines() if x.strip()]
    mine = [x for x in lines if x.startswith("mlkube ")]  # the runtime's own one-line error
    return (mine or lines or ["no output"])[-1]


class LocalTarget(ServingTarget):
    """One model's server on loopback; see the module doc."""

    name = "local"

    def __init__(self, *, state_dir: Path, model_name: str, host: str, port: int,
                 ready_timeout: float, log: Callable[[str], Any] = print,
                 max_body_bytes: int | None = None, idle_timeout: float | None = None,
                 verify_batch: int | None = None) -> None:
        """Where the server runs and how long a new one may take to become ready; the
        server's limits (``None``: its defaults); ``verify_batch``: the full batch (rows)
        every version is verified on before it serves, at the server's start, on a hot swap
        and on a roll back (``None``: the server's default)."""
        if verify_batch is not None and verify_batch < 1:
            raise MlkubeError(f"verify_batch is {verify_batch}; give a positive number of rows")
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout
        self.verify_batch = verify_batch
        self.state_dir = state_dir
        self._model_name = model_name
        self.host = host
        self.port = port
        self.ready_timeout = ready_timeout
        self.log = log

    @property
    def base_url(self) -> str:
        """The published URL: the configured loopback port."""
        return f"http://{self.host}:{self.port}"

    @property
    def model_name(self) -> str:
        """The registered model's name."""
        return self._model_name

    def _server(self) -> Server | None:
        server = current(self.state_dir, self.model_name)
        return server if server is not None and running(server) else None

    def live_version(self) -> str | None:
        """The version the running server answers with, or ``None``."""
        server = self._server()
        if server is None:
            return None
        if server.port != self.port:
            raise MlkubeError(
                f"{self.model_name} is served on port {server.port}, not serving.port "
                f"{self.port}; stop it first (mlkube serve stop --model '{self.model_name}')")
        return served_version(server)

    def roll_out(self, version: str, model_uri: str) -> None:
        """Hot-swap ``version`` into the running server, or start the server with it."""
        from mlkube.serve import client

        server = self._server()
        if server is not None:
            self.log(f"loading version {version} into the server at {server.base_url}")
            client.load(server.base_url, self.model_name, version, model_uri,
                        timeout=self.ready_timeout, verify_batch=self.verify_batch)
            return
        self._start(version, model_uri)

    def _start(self, version: str, model_uri: str) -> None:
        from mlkube.serve import client

        if not port_free(self.host, self.port):
            raise MlkubeError(f"port {self.port} on {self.host} is taken by another program; "
                              "set serving.port to a free port")
        logs = self.state_dir / "serving" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{safe_name(self.model_name)}-{self.port}.log"
        from mlkube.serve.server import arguments

        command = [sys.executable, "-m", "mlkube.cli", "serve", "model",
                   *arguments(model_uri=model_uri, name=self.model_name, version=version,
                              host=self.host, port=self.port, max_body_bytes=self.max_body_bytes,
                              idle_timeout=self.idle_timeout, verify_batch=self.verify_batch,
                              stats_dir=str(self.state_dir / "monitoring"))]
        with log.open("a") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        server = Server(model_name=self.model_name, host=self.host, port=self.port,
                        pid=process.pid, log=str(log))
        self.log(f"started the server for version {version} at {server.base_url} "
                 f"(pid {process.pid}, log {log})")
        deadline = time.monotonic() + self.ready_timeout
        while not client.ready(server.base_url, self.model_name):
            if process.poll() is not None:
                raise MlkubeError(f"the server for version {version} exited with status "
                                  f"{process.returncode}: {_log_tail(str(log))}")
            if time.monotonic() > deadline:
                stop(server)
                raise MlkubeError(f"the server for version {version} was not ready after "
                                  f"{self.ready_timeout:.0f} s (log: {log}); raise "
                                  "serving.ready_timeout")
            time.sleep(0.2)
        atomic_write_text(_record(self.state_dir, self.model_name), json.dumps(asdict(server)))

    live_slots = True

    def _running(self) -> Server:
        server = self._server()
        if server is None:
            raise MlkubeError(f"no server of {self.model_name} runs on {self.base_url}")
        return server

    def load_slot(self, role: str, version: str, model_uri: str, share: float) -> None:
        """Load ``version`` into the running server's ``role`` slot (verified aside)."""
        from mlkube.serve import client

        server = self._running()
        self.log(f"loading version {version} as the {role} ({share:.0%} of the live requests) "
                 f"into the server at {server.base_url}")
        client.load(server.base_url, self.model_name, version, model_uri,
                    timeout=self.ready_timeout, verify_batch=self.verify_batch, role=role,
                    share=share)

    def unload_slot(self, role: str) -> None:
        """Empty the running server's ``role`` slot, if it holds one."""
        from mlkube.serve import client

        server = self._server()
        if server is not None and (client.live_numbers(server.base_url, self.model_name)
                                   .get(role)) is not None:
            client.unload(server.base_url, self.model_name, role)

    def promote_slot(self, role: str) -> None:
        """The ``role`` slot's version serves, in one step."""
        from mlkube.serve import client

        client.promote(self._running().base_url, self.model_name, role)

    def live_numbers(self) -> dict[str, Any]:
        """The running server's live numbers of the model."""
        from mlkube.serve import client

        return client.live_numbers(self._running().base_url, self.model_name)

    def promote(self) -> None:
        """The serving version takes all the traffic: a canary that a killed deploy left
        beside it (its window never judged) is unloaded."""
        self.unload_slot("canary")

    def roll_back(self, version: str | None) -> None:
        """Load ``version`` again, or stop the server when nothing served before; a canary
        beside it is unloaded."""
        from mlkube.serve import client

        server = self._server()
        if server is not None and version is not None:
            try:
                self.unload_slot("canary")
            except MlkubeError:  # the server going away: what follows handles it
                pass
        if version is None:
            if server is not None:
                stop(server)
            forget(self.state_dir, self.model_name)
            return
        if server is None:  # stopped meanwhile: start it again with that version
            self._start(version, f"models:/{self.model_name}/{version}")
        elif self.live_version() != version:
            client.load(server.base_url, self.model_name, version,
                        f"models:/{self.model_name}/{version}", timeout=self.ready_timeout,
                        verify_batch=self.verify_batch)

    @contextmanager
    def exclusive(self, wait: float = MODEL_LOCK_WAIT) -> Iterator[None]:
        """An exclusive ``flock`` on ``<state_dir>/serving/<model lock>.lock``: the kernel lets
        go when the holder exits, killed or not, so a killed deploy never blocks the next."""
        import fcntl

        path = self.state_dir / "serving" / f"{model_lock(self.model_name)}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a+") as lock:
            deadline = time.monotonic() + wait
            waiting = False
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    lock.seek(0)
                    holder = lock.read().strip() or "another process"
                    if not waiting:
                        self.log(f"another deploy of {self.model_name} holds {path} ({holder}):"
                                 f" waiting up to {wait:g} s for it")
                        waiting = True
                    if time.monotonic() >= deadline:
                        raise Busy(f"another deploy of {self.model_name} holds {path}: "
                                   f"{holder}; it was still running after {wait:g} s of "
                                   "waiting; this one changed nothing: run it again once that "
                                   "deploy has finished") from None
                    time.sleep(0.2)
            lock.truncate(0)
            lock.write(f"{socket.gethostname()} pid {os.getpid()}")
            lock.flush()
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
