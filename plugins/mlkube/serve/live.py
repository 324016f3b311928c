"""Live numbers of the model slots beside the main one: a canary and a shadow (issue 17, items 4
and 5).

Per model name the runtime may hold, besides its main model, a ``canary`` (it answers a share
of the requests without a version in their path, chosen by a deterministic counter: exactly
``share`` of them, spread evenly) and a ``shadow`` (it never answers: a share of the requests
the main model answered is mirrored to it after the answer was sent, see :class:`Mirror`).

:class:`SlotStats` counts, per slot, requests, errors (answers 5xx from the model: it raised or
predicted non-finite values) and latency (the model's prediction and the answer's encoding, a
ring of the last ``LATENCY_RING`` requests, from which p50/p99 are read). A shadow's stats also
hold its agreement with the main model on the rows both predicted: the share of rows with the
same label (a classifier) or the mean absolute difference of the predictions (a regression).
Everything is bounded by the ring, never by traffic.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

LATENCY_RING = 4096  # latencies kept per slot (the p99 is read from these)
MIRROR_QUEUE = 64  # mirrored requests waiting for the shadow at most; more are dropped
ROLES = ("canary", "shadow")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class SlotStats:
    """One slot's live numbers since its version was loaded (thread-safe)."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.requests = 0
        self.errors = 0
        self.rows = 0
        self.latencies: list[float] = []  # seconds, a ring
        self._next = 0
        self.compared_rows = 0  # shadow: rows predicted by both it and the main model
        self.agreeing_rows = 0  # ... with the same label (a classifier)
        self.abs_diff_sum = 0.0  # ... sum of per-row mean |shadow - main| (a regression)
        self.kind: str | None = None  # "labels" or "values" once compared
        self.dropped = 0  # shadow: mirrors dropped (its queue was full)
        self._lock = threading.Lock()

    def observe(self, seconds: float, rows: int, error: bool) -> None:
        """Count one request of ``rows`` rows that took ``seconds`` (``error``: answered 5xx)."""
        with self._lock:
            self.requests += 1
            self.rows += rows
            self.errors += int(error)
            if len(self.latencies) < LATENCY_RING:
                self.latencies.append(seconds)
            else:
                self.latencies[self._next] = seconds
                self._next = (self._next + 1) % LATENCY_RING

    def compare(self, main_out: Any, shadow_out: Any, classifier: bool) -> None:
        """Count how the shadow's predictions agree with the main model's."""
        import numpy as np

        main = np.asarray(main_out, dtype=np.float64).reshape(len(main_out), -1)
        shadow = np.asarray(shadow_out, dtype=np.float64).reshape(len(shadow_out), -1)
        if not np.isfinite(shadow).all():
            raise ValueError("the shadow predicted non-finite values")
        if classifier and main.shape == shadow.shape and main.shape[1] > 1:
            same = int((main.argmax(axis=1) == shadow.argmax(axis=1)).sum())
            with self._lock:
                self.kind = "labels"
                self.compared_rows += len(main)
                self.agreeing_rows += same
            return
        if main.shape != shadow.shape:
            raise ValueError(f"the shadow answered shape {list(shadow.shape)}, the main model "
                             f"{list(main.shape)}")
        diff = float(np.abs(shadow - main).mean(axis=1).sum())
        with self._lock:
            self.kind = "values"
            self.compared_rows += len(main)
            self.abs_diff_sum += diff

    def drop(self) -> None:
        """Count a mirror dropped for a full queue."""
        with self._lock:
            self.dropped += 1

    def document(self, role: str) -> dict[str, Any]:
        """The JSON ``GET /v2/models/{name}/live`` shows for this slot."""
        with self._lock:
            found: dict[str, Any] = {
                "version": self.version, "requests": self.requests, "rows": self.rows,
                "errors": self.errors,
                "error_rate": self.errors / self.requests if self.requests else 0.0,
                "p50_ms": round(_quantile(self.latencies, 0.50) * 1000, 3)
                if self.latencies else None,
                "p99_ms": round(_quantile(self.latencies, 0.99) * 1000, 3)
                if self.latencies else None}
            if role == "shadow":
                found["dropped"] = self.dropped
                found["compared_rows"] = self.compared_rows
                found["agreement"] = (self.agreeing_rows / self.compared_rows
                                      if self.kind == "labels" and self.compared_rows else None)
                found["mean_abs_diff"] = (self.abs_diff_sum / self.compared_rows
                                          if self.kind == "values" and self.compared_rows
                                          else None)
            return found


class Split:
    """Which requests a canary answers: exactly ``share`` of them, spread evenly (a counter,
    not a coin: a window of N requests gives the canary ``share * N`` of them, +-1)."""

    def __init__(self, share: float) -> None:
        self.share = share
        self._credit = 0.0

    def take(self) -> bool:
        """Whether this request goes to the canary."""
        self._credit += self.share
        if self._credit >= 1.0 - 1e-9:
            self._credit -= 1.0
            return True
        return False


class Mirror:
    """The shadow's requests, off the request path: one daemon thread predicts what a bounded
    queue holds; a full queue drops the mirror (counted), so a slow or stuck shadow costs the
    clients one queue append per mirrored request, never their answer or its latency."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self._queue: queue.Queue[tuple[Any, SlotStats, Any, Any, bool] | None] = queue.Queue(
            MIRROR_QUEUE)
        self._thread: threading.Thread | None = None
        self._failed_versions: set[str] = set()

    def submit(self, shadow: Any, stats: SlotStats, rows: Any, main_out: Any,
               classifier: bool) -> None:
        """Queue ``rows`` (answered ``main_out`` by the main model) for the shadow."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="mlkube-serve-shadow",
                                            daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait((shadow, stats, rows, main_out, classifier))
        except queue.Full:
            stats.drop()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            shadow, stats, rows, main_out, classifier = item
            started = time.perf_counter()
            try:
                out = shadow.predict(rows)
                stats.compare(main_out, out, classifier)
            except Exception as exc:  # the shadow's own failure: counted, never the client's
                stats.observe(time.perf_counter() - started, len(rows), True)
                if shadow.version not in self._failed_versions:
                    self._failed_versions.add(shadow.version)
                    self.log(f"shadow {shadow.name} version {shadow.version} failed on mirrored "
                             f"rows ({type(exc).__name__}: {str(exc)[:200]}); counted as errors")
                continue
            stats.observe(time.perf_counter() - started, len(rows), False)

    def pending(self) -> int:
        """Mirrors waiting for the shadow."""
        return self._queue.qsize()
