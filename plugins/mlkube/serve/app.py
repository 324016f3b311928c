"""The serving app: Open Inference Protocol (V2) over REST, plus MLflow's scoring endpoints.

One slot per model name holds a verified ``LoadedModel``. A request takes the slot's model
once, when it starts, and uses that object to the end, so a hot swap (``POST
/v2/repository/models/{name}/load``) never disturbs a request in flight: the new version is
loaded and verified in a worker thread while the old one answers, then the slot's reference
is replaced in one step on the event loop. A version that fails to load or verify is refused
and the old one goes on serving.

Endpoints (the V2 REST API as KServe and Triton define it): ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}
[/versions/{v}]`` (metadata), ``.../ready``, ``POST .../infer`` (JSON, or Triton's binary
tensor extension), the model-repository extension (``/v2/repository/index``,
``/v2/repository/models/{name}/load|unload``); MLflow's ``POST /invocations`` and ``GET
/ping``; Prometheus ``GET /metrics``. Errors are ``{"error": "<one line>"}``.

Predictions run on the event loop's thread for batches up to ``INLINE_ROWS`` rows (a
thread hop costs more than the tiny MLP's forward pass), in a worker thread above that.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlkube import __version__
from mlkube.errors import MlkubeError, first_line
from mlkube.serve import loaded as loadedmod
from mlkube.serve.metrics import CONTENT_TYPE, Metrics

INLINE_ROWS = 1024
JSON = "application/json"
BINARY_HEADER = "inference-header-content-length"
_NUMERIC = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
            "FP16", "FP32", "FP64"}


class RequestError(Exception):
    """A request the server answers with an error status and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def log(message: str) -> None:
    """One line of the server's own output."""
    print(f"mlkube serve: {message}", flush=True)


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a daemon thread (a load never holds up the process's exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def work() -> None:
        try:
            value = fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=work, name="mlkube-serve-worker", daemon=True).start()
    return await future


