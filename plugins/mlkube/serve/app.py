"""The serving app: Open Inference Protocol (V2) over REST, plus MLflow's scoring endpoints.

One slot per model name holds a verified ``LoadedModel``. A request takes the slot's model
once, when it starts, and uses that object to the end, so a hot swap (``POST
/v2/repository/models/{name}/load``) never disturbs a request in flight: the new version is
loaded and verified in a worker thread while the old one answers, then the slot's reference
is replaced in one step on the event loop. A version that fails to load or verify is refused
and the old one goes on serving. Verifying means predicting the model's input example, a
1-row batch and a full batch of ``verify_batch`` rows (the load request's
``parameters.verify_batch``, else the server's ``--verify-batch``, default
``loaded.VERIFY_BATCH``), see :mod:`mlkube.serve.loaded`.

Endpoints (the V2 REST API as KServe and Triton define it): ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}
[/versions/{v}]`` (metadata), ``.../ready``, ``POST .../infer`` (JSON, or Triton's binary
tensor extension), the model-repository extension (``/v2/repository/index``,
``/v2/repository/models/{name}/load|unload``); MLflow's ``POST /invocations`` and ``GET
/ping``; Prometheus ``GET /metrics``. Errors are ``{"error": "<one line>"}``. The wire format
(parsing inputs, encoding outputs) is :mod:`mlkube.serve.protocol`.

Predictions run on the event loop's thread for batches up to ``INLINE_ROWS`` rows (a
thread hop costs more than the tiny MLP's forward pass), in a worker thread above that.

Live statistics (:mod:`mlkube.serve.stats`, the repository's ``monitor``): every answered
request's rows and predictions are counted per model version, on ``/metrics`` and, with a
stats directory, in windows written to it.

Slots beside the main model (:mod:`mlkube.serve.live`): the load request's ``parameters.role``
``canary`` or ``shadow`` (with ``parameters.share``, 0-1) loads and verifies a version aside
exactly as the main load does, then puts it in that slot; it must take the main model's inputs
and answer its outputs. A canary answers ``share`` of the requests that name no version; a
shadow gets ``share`` of the requests the main model answered, mirrored after the answer was
sent, off the request path. ``POST /v2/repository/models/{name}/promote`` (``parameters.role``,
default ``canary``) makes that slot's version the main model in one step, as a swap does;
``.../unload`` with ``parameters.role`` empties only that slot. ``GET /v2/models/{name}/live``:
each slot's version, requests, errors, p50/p99 latency, and the shadow's agreement with the
main model (also on ``/metrics``). Every answer names the version that gave it
(``model_version``).

Limits (``Limits``): a request body over ``max_body_bytes`` is answered 413 without being
parsed, from its Content-Length before a byte of it is read, or as soon as a chunked body
passes the limit; a body that stalls for ``idle_timeout`` seconds is answered 408. Both close
the connection. (The server closes connections that send no request for ``idle_timeout``
seconds, see :mod:`mlkube.serve.server`.)
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
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
from mlkube.serve.metrics import CONTENT_TYPE, Metrics
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
from mlkube.serve.server import IDLE_TIMEOUT, MAX_BODY_BYTES
from mlkube.serve.stats import Monitor

INLINE_ROWS = 1024
# How long a body over the limit is read and thrown away before the 413, so that a client
# that sends the whole body before reading (no "Expect: 100-continue") gets the 413, not a
# reset connection.
DRAIN_SECONDS = 5.0


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
class Slot:
    """A version beside a name's main model: a canary or a shadow (see the module doc)."""

    role: str
    model: loadedmod.LoadedModel
    share: float
    stats: livemod.SlotStats
    split: livemod.Split


def _compatible(main: loadedmod.LoadedModel, new: loadedmod.LoadedModel) -> str | None:
    """Why ``new`` cannot stand beside ``main`` (its clients' contract), or ``None``."""
    if new.n_features != main.n_features:
        return f"it takes {new.n_features} features, the main version {main.n_features}"
    mine = [t.metadata() for t in new.outputs]
    theirs = [t.metadata() for t in main.outputs]
    if mine != theirs:
        return f"its outputs {mine} differ from the main version's {theirs}"
    return None


