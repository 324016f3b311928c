"""Live statistics of what the runtime is asked and answers (issue 17, item 1).

Per served model version, in memory bounded by its features and bins (never by traffic):

- per input feature: values seen (``count``), missing values (NaN or ±Infinity in requests the
  runtime refused for them: a request holding one is answered 400 and never predicted), mean
  and variance, and a histogram on the training profile's own edges (the model's metadata
  ``profile``, written by prepare-data; bin rule: :mod:`mlkube.profile`);
- the predictions: rows per class label (a classifier), or a histogram on the profile
  target's edges (a regression).

Cost on the request path: no numpy call; the request's rows and outputs are kept by reference
in a list. Every ``FOLD_REQUESTS`` requests or ``FOLD_ROWS`` rows (and before a scrape or a
window) the list is folded with a few vectorised numpy operations over the whole batch, in
buffers allocated once per version (about 1.3 MB for 30 features): the rows are joined
(float32, as the wire format gives them) and transposed, one row per feature; moments are
float64 sums of the values less the profile's means, in chunks of ``CHUNK`` rows; bins are
counted by sorting each feature's values in place and finding each inner edge in them (one
``searchsorted`` per feature; the edges rounded up to float32, which for float32 values is
exactly the profile's rule on their float64 values); predictions by one ``argmax`` and
``bincount`` (or the target's edges). A request of more rows than the buffers hold, of values
other than float32, or of outputs of another shape (which count no prediction) is folded by
itself, in float64. Everything runs on the event loop's thread, as the other metrics do: no
lock.

``/metrics`` reports the totals since the version was loaded. With a stats directory, a
window (the statistics since the last one) is written every ``every_requests`` requests or
``every_seconds`` seconds, whichever comes first, and when a version stops serving (a swap, an
unload, the server's exit); a window with no request is not written. Its JSON is written in a
background thread, atomically (a temporary file renamed), to
``<stats dir>/<model name as a file name>/<version>/window-<end: %Y%m%dT%H%M%S%fZ>-<host>.json``
(``<host>``: the host name, a pod's name on a cluster, as a file name: the replicas of one
Deployment write to one shared directory, and two of them may end a window in the same
microsecond; the names still sort by time first, and match ``window-*.json``)::

    {"version": 1, "model": "mlkube-demo", "model_version": "3",
     "start": "2026-12-06T10:00:00.000000Z", "end": "2026-12-06T10:01:00.000000Z",
     "requests": 812, "rows": 5040,
     "features": {"mean_radius": {"edges": [...], "counts": [...], "missing": 0,
                                  "count": 5040, "mean": 14.1, "var": 12.2}, ...},
     "predictions": {"kind": "classes", "labels": [0, 1], "counts": [2011, 3029]}}

(``"predictions": {"kind": "values", "edges": [...], "counts": [...]}`` for a regression.) A
model logged without a profile gets ``"edges": [], "counts": []`` for its features (and its
regression predictions), and the runtime says so once in its log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlkube.serve.metrics import Counter, Gauge

WINDOW_VERSION = 1
EVERY_REQUESTS = 1000  # a window at least every this many requests ...
EVERY_SECONDS = 60.0  # ... or this many seconds, whichever comes first
FOLD_REQUESTS = 1024  # requests kept unfolded at most ...
FOLD_ROWS = 4096  # ... and rows (the fold's buffers' size)
CHUNK = 1024  # rows a fold's moments take at a time (its float64 scratch stays in cache)


def safe_name(model_name: str) -> str:
    """The model name as a file name (the local target's rule)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)


def host_name() -> str:
    """This runtime's host name as a file name part (a pod's name on a cluster: ``HOSTNAME``)."""
    return safe_name(os.environ.get("HOSTNAME") or socket.gethostname() or "host")[:63]


def window_name(end: str, host: str) -> str:
    """The file name of a window that ends at ``end`` (its ISO text), written on ``host``."""
    return f"window-{re.sub(r'[-:.]', '', end)}-{host}.json"


def ceil_float32(values: Any) -> Any:
    """The least float32 at or above each float64 value: for a float32 ``x``, ``x >= e`` holds
    exactly when ``x >= ceil_float32(e)`` (the profile's rule, compared without a float64 copy
    of the values); beyond float32's range it is ±infinity, which keeps the rule too."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        found = values.astype(np.float32)
    below = found.astype(np.float64) < values
    found[below] = np.nextafter(found[below], np.float32(np.inf))
    return found


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Sums:
    """Running sums of one span (since load, or since the last window)."""

    def __init__(self, n_features: int, n_bins: int, n_predictions: int) -> None:
        import numpy as np

        self.requests = 0
        self.rows = 0
        self.s1 = np.zeros(n_features)  # sum of (x - shift)
        self.s2 = np.zeros(n_features)  # sum of (x - shift)^2
        self.bins = np.zeros((n_features, n_bins), dtype=np.int64)
        self.missing = np.zeros(n_features, dtype=np.int64)
        self.predictions = np.zeros(n_predictions, dtype=np.int64)

    def moments(self, shift: Any) -> tuple[Any, Any]:
        """Mean and (sample) variance per feature; 0 where there are too few values."""
        import numpy as np

        n = self.rows
        if n == 0:
            return np.zeros_like(self.s1), np.zeros_like(self.s1)
        mean = shift + self.s1 / n
        var = (self.s2 - self.s1 ** 2 / n) / (n - 1) if n > 1 else np.zeros_like(self.s1)
        return mean, np.maximum(var, 0.0)


class VersionStats:
    """The statistics of one loaded model version."""

    def __init__(self, model: Any, *, windows: bool) -> None:
        import numpy as np

        self.model = model
        self.name, self.version = model.name, model.version
        n = model.n_features
        names = model.features or model.columns or [str(i) for i in range(n)]
        self.features = [str(f) for f in names][:n] if len(names) >= n else \
            [str(i) for i in range(n)]
        profile = model.profile if isinstance(getattr(model, "profile", None), dict) else {}
        profiled = profile.get("features") or {}
        self.has_profile = bool(profiled)
        self.edges: list[list[float]] = [
            [float(e) for e in (profiled.get(f) or {}).get("edges") or []] for f in self.features]
        self.shift = np.array([float((profiled.get(f) or {}).get("mean", 0.0))
                               for f in self.features])
        self.shifted = self.has_profile  # else: the first batch's mean, at the first fold
        widths = [max(len(e) - 1, 0) for e in self.edges]
        self.n_bins = max(widths, default=0)
        self.widths = widths
        target = profile.get("target") or {}
        self.classifier = bool(model.classifier)
        if self.classifier:
            labels = target.get("labels") if target.get("kind") == "classes" else None
            if not labels or len(labels) != len(model.classes or []):
                labels = list(model.classes or [])
            self.labels: list[Any] = list(labels)
            self.prediction_edges: list[float] = []
            n_predictions = len(self.labels)
        else:
            self.labels = []
            self.prediction_edges = [float(e) for e in target.get("edges") or []] \
                if target.get("kind") == "values" else []
            n_predictions = max(len(self.prediction_edges) - 1, 0)
        # each binned feature's inner edges (e1 .. e(K-1)), for float64 values and for float32
        self.searches = [(i, np.array(e[1:-1])) for i, e in enumerate(self.edges) if len(e) > 2]
        self.searches32 = [(i, ceil_float32(inner)) for i, inner in self.searches]
        self.total = _Sums(n, self.n_bins, n_predictions)
        self.window = _Sums(n, self.n_bins, n_predictions) if windows else None
        self.window_start = _now()
        self.windows_written = 0
        # the requests waiting to be folded (their arrays, by reference) and the buffers a fold
        # copies them into, allocated at the first fold
        self.float32 = np.dtype(np.float32)
        self.pending: list[Any] = []
        self.pending_out: list[Any] = []
        self.pending_rows = 0
        self.out_tails = {(len(self.labels),)} if self.classifier else {(), (1,)}
        self.counts_predictions = bool(self.labels) if self.classifier \
            else bool(self.prediction_edges)
        self.by_rows: Any = None  # float32, rows by features: the pending rows
        self.buffer: Any = None  # float32, features by rows: the same, sorted by a fold
        self.scratch: Any = None  # float64, CHUNK rows by features: the values less the shift
        self.out_buffer: Any = None  # float64, rows by labels (or 1): the pending outputs

    # --- the request path ------------------------------------------------------------------

    def add(self, rows: Any, out: Any) -> None:
        """Count one answered request (its rows and outputs); folded later, in batches. No
        numpy call here: the arrays are kept by reference until the fold copies them."""
        self.total.requests += 1
        if self.window is not None:
            self.window.requests += 1
        n = rows.shape[0]
        shape = getattr(out, "shape", None)
        if rows.dtype != self.float32 or n > FOLD_ROWS or (self.counts_predictions and (
                shape is None or shape[0] != n or shape[1:] not in self.out_tails)):
            self._alone(rows, out)
            return
        if self.pending_rows + n > FOLD_ROWS:
            self.fold()
        self.pending.append(rows)
        self.pending_out.append(out)
        self.pending_rows += n
        if len(self.pending) >= FOLD_REQUESTS:
            self.fold()

    def _alone(self, rows: Any, out: Any) -> None:
        """Fold a request the buffers do not take (more rows than they hold, values other than
        float32, or outputs of another shape, which then count no prediction) by itself."""
        import numpy as np

        self.fold()
        out = np.asarray(out)
        fits = out.ndim >= 1 and out.shape[0] == rows.shape[0] and out.shape[1:] in self.out_tails
        outputs = (out if out.ndim == 2 else out[:, None]) if fits and self.counts_predictions \
            else None
        rows = np.array(rows, dtype=np.float64)
        self._fold(rows, rows.T.copy(), outputs)

    def refused(self, array: Any) -> None:
        """Count the missing values of a request refused for them (rows of the model's width)."""
        import numpy as np

        if array.ndim != 2 or array.shape[1] != len(self.features):
            return
        missing = (~np.isfinite(array)).sum(axis=0)
        self.total.missing += missing
        if self.window is not None:
            self.window.missing += missing

    def fold(self) -> None:
        """Add the pending requests to the sums."""
        import numpy as np

        if not self.pending:
            return
        pending, outs, m = self.pending, self.pending_out, self.pending_rows
        self.pending, self.pending_out, self.pending_rows = [], [], 0
        if self.buffer is None:
            n = len(self.features)
            self.by_rows = np.empty((FOLD_ROWS, n), dtype=np.float32)
            self.buffer = np.empty((n, FOLD_ROWS), dtype=np.float32)
            self.out_buffer = np.empty((FOLD_ROWS, max(len(self.labels), 1)))
        rows = np.concatenate(pending, out=self.by_rows[:m])
        values = self.buffer[:, :m]
        np.copyto(values, rows.T)
        outputs = None
        if self.counts_predictions:
            outputs = self.out_buffer[:m]
            if self.classifier:
                np.concatenate(outs, out=outputs, casting="same_kind")
            else:
                np.concatenate([o.reshape(-1) for o in outs], out=outputs[:, 0],
                               casting="same_kind")
        self._fold(rows, values, outputs)

    def _fold(self, rows: Any, values: Any, outputs: Any) -> None:
        """Add ``rows`` (rows by features, float32 or float64), the same values as ``values``
        (features by rows, of the same type; sorted here, in place), and their ``outputs``
        (``None``: no predictions counted) to the sums."""
        import numpy as np

        m = rows.shape[0]
        if not self.shifted and m:
            self.shift = rows.mean(axis=0, dtype=np.float64)
            self.shifted = True
        if self.scratch is None:
            self.scratch = np.empty((CHUNK, len(self.features)))
        s1, s2 = np.zeros(len(self.features)), np.zeros(len(self.features))
        for start in range(0, m, CHUNK):  # in chunks: the scratch stays in the CPU's cache
            chunk = rows[start:start + CHUNK]
            shifted = self.scratch[:len(chunk)]
            np.copyto(shifted, chunk)  # (then float64 arithmetic: faster than mixed types)
            shifted -= self.shift
            s1 += np.einsum("ij->j", shifted)  # (not BLAS: it may wake a thread per call)
            s2 += np.einsum("ij,ij->j", shifted, shifted)
        bins = None
        if self.n_bins:  # values below each edge, per feature; a bin is a difference
            values.sort(axis=1)
            searches = self.searches32 if values.dtype == np.float32 else self.searches
            below = np.full((len(self.features), self.n_bins + 1), m, dtype=np.int64)
            below[:, 0] = 0  # (the first bin also holds the values below e0)
            for i, inner in searches:  # values below edge k: those sorted before it
                below[i, 1:len(inner) + 1] = np.searchsorted(values[i], inner, side="left")
            bins = below[:, 1:] - below[:, :-1]
        predictions = None
        if outputs is not None and self.classifier:
            predictions = np.bincount(outputs.argmax(axis=1), minlength=len(self.labels))
        elif outputs is not None:
            from mlkube.profile import bin_counts

            predictions = bin_counts(self.prediction_edges, outputs[:, 0])
        for sums in (self.total, self.window):
            if sums is None:
                continue
            sums.rows += m
            sums.s1 += s1
            sums.s2 += s2
            if bins is not None:
                sums.bins += bins
            if predictions is not None:
                sums.predictions += predictions

    # --- reading ---------------------------------------------------------------------------

    def document(self, sums: _Sums, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
        """The window document of ``sums`` (see the module doc)."""
        mean, var = sums.moments(self.shift)
        features = {}
        for i, name in enumerate(self.features):
            width = self.widths[i]
            features[name] = {"edges": self.edges[i],
                              "counts": [int(c) for c in sums.bins[i, :width]] if width else [],
                              "missing": int(sums.missing[i]), "count": int(sums.rows),
                              "mean": float(mean[i]), "var": float(var[i])}
        predictions: dict[str, Any] = (
            {"kind": "classes", "labels": self.labels,
             "counts": [int(c) for c in sums.predictions]} if self.classifier else
            {"kind": "values", "edges": self.prediction_edges,
             "counts": [int(c) for c in sums.predictions]})
        return {"version": WINDOW_VERSION, "model": self.name, "model_version": self.version,
                "start": _iso(start), "end": _iso(end), "requests": int(sums.requests),
                "rows": int(sums.rows), "features": features, "predictions": predictions}

    def take_window(self) -> dict[str, Any] | None:
        """The window since the last one, and a new one begun; ``None`` if it had no answered
        request (it then goes on: missing values counted in it are not lost)."""
        self.fold()
        window = self.window
        if window is None or window.requests == 0:
            return None
        end = _now()
        found = self.document(window, self.window_start, end)
        self.window = _Sums(len(self.features), self.n_bins, len(window.predictions))
        self.window_start = end
        return found


class Monitor:
    """The live statistics of every served version; the windows' writer."""

    def __init__(self, *, enabled: bool = True, stats_dir: Path | None = None,
                 every_requests: int = EVERY_REQUESTS,
                 every_seconds: float = EVERY_SECONDS, host: str | None = None) -> None:
        self.enabled = enabled
        self.host = safe_name(host) if host else host_name()
        self.stats_dir = stats_dir if enabled else None
        self.every_requests = every_requests
        self.every_seconds = every_seconds
        self.live: dict[str, VersionStats] = {}
        self._writer: ThreadPoolExecutor | None = None
        self._writes: list[Any] = []

    def attach(self, model: Any, log: Any = None) -> None:
        """``model`` now serves its name: statistics start; the old version's last window is
        written."""
        if not self.enabled:
            return
        self.detach(model.name)
        stats = VersionStats(model, windows=self.stats_dir is not None)
        self.live[model.name] = stats
        if not stats.has_profile and log is not None:
            log(f"{model.name} version {model.version} carries no training profile (a model "
                "logged before issue 17): live feature statistics without histograms")

    def detach(self, name: str) -> None:
        """``name`` stopped serving: write its last window."""
        old = self.live.pop(name, None)
        if old is not None:
            self._write(old)

    def record(self, model: Any, rows: Any, out: Any) -> None:
        """Count an answered request (on the event loop's thread)."""
        stats = self.live.get(model.name)
        if stats is None or stats.model is not model:  # stats off, or swapped meanwhile
            return
        stats.add(rows, out)
        if stats.window is not None and stats.window.requests >= self.every_requests:
            self._write(stats)

    def refused(self, model: Any, array: Any) -> None:
        """Count the missing values of a request refused for holding them."""
        stats = self.live.get(model.name)
        if stats is not None and stats.model is model:
            stats.refused(array)

    def tick(self) -> None:
        """Write the windows that are ``every_seconds`` old and have requests."""
        now = _now()
        for stats in list(self.live.values()):
            if (now - stats.window_start).total_seconds() >= self.every_seconds:
                self._write(stats)

    async def run(self) -> None:
        """Tick until cancelled (the app's lifespan runs it when windows are written)."""
        while True:
            await asyncio.sleep(min(1.0, self.every_seconds / 4))
            self.tick()

    def _write(self, stats: VersionStats) -> None:
        if self.stats_dir is None:
            return
        document = stats.take_window()
        if document is None:
            return
        stats.windows_written += 1
        path = (self.stats_dir / safe_name(stats.name) / safe_name(stats.version)
                / window_name(document["end"], self.host))
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="mlkube-stats")
        self._writes = [f for f in self._writes if not f.done()]
        self._writes.append(self._writer.submit(_write_window, path, document))

    def close(self) -> None:
        """Write every open window and wait for the writes (the server's exit)."""
        for name in list(self.live):
            stats = self.live[name]
            self._write(stats)
        for future in self._writes:
            future.result()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def render(self) -> list[str]:
        """The Prometheus lines of every served version's totals."""
        count = Counter("mlkube_feature_count_total",
                        "Feature values in answered requests, per served model version.",
                        ("model", "version", "feature"))
        missing = Counter("mlkube_feature_missing_total",
                          "Missing (NaN or infinite) feature values in requests refused for "
                          "them.", ("model", "version", "feature"))
        mean = Gauge("mlkube_feature_mean", "Mean of a feature's values since the version "
                     "was loaded.", ("model", "version", "feature"))
        var = Gauge("mlkube_feature_variance", "Variance of a feature's values since the "
                    "version was loaded.", ("model", "version", "feature"))
        bins = Counter("mlkube_feature_bin_total", "Feature values per bin of the training "
                       "profile's histogram (bin i: edges i to i+1).",
                       ("model", "version", "feature", "bin"))
        classes = Counter("mlkube_prediction_class_total", "Predicted rows per class label.",
                          ("model", "version", "label"))
        values = Counter("mlkube_prediction_bin_total", "Predicted values per bin of the "
                         "training target's histogram.", ("model", "version", "bin"))
        windows = Counter("mlkube_stats_windows_total", "Statistics windows written.",
                          ("model", "version"))
        for stats in self.live.values():
            stats.fold()
            sums = stats.total
            at = (stats.name, stats.version)
            means, variances = sums.moments(stats.shift)
            for i, feature in enumerate(stats.features):
                key = (*at, feature)
                count.inc(key, sums.rows)
                missing.inc(key, int(sums.missing[i]))
                if sums.rows:
                    mean.set(key, float(means[i]))
                    var.set(key, float(variances[i]))
                for b in range(stats.widths[i]):
                    bins.inc((*key, str(b)), int(sums.bins[i, b]))
            for i, n in enumerate(sums.predictions):
                if stats.classifier:
                    classes.inc((*at, str(stats.labels[i])), int(n))
                else:
                    values.inc((*at, str(i)), int(n))
            windows.inc(at, stats.windows_written)
        lines: list[str] = []
        for metric in (count, missing, mean, var, bins, classes, values, windows):
            if metric.series:
                lines += metric.render()
        return lines


def _write_window(path: Path, document: dict[str, Any]) -> None:
    from mlkube.result import atomic_write_text

    atomic_write_text(path, json.dumps(document, separators=(",", ":")))
