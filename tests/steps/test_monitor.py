"""monitor: live windows against the served version's training profile, on a real MLflow store.

The profile and the windows are built here as the train step and the serving runtime write
them (mlkube.drift has the formats); the model is a cheap pyfunc carrying the profile in its
metadata, registered with the aliases deploy and register set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest

from mlkube import cli, drift
from mlkube_testing import error_lines, run

NAME = "mlkube-demo"
FEATURES = {"a": (0.0, 1.0), "b": (5.0, 2.0), "c": (-3.0, 0.5)}  # name: (mean, sd)
BINS = 10
CHROMIUM = shutil.which("chromium")


def _edges(mean: float, sd: float) -> list[float]:
    return [float(mean + sd * z) for z in np.linspace(-2.5, 2.5, BINS + 1)]


def _counts(values: np.ndarray, edges: list[float]) -> list[int]:
    # below e0 in the first bin, above eK in the last
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    return [int(c) for c in np.bincount(index, minlength=len(edges) - 1)]


def _profile(rows: int = 5000, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    features = {}
    for name, (mean, sd) in FEATURES.items():
        values = rng.normal(mean, sd, rows)
        features[name] = {"edges": _edges(mean, sd), "counts": _counts(values, _edges(mean, sd)),
                          "missing": 0, "mean": float(values.mean()), "var": float(values.var())}
    labels = rng.random(rows) < 0.4
    return {"version": 1, "rows": rows, "features": features,
            "target": {"kind": "classes", "labels": ["0", "1"],
                       "counts": [int((~labels).sum()), int(labels.sum())]}}


class _Model(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return np.zeros(len(model_input))


def _register(profile: dict[str, Any] | None, aliases: tuple[str, ...] = ("champion", "serving"),
              ) -> str:
    """A pyfunc version of NAME with ``profile`` in its metadata; returns the version."""
    with mlflow.start_run():
        logged = mlflow.pyfunc.log_model(name="model", python_model=_Model(),
                                         pip_requirements=["mlflow"],
                                         metadata={"profile": profile} if profile else None)
    version = str(mlflow.register_model(logged.model_uri, NAME).version)
    for alias in aliases:
        mlflow.MlflowClient().set_registered_model_alias(NAME, alias, version)
    return version


def _window(stats: Path, version: str, rows: int, *, seed: int, shift: dict[str, float] | None = None,
            end: datetime | None = None, positive: float = 0.4) -> Path:
    """A window of ``rows`` live rows drawn like the training data, ``shift`` (in sd) added."""
    rng = np.random.default_rng(seed)
    end = end or datetime.now(UTC)
    features = {}
    for name, (mean, sd) in FEATURES.items():
        values = rng.normal(mean + (shift or {}).get(name, 0.0) * sd, sd, rows)
        features[name] = {"edges": _edges(mean, sd), "counts": _counts(values, _edges(mean, sd)),
                          "missing": 0, "count": rows, "mean": float(values.mean()),
                          "var": float(values.var())}
    ones = int((rng.random(rows) < positive).sum())
    doc = {"version": 1, "model": NAME, "model_version": version,
           "start": (end - timedelta(minutes=5)).isoformat(), "end": end.isoformat(),
           "requests": rows // 2, "rows": rows, "features": features,
           "predictions": {"kind": "classes", "labels": ["0", "1"], "counts": [rows - ones, ones]}}
    directory = stats / drift.safe_name(NAME) / version
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"window-{end.strftime('%Y%m%dT%H%M%S%fZ')}.json"
    path.write_text(json.dumps(doc))
    return path


def _windows(stats: Path, version: str, n: int, rows: int, **kwargs: Any) -> list[Path]:
    now = datetime.now(UTC)
    return [_window(stats, version, rows, seed=100 + i, end=now - timedelta(minutes=5 * (n - i)),
                    **kwargs) for i in range(n)]


def _monitor_runs() -> list[Any]:
    experiment = mlflow.get_experiment_by_name("mlkube")
    if experiment is None:
        return []
    return list(mlflow.MlflowClient().search_runs(
        [experiment.experiment_id], "tags.`mlkube.step` = 'monitor'"))


@pytest.fixture
def stats(state: Path) -> Path:
    return state / "monitoring"


def test_unshifted_windows_are_no_drift(state: Path, stats: Path, tmp_path: Path) -> None:
    version = _register(_profile())
    _windows(stats, version, 3, 400)
    code, result, _ = run("monitor", tmp=tmp_path)
    assert code == 0 and result is not None
    assert result["drifted"] is False
    assert result["champion_version"] == version and result["model_name"] == NAME
    assert set(result["psi"]) == set(FEATURES)
    assert all(0 <= v < 0.1 for v in result["psi"].values()), result["psi"]
    assert 0 <= result["prediction_psi"] < 0.1
    assert (result["rows"], result["requests"], result["windows"]) == (1200, 600, 3)
    logged = mlflow.MlflowClient().get_run(result["run_id"])
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["mlkube.monitor_verdict"] == "stable"
    assert logged.data.metrics["psi.a"] == pytest.approx(result["psi"]["a"], abs=1e-6)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result["run_id"], "drift")}
    assert artifacts == {"drift/report.html", "drift/predictions.png",
                         *(f"drift/{f}.png" for f in FEATURES)}
    assert result["report_uri"].endswith("/drift/report.html")

    again_code, again, _ = run("monitor", tmp=tmp_path)  # the same windows: the same run
    assert again_code == 0 and again == result
    assert len(_monitor_runs()) == 1


def test_a_shifted_feature_drifts_alone(state: Path, stats: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    version = _register(_profile())
    _windows(stats, version, 3, 400, shift={"b": 1.0})
    code, result, _ = run("monitor", tmp=tmp_path)
    assert code == 0 and result is not None
    assert result["drifted"] is True
    assert result["psi"]["b"] > 0.2
    assert result["psi"]["a"] < 0.2 and result["psi"]["c"] < 0.2
    assert result["prediction_psi"] < 0.2
    assert "DRIFTED: highest PSI b" in capsys.readouterr().out


def test_shifted_predictions_drift(state: Path, stats: Path, tmp_path: Path) -> None:
    version = _register(_profile())
    _windows(stats, version, 2, 400, positive=0.9)
    code, result, _ = run("monitor", tmp=tmp_path)
    assert code == 0 and result is not None
    assert result["drifted"] is True and result["prediction_psi"] > 0.2
    assert all(v < 0.2 for v in result["psi"].values())


def test_too_few_rows_is_a_result(state: Path, stats: Path, tmp_path: Path) -> None:
    version = _register(_profile())
    _windows(stats, version, 2, 40, shift={"a": 3.0})
    code, result, _ = run("monitor", tmp=tmp_path)
    assert code == 0 and result is not None
    assert result["drifted"] is False and result["psi"] == {} and result["prediction_psi"] is None
    assert (result["rows"], result["requests"], result["windows"]) == (80, 40, 2)
    assert result["report_uri"] == ""
    logged = mlflow.MlflowClient().get_run(result["run_id"])
    assert logged.data.tags["mlkube.monitor_verdict"] == "too_few_rows"
    assert logged.data.metrics["rows"] == 80

    # a version no request reached yet: no windows at all, still a result
    newer = _register(_profile())
    stats.mkdir(exist_ok=True)
    code, result, _ = run("monitor", "--min-rows", "10", tmp=tmp_path)
    assert code == 0 and result is not None
    assert (result["champion_version"], result["rows"], result["windows"]) == (newer, 0, 0)
    assert result["drifted"] is False


def test_the_serving_version_is_judged_before_the_champion(state: Path, stats: Path,
                                                           tmp_path: Path) -> None:
    serving = _register(_profile(), aliases=("serving",))
    champion = _register(_profile(), aliases=("champion",))
    _windows(stats, serving, 2, 300)
    _windows(stats, champion, 2, 300, shift={"a": 2.0})
    code, result, _ = run("monitor", tmp=tmp_path)
    assert code == 0 and result is not None
    assert (result["champion_version"], result["drifted"]) == (serving, False)


def test_which_windows_count(state: Path, stats: Path, tmp_path: Path) -> None:
    version = _register(_profile())
    now = datetime.now(UTC)
    _window(stats, version, 500, seed=1, shift={"c": 2.0}, end=now - timedelta(hours=3))
    _window(stats, version, 300, seed=2, end=now - timedelta(minutes=20))
    _window(stats, version, 300, seed=3, end=now - timedelta(minutes=10))

    def judged(*args: str) -> dict[str, Any]:
        code, result, _ = run("monitor", *args, tmp=tmp_path)
        assert code == 0 and result is not None
        return result

    assert (judged("--windows", "2")["rows"], judged("--windows", "2")["drifted"]) == (600, False)
    assert judged("--windows", "3")["drifted"] is True
    assert judged("--since", "1h")["rows"] == 600
    assert judged("--since", (now - timedelta(hours=4)).isoformat())["windows"] == 3
    assert judged("--since", "1h", "--windows", "1")["rows"] == 300
    # by default the newest first until monitor.sample_rows
    assert judged()["windows"] == 3
    config = tmp_path / "small-sample.yaml"
    config.write_text("monitor:\n  sample_rows: 500\n")
    assert judged("--config", str(config))["rows"] == 600


def test_cli_runs_the_step(state: Path, stats: Path, tmp_path: Path) -> None:
    version = _register(_profile())
    _windows(stats, version, 1, 300)
    result_file = tmp_path / "out.json"
    assert cli.main(["step", "monitor", "--result-file", str(result_file)]) == 0
    assert json.loads(result_file.read_text())["drifted"] is False


@pytest.mark.parametrize("case", ["no stats dir", "no champion", "no profile", "bad window",
                                  "other features"])
def test_bad_input_is_one_line_and_logs_nothing(state: Path, stats: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                case: str) -> None:
    expected = {"no stats dir": f"no live statistics at {stats}: pass --stats-dir",
                "no champion": f"registered model {NAME!r} has no 'serving' or 'champion' version",
                "no profile": "version 1 carries no training profile",
                "bad window": "is not a live window (no features): remove it",
                "other features": "the live windows of mlkube-demo v1 name none of its profile's "
                                  "features (windows: 0, 1, 2; profile: a, b, c)"}[case]
    if case != "no stats dir":
        stats.mkdir()
    if case in ("no profile", "bad window", "other features"):
        version = _register(None if case == "no profile" else _profile())
        path = _window(stats, version, 300, seed=0)
        if case == "bad window":
            path.write_text(json.dumps({"rows": 300, "requests": 3, "end": "2026-01-01T00:00:00Z"}))
        if case == "other features":  # a model that records no names: the runtime numbers them
            doc = json.loads(path.read_text())
            doc["features"] = {str(i): f for i, f in enumerate(doc["features"].values())}
            path.write_text(json.dumps(doc))
    if case == "no champion":
        _register(_profile(), aliases=())
    capsys.readouterr()
    code, result, err = run("monitor", tmp=tmp_path, capsys=capsys)
    assert code != 0 and result is None
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("mlkube monitor: error: ")
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err
    assert _monitor_runs() == []


def test_no_data_not_drifted_is_a_result(state: Path, stats: Path, tmp_path: Path) -> None:
    # what the retraining DAG and cron pass: a fresh deployment has served nothing yet
    code, result, _ = run("monitor", "--no-data", "not-drifted", tmp=tmp_path)
    assert code == 0 and result is not None
    assert result["drifted"] is False and (result["rows"], result["requests"]) == (0, 0)
    assert (result["champion_version"], result["run_id"], result["psi"]) == ("", "", {})
    assert _monitor_runs() == []
    # a champion, but no stats directory yet: no windows, judged as such and logged
    version = _register(_profile())
    assert not stats.exists()
    code, result, _ = run("monitor", "--no-data", "not-drifted", tmp=tmp_path)
    assert code == 0 and result is not None
    assert (result["champion_version"], result["drifted"], result["windows"]) == (version, False, 0)
    assert [r.info.run_id for r in _monitor_runs()] == [result["run_id"]]


def _replica(stats: Path, host: str, version: str, rows: int, seed: int) -> None:
    """One serving replica (the runtime's own statistics, named by its pod) answering
    ``rows`` rows in 4 requests, then writing its window (as at its exit)."""
    from types import SimpleNamespace

    from mlkube.serve.stats import Monitor

    model = SimpleNamespace(name=NAME, version=version, n_features=len(FEATURES),
                            features=list(FEATURES), columns=list(FEATURES),
                            profile=_profile(), classifier=True, classes=["0", "1"])
    monitor = Monitor(stats_dir=stats, host=host, every_seconds=3600)
    monitor.attach(model)
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(m, sd, rows) for m, sd in FEATURES.values()])
    p = rng.random(rows)
    for part, probs in zip(np.array_split(x, 4), np.array_split(p, 4), strict=True):
        monitor.record(model, part, np.column_stack([1 - probs, probs]))
    monitor.close()


def test_replicas_ending_a_window_at_once_write_two_windows(state: Path, stats: Path,
                                                            tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            ) -> None:
    """Two pods of one Deployment share the stats directory (the artifact claim's monitoring
    sub-path) and may end a window in the same microsecond: the host in the name keeps both,
    and monitor counts both."""
    from mlkube.serve import stats as runtime_stats

    version = _register(_profile())
    instant = datetime.now(UTC)
    monkeypatch.setattr(runtime_stats, "_now", lambda: instant)  # the same end, to the µs
    _replica(stats, "serving-7d9f-abcde", version, 300, seed=1)
    _replica(stats, "serving-7d9f-fghij", version, 200, seed=2)
    written = sorted((stats / drift.safe_name(NAME) / version).glob("window-*.json"))
    stamp = instant.strftime("%Y%m%dT%H%M%S%fZ")
    assert [p.name for p in written] == [f"window-{stamp}-serving-7d9f-abcde.json",
                                         f"window-{stamp}-serving-7d9f-fghij.json"]
    assert all(drift.WINDOW_NAME.match(p.name) for p in written)
    # a window named before the host was part of the name still counts, in time order
    older = _window(stats, version, 100, seed=3, end=instant - timedelta(minutes=1))
    files = sorted(p.name for p in older.parent.iterdir() if drift.WINDOW_NAME.match(p.name))
    assert files[0] == older.name
    code, result, _ = run("monitor", "--min-rows", "10", tmp=tmp_path)
    assert code == 0 and result is not None
    assert (result["windows"], result["rows"], result["requests"]) == (3, 600, 58)
    assert result["drifted"] is False


def test_psi_formula() -> None:
    assert drift.psi([10, 20, 30], [10, 20, 30]) == 0.0
    e, a = [0.5, 0.5], [0.9, 0.1]
    assert drift.psi([50, 50], [90, 10]) == pytest.approx(
        sum((ai - ei) * np.log(ai / ei) for ei, ai in zip(e, a, strict=True)))
    # an empty bin counts at EPSILON, never as a division by zero
    assert drift.psi([50, 50, 0], [50, 49, 1]) == pytest.approx(
        (0.49 - 0.5) * np.log(0.49 / 0.5) + (0.01 - drift.EPSILON) * np.log(0.01 / drift.EPSILON))


def test_only_the_top_features_are_plotted(tmp_path: Path) -> None:
    features = {}
    for i in range(drift.PLOTTED + 3):
        features[f"f/{i}"] = drift.Histogram(labels=["x", "y"], training=[50, 50],
                                             live=[50 + i, 50 - i],
                                             psi=drift.psi([50, 50], [50 + i, 50 - i]))
    verdict = drift.Verdict(model_name=NAME, version="1", features=features, prediction=None,
                            psi_threshold=0.2, prediction_psi_threshold=0.2,
                            live=drift.Live(files=[], rows=100, requests=100))
    written = drift.write_report(verdict, tmp_path)
    assert len(written) == 1 + drift.PLOTTED
    page = (tmp_path / "report.html").read_text()
    assert f"The {drift.PLOTTED} features of highest PSI (of {drift.PLOTTED + 3}" in page
    assert "f_14.png" in page and "f_0.png" not in page and "<td>f/0</td>" in page


# -- the report in a real browser -----------------------------------------------------------------

# Written into a copy of the page: once every image has loaded (or failed), each img's
# natural width goes into the DOM, which --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) img.setAttribute("data-natural-width", img.naturalWidth);
  document.body.setAttribute("data-probed", document.images.length);
});
</script>"""


def _chromium_dom(page: Path, profile_dir: Path) -> str:
    assert CHROMIUM is not None
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile_dir}", "--virtual-time-budget=10000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_report_renders_its_plots_in_chromium(state: Path, stats: Path,
                                                  tmp_path: Path) -> None:
    version = _register(_profile())
    _windows(stats, version, 3, 400, shift={"b": 1.0})
    code, result, _ = run("monitor", tmp=tmp_path)
    assert code == 0 and result is not None and result["drifted"] is True
    local = Path(mlflow.artifacts.download_artifacts(run_id=result["run_id"],
                                                     artifact_path="drift",
                                                     dst_path=str(tmp_path / "download")))
    page = local / "report.html"
    text = page.read_text()
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert sorted(sources) == sorted(p.name for p in local.glob("*.png"))
    assert len(sources) == 1 + len(FEATURES)
    probed = local / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "</body>"))
    dom = _chromium_dom(probed, tmp_path / "chromium-profile")
    assert f'data-probed="{len(sources)}"' in dom, dom[-2000:]
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom)]
    assert len(widths) == len(sources) and all(w > 0 for w in widths), widths
    assert "drifted" in dom and "Drift report: mlkube-demo version 1" in dom