@dataclass
class Repository:
    """The model slots, the loads in progress and the last refused load of each name."""

    metrics: Metrics = field(default_factory=Metrics)
    fast_path: bool = True
    verify_batch: int = loadedmod.VERIFY_BATCH  # a load's full batch unless it names one
    models: dict[str, loadedmod.LoadedModel] = field(default_factory=dict)
    loading: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (version, uri)
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (version, why)
    default: str | None = None  # what /invocations and /ping answer for
    monitor: Monitor = field(default_factory=Monitor)  # live statistics, see serve.stats
    slots: dict[str, dict[str, Slot]] = field(default_factory=dict)  # name -> role -> slot
    main_stats: dict[str, livemod.SlotStats] = field(default_factory=dict)  # name -> its main's
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics.sections.append(self.monitor.render)
        self.metrics.sections.append(self.render_live)
        self.mirror = livemod.Mirror(log)

    def slot(self, name: str, role: str) -> Slot | None:
        """The ``role`` slot of ``name`` (``None``: empty)."""
        return self.slots.get(name, {}).get(role)

    def model(self, name: str, version: str | None = None) -> loadedmod.LoadedModel:
        """The model serving ``name`` (at ``version``), or a 404/503 ``RequestError``."""
        found = self.models.get(name)
        if found is not None and (version is None or version == found.version):
            return found
        for slot in self.slots.get(name, {}).values():
            if version == slot.model.version:
                return slot.model
        if name in self.loading and (found is None or version == self.loading[name][0]):
            raise RequestError(503, f"model {name} version {self.loading[name][0]} is loading")
        if found is not None:
            raise RequestError(404, f"model {name} version {version} is not loaded "
                                    f"(version {found.version} is)")
        raise RequestError(404, f"model {name} is not loaded")

    async def load(self, name: str, version: str, model_uri: str,
                   verify_batch: int | None = None, role: str | None = None,
                   share: float = 1.0) -> dict[str, Any]:
        """Load and verify ``model_uri`` aside, then make it ``name``'s model in one step.

        ``verify_batch``: the full batch it is verified on (``None``: the repository's). The
        version already serving is kept as it is if it was verified on a batch as large.
        ``role`` (``canary`` or ``shadow``): put it in that slot beside the main model instead,
        taking ``share`` of the requests.
        """
        batch = self.verify_batch if verify_batch is None else verify_batch
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if role is not None:
                return await self._load_slot(name, version, model_uri, batch, role, share)
            old = self.models.get(name)
            if old is not None and old.version == version and old.model_uri == model_uri \
                    and old.verified_rows >= batch:
                return {"name": name, "version": version, "model_uri": model_uri,
                        "replaced_version": "", "unchanged": True,
                        "verified_batches": old.verified_batches}
            self.loading[name] = (version, model_uri)
            try:
                new = await in_thread(self._load, model_uri, name, version, batch)
            except MlkubeError as exc:
                self.refused[name] = (version, str(exc))
                self.metrics.loads.inc((name, "failed"))
                keeps = f"; version {old.version} keeps serving" if old is not None else ""
                log(f"refused {name} version {version}: {exc}{keeps}")
                raise
            finally:
                self.loading.pop(name, None)
            self.models[name] = new  # the swap: requests from here on get the new object
            self.main_stats[name] = livemod.SlotStats(new.version)
            self.monitor.attach(new, log)
            if self.default is None:
                self.default = name
            self.refused.pop(name, None)
            self.metrics.loads.inc((name, "loaded"))
            if old is not None:
                self.metrics.serving.remove((name, old.version))
            self.metrics.serving.set((name, new.version), 1)
            path = "direct torch call" if new.fast_path else "pyfunc"
            log(f"{name} version {version} ({model_uri}) ready: verified on "
                f"{new.verified()} in {new.load_seconds:.1f} s, predicting by {path}"
                + (f"; replaced version {old.version}" if old is not None else ""))
            return {"name": name, "version": new.version, "model_uri": model_uri,
                    "replaced_version": old.version if old is not None else "",
                    "load_seconds": new.load_seconds, "fast_path": new.fast_path,
                    "verify_batch": batch, "verified_batches": new.verified_batches}

    def _load(self, model_uri: str, name: str, version: str,
              verify_batch: int) -> loadedmod.LoadedModel:
        return loadedmod.load(model_uri, name=name, version=version, fast_path=self.fast_path,
                              verify_batch=verify_batch)

    async def _load_slot(self, name: str, version: str, model_uri: str, batch: int, role: str,
                         share: float) -> dict[str, Any]:
        """``load`` into the ``role`` slot (the name's lock held)."""
        main = self.models.get(name)
        if main is None:
            raise RequestError(409, f"model {name} has no main version to put a {role} beside; "
                                    "load it first (without parameters.role)")
        old = self.slot(name, role)
        if old is not None and old.model.version == version and \
                old.model.model_uri == model_uri and old.model.verified_rows >= batch:
            old.share = share
            old.split = livemod.Split(share)
            return {"name": name, "version": version, "model_uri": model_uri, "role": role,
                    "share": share, "unchanged": True,
                    "verified_batches": old.model.verified_batches}
        try:
            new = await in_thread(self._load, model_uri, name, version, batch)
            why = _compatible(main, new)
            if why is not None:
                raise MlkubeError(f"model {name} version {version} cannot be the {role} of "
                                  f"version {main.version}: {why}")
        except MlkubeError as exc:
            self.metrics.loads.inc((name, "failed"))
            log(f"refused {name} version {version} as {role}: {exc}")
            raise
        self.slots.setdefault(name, {})[role] = Slot(role, new, share,
                                                     livemod.SlotStats(new.version),
                                                     livemod.Split(share))
        self.metrics.loads.inc((name, "loaded"))
        log(f"{name} version {version} ({model_uri}) ready as the {role} of version "
            f"{main.version}, taking {share:.0%} of the requests: verified on {new.verified()}"
            + (f"; replaced {role} version {old.model.version}" if old is not None else ""))
        return {"name": name, "version": version, "model_uri": model_uri, "role": role,
                "share": share, "replaced_version": old.model.version if old else "",
                "load_seconds": new.load_seconds, "verify_batch": batch,
                "verified_batches": new.verified_batches}

    def unload_slot(self, name: str, role: str) -> str:
        """Empty the ``role`` slot of ``name``; the version it held."""
        slot = self.slots.get(name, {}).pop(role, None)
        if slot is None:
            raise RequestError(404, f"model {name} has no {role}")
        log(f"unloaded the {role} of {name}, version {slot.model.version}")
        return slot.model.version

    async def promote(self, name: str, role: str) -> dict[str, Any]:
        """Make the ``role`` slot's version ``name``'s main model, in one step (a swap)."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            slot = self.slot(name, role)
            if slot is None:
                raise RequestError(404, f"model {name} has no {role} to promote")
            old = self.models.get(name)
            del self.slots[name][role]
            new = slot.model
            self.models[name] = new
            self.main_stats[name] = livemod.SlotStats(new.version)
            self.monitor.attach(new, log)
            if old is not None:
                self.metrics.serving.remove((name, old.version))
            self.metrics.serving.set((name, new.version), 1)
            log(f"promoted the {role} of {name}: version {new.version} serves"
                + (f", replacing version {old.version}" if old is not None else ""))
            return {"name": name, "version": new.version, "role": role,
                    "replaced_version": old.version if old is not None else ""}

    def live(self, name: str) -> dict[str, Any]:
        """The live numbers of ``name``'s main model and of its slots."""
        main = self.models.get(name)
        if main is None:
            raise RequestError(404, f"model {name} is not loaded")
        stats = self.main_stats.get(name) or livemod.SlotStats(main.version)
        found: dict[str, Any] = {"name": name, "main": stats.document("main")}
        for role in livemod.ROLES:
            slot = self.slot(name, role)
            found[role] = None if slot is None else {**slot.stats.document(role),
                                                     "share": slot.share}
        found["mirror_pending"] = self.mirror.pending()
        return found

    def render_live(self) -> list[str]:
        """The slots' live numbers in the exposition format."""
        from mlkube.serve.metrics import Gauge

        requests = Gauge("mlkube_serve_slot_requests", "Requests answered per model slot "
                         "(main, canary; shadow: mirrored) since its version was loaded.",
                         ("model", "role", "version"))
        errors = Gauge("mlkube_serve_slot_errors", "Requests the slot's model failed (5xx).",
                       ("model", "role", "version"))
        p99 = Gauge("mlkube_serve_slot_p99_seconds", "p99 latency of the slot's model over its "
                    "last requests.", ("model", "role", "version"))
        agreement = Gauge("mlkube_serve_shadow_agreement", "Share of mirrored rows where the "
                          "shadow predicted the main model's label.", ("model", "version"))
        diff = Gauge("mlkube_serve_shadow_mean_abs_diff", "Mean absolute difference of the "
                     "shadow's predictions from the main model's.", ("model", "version"))
        dropped = Gauge("mlkube_serve_shadow_dropped", "Mirrors dropped for a full queue.",
                        ("model", "version"))
        for name in sorted(self.models):
            entries = [("main", self.main_stats.get(name))] + [
                (role, slot.stats if (slot := self.slot(name, role)) else None)
                for role in livemod.ROLES]
            for role, stats in entries:
                if stats is None:
                    continue
                doc = stats.document(role)
                labels = (name, role, stats.version)
                requests.set(labels, doc["requests"])
                errors.set(labels, doc["errors"])
                if doc["p99_ms"] is not None:
                    p99.set(labels, doc["p99_ms"] / 1000)
                if role == "shadow":
                    if doc["agreement"] is not None:
                        agreement.set((name, stats.version), doc["agreement"])
                    if doc["mean_abs_diff"] is not None:
                        diff.set((name, stats.version), doc["mean_abs_diff"])
                    dropped.set((name, stats.version), doc["dropped"])
        lines: list[str] = []
        for metric in (requests, errors, p99, agreement, diff, dropped):
            if metric.series:
                lines += metric.render()
        return lines

    def unload(self, name: str) -> None:
        """Stop serving ``name``."""
        old = self.models.pop(name, None)
        if old is None:
            raise RequestError(404, f"model {name} is not loaded")
        self.slots.pop(name, None)
        self.main_stats.pop(name, None)
        self.metrics.serving.remove((name, old.version))
        self.monitor.detach(name)
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


