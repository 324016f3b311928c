"""Drift: live windows against a training profile, by population stability index; the report.

The training profile (the train step puts it in the model's MLflow metadata under
``profile``, prepare-data writes it as ``profile.json`` in the dataset directory)::

    {"version": 1, "rows": N,
     "features": {"<feature>": {"edges": [e0..eK], "counts": [K ints], "missing": int,
                                "mean": float, "var": float}},
     "target": {"kind": "classes", "labels": [...], "counts": [...]}
             | {"kind": "values", "edges": [...], "counts": [...]}}

A live window (the serving runtime writes one every N requests or T seconds to
``<stats dir>/<safe model name>/<version>/window-<%Y%m%dT%H%M%S%fZ>-<host>.json``, the host
part naming the replica that wrote it, absent in names written before it) counts the same
bins: ``{"version": 1, "model", "model_version", "start", "end", "requests", "rows",
"features": {"<feature>": {"edges", "counts", "missing", "count", "mean", "var"}},
"predictions": {"kind": "classes", "labels", "counts"} | {"kind": "values", "edges", "counts"}}``.
Values below e0 count in the first bin, above eK in the last.

The population stability index of a feature compares the shares of its bins::

    PSI = sum over bins i of (a_i - e_i) * ln(a_i / e_i)

with ``e_i`` the training share and ``a_i`` the live share of bin i, each raised to
:data:`EPSILON` where a bin is empty (so an empty bin counts, and never divides by zero).
Missing values are one more bin where either side has any. The predictions' PSI compares the
live shares of the predicted classes (or the prediction histogram) with the training
target's. Below 0.1 is commonly read as stable, 0.1-0.2 as a shift, above 0.2 as drift.

Only the report (:func:`write_report`) imports anything heavy (matplotlib), inside it.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlkube.errors import MlkubeError

EPSILON = 1e-4
PLOTTED = 12  # features plotted in the report: the highest PSI first
# window-<end>[-<host>].json: sorted by name, by end time first (the end is fixed width)
WINDOW_NAME = re.compile(r"^window-\d{8}T\d{6}\d{6}Z(?:-[A-Za-z0-9_.-]+)?\.json$")
MISSING = "missing"


def safe_name(name: str) -> str:
    """A model (or feature) name as a file name, as the runtime names its directories."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def shares(counts: list[float]) -> list[float]:
    """The counts as shares of their total, each at least :data:`EPSILON`."""
    total = float(sum(counts))
    return [max(c / total, EPSILON) for c in counts]


def psi(expected: list[float], actual: list[float]) -> float:
    """The population stability index of ``actual`` counts against ``expected`` ones (same bins)."""
    if len(expected) != len(actual):
        raise ValueError(f"{len(expected)} expected bins, {len(actual)} actual")
    e, a = shares(expected), shares(actual)
    return float(sum((ai - ei) * math.log(ai / ei) for ei, ai in zip(e, a, strict=True)))


@dataclass
class Histogram:
    """Counts on bins: ``labels`` name the bins (for the report), training beside live."""

    labels: list[str]
    training: list[float]
    live: list[float]
    psi: float | None = None


@dataclass
class Live:
    """The windows judged, merged: their counts summed bin by bin."""

    files: list[Path]
    requests: int = 0
    rows: int = 0
    start: str | None = None
    end: str | None = None
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    predictions: dict[str, Any] | None = None


def parse_time(text: str, what: str) -> datetime:
    """An ISO 8601 time, UTC where it names no zone."""
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise MlkubeError(f"{what} is {text!r}, not an ISO 8601 time such as "
                          "2026-01-31T12:00:00Z") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def read_window(path: Path) -> dict[str, Any]:
    """A window document, checked for the fields the monitor sums."""
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MlkubeError(f"window {path} cannot be read ({exc}): remove it or let the runtime "
                          "write it again") from None
    problem = None
    if not isinstance(doc, dict):
        problem = "not a JSON object"
    elif not isinstance(doc.get("rows"), int) or not isinstance(doc.get("requests"), int):
        problem = "no whole-number rows and requests"
    elif not isinstance(doc.get("features"), dict):
        problem = "no features"
    elif not all(isinstance(f, dict) and isinstance(f.get("counts"), list)
                 for f in doc["features"].values()):
        problem = "a feature without counts"
    if problem:
        raise MlkubeError(f"window {path} is not a live window ({problem}): remove it")
    parse_time(doc.get("end", ""), f"window {path.name}'s end")
    return dict(doc)


