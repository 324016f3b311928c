"""Live statistics in the runtime (issue 17, item 1): a real server on loopback, real models
from the real steps; what was sent shows up on /metrics and in the windows written to
``--stats-dir``, on the training profile's edges."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_env import NAME, Registry, Server, start_server

from mlkube import drift
from mlkube.serve import client
from mlkube.serve import stats as stats_module


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _scrape(server: Server) -> str:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        return str(response.read().decode())


def _windows(folder: Path) -> list[Path]:
    return sorted(folder.glob("window-*.json")) if folder.is_dir() else []


def _wait_for(found: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := found()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def _binned(edges: list[float], values: Any) -> list[int]:
    """Counts by the profile's rule, written out: bin i holds e_i <= x < e_(i+1), the first
    also below e0, the last also eK and above."""
    inner = [-np.inf, *edges[1:-1], np.inf]
    return [int(((values >= lo) & (values < hi)).sum()) for lo, hi in zip(inner, inner[1:],
                                                                       strict=False)]


def _model_profile(registry: Registry, role: str) -> dict[str, Any]:
    import mlflow

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
        mlflow.set_tracking_uri(registry.tracking_uri)
        return dict(mlflow.models.get_model_info(registry.uri(role)).metadata["profile"])


def test_the_trained_model_carries_the_training_profile(registry: Registry) -> None:
    profile = _model_profile(registry, "trained")
    datasets = list((registry.state.parent).glob("**/datasets/*/profile.json"))
    assert datasets, "prepare-data wrote no profile.json"
    assert profile == json.loads(datasets[0].read_text())
    # (MLflow writes the metadata as YAML with sorted keys: the order is by name there)
    assert profile["rows"] == 399 and sorted(profile["features"]) == sorted(registry.features)
    assert profile["target"]["kind"] == "classes" and profile["target"]["labels"] == [0, 1]


def test_requests_show_up_on_metrics_and_in_a_window(registry: Registry, tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    version = registry.versions["trained"]
    server = start_server(registry.uri("trained"), NAME, version, tmp_path / "server.log",
                          "--stats-dir", str(stats), "--stats-every-requests", "5",
                          "--stats-every-seconds", "3600")
    folder = stats / NAME / version
    try:
        server.wait("/v2/health/ready", 200)
        sizes = [1, 3, 7, 2, 10]
        sent, labels = [], []
        start = 0
        for n in sizes:
            rows = registry.rows[start:start + n]
            start += n
            sent.append(rows)
            labels += client.infer(server.url, NAME, rows.tolist())["label"]
        (path,) = _wait_for(lambda: _windows(folder))
        window = json.loads(path.read_text())
        rows = np.concatenate(sent)
        assert window["version"] == 1 and window["model"] == NAME
        assert window["model_version"] == version
        assert window["requests"] == 5 and window["rows"] == len(rows) == 23
        assert path.name == ("window-" + re.sub(r"[-:.]", "", window["end"]) + "-"
                             + stats_module.host_name() + ".json")
        assert drift.WINDOW_NAME.match(path.name)
        assert window["start"] < window["end"] and window["end"].endswith("Z")
        profile = _model_profile(registry, "trained")
        assert list(window["features"]) == registry.features
        for i, name in enumerate(registry.features):
            found = window["features"][name]
            assert found["edges"] == profile["features"][name]["edges"]
            assert sum(found["counts"]) == found["count"] == 23 and found["missing"] == 0
            assert found["counts"] == _binned(found["edges"], rows[:, i].astype(np.float64))
            assert found["mean"] == pytest.approx(rows[:, i].astype(np.float64).mean())
            assert found["var"] == pytest.approx(rows[:, i].astype(np.float64).var(ddof=1))
        shares = window["predictions"]
        assert shares == {"kind": "classes", "labels": [0, 1],
                          "counts": [labels.count("0"), labels.count("1")]}

        bad = registry.rows[:2].copy()
        bad[1, 0] = np.nan
        status = client_status(server, bad)
        assert status == 400
        text = _scrape(server)
        labels_of = {"model": NAME, "version": version}
        first = registry.features[0]
        assert _metric(text, "mlkube_feature_count_total", feature=first, **labels_of) == 23
        assert _metric(text, "mlkube_feature_missing_total", feature=first, **labels_of) == 1
        assert _metric(text, "mlkube_feature_missing_total", **labels_of) == 1
        assert _metric(text, "mlkube_feature_mean", feature=first, **labels_of) == \
            pytest.approx(rows[:, 0].astype(np.float64).mean())
        assert _metric(text, "mlkube_feature_bin_total", feature=first, **labels_of) == 23
        assert _metric(text, "mlkube_feature_bin_total", feature=first, bin="0", **labels_of) == \
            window["features"][first]["counts"][0]
        assert _metric(text, "mlkube_prediction_class_total", label="1", **labels_of) == \
            labels.count("1")
        assert _metric(text, "mlkube_stats_windows_total", **labels_of) == 1
        assert "# TYPE mlkube_feature_mean gauge" in text
        client.infer(server.url, NAME, registry.rows[:1].tolist())
    finally:
        server.stop()
    # the refused request's missing value is in the last window, written at the exit
    last = json.loads(_windows(folder)[-1].read_text())
    assert len(_windows(folder)) == 2 and last["requests"] == 1 and last["rows"] == 1
    assert last["features"][registry.features[0]]["missing"] == 1


def client_status(server: Server, rows: Any) -> int:
    body = json.dumps({"inputs": [{"name": "input", "shape": list(rows.shape),
                                   "datatype": "FP32", "data": [None if np.isnan(v) else float(v)
                                                                for v in rows.ravel()]}]})
    request = urllib.request.Request(f"{server.url}/v2/models/{NAME}/infer", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_windows_appear_whole_and_never_empty(registry: Registry, tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    version = registry.versions["trained"]
    server = start_server(registry.uri("trained"), NAME, version, tmp_path / "server.log",
                          "--stats-dir", str(stats), "--stats-every-requests", "1",
                          "--stats-every-seconds", "0.2")
    folder = stats / NAME / version
    try:
        server.wait("/v2/health/ready", 200)
        time.sleep(1.5)  # several ticks without a request
        assert _windows(folder) == []
        read: list[int] = []
        partial: list[str] = []
        done = threading.Event()

        def watch() -> None:  # every window-*.json seen is whole JSON the moment it is seen
            while not done.is_set():
                for path in _windows(folder):
                    try:
                        read.append(json.loads(path.read_text())["rows"])
                    except ValueError:
                        partial.append(path.name)
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            for i in range(30):
                client.infer(server.url, NAME, registry.rows[i:i + 2].tolist())
        finally:
            _wait_for(lambda: len(_windows(folder)) >= 30)
            done.set()
            watcher.join()
        assert partial == [] and read
        windows = [json.loads(p.read_text()) for p in _windows(folder)]
        assert len(windows) == 30 and all(w["requests"] == 1 and w["rows"] == 2 for w in windows)
        assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in _windows(folder))
        ends = [w["end"] for w in windows]
        assert all(b["start"] == a["end"] for a, b in zip(windows, windows[1:], strict=False))
        assert ends == sorted(ends)
        time.sleep(1.0)  # idle again: no more windows
        assert len(_windows(folder)) == 30
    finally:
        server.stop()
    assert len(_windows(folder)) == 30  # nothing new to write at the exit


def test_a_model_without_a_profile_still_serves(registry: Registry, tmp_path: Path) -> None:
    registry.gate.touch()
    name, version = "gated", registry.gated_uri.rsplit("/", 1)[1]
    stats = tmp_path / "stats"
    server = start_server(registry.gated_uri, name, version, tmp_path / "server.log",
                          "--stats-dir", str(stats))
    try:
        server.wait("/v2/health/ready", 200)
        rows = registry.rows[:3].copy()
        rows[:, 0] = [5.0, 30.0, 30.0]
        assert client.infer(server.url, name, rows.tolist())["label"] == ["no", "yes", "yes"]
        text = _scrape(server)
        assert _metric(text, "mlkube_feature_count_total", model=name) == 3 * 30
        assert _metric(text, "mlkube_feature_bin_total", model=name) == 0
        assert _metric(text, "mlkube_prediction_class_total", model=name, label="yes") == 2
    finally:
        server.stop()
    notes = [line for line in server.output().splitlines() if "no training profile" in line]
    assert len(notes) == 1
    (path,) = _windows(stats / name / version)  # the last window, written at the exit
    window = json.loads(path.read_text())
    assert window["requests"] == 1 and window["rows"] == 3
    first = window["features"][registry.features[0]]
    assert first["edges"] == [] and first["counts"] == [] and first["count"] == 3
    assert first["mean"] == pytest.approx(65.0 / 3)
    assert window["predictions"] == {"kind": "classes", "labels": ["no", "yes"],
                                     "counts": [1, 2]}


def test_no_stats_leaves_metrics_without_them(registry: Registry, tmp_path: Path) -> None:
    version = registry.versions["trained"]
    server = start_server(registry.uri("trained"), NAME, version, tmp_path / "server.log",
                          "--no-stats")
    try:
        server.wait("/v2/health/ready", 200)
        client.infer(server.url, NAME, registry.rows[:2].tolist())
        text = _scrape(server)
        assert "mlkube_feature_" not in text and "mlkube_serve_requests_total" in text
    finally:
        server.stop()