# --- the app ------------------------------------------------------------------------------


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


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


async def _drain(receive: Any, seconds: float) -> None:
    """Read and drop the rest of a request body, for at most ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
    except TimeoutError:
        return


class Limits:
    """ASGI wrapper: a request body over ``max_body_bytes`` is answered 413 unparsed, and one
    that stalls for ``idle_timeout`` seconds 408; both close the connection.

    A Content-Length over the limit is answered before the body is read: at once if the
    client waits for "100 Continue", else after throwing away what arrives within
    ``DRAIN_SECONDS`` (a client that sends before it reads then sees the 413). A chunked body
    is counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app: Any, max_body_bytes: int, idle_timeout: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout

    def too_large(self, size: int | None) -> RequestError:
        """The 413 for a body of ``size`` bytes (``None``: a chunked body, not read to its end)."""
        what = f"is {size} bytes, over" if size is not None else "passed"
        return RequestError(413, f"the request body {what} this server's limit of "
                                 f"{self.max_body_bytes} bytes (--max-body-bytes): send fewer "
                                 "rows per request", close=True)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        declared = int(length) if length is not None and length.strip().isdigit() else None
        if declared is not None and declared > self.max_body_bytes:
            expect = (_header(scope, b"expect") or b"").lower()
            if expect != b"100-continue":
                await _drain(receive, DRAIN_SECONDS)
            error = self.too_large(declared)
            await error_response(error.status, str(error), close=True)(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Any) -> Any:
        """``receive`` that counts the body's bytes and times out a stalled body."""
        received = 0
        done = False

        async def limited() -> Any:
            nonlocal received, done
            if done:  # the body is in: what follows is the disconnect, which may take long
                return await receive()
            try:
                async with asyncio.timeout(self.idle_timeout):
                    message = await receive()
            except TimeoutError:
                raise RequestError(408, f"the request body stalled: no bytes for "
                                        f"{self.idle_timeout:g} s (--idle-timeout); send the "
                                        "whole body without pausing", close=True) from None
            if message["type"] != "http.request":
                done = True
                return message
            received += len(message.get("body", b""))
            done = not message.get("more_body", False)
            if received > self.max_body_bytes:
                if not done:
                    await _drain(receive, DRAIN_SECONDS)
                raise self.too_large(received if done else None)
            return message

        return limited


class Measured:
    """ASGI wrapper counting every HTTP request by route template and status, with latency."""

    def __init__(self, app: Any, repository: Repository) -> None:
        self.app = app
        self.metrics = repository.metrics
        self.repository = repository

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
