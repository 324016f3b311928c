"""The server's Prometheus metrics, written in the text exposition format (version 0.0.4).

The server runs one process with one event loop, and every update happens on that loop's
thread, so plain dicts and lists are enough: no locks, no client library. The label values
are bounded: endpoints are route templates (``/v2/models/{name}/infer``), models are the
loaded ones.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: tuple[tuple[str, str], ...], extra: str = "") -> str:
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    if extra:
        text = f"{text},{extra}" if text else extra
    return "{" + text + "}" if text else ""


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Histogram:
    """Cumulative-bucket histogram per label set."""

    def __init__(self, name: str, help_text: str, label_names: tuple[str, ...],
                 buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.label_names, self.buckets = name, help_text, label_names, buckets
        self.series: dict[tuple[str, ...], list[float]] = {}  # counts per bucket + [+Inf, sum]

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        """Count ``value`` under ``labels``."""
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        series[bisect.bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, series in sorted(self.series.items()):
            pairs = tuple(zip(self.label_names, labels, strict=True))
            total = 0.0
            for bound, count in zip((*self.buckets, float("inf")), series, strict=False):
                total += count
                le = 'le="' + ("+Inf" if bound == float("inf") else _number(bound)) + '"'
                lines.append(f"{self.name}_bucket{_labels(pairs, le)} {_number(total)}")
            lines.append(f"{self.name}_sum{_labels(pairs)} {repr(series[-1])}")
            lines.append(f"{self.name}_count{_labels(pairs)} {_number(total)}")
        return lines


class Counter:
    """A monotonically increasing count per label set."""

    def __init__(self, name: str, help_text: str, label_names: tuple[str, ...]) -> None:
        self.name, self.help, self.label_names = name, help_text, label_names
        self.series: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        """Add ``amount`` under ``labels``."""
        self.series[labels] = self.series.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for labels, value in sorted(self.series.items()):
            pairs = tuple(zip(self.label_names, labels, strict=True))
            lines.append(f"{self.name}{_labels(pairs)} {_number(value)}")
        return lines


class Gauge(Counter):
    """A value that is set (the models being served: 1 per name and version)."""

    def set(self, labels: tuple[str, ...], value: float) -> None:
        """Set the value under ``labels``."""
        self.series[labels] = value

    def remove(self, labels: tuple[str, ...]) -> None:
        """Drop the series under ``labels``."""
        self.series.pop(labels, None)

    def render(self) -> list[str]:
        lines = super().render()
        lines[1] = f"# TYPE {self.name} gauge"
        return lines


class Metrics:
    """Everything ``GET /metrics`` reports."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests = Counter("mlkube_serve_requests_total",
                                "HTTP requests by endpoint (route template) and status code.",
                                ("endpoint", "status"))
        self.latency = Histogram("mlkube_serve_request_duration_seconds",
                                 "Time from request to the end of the response, by endpoint.",
                                 ("endpoint",), LATENCY_BUCKETS)
        self.batch = Histogram("mlkube_serve_batch_rows",
                               "Rows per prediction call (the batch size), by model.",
                               ("model",), BATCH_BUCKETS)
        self.loads = Counter("mlkube_serve_model_loads_total",
                             "Model version loads by outcome (loaded or failed).",
                             ("model", "outcome"))
        self.serving = Gauge("mlkube_serve_model_info",
                             "1 for each model name and the version it serves.",
                             ("model", "version"))
        # more metrics rendered on each scrape (the live statistics, see serve.stats)
        self.sections: list[Callable[[], list[str]]] = []

    def render(self) -> str:
        """The exposition text."""
        lines: list[str] = []
        for metric in (self.requests, self.latency, self.batch, self.loads, self.serving):
            lines += metric.render()
        for section in self.sections:
            lines += section()
        lines += ["# HELP mlkube_serve_start_time_seconds Unix time the server started.",
                  "# TYPE mlkube_serve_start_time_seconds gauge",
                  f"mlkube_serve_start_time_seconds {self.started!r}"]
        return "\n".join(lines) + "\n"
