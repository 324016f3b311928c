"""The serving app: Open Inference Protocol (V2) over REST, plus MLflow's scoring endpoints.

Endpoints (the V2 REST API as KServe and Triton define it): ``GET /v2``, ``/v2/health/live``,
``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]`` (metadata), ``.../ready``, ``POST .../infer`` (JSON, or Triton's binary
tensor extension), the model-repository extension (``/v2/repository/index``,
``/v2/repository/models/{name}/load|unload``); MLflow's ``POST /invocations`` and ``GET
/ping``; Prometheus ``GET /metrics``. Errors are ``{"error": "<one line>"}``. The wire format
(parsing inputs, encoding outputs) is :mod:`mlkube.serve.protocol`.

Predictions run on the event loop's thread for batches up to ``INLINE_ROWS`` rows (a
thread hop costs more than the tiny MLP's forward pass), in a worker thread above that.

The models, their loads, hot swaps and the slots beside them (canary, shadow) are the
``Repository``'s (:mod:`mlkube.serve.repository`); the request body's limits and the request
metrics are ASGI wrappers (:mod:`mlkube.serve.limits`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlkube import __version__
from mlkube.errors import MlkubeError, first_line
from mlkube.serve import live as livemod
from mlkube.serve import loaded as loadedmod
from mlkube.serve.limits import Limits, Measured
from mlkube.serve.metrics import CONTENT_TYPE
from mlkube.serve.protocol import (
    JSON,
    RequestError,
    error_response,
    infer_response,
    json_body,
    json_response,
    require_finite_outputs,
    rows_from_inputs,
    rows_from_mlflow,
)
from mlkube.serve.repository import Repository, in_thread
from mlkube.serve.server import IDLE_TIMEOUT, MAX_BODY_BYTES

INLINE_ROWS = 1024


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Handler) -> Handler:
    """Answer ``RequestError`` / ``MlkubeError`` / anything else as ``{"error": ...}``."""
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as exc:
            return error_response(exc.status, str(exc), close=exc.close)
        except MlkubeError as exc:
            return error_response(400, str(exc))
        except Exception as exc:  # a bug or a model failing at predict time
            traceback.print_exc(file=sys.stderr)
            return error_response(500, f"{type(exc).__name__}: {first_line(exc)}")

    guarded.__name__ = handler.__name__
    return guarded


class Endpoints:
    """The request handlers, over one ``Repository``."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    async def _predict(self, model: loadedmod.LoadedModel, rows: Any) -> Any:
        self.repo.metrics.batch.observe((model.name,), rows.shape[0])
        if rows.shape[0] <= INLINE_ROWS:
            out = model.predict(rows)
        else:
            out = await in_thread(model.predict, rows)
        require_finite_outputs(model, out)
        self.repo.monitor.record(model, rows, out)
        return out

    def _refused(self, model: loadedmod.LoadedModel) -> Callable[[Any], None]:
        monitor = self.repo.monitor
        return lambda array: monitor.refused(model, array)

    def _choose(self, name: str, version: str | None) -> tuple[loadedmod.LoadedModel,
                                                              livemod.SlotStats | None]:
        """The model that answers (the canary for its share of the requests naming no version)
        and the live numbers it counts in."""
        model = self.repo.model(name, version)
        if version is None:
            canary = self.repo.slot(name, "canary")
            if canary is not None and canary.split.take():
                return canary.model, canary.stats
            return model, self.repo.main_stats.get(name)
        for slot in self.repo.slots.get(name, {}).values():
            if slot.model is model:
                return model, slot.stats
        return model, self.repo.main_stats.get(name)

    async def _answer(self, model: loadedmod.LoadedModel, stats: livemod.SlotStats | None,
                      rows: Any, respond: Callable[[Any], Response]) -> Response:
        """Predict ``rows``, counting the slot's live numbers; after a main model's answer, a
        share of the requests is mirrored to the shadow (once the answer was sent)."""
        started = time.perf_counter()
        try:
            out = await self._predict(model, rows)
            response = respond(out)
        except RequestError as exc:
            if stats is not None and exc.status >= 500:
                stats.observe(time.perf_counter() - started, int(rows.shape[0]), True)
            raise
        except Exception:
            if stats is not None:
                stats.observe(time.perf_counter() - started, int(rows.shape[0]), True)
            raise
        if stats is not None:
            stats.observe(time.perf_counter() - started, int(rows.shape[0]), False)
        shadow = self.repo.slot(model.name, "shadow")
        if shadow is not None and self.repo.models.get(model.name) is model \
                and shadow.split.take():
            mirror = self.repo.mirror
            classifier = model.classifier

            async def mirrored() -> None:
                mirror.submit(shadow.model, shadow.stats, rows, out, classifier)

            response.background = BackgroundTask(mirrored)
        return response

    async def infer(self, request: Request) -> Response:
        """``POST /v2/models/{name}[/versions/{version}]/infer``."""
        params = request.path_params
        model, stats = self._choose(params["name"], params.get("version"))
        body, binary = await json_body(request)
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object with inputs")
        rows = rows_from_inputs(model, body.get("inputs"), binary, self._refused(model))
        return await self._answer(model, stats, rows,
                                  lambda out: infer_response(model, out, body))

    async def invocations(self, request: Request) -> Response:
        """MLflow's ``POST /invocations``: ``{"predictions": ...}`` from the default model."""
        if self.repo.default is None:
            raise RequestError(503, "no model is loaded yet")
        model, stats = self._choose(self.repo.default, None)
        content_type = request.headers.get("content-type", JSON)
        if "json" not in content_type:
            raise RequestError(415, f"content type {content_type} is not supported; send "
                                    "application/json")
        body, _ = await json_body(request)
        rows = rows_from_mlflow(model, body, self._refused(model))
        return await self._answer(model, stats, rows,
                                  lambda out: json_response({"predictions": out.tolist()}))

    async def ping(self, request: Request) -> Response:
        """MLflow's ``GET /ping``: 200 once the default model serves."""
        ready = self.repo.default is not None and self.repo.default in self.repo.models
        return Response(b"\n" if ready else b"not ready\n", status_code=200 if ready else 503,
                        media_type="text/plain")

    async def server_metadata(self, request: Request) -> Response:
        """``GET /v2``."""
        return json_response({"name": "mlkube", "version": __version__,
                      "extensions": ["model_repository", "binary_tensor_data"]})

    async def live(self, request: Request) -> Response:
        """``GET /v2/health/live``: the process answers."""
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        """``GET /v2/health/ready``: 200 once a model is loaded and verified, else 503."""
        if self.repo.models:
            return json_response({"ready": True})
        loading = ", ".join(f"{n} version {v}" for n, (v, _) in self.repo.loading.items())
        return json_response({"ready": False,
                      "error": f"loading {loading}" if loading else "no model is loaded"}, 503)

    async def model_metadata(self, request: Request) -> Response:
        """``GET /v2/models/{name}[/versions/{version}]``."""
        params = request.path_params
        return json_response(self.repo.model(params["name"], params.get("version")).metadata())

    async def model_ready(self, request: Request) -> Response:
        """``GET /v2/models/{name}[/versions/{version}]/ready``: 200, 503 loading, 404."""
        params = request.path_params
        model = self.repo.model(params["name"], params.get("version"))
        return json_response({"name": model.name, "version": model.version, "ready": True})

    async def index(self, request: Request) -> Response:
        """``GET|POST /v2/repository/index`` (POST ``{"ready": true}``: ready ones only)."""
        entries = self.repo.index()
        if request.method == "POST":
            body, _ = await json_body(request)
            if isinstance(body, dict) and body.get("ready"):
                entries = [e for e in entries if e["state"] == "READY"]
        return json_response(entries)

    async def _parameters(self, request: Request) -> dict[str, Any]:
        """The body's ``parameters`` (an empty body: none)."""
        body, _ = await json_body(request)
        return dict((body.get("parameters") if isinstance(body, dict) else None) or {})

    @staticmethod
    def _role(params: dict[str, Any], default: str | None) -> str | None:
        role = params.get("role", default)
        if role in (None, "", "main"):
            return None
        if role not in livemod.ROLES:
            raise RequestError(400, f"parameters.role is {json.dumps(role)[:40]}; give canary or "
                                    "shadow (or leave it out for the main model)")
        return str(role)

    async def load(self, request: Request) -> Response:
        """``POST /v2/repository/models/{name}/load``: hot swap to ``parameters.model_uri``
        (``version``, and optionally ``verify_batch``: the full batch to verify it on;
        ``role`` canary or shadow with ``share``: into that slot, see the module doc)."""
        name = request.path_params["name"]
        body, _ = await json_body(request)
        params = dict((body.get("parameters") if isinstance(body, dict) else None) or {})
        if isinstance(params.get("config"), str):  # tritonclient's load_model(config=...)
            try:
                params.update(json.loads(params["config"]))
            except ValueError:
                raise RequestError(400, "parameters.config is not JSON") from None
        uri = params.get("model_uri")
        if not isinstance(uri, str) or not uri:
            raise RequestError(400, "send {\"parameters\": {\"model_uri\": \"models:/NAME/V\", "
                                    "\"version\": \"V\"}}")
        version = params.get("version") or _uri_version(uri)
        if not version:
            raise RequestError(400, "parameters.version is required for this model_uri")
        batch = params.get("verify_batch")
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)
                                  or batch < 1):
            raise RequestError(400, f"parameters.verify_batch is {json.dumps(batch)[:40]}; give a "
                                    "positive number of rows (or leave it out for the "
                                    f"server's {self.repo.verify_batch})")
        role = self._role(params, None)
        share = params.get("share", 1.0)
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            raise RequestError(400, f"parameters.share is {json.dumps(share)[:40]}; give the "
                                    "share of requests, 0-1")
        return json_response(await self.repo.load(name, str(version), uri, batch, role,
                                                  float(share)))

    async def unload(self, request: Request) -> Response:
        """``POST /v2/repository/models/{name}/unload`` (``parameters.role``: only that slot)."""
        name = request.path_params["name"]
        role = self._role(await self._parameters(request), None)
        if role is not None:
            version = self.repo.unload_slot(name, role)
            return json_response({"name": name, "role": role, "version": version,
                                  "unloaded": True})
        self.repo.unload(name)
        return json_response({"name": name, "unloaded": True})

    async def promote(self, request: Request) -> Response:
        """``POST /v2/repository/models/{name}/promote``: the ``parameters.role`` slot's version
        (default the canary) becomes the main model."""
        name = request.path_params["name"]
        role = self._role(await self._parameters(request), "canary")
        if role is None:
            raise RequestError(400, "the main model is promoted already; give role canary or "
                                    "shadow")
        return json_response(await self.repo.promote(name, role))

    async def live_numbers(self, request: Request) -> Response:
        """``GET /v2/models/{name}/live``: each slot's live numbers."""
        return json_response(self.repo.live(request.path_params["name"]))

    async def metrics(self, request: Request) -> Response:
        """``GET /metrics``: Prometheus text format."""
        return Response(self.repo.metrics.render(), media_type=CONTENT_TYPE)

    def routes(self) -> list[Route]:
        """Every route; the inference ones first (routes are matched in order)."""
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        get, post = ["GET"], ["POST"]
        return [
            Route(f"{model}/infer", _guarded(self.infer), methods=post),
            Route("/invocations", _guarded(self.invocations), methods=post),
            Route(f"{versioned}/infer", _guarded(self.infer), methods=post),
            Route("/v2/health/live", self.live, methods=get),
            Route("/v2/health/ready", self.ready, methods=get),
            Route("/ping", self.ping, methods=get),
            Route("/health", self.ping, methods=get),
            Route("/metrics", self.metrics, methods=get),
            Route("/v2", self.server_metadata, methods=get),
            Route(model, _guarded(self.model_metadata), methods=get),
            Route(versioned, _guarded(self.model_metadata), methods=get),
            Route(f"{model}/ready", _guarded(self.model_ready), methods=get),
            Route(f"{model}/live", _guarded(self.live_numbers), methods=get),
            Route(f"{versioned}/ready", _guarded(self.model_ready), methods=get),
            Route("/v2/repository/index", _guarded(self.index), methods=["GET", "POST"]),
            Route("/v2/repository/models/{name}/load", _guarded(self.load), methods=post),
            Route("/v2/repository/models/{name}/unload", _guarded(self.unload), methods=post),
            Route("/v2/repository/models/{name}/promote", _guarded(self.promote), methods=post),
        ]