def _add(into: list[float], counts: list[Any], where: str) -> None:
    if len(counts) != len(into):
        raise MlkubeError(f"{where} has {len(counts)} bins where the first window has "
                          f"{len(into)}")
    for i, c in enumerate(counts):
        into[i] += float(c)


def merge(files: list[Path], docs: list[dict[str, Any]]) -> Live:
    """The windows' counts summed per feature and for the predictions."""
    live = Live(files=files)
    starts, ends = [], []
    for path, doc in zip(files, docs, strict=True):
        live.requests += int(doc["requests"])
        live.rows += int(doc["rows"])
        if doc.get("start"):
            starts.append(str(doc["start"]))
        ends.append(str(doc["end"]))
        for name, stats in doc["features"].items():
            merged = live.features.setdefault(name, {"edges": stats.get("edges"),
                                                     "counts": [0.0] * len(stats["counts"]),
                                                     "missing": 0.0})
            if merged["edges"] != stats.get("edges"):
                raise MlkubeError(f"window {path.name}: feature {name!r} has other bin edges "
                                  "than the earlier windows")
            _add(merged["counts"], stats["counts"], f"window {path.name}, feature {name!r}")
            merged["missing"] += float(stats.get("missing", 0))
        predictions = doc.get("predictions")
        if isinstance(predictions, dict):
            live.predictions = _merge_predictions(live.predictions, predictions, path)
    live.start = min(starts, key=lambda s: parse_time(s, "start")) if starts else None
    live.end = max(ends, key=lambda s: parse_time(s, "end")) if ends else None
    return live


def _merge_predictions(into: dict[str, Any] | None, doc: dict[str, Any],
                       path: Path) -> dict[str, Any]:
    kind = doc.get("kind")
    if into is None:
        into = {"kind": kind, "edges": doc.get("edges"), "counts": {}}
    if into["kind"] != kind or into["edges"] != doc.get("edges"):
        raise MlkubeError(f"window {path.name}: its predictions are binned otherwise than the "
                          "earlier windows'")
    keys = doc.get("labels") if kind == "classes" else list(range(len(doc.get("counts", []))))
    for key, count in zip(keys or [], doc.get("counts", []), strict=False):
        into["counts"][str(key)] = into["counts"].get(str(key), 0.0) + float(count)
    return into


def _bin_labels(edges: list[float]) -> list[str]:
    k = len(edges) - 1
    if k == 1:
        return ["all"]
    return ([f"<{edges[1]:.3g}"] + [f"{edges[i]:.3g}–{edges[i + 1]:.3g}" for i in range(1, k - 1)]
            + [f"≥{edges[k - 1]:.3g}"])


def feature_histogram(name: str, profile: dict[str, Any],
                      live: dict[str, Any]) -> Histogram | None:
    """Training beside live counts of one feature, with its PSI; ``None`` when either is empty."""
    edges = [float(e) for e in profile["edges"]]
    if live.get("edges") is not None and [float(e) for e in live["edges"]] != edges:
        raise MlkubeError(f"the live windows bin feature {name!r} on other edges than the "
                          "training profile: the runtime serves another profile than this version's")
    training = [float(c) for c in profile["counts"]]
    counts = list(live["counts"])
    if len(counts) != len(training):
        raise MlkubeError(f"the live windows have {len(counts)} bins for feature {name!r}, the "
                          f"training profile {len(training)}")
    labels = _bin_labels(edges) if len(edges) == len(training) + 1 else \
        [str(i) for i in range(len(training))]
    if float(profile.get("missing", 0)) > 0 or float(live.get("missing", 0)) > 0:
        labels, training = labels + [MISSING], training + [float(profile.get("missing", 0))]
        counts = counts + [float(live.get("missing", 0))]
    if sum(training) <= 0 or sum(counts) <= 0:
        return None
    return Histogram(labels=labels, training=training, live=counts, psi=psi(training, counts))


