"""``mlkube serve model``: one model version on uvicorn (one worker), in the foreground.

The server listens at once and answers ``/v2/health/live``; it loads and verifies the model in
a worker thread, and reports ready (``/v2/health/ready``, ``/ping``) only once that passed. If
the initial load fails, the server stops and the command exits 1 with one line saying why.
Later versions arrive by hot swap (``POST /v2/repository/models/{name}/load``).

Verifying: the model predicts its input example, a batch of 1 row and a full batch of
``--verify-batch`` rows (default ``VERIFY_BATCH``, 64; the example's rows repeated), before it
serves; a hot swap's load request may name its own ``verify_batch``.

Limits: a request body over ``--max-body-bytes`` (default 16 MiB) is answered 413 unparsed;
a connection that sends no request for ``--idle-timeout`` seconds (default 75: after it
opens, between keep-alive requests, or while its headers trickle in) is closed, and a request
body that stalls that long is answered 408.

Live statistics (:mod:`mlkube.serve.stats`): per model version, of the features asked and the
predictions answered, on ``/metrics``; with ``--stats-dir DIR`` also written there as JSON
windows every ``--stats-every-requests`` requests or ``--stats-every-seconds`` seconds,
whichever comes first; ``--no-stats`` turns them off.

``python -m mlkube.serve.server`` takes the same options.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import warnings
from typing import Any

from mlkube.errors import MlkubeError
from mlkube.serve.loaded import VERIFY_BATCH
from mlkube.serve.stats import EVERY_REQUESTS, EVERY_SECONDS

MAX_BODY_BYTES = 16 * 1024 * 1024  # about 50,000 rows of 30 features as JSON
# Above the 60 s idle timeout of common load balancers and proxies, so that the server is not
# the one that closes a connection a proxy is about to reuse.
IDLE_TIMEOUT = 75.0


def _split_uri(uri: str) -> tuple[str | None, str | None]:
    """(name, version) of a ``models:/NAME/VERSION`` URI, else (None, None)."""
    if uri.startswith("models:/"):
        parts = uri.removeprefix("models:/").strip("/").split("/")
        if len(parts) == 2 and parts[1].isdigit():
            return parts[0], parts[1]
    return None, None


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MlkubeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                          "choose another --port") from None
    sock.set_inheritable(True)
    return sock


def _closing_idle(idle_timeout: float) -> Any:
    """uvicorn's HTTP protocol, closing connections without a request for ``idle_timeout`` s.

    uvicorn arms its keep-alive timer only when a response is complete, and any byte that
    arrives cancels it: a connection that sends nothing, or headers that never end, stays
    open for good. Here a timer runs from the connection's start and from each response's
    end; if no request's headers were complete when it fires, the connection is closed. A
    request in progress is never cut (a stalled body is the app's 408, see ``Limits``).
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class ClosingIdle(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _idle: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _disarm(self) -> None:
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None

        def _arm(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self._idle = self.loop.call_later(idle_timeout, self._expired, self.cycle)

        def _expired(self, cycle: Any) -> None:
            self._idle = None
            idle = self.cycle is cycle and (cycle is None or cycle.response_complete)
            if idle and not self.transport.is_closing():
                self.transport.close()

    return ClosingIdle


def serve(model_uri: str, *, name: str, version: str, host: str = "127.0.0.1",
          port: int = 8080, fast_path: bool = True, access_log: bool = False,
          threads: int | None = None, max_body_bytes: int = MAX_BODY_BYTES,
          idle_timeout: float = IDLE_TIMEOUT, verify_batch: int = VERIFY_BATCH,
          stats: bool = True, stats_dir: str | None = None,
          stats_every_requests: int = EVERY_REQUESTS,
          stats_every_seconds: float = EVERY_SECONDS) -> None:
    """Serve ``model_uri`` as ``name`` / ``version`` until SIGTERM or SIGINT.

    ``threads``: the model's intra-op threads (torch's OpenMP pool); by default
    ``OMP_NUM_THREADS`` if set, else 1. Requests are predicted one at a time on the event
    loop, and a small model split over several threads only waits for them: on a busy 2-core
    machine a 64-row MLP call took 0.1 ms on 1 thread and up to 1.1 ms on 2.

    ``max_body_bytes``, ``idle_timeout``: the limits of the module doc. ``verify_batch``: the
    full batch every version is verified on (unless its load request names one).
    ``stats``, ``stats_dir``, ``stats_every_*``: the live statistics (see the module doc).

    Raises ``MlkubeError`` if the port is taken or the model does not load and verify.
    """
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # read by torch when it is imported
    from pathlib import Path

    import uvicorn

    from mlkube.serve.app import create_app
    from mlkube.serve.repository import Repository, log
    from mlkube.serve.stats import Monitor

    # A request number beyond float32 becomes ±Infinity, which the request's 400 names: not
    # worth numpy's RuntimeWarning in the log as well.
    warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)

    failures: list[MlkubeError] = []

    def failed(error: MlkubeError) -> None:
        failures.append(error)
        server.should_exit = True

    sock = _listen(host, port)
    monitor = Monitor(enabled=stats, stats_dir=Path(stats_dir) if stats_dir else None,
                      every_requests=stats_every_requests, every_seconds=stats_every_seconds)
    app = create_app(Repository(fast_path=fast_path, verify_batch=verify_batch, monitor=monitor),
                     initial=(model_uri, name, str(version)), on_initial_failure=failed,
                     max_body_bytes=max_body_bytes, idle_timeout=idle_timeout)
    config = uvicorn.Config(app, workers=1, log_level="warning", access_log=access_log,
                            lifespan="on", timeout_graceful_shutdown=10,
                            http=_closing_idle(idle_timeout),
                            timeout_keep_alive=idle_timeout)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    log(f"listening on http://{host}:{sock.getsockname()[1]}; loading {name} version {version} "
        f"({model_uri})")
    server.run(sockets=[sock])
    if failures:
        raise failures[0]


def arguments(*, model_uri: str, name: str, version: str, host: str, port: int,
              max_body_bytes: int | None = None, idle_timeout: float | None = None,
              verify_batch: int | None = None, stats_dir: str | None = None) -> list[str]:
    """The options of ``mlkube serve model`` for one fixed version (what its callers start);
    a limit or ``verify_batch`` left ``None`` is the server's default (and not written);
    ``stats_dir``: where the live statistics' windows go (``None``: not written)."""
    extra = []
    if stats_dir is not None:
        extra += ["--stats-dir", stats_dir]
    if max_body_bytes is not None:
        extra += ["--max-body-bytes", str(max_body_bytes)]
    if idle_timeout is not None:
        extra += ["--idle-timeout", f"{idle_timeout:g}"]
    if verify_batch is not None:
        extra += ["--verify-batch", str(verify_batch)]
    return ["--model-uri", model_uri, "--name", name, "--version", version, "--host", host,
            "--port", str(port), *extra]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mlkube serve model``."""
    parser.add_argument("--model-uri", required=True,
                        help="the MLflow model: models:/NAME/VERSION, runs:/..., a path")
    parser.add_argument("--name", help="the model's name in the V2 API (default: NAME of a "
                                       "models:/NAME/VERSION URI)")
    parser.add_argument("--version", help="the version it reports (default: VERSION of a "
                                          "models:/NAME/VERSION URI)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                                                            "127.0.0.1, loopback)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--no-fast-path", action="store_true",
                        help="predict through mlflow.pyfunc even for PyTorch models")
    parser.add_argument("--threads", type=int, help="intra-op threads of the model (torch); "
                                                     "default: OMP_NUM_THREADS, else 1")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES, metavar="BYTES",
                        help="largest request body; a larger one is answered 413 unread "
                             f"(default {MAX_BODY_BYTES}, 16 MiB)")
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT, metavar="SECONDS",
                        help="seconds a connection may wait without a request, or a request "
                             f"body without a byte, before it is closed (default {IDLE_TIMEOUT:g})")
    parser.add_argument("--verify-batch", type=int, default=VERIFY_BATCH, metavar="ROWS",
                        help="before a version serves, it predicts its input example, 1 row "
                             "and a batch of this many rows (its example's rows repeated); one "
                             f"that fails is refused (default {VERIFY_BATCH})")
    parser.add_argument("--stats-dir", metavar="DIR",
                        help="write windows of the live statistics (features asked, "
                             "predictions answered) here as JSON, "
                             "DIR/<model>/<version>/window-<end>-<host>.json (default: none "
                             "written; /metrics has them either way)")
    parser.add_argument("--stats-every-requests", type=int, default=EVERY_REQUESTS,
                        metavar="N", help="a window every N requests ... "
                                          f"(default {EVERY_REQUESTS})")
    parser.add_argument("--stats-every-seconds", type=float, default=EVERY_SECONDS,
                        metavar="SECONDS", help="... or every this many seconds, whichever "
                                                f"comes first (default {EVERY_SECONDS:g})")
    parser.add_argument("--no-stats", action="store_true",
                        help="keep no live statistics (nor their /metrics and windows)")


def run(args: argparse.Namespace) -> int:
    """Run the server from parsed ``add_arguments`` options."""
    name, version = _split_uri(args.model_uri)
    name, version = args.name or name, args.version or version
    if not name or not version:
        raise MlkubeError(f"--model-uri {args.model_uri} is not models:/NAME/VERSION; "
                          "pass --name and --version")
    if args.max_body_bytes <= 0:
        raise MlkubeError(f"--max-body-bytes is {args.max_body_bytes}; give a positive number "
                          f"of bytes (default {MAX_BODY_BYTES})")
    if not 0 < args.idle_timeout < float("inf"):
        raise MlkubeError(f"--idle-timeout is {args.idle_timeout:g}; give a positive number of "
                          f"seconds (default {IDLE_TIMEOUT:g})")
    if args.verify_batch < 1:
        raise MlkubeError(f"--verify-batch is {args.verify_batch}; give a positive number of "
                          f"rows (default {VERIFY_BATCH})")
    if args.stats_every_requests < 1 or not 0 < args.stats_every_seconds < float("inf"):
        raise MlkubeError("--stats-every-requests and --stats-every-seconds must be positive "
                          f"(defaults {EVERY_REQUESTS} and {EVERY_SECONDS:g})")
    serve(args.model_uri, name=name, version=version, host=args.host, port=args.port,
          fast_path=not args.no_fast_path, access_log=args.access_log, threads=args.threads,
          max_body_bytes=args.max_body_bytes, idle_timeout=args.idle_timeout,
          verify_batch=args.verify_batch, stats=not args.no_stats, stats_dir=args.stats_dir,
          stats_every_requests=args.stats_every_requests,
          stats_every_seconds=args.stats_every_seconds)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mlkube.serve.server``."""
    parser = argparse.ArgumentParser(prog="mlkube serve model", description=__doc__.split(
        "\n")[0] if __doc__ else None)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except MlkubeError as exc:
        print(f"mlkube serve: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