def _uri_version(uri: str) -> str | None:
    """VERSION of ``models:/NAME/VERSION``."""
    parts = uri.removeprefix("models:/").strip("/").split("/") if uri.startswith(
        "models:/") else []
    return parts[1] if len(parts) == 2 and parts[1].isdigit() else None


def create_app(repository: Repository | None = None,
               initial: tuple[str, str, str] | None = None,
               on_initial_failure: Callable[[MlkubeError], None] | None = None, *,
               max_body_bytes: int = MAX_BODY_BYTES, idle_timeout: float = IDLE_TIMEOUT) -> Any:
    """The ASGI app; ``initial`` = (model_uri, name, version) is loaded once the server is up.

    Until it is loaded and verified, readiness answers 503. If it fails, ``on_initial_failure``
    gets the error (the server then stops, see ``server.py``). ``max_body_bytes`` and
    ``idle_timeout``: see ``Limits``.
    """
    repo = repository or Repository()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        task = None
        if initial is not None:
            uri, name, version = initial
            repo.default = name

            async def first() -> None:
                try:
                    await repo.load(name, version, uri)
                except MlkubeError as exc:
                    if on_initial_failure is not None:
                        on_initial_failure(exc)

            task = asyncio.create_task(first())
        ticker = asyncio.create_task(repo.monitor.run()) if repo.monitor.stats_dir else None
        yield
        if task is not None and not task.done():
            task.cancel()
        if ticker is not None:
            ticker.cancel()
        repo.monitor.close()  # the last windows

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        return error_response(status, f"{request.method} {request.url.path}: "
                              f"{getattr(exc, 'detail', 'error')}")

    async def request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)  # raised outside a guarded route: a body limit
        return error_response(exc.status, str(exc), close=exc.close)

    app = Starlette(routes=Endpoints(repo).routes(), lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, RequestError: request_error})
    app.state.repository = repo
    return Measured(Limits(app, max_body_bytes, idle_timeout), repo)