def prediction_histogram(target: dict[str, Any] | None,
                         predictions: dict[str, Any] | None) -> Histogram | None:
    """The live predictions beside the training target, with their PSI; ``None`` when either
    is absent or they are of different kinds (classes against values)."""
    if not target or not predictions or target.get("kind") != predictions.get("kind"):
        return None
    live_counts: dict[str, float] = predictions["counts"]
    if target["kind"] == "classes":
        labels = [str(label) for label in target["labels"]]
        labels += [label for label in live_counts if label not in labels]  # never seen in training
        by_label = dict(zip((str(x) for x in target["labels"]), target["counts"], strict=True))
        training = [float(by_label.get(label, 0)) for label in labels]
        live = [live_counts.get(label, 0.0) for label in labels]
    else:
        edges = [float(e) for e in target["edges"]]
        if predictions.get("edges") is not None and [float(e) for e in predictions["edges"]] != edges:
            return None
        labels = _bin_labels(edges)
        training = [float(c) for c in target["counts"]]
        live = [live_counts.get(str(i), 0.0) for i in range(len(training))]
    if sum(training) <= 0 or sum(live) <= 0:
        return None
    return Histogram(labels=labels, training=training, live=live, psi=psi(training, live))


# -- the report -----------------------------------------------------------------------------------

def _plot(hist: Histogram, title: str, path: Path, drifted: bool) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    train = [100 * c / sum(hist.training) for c in hist.training]
    live = [100 * c / sum(hist.live) for c in hist.live]
    width = max(6.0, min(14.0, 0.45 * len(train) + 2))
    fig = Figure(figsize=(width, 3.4))
    ax = fig.subplots()
    xs = list(range(len(train)))
    ax.bar([x - 0.2 for x in xs], train, 0.4, label="training", color="#4c72b0")
    ax.bar([x + 0.2 for x in xs], live, 0.4, label="live", color="#dd8452")
    ax.set_xticks(xs, hist.labels, rotation=40 if len(xs) > 4 else 0, ha="right" if len(xs) > 4
                  else "center", fontsize=8)
    ax.set_ylabel("share of rows (%)")
    ax.set_title(title, fontsize=10, color="#b00020" if drifted else "#222222",
                 fontweight="bold" if drifted else "normal")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")


@dataclass(kw_only=True)
class Verdict:
    """What the monitor found: what the report shows and the step returns."""

    model_name: str
    version: str
    features: dict[str, Histogram]  # the features judged
    prediction: Histogram | None
    psi_threshold: float
    prediction_psi_threshold: float
    live: Live
    skipped: list[str] = field(default_factory=list)  # profile features no window counts

    @property
    def ranked(self) -> list[tuple[str, float]]:
        """The features' PSI, the highest first."""
        return sorted(((n, h.psi or 0.0) for n, h in self.features.items()),
                      key=lambda item: (-item[1], item[0]))

    @property
    def drifted_features(self) -> list[str]:
        return [n for n, v in self.ranked if v > self.psi_threshold]

    @property
    def prediction_drifted(self) -> bool:
        return (self.prediction is not None and self.prediction.psi is not None
                and self.prediction.psi > self.prediction_psi_threshold)

    @property
    def drifted(self) -> bool:
        return bool(self.drifted_features) or self.prediction_drifted


def _file_names(names: list[str], taken: set[str]) -> dict[str, str]:
    out = {}
    for name in names:
        base = safe_name(name)[:80] or "feature"
        candidate, i = f"{base}.png", 2
        while candidate.lower() in taken:
            candidate, i = f"{base}-{i}.png", i + 1
        taken.add(candidate.lower())
        out[name] = candidate
    return out