@dataclass
class Repository:
    """The model slots, the loads in progress and the last refused load of each name."""

    metrics: Metrics = field(default_factory=Metrics)
    fast_path: bool = True
    models: dict[str, loadedmod.LoadedModel] = field(default_factory=dict)
    loading: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (version, uri)
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (version, why)
    default: str | None = None  # what /invocations and /ping answer for
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def model(self, name: str, version: str | None = None) -> loadedmod.LoadedModel:
        """The model serving ``name`` (at ``version``), or a 404/503 ``RequestError``."""
        found = self.models.get(name)
        if found is not None and (version is None or version == found.version):
            return found
        if name in self.loading and (found is None or version == self.loading[name][0]):
            raise RequestError(503, f"model {name} version {self.loading[name][0]} is loading")
        if found is not None:
            raise RequestError(404, f"model {name} version {version} is not loaded "
                                    f"(version {found.version} is)")
        raise RequestError(404, f"model {name} is not loaded")

    async def load(self, name: str, version: str, model_uri: str) -> dict[str, Any]:
        """Load and verify ``model_uri`` aside, then make it ``name``'s model in one step."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            old = self.models.get(name)
            if old is not None and old.version == version and old.model_uri == model_uri:
                return {"name": name, "version": version, "model_uri": model_uri,
                        "replaced_version": "", "unchanged": True}
            self.loading[name] = (version, model_uri)
            try:
                new = await in_thread(self._load, model_uri, name, version)
            except MlkubeError as exc:
                self.refused[name] = (version, str(exc))
                self.metrics.loads.inc((name, "failed"))
                keeps = f"; version {old.version} keeps serving" if old is not None else ""
                log(f"refused {name} version {version}: {exc}{keeps}")
                raise
            finally:
                self.loading.pop(name, None)
            self.models[name] = new  # the swap: requests from here on get the new object
            if self.default is None:
                self.default = name
            self.refused.pop(name, None)
            self.metrics.loads.inc((name, "loaded"))
            if old is not None:
                self.metrics.serving.remove((name, old.version))
            self.metrics.serving.set((name, new.version), 1)
            path = "direct torch call" if new.fast_path else "pyfunc"
            log(f"{name} version {version} ({model_uri}) ready: verified on "
                f"{new.verified_rows} rows in {new.load_seconds:.1f} s, predicting by {path}"
                + (f"; replaced version {old.version}" if old is not None else ""))
            return {"name": name, "version": new.version, "model_uri": model_uri,
                    "replaced_version": old.version if old is not None else "",
                    "load_seconds": new.load_seconds, "fast_path": new.fast_path}

    def _load(self, model_uri: str, name: str, version: str) -> loadedmod.LoadedModel:
        return loadedmod.load(model_uri, name=name, version=version, fast_path=self.fast_path)

    def unload(self, name: str) -> None:
        """Stop serving ``name``."""
        old = self.models.pop(name, None)
        if old is None:
            raise RequestError(404, f"model {name} is not loaded")
        self.metrics.serving.remove((name, old.version))
        if self.default == name:
            self.default = next(iter(self.models), None)
        log(f"unloaded {name} version {old.version}")

    def index(self) -> list[dict[str, Any]]:
        """The V2 repository index: every model name, its versions and their states."""
        entries: list[dict[str, Any]] = []
        for name in sorted({*self.models, *self.loading, *self.refused}):
            if name in self.models:
                m = self.models[name]
                entries.append({"name": name, "version": m.version, "state": "READY",
                                "model_uri": m.model_uri})
            if name in self.loading:
                version, uri = self.loading[name]
                entries.append({"name": name, "version": version, "state": "LOADING",
                                "model_uri": uri})
            if name in self.refused:
                version, why = self.refused[name]
                entries.append({"name": name, "version": version, "state": "UNAVAILABLE",
                                "reason": why})
        return entries


# --- request parsing ---------------------------------------------------------------------


def _numbers(data: Any, datatype: str, shape: list[int], where: str) -> Any:
    import numpy as np

    try:
        array = np.asarray(data, dtype=np.float32)
        return array.reshape(shape)
    except (TypeError, ValueError) as exc:
        raise RequestError(400, f"{where}: data does not fit shape {shape} as {datatype} "
                                f"({first_line(exc)})") from None


def _tensor(spec: Any, binary: memoryview | None, offset: int, where: str) -> tuple[Any, int]:
    """One request input as a float32 array, and the offset of the next binary input."""
    import numpy as np

    if not isinstance(spec, dict):
        raise RequestError(400, f"{where} must be an object with name, shape, datatype, data")
    datatype = spec.get("datatype")
    shape = spec.get("shape")
    if datatype not in _NUMERIC:
        raise RequestError(400, f"{where}: datatype {datatype!r} is not a numeric V2 datatype "
                                "(FP32, FP64, INT64, ...)")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise RequestError(400, f"{where}: shape must be a list of sizes, got {shape!r}")
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is None:
        if "data" not in spec:
            raise RequestError(400, f"{where} has no data")
        return _numbers(spec["data"], datatype, shape, where), offset
    if binary is None or offset + int(size) > len(binary):
        raise RequestError(400, f"{where}: binary_data_size {size} runs past the request body")
    dtype = np.dtype(loadedmod.NUMPY_DTYPES[datatype]).newbyteorder("<")
    try:
        raw = np.frombuffer(binary[offset:offset + int(size)], dtype=dtype)
    except ValueError as exc:
        raise RequestError(400, f"{where}: {first_line(exc)}") from None
    return _numbers(raw, datatype, shape, where), offset + int(size)


def _rows_from_inputs(model: loadedmod.LoadedModel, inputs: Any,
                      binary: memoryview | None) -> Any:
    """The request's inputs as one 2-D float32 array of feature rows."""
    import numpy as np

    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "the request has no inputs: send {\"inputs\": [{\"name\": ..., "
                                "\"shape\": [rows, features], \"datatype\": \"FP32\", "
                                "\"data\": [...]}]}")
    expected = [t.name for t in model.inputs]
    offset = 0
    tensors: dict[str, Any] = {}
    for i, spec in enumerate(inputs):
        name = spec.get("name") if isinstance(spec, dict) else None
        tensors[str(name)], offset = _tensor(spec, binary, offset, f"input {name or i}")
    if model.columns is not None and len(tensors) == len(expected) and set(tensors) == set(
            expected):
        columns = [tensors[c].reshape(-1) for c in expected]
        if len({len(c) for c in columns}) != 1:
            raise RequestError(400, "the column inputs have different lengths")
        rows = np.stack(columns, axis=1)
    elif len(tensors) == 1 and (model.columns is not None or next(iter(tensors)) in expected):
        rows = next(iter(tensors.values()))
    else:
        raise RequestError(400, f"inputs {sorted(tensors)} do not match the model's "
                                f"{expected} (GET /v2/models/{model.name} lists them)")
    if rows.ndim != 2 or rows.shape[1] != model.n_features:
        raise RequestError(400, f"input shape {list(rows.shape)} does not match "
                                f"[-1, {model.n_features}]: send rows of {model.n_features} "
                                "features" + (f" ({', '.join(model.features[:3])}, ...)"
                                              if model.features else ""))
    return rows


