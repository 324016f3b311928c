"""The runtime's models: what serves each name, its loads, and the slots beside it.

One slot per model name holds a verified ``LoadedModel``. A request takes the slot's model
once, when it starts, and uses that object to the end, so a hot swap (``POST
/v2/repository/models/{name}/load``) never disturbs a request in flight: the new version is
loaded and verified in a worker thread while the old one answers, then the slot's reference
is replaced in one step on the event loop. A version that fails to load or verify is refused
and the old one goes on serving. Verifying means predicting the model's input example, a
1-row batch and a full batch of ``verify_batch`` rows (the load request's
``parameters.verify_batch``, else the server's ``--verify-batch``, default
``loaded.VERIFY_BATCH``), see :mod:`mlkube.serve.loaded`.

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

Live statistics (:mod:`mlkube.serve.stats`, the repository's ``monitor``): every answered
request's rows and predictions are counted per model version, on ``/metrics`` and, with a
stats directory, in windows written to it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlkube.errors import MlkubeError
from mlkube.serve import live as livemod
from mlkube.serve import loaded as loadedmod
from mlkube.serve.metrics import Metrics
from mlkube.serve.protocol import RequestError
from mlkube.serve.stats import Monitor


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