PAGE_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em} .drifted{color:#b00020;font-weight:600} .stable{color:#1b7f3b;font-weight:600}
table{border-collapse:collapse;margin:1em 0} td,th{border:1px solid #ccc;padding:.3em .7em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums} figure{margin:1.5em 0}
figure img{max-width:100%;border:1px solid #eee} code{background:#f4f4f4;padding:0 .2em}
"""


def write_report(verdict: Verdict, out: Path) -> list[str]:
    """``report.html`` and the PNG plots in ``out``; returns the file names written.

    The plots: the predictions, then the :data:`PLOTTED` features of highest PSI (the page
    says when there are more); a table lists every feature's PSI.
    """
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    taken = {"report.html"}
    plotted = [n for n, _ in verdict.ranked[:PLOTTED]]
    written = []
    prediction_png = None
    if verdict.prediction is not None:
        prediction_png = _file_names(["predictions"], taken)["predictions"]
        mark = " (drifted)" if verdict.prediction_drifted else ""
        _plot(verdict.prediction, f"predictions: PSI {verdict.prediction.psi:.3f}{mark}",
              out / prediction_png, verdict.prediction_drifted)
        written.append(prediction_png)
    pngs = _file_names(plotted, taken)
    for name in plotted:
        hist = verdict.features[name]
        over = (hist.psi or 0) > verdict.psi_threshold
        _plot(hist, f"{name}: PSI {hist.psi:.3f}" + (" (drifted)" if over else ""),
              out / pngs[name], over)
        written.append(pngs[name])
    (out / "report.html").write_text(_page(verdict, prediction_png, pngs), encoding="utf-8")
    return ["report.html", *written]


def _page(verdict: Verdict, prediction_png: str | None, pngs: dict[str, str]) -> str:
    e = html.escape
    live = verdict.live
    drifted = verdict.drifted
    state = ('<span class="drifted">drifted</span>' if drifted
             else '<span class="stable">no drift</span>')
    why = []
    if verdict.drifted_features:
        why.append(f"{len(verdict.drifted_features)} feature(s) above PSI "
                   f"{verdict.psi_threshold:g}: " + ", ".join(e(n) for n in verdict.drifted_features[:20])
                   + (" …" if len(verdict.drifted_features) > 20 else ""))
    if verdict.prediction_drifted:
        why.append(f"the predictions above PSI {verdict.prediction_psi_threshold:g}")
    rows = [
        ("model", f"{e(verdict.model_name)} version {e(verdict.version)}"),
        ("live windows", f"{len(live.files)} ({e(live.start or '?')} to {e(live.end or '?')})"),
        ("live rows / requests", f"{live.rows} / {live.requests}"),
        ("features judged", str(len(verdict.features))),
        ("predictions PSI", "n/a" if verdict.prediction is None or verdict.prediction.psi is None
         else f"{verdict.prediction.psi:.4f} (threshold {verdict.prediction_psi_threshold:g})"),
        ("feature threshold", f"{verdict.psi_threshold:g}"),
    ]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Drift report: {e(verdict.model_name)} v{e(verdict.version)}</title>",
        f"<style>{PAGE_STYLE}</style></head><body>",
        f"<h1>Drift report: {e(verdict.model_name)} version {e(verdict.version)} — {state}</h1>",
    ]
    if why:
        parts.append("<p>" + "; ".join(why) + ".</p>")
    parts.append("<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
                 + "</table>")
    parts.append("<p>Live rows against the training profile of this version, bin by bin: "
                 "PSI = Σ (a − e) · ln(a / e) over the bins' live shares a and training shares "
                 f"e, each at least {EPSILON:g}. Below 0.1 is usually read as stable, 0.1–0.2 "
                 "as a shift, above 0.2 as drift.</p>")
    if prediction_png:
        parts.append(f'<h2>Predictions</h2><figure><img src="{e(prediction_png)}" '
                     f'alt="predictions: training vs live"></figure>')
    ranked = verdict.ranked
    if pngs:
        heading = ("Features" if len(ranked) <= len(pngs) else
                   f"The {len(pngs)} features of highest PSI (of {len(ranked)}; the table below "
                   "lists them all)")
        parts.append(f"<h2>{heading}</h2>")
        for name, png in pngs.items():
            parts.append(f'<figure><img src="{e(png)}" alt="{e(name)}: training vs live">'
                         "</figure>")
    if verdict.skipped:
        parts.append(f"<p>Not judged (no live counts): {e(', '.join(verdict.skipped))}.</p>")
    parts.append("<h2>Every feature</h2><table><tr><th>feature</th><th>PSI</th><th></th></tr>")
    for name, value in ranked:
        flag = '<span class="drifted">drifted</span>' if value > verdict.psi_threshold else ""
        parts.append(f'<tr><td>{e(name)}</td><td class="num">{value:.4f}</td><td>{flag}</td></tr>')
    parts.append("</table>")
    files = ", ".join(e(p.name) for p in live.files[:10]) + (" …" if len(live.files) > 10 else "")
    parts.append(f"<p>Windows: {files}</p></body></html>")
    return "\n".join(parts) + "\n"