def _rows_from_mlflow(model: loadedmod.LoadedModel, body: Any) -> Any:
    """MLflow's scoring formats (inputs / instances / dataframe_split / dataframe_records)."""
    import numpy as np

    order = model.columns or model.features
    if not isinstance(body, dict):
        raise RequestError(400, "send a JSON object: {\"inputs\": [[...], ...]}, "
                                "{\"dataframe_split\": ...} or {\"dataframe_records\": ...}")
    try:
        if "inputs" in body or "instances" in body:
            rows = np.asarray(body.get("inputs", body.get("instances")), dtype=np.float32)
            if rows.ndim == 1:
                rows = rows.reshape(1, -1)
        elif "dataframe_split" in body:
            split = body["dataframe_split"]
            rows = np.asarray(split["data"], dtype=np.float32)
            columns = split.get("columns")
            if columns and order and list(columns) != list(order):
                index = {str(c): i for i, c in enumerate(columns)}
                missing = [c for c in order if c not in index]
                if missing:
                    raise RequestError(400, f"dataframe_split lacks the columns {missing[:5]}")
                rows = rows[:, [index[c] for c in order]]
        elif "dataframe_records" in body:
            records = body["dataframe_records"]
            names = order or list(records[0])
            rows = np.asarray([[r[c] for c in names] for r in records], dtype=np.float32)
        else:
            raise RequestError(400, "expected one of inputs, instances, dataframe_split, "
                                    f"dataframe_records; got {sorted(body)[:5]}")
    except RequestError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise RequestError(400, f"malformed request: {first_line(exc)}") from None
    if rows.ndim != 2 or rows.shape[1] != model.n_features:
        raise RequestError(400, f"input shape {list(rows.shape)} does not match "
                                f"[-1, {model.n_features}]")
    return rows


# --- responses -----------------------------------------------------------------------------


def _outputs(model: loadedmod.LoadedModel, out: Any) -> dict[str, tuple[str, Any, list[str]]]:
    """Output name -> (datatype, numpy array or list of strings, shape)."""
    first = model.outputs[0]
    if model.classifier:
        labels = model.labels or []
        picks = out.argmax(axis=1).tolist()
        return {"probabilities": (first.datatype, out, list(out.shape)),
                "label": ("BYTES", [labels[i] for i in picks], [len(picks)])}
    return {first.name: (first.datatype, out, list(out.shape))}


def _encode_bytes(values: list[str]) -> bytes:
    parts = []
    for value in values:
        raw = value.encode()
        parts.append(struct.pack("<I", len(raw)) + raw)
    return b"".join(parts)


