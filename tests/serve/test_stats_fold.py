"""The live statistics' folding (issue 17, item 1), in process: what ``VersionStats`` reports
equals the training profile's rule and numpy's moments on the float64 values of every row it
was given, whatever way the rows reached it (buffered float32 requests of 1 to 4,096 rows, a
request larger than the buffer, float64 values, outputs of another shape, a scrape in between)."""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pytest

from mlkube import profile as profilemod
from mlkube.serve import stats as stats_module

N_FEATURES = 4


def _edges_profile(rng: np.random.Generator, target: dict[str, Any]) -> dict[str, Any]:
    features = {}
    for i in range(N_FEATURES):
        values = rng.normal(10.0 * i, 1.0 + i, 500)
        # edges that float32 cannot hold exactly (and one feature of a single bin)
        edges = profilemod.quantile_edges(values, 1 if i == 3 else 10)
        features[f"f{i}"] = {"edges": edges, "mean": float(values.mean())}
    return {"features": features, "target": target}


def _model(profile: dict[str, Any] | None, classifier: bool = True) -> Any:
    return types.SimpleNamespace(name="m", version="1", n_features=N_FEATURES,
                                 features=[f"f{i}" for i in range(N_FEATURES)], columns=None,
                                 profile=profile, classifier=classifier,
                                 classes=["no", "yes"] if classifier else None)


def _rows(rng: np.random.Generator, n: int, edges: list[list[float]]) -> Any:
    """float32 rows, a third of their values on an edge's float32 neighbours (just below, at,
    just above: where a float32 comparison with float64 edges could differ)."""
    rows = np.stack([rng.normal(10.0 * i, 1.0 + i, n) for i in range(N_FEATURES)],
                    axis=1).astype(np.float32)
    for i, e in enumerate(edges):
        near = np.array(e, dtype=np.float32)[rng.integers(0, len(e), n)]
        step = rng.integers(-1, 2, n)
        near = np.where(step < 0, np.nextafter(near, np.float32(-np.inf)),
                        np.where(step > 0, np.nextafter(near, np.float32(np.inf)), near))
        rows[:, i] = np.where(rng.random(n) < 0.33, near, rows[:, i])
    return rows


def _check(stats: Any, sent: list[Any], predicted: list[Any] | None) -> dict[str, Any]:
    """The totals' document against the rule on float64 values; returns the document."""
    stats.fold()
    found = stats.document(stats.total, stats.window_start, stats.window_start)
    values = np.concatenate(sent).astype(np.float64)
    assert found["rows"] == len(values) and found["requests"] == len(sent)
    for i, name in enumerate(stats.features):
        feature = found["features"][name]
        if feature["edges"]:
            assert feature["counts"] == list(profilemod.bin_counts(feature["edges"],
                                                                   values[:, i])), name
        assert feature["count"] == len(values)
        assert feature["mean"] == pytest.approx(values[:, i].mean(), rel=1e-12, abs=1e-12)
        assert feature["var"] == pytest.approx(values[:, i].var(ddof=1), rel=1e-10)
    return found


def test_counts_follow_the_profiles_rule_on_float64_values_however_rows_arrive() -> None:
    rng = np.random.default_rng(7)
    profile = _edges_profile(rng, {"kind": "classes", "labels": ["no", "yes"]})
    stats = stats_module.VersionStats(_model(profile), windows=True)
    edges = [profile["features"][f"f{i}"]["edges"] for i in range(N_FEATURES)]
    sent, labels = [], []
    sizes = [1] * 300 + [64] * 100 + [3, stats_module.FOLD_ROWS, stats_module.FOLD_ROWS + 5, 0]
    for k, n in enumerate(rng.permutation(sizes)):
        rows = _rows(rng, int(n), edges)
        if k % 7 == 0:  # float64 values: folded alone, compared in float64
            rows = rows.astype(np.float64) + rng.normal(0, 1e-9, rows.shape)
        out = rng.random((len(rows), 2)).astype(np.float32)
        if k % 11 == 0:  # outputs of another shape: rows counted, no prediction
            out = out[:, :1]
        else:
            labels.append(out.argmax(axis=1))
        stats.add(rows, out)
        sent.append(rows)
        if k % 97 == 0:
            _check(stats, sent, None)  # a scrape in between
    found = _check(stats, sent, None)
    assert found["predictions"] == {"kind": "classes", "labels": ["no", "yes"], "counts": list(
        np.bincount(np.concatenate(labels), minlength=2))}
    assert [len(f["counts"]) for f in found["features"].values()] == [10, 10, 10, 1]


def test_a_regression_counts_its_predictions_on_the_target_edges() -> None:
    rng = np.random.default_rng(8)
    target_edges = profilemod.quantile_edges(rng.normal(0, 1, 300), 5)
    profile = _edges_profile(rng, {"kind": "values", "edges": target_edges})
    stats = stats_module.VersionStats(_model(profile, classifier=False), windows=False)
    edges = [profile["features"][f"f{i}"]["edges"] for i in range(N_FEATURES)]
    sent, predicted = [], []
    for k in range(200):
        rows = _rows(rng, int(rng.choice([1, 64])), edges)
        out = rng.normal(0, 1, len(rows)).astype(np.float32)
        stats.add(rows, out if k % 2 else out[:, None])  # (n,) or (n, 1)
        sent.append(rows)
        predicted.append(out)
    found = _check(stats, sent, predicted)
    assert found["predictions"] == {"kind": "values", "edges": target_edges, "counts": list(
        profilemod.bin_counts(target_edges, np.concatenate(predicted).astype(np.float64)))}


def test_without_a_profile_moments_still_add_up() -> None:
    rng = np.random.default_rng(9)
    stats = stats_module.VersionStats(_model(None), windows=True)
    sent = [(rng.normal(1e4, 1.0, (64, N_FEATURES))).astype(np.float32) for _ in range(100)]
    for rows in sent:
        stats.add(rows, np.ones((64, 2), dtype=np.float32))
    found = _check(stats, sent, None)
    assert all(f["edges"] == [] and f["counts"] == [] for f in found["features"].values())
    assert found["predictions"]["counts"] == [64 * 100, 0]


def test_ceil_float32_keeps_the_comparison_exact() -> None:
    rng = np.random.default_rng(10)
    edges = np.concatenate([rng.normal(0, 100, 2000), [0.1, -0.1, 1e39, -1e39, 3.0, np.inf]])
    ceiled = stats_module.ceil_float32(edges)
    assert ceiled.dtype == np.float32
    with np.errstate(over="ignore"):  # (±1e39 is ±inf in float32)
        rounded = edges.astype(np.float32)
    nearby = np.nextafter(rounded[:, None], np.array([-np.inf, 0, np.inf],
                                                     dtype=np.float32)[None, :])
    values = np.concatenate([nearby.ravel(), rounded,
                             np.array([3.4e38, -3.4e38], dtype=np.float32)])
    exact = values[:, None].astype(np.float64) >= edges[None, :]
    assert (exact == (values[:, None] >= ceiled[None, :])).all()