def _infer_response(model: loadedmod.LoadedModel, out: Any, request: dict[str, Any]) -> Response:
    produced = _outputs(model, out)
    wanted = request.get("outputs")
    all_binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    selected: list[tuple[str, bool]] = []
    if wanted:
        for spec in wanted:
            name = spec.get("name") if isinstance(spec, dict) else None
            if name not in produced:
                raise RequestError(400, f"unknown output {name!r}; the model's outputs are "
                                        f"{sorted(produced)}")
            params = spec.get("parameters") or {}
            selected.append((name, bool(params.get("binary_data", all_binary))))
    else:
        selected = [(name, all_binary) for name in produced]
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    params = {t.name: t.parameters for t in model.outputs if t.parameters}
    for name, binary in selected:
        datatype, data, shape = produced[name]
        tensor: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype}
        extra = dict(params.get(name) or {})
        if binary:
            if datatype == "BYTES":
                raw = _encode_bytes(data)
            else:
                raw = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
            chunks.append(raw)
            extra["binary_data_size"] = len(raw)
        else:
            tensor["data"] = data if isinstance(data, list) else data.ravel().tolist()
        if extra:
            tensor["parameters"] = extra
        tensors.append(tensor)
    body = {"model_name": model.name, "model_version": model.version,
            "id": str(request.get("id") or uuid.uuid4()), "outputs": tensors}
    if not chunks:
        return _json(body)
    header = json.dumps(body, separators=(",", ":")).encode()
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


# --- the app ------------------------------------------------------------------------------


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Handler) -> Handler:
    """Answer ``RequestError`` / ``MlkubeError`` / anything else as ``{"error": ...}``."""
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as exc:
            return _error(exc.status, str(exc))
        except MlkubeError as exc:
            return _error(400, str(exc))
        except Exception as exc:  # a bug or a model failing at predict time
            traceback.print_exc(file=sys.stderr)
            return _error(500, f"{type(exc).__name__}: {first_line(exc)}")

    guarded.__name__ = handler.__name__
    return guarded


async def _json_body(request: Request) -> tuple[Any, memoryview | None]:
    """The request's JSON, and the binary part that follows it (Triton's tensor extension)."""
    body = await request.body()
    binary = None
    header = request.headers.get(BINARY_HEADER)
    if header is not None:
        try:
            length = int(header)
        except ValueError:
            raise RequestError(400, f"{BINARY_HEADER} is not a number: {header!r}") from None
        binary = memoryview(body)[length:]
        body = body[:length]
    try:
        return json.loads(body) if body else {}, binary
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the request body is not JSON: {first_line(exc)}") from None


class Endpoints:
    """The request handlers, over one ``Repository``."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    async def _predict(self, model: loadedmod.LoadedModel, rows: Any) -> Any:
        self.repo.metrics.batch.observe((model.name,), rows.shape[0])
        if rows.shape[0] <= INLINE_ROWS:
            return model.predict(rows)
        return await in_thread(model.predict, rows)

    async def infer(self, request: Request) -> Response:
        """``POST /v2/models/{name}[/versions/{version}]/infer``."""
        params = request.path_params
        model = self.repo.model(params["name"], params.get("version"))
        body, binary = await _json_body(request)
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object with inputs")
        rows = _rows_from_inputs(model, body.get("inputs"), binary)
        return _infer_response(model, await self._predict(model, rows), body)

    async def invocations(self, request: Request) -> Response:
        """MLflow's ``POST /invocations``: ``{"predictions": ...}`` from the default model."""
        if self.repo.default is None:
            raise RequestError(503, "no model is loaded yet")
        model = self.repo.model(self.repo.default)
        content_type = request.headers.get("content-type", JSON)
        if "json" not in content_type:
            raise RequestError(415, f"content type {content_type} is not supported; send "
                                    "application/json")
        body, _ = await _json_body(request)
        out = await self._predict(model, _rows_from_mlflow(model, body))
        return _json({"predictions": out.tolist()})

    async def ping(self, request: Request) -> Response:
        """MLflow's ``GET /ping``: 200 once the default model serves."""
        ready = self.repo.default is not None and self.repo.default in self.repo.models
        return Response(b"\n" if ready else b"not ready\n", status_code=200 if ready else 503,
                        media_type="text/plain")

    async def server_metadata(self, request: Request) -> Response:
        """``GET /v2``."""
        return _json({"name": "mlkube", "version": __version__,
                      "extensions": ["model_repository", "binary_tensor_data"]})

    async def live(self, request: Request) -> Response:
        """``GET /v2/health/live``: the process answers."""
        return _json({"live": True})

    async def ready(self, request: Request) -> Response:
        """``GET /v2/health/ready``: 200 once a model is loaded and verified, else 503."""
        if self.repo.models:
            return _json({"ready": True})
        loading = ", ".join(f"{n} version {v}" for n, (v, _) in self.repo.loading.items())
        return _json({"ready": False,
                      "error": f"loading {loading}" if loading else "no model is loaded"}, 503)

    async def model_metadata(self, request: Request) -> Response:
        """``GET /v2/models/{name}[/versions/{version}]``."""
        params = request.path_params
        return _json(self.repo.model(params["name"], params.get("version")).metadata())

    async def model_ready(self, request: Request) -> Response:
        """``GET /v2/models/{name}[/versions/{version}]/ready``: 200, 503 loading, 404."""
        params = request.path_params
        model = self.repo.model(params["name"], params.get("version"))
        return _json({"name": model.name, "version": model.version, "ready": True})

    async def index(self, request: Request) -> Response:
        """``GET|POST /v2/repository/index`` (POST ``{"ready": true}``: ready ones only)."""
        entries = self.repo.index()
        if request.method == "POST":
            body, _ = await _json_body(request)
            if isinstance(body, dict) and body.get("ready"):
                entries = [e for e in entries if e["state"] == "READY"]
        return _json(entries)

    async def load(self, request: Request) -> Response:
        """``POST /v2/repository/models/{name}/load``: hot swap to ``parameters.model_uri``."""
        name = request.path_params["name"]
        body, _ = await _json_body(request)
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
        return _json(await self.repo.load(name, str(version), uri))

    async def unload(self, request: Request) -> Response:
        """``POST /v2/repository/models/{name}/unload``."""
        self.repo.unload(request.path_params["name"])
        return _json({"name": request.path_params["name"], "unloaded": True})

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
            Route(f"{versioned}/ready", _guarded(self.model_ready), methods=get),
            Route("/v2/repository/index", _guarded(self.index), methods=["GET", "POST"]),
            Route("/v2/repository/models/{name}/load", _guarded(self.load), methods=post),
            Route("/v2/repository/models/{name}/unload", _guarded(self.unload), methods=post),
        ]


def _uri_version(uri: str) -> str | None:
    """VERSION of ``models:/NAME/VERSION``."""
    parts = uri.removeprefix("models:/").strip("/").split("/") if uri.startswith(
        "models:/") else []
    return parts[1] if len(parts) == 2 and parts[1].isdigit() else None


def create_app(repository: Repository | None = None,
               initial: tuple[str, str, str] | None = None,
               on_initial_failure: Callable[[MlkubeError], None] | None = None) -> Any:
    """The ASGI app; ``initial`` = (model_uri, name, version) is loaded once the server is up.

    Until it is loaded and verified, readiness answers 503. If it fails, ``on_initial_failure``
    gets the error (the server then stops, see ``server.py``).
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
        yield
        if task is not None and not task.done():
            task.cancel()

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        return _error(status, f"{request.method} {request.url.path}: "
                              f"{getattr(exc, 'detail', 'error')}")

    app = Starlette(routes=Endpoints(repo).routes(), lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})
    app.state.repository = repo
    return Measured(app, repo.metrics)


class Measured:
    """ASGI wrapper counting every HTTP request by route template and status, with latency."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.repository: Repository = app.state.repository

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.requests.inc((endpoint, str(status)))
            self.metrics.latency.observe((endpoint,), time.perf_counter() - started)
