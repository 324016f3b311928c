"""monitor: judge the served version's live windows against its training profile.

``python -m mlkube.steps.monitor [--model-name NAME] [--stats-dir DIR] [--windows N | --since T]``

The version judged is the one that serves: the ``serving`` alias (deploy moves it), else the
``champion`` alias. Its training profile is the ``profile`` entry of its MLflow model metadata.
Its live windows are ``<stats dir>/<safe model name>/<version>/window-*.json`` (the serving
runtime writes them, every replica its own; ``--stats-dir`` defaults to
``<state_dir>/monitoring``, and in a pod with the artifact volume to ``spec.MONITORING_DIR``,
where the cluster's serving pods write them). Which windows count as the latest:

- ``--windows N``: the newest N;
- ``--since T``: those that end at or after T (an ISO 8601 time, or an age: ``24h``, ``30m``,
  ``7d``); with ``--windows`` too, the newest N of those;
- neither: the newest first, until they hold ``monitor.sample_rows`` rows (or all there are).

Each feature's population stability index (:mod:`mlkube.drift` has the formula) and the
predictions' are compared with ``monitor.psi_threshold`` and
``monitor.prediction_psi_threshold``; ``drifted`` is true when any is above. Fewer live rows
than ``monitor.min_rows`` (a version with no windows yet included) is a result, not an
error: ``drifted`` false, with the counts. A stats directory that does not exist, a model
with neither alias, or a version without a profile is an error, found before anything is
logged; except with ``--no-data not-drifted`` (the retraining DAG and cron: a fresh deployment
has served nothing yet), where a missing stats directory is a version with no windows, and a
model with neither alias a 0-row result logged nowhere (``champion_version`` and ``run_id``
empty).

The step logs one MLflow run in the experiment (lineage tags, ``psi.<feature>`` metrics,
``prediction_psi``, ``rows``, ``requests``, ``drifted``) with the drift report as artifacts
``drift/report.html`` and ``drift/*.png``. The same windows judged again return that run.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mlkube import drift, spec
from mlkube.errors import MlkubeError
from mlkube.steps._main import Context, run_step

SPEC = spec.MONITOR
ALIASES = ("serving", "champion")  # the version judged: what serves, else the champion
TAG_MODEL = "mlkube.model_name"
TAG_VERSION = "mlkube.model_version"
TAG_KEY = "mlkube.monitor_key"
TAG_VERDICT = "mlkube.monitor_verdict"  # drifted | stable | too_few_rows
RESULT_BUDGET = 3500  # bytes of the result document; psi keeps the highest values that fit
AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _since(text: str, now: datetime) -> datetime:
    match = AGE.match(text.strip())
    if match:
        return now - timedelta(**{AGE_UNITS[match[2]]: float(match[1])})
    return drift.parse_time(text, "--since")


def _version(name: str) -> tuple[str, str]:
    """The version judged and the alias that names it."""
    from mlflow.exceptions import MlflowException

    from mlkube import tracking

    for alias in ALIASES:
        try:
            return str(tracking.client().get_model_version_by_alias(name, alias).version), alias
        except MlflowException:
            continue
    raise MlkubeError(f"registered model {name!r} has no {' or '.join(map(repr, ALIASES))} "
                      "version: register (and deploy) one first, or pass --model-name")


def _profile(name: str, version: str) -> dict[str, Any]:
    """The training profile of ``name`` version ``version`` (its model metadata's ``profile``)."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    from mlkube.errors import first_line

    try:
        metadata = get_model_info(f"models:/{name}/{version}").metadata or {}
    except (MlflowException, OSError) as exc:
        raise MlkubeError(f"the model of {name} version {version} cannot be read: "
                          f"{first_line(exc)}") from None
    profile = metadata.get("profile")
    if isinstance(profile, str):
        profile = json.loads(profile)
    if not isinstance(profile, dict) or not isinstance(profile.get("features"), dict):
        raise MlkubeError(f"{name} version {version} carries no training profile (MLflow model "
                          "metadata 'profile'): train and register it with this mlkube")
    return profile


def _windows(ctx: Context, directory: Path) -> list[Path]:
    """The windows that count as the latest, oldest first (the names sort by time)."""
    if not directory.is_dir():
        return []
    files = sorted(p for p in directory.iterdir() if drift.WINDOW_NAME.match(p.name))
    if ctx.args.since is not None:
        since = _since(ctx.args.since, datetime.now(UTC))
        files = [p for p in files
                 if drift.parse_time(drift.read_window(p)["end"], f"window {p.name}'s end") >= since]
    if ctx.args.windows is not None:
        return files[-ctx.args.windows:]
    if ctx.args.since is not None:
        return files
    chosen: list[Path] = []
    rows = 0
    for path in reversed(files):
        if rows >= ctx.config.monitor.sample_rows:
            break
        chosen.insert(0, path)
        rows += int(drift.read_window(path)["rows"])
    return chosen


def _key(name: str, version: str, files: list[Path], ctx: Context) -> str:
    """What identifies a judgement: the version, the windows, the thresholds."""
    monitor = ctx.config.monitor
    text = json.dumps([name, version, [p.name for p in files], monitor.psi_threshold,
                       monitor.prediction_psi_threshold, monitor.min_rows])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _psi_field(verdict: drift.Verdict | None, base: dict[str, Any]) -> dict[str, float]:
    """Feature → PSI (6 decimals), the highest first while the result stays small."""
    from mlkube.result import dumps

    if verdict is None:
        return {}
    out: dict[str, float] = {}
    for name, value in verdict.ranked:
        out[name] = round(value, 6)
        if len(dumps({**base, "psi": out}).encode()) > RESULT_BUDGET:
            del out[name]
            break
    return out


def _metric_name(feature: str) -> str:
    return "psi." + re.sub(r"[^A-Za-z0-9_\-. /]", "_", feature)[:200]


def _log(ctx: Context, experiment_id: str, tags: dict[str, str], metrics: dict[str, float],
         params: dict[str, str], report: Path | None) -> tuple[str, str]:
    """One finished MLflow run with the report; on any failure none (deleted): (id, report URI)."""
    import time

    from mlflow.entities import Metric, Param

    from mlkube import tracking

    client = tracking.client()
    run = client.create_run(experiment_id, tags=tags,
                            run_name=f"monitor {tags[TAG_MODEL]} v{tags[TAG_VERSION]}")
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        entries = [Metric(k, v, now, 0) for k, v in metrics.items()]
        for i in range(0, len(entries), 1000):  # MLflow's batch limit
            client.log_batch(run_id, metrics=entries[i:i + 1000],
                             params=[Param(k, v) for k, v in params.items()] if i == 0 else [])
        uri = ""
        if report is not None:
            client.log_artifacts(run_id, str(report), "drift")
            uri = f"{run.info.artifact_uri}/drift/report.html"
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        try:
            client.delete_run(run_id)
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass
        raise
    return run_id, uri


def _judge(ctx: Context, name: str, version: str, profile: dict[str, Any],
           live: drift.Live) -> drift.Verdict | None:
    """The PSI of every feature and of the predictions; ``None``: too few rows to judge."""
    monitor = ctx.config.monitor
    if live.rows < monitor.min_rows:
        ctx.log(f"{live.rows} live rows, fewer than monitor.min_rows ({monitor.min_rows}): "
                "not judged (drifted: false)")
        return None
    features: dict[str, drift.Histogram] = {}
    skipped = []
    for feature, stats in profile["features"].items():
        hist = (drift.feature_histogram(feature, stats, live.features[feature])
                if feature in live.features else None)
        if hist is None:
            skipped.append(feature)
        else:
            features[feature] = hist
    if profile["features"] and not set(profile["features"]) & set(live.features):
        raise MlkubeError(
            f"the live windows of {name} v{version} name none of its profile's features "
            f"(windows: {', '.join(list(live.features)[:5])}; profile: "
            f"{', '.join(list(profile['features'])[:5])}): the runtime serves another model "
            "than this version, or the model records no feature names")
    if skipped:
        ctx.log(f"not judged, no counts on one side: {', '.join(skipped[:10])}"
                + (" …" if len(skipped) > 10 else ""))
    return drift.Verdict(
        model_name=name, version=version, features=features,
        prediction=drift.prediction_histogram(profile.get("target"), live.predictions),
        psi_threshold=monitor.psi_threshold,
        prediction_psi_threshold=monitor.prediction_psi_threshold, live=live, skipped=skipped)


def run(ctx: Context) -> dict[str, Any]:
    """Select the windows, judge them, log the report."""
    import tempfile

    from mlkube import tracking

    monitor = ctx.config.monitor
    if ctx.args.windows is not None and ctx.args.windows <= 0:
        raise MlkubeError(f"--windows is {ctx.args.windows}: pass 1 or more")
    stats_dir = Path(ctx.args.stats_dir).resolve() if ctx.args.stats_dir else \
        ctx.state_dir / "monitoring"
    lenient = ctx.args.no_data == "not-drifted"
    if not stats_dir.is_dir() and not lenient:
        raise MlkubeError(f"no live statistics at {stats_dir}: pass --stats-dir where the "
                          "serving runtime writes its windows")
    experiment_id = tracking.configure(ctx.state_dir, ctx.config.experiment)
    name = ctx.config.registry.model_name
    try:
        version, alias = _version(name)
    except MlkubeError:
        if not lenient:
            raise
        ctx.log(f"{name} has no {' or '.join(ALIASES)} version yet: nothing served, nothing "
                "judged (drifted: false)")
        return {"model_name": name, "champion_version": "", "drifted": False,
                "prediction_psi": None, "requests": 0, "rows": 0, "windows": 0, "run_id": "",
                "report_uri": "", "psi": {}}
    profile = _profile(name, version)
    directory = stats_dir / drift.safe_name(name) / version
    files = _windows(ctx, directory)
    docs = [drift.read_window(p) for p in files]
    live = drift.merge(files, docs)
    ctx.log(f"{name} v{version} ({alias}): {len(files)} window(s), {live.rows} rows, "
            f"{live.requests} requests" + ("" if files else f" (none under {directory})"))

    verdict = _judge(ctx, name, version, profile, live)
    drifted = verdict is not None and verdict.drifted
    prediction_psi = (round(verdict.prediction.psi, 6) if verdict is not None and verdict.prediction
                      is not None and verdict.prediction.psi is not None else None)
    state = "too_few_rows" if verdict is None else "drifted" if drifted else "stable"
    key = _key(name, version, files, ctx)
    found = tracking.find_run(experiment_id, {TAG_KEY: key})
    if found is not None:
        run_id = found.info.run_id
        uri = f"{found.info.artifact_uri}/drift/report.html" if verdict is not None else ""
        ctx.log(f"these windows were judged before: run {run_id}")
    else:
        tags = {**tracking.lineage_tags(SPEC.name, ctx.pipeline_run_id), TAG_KEY: key,
                TAG_MODEL: name, TAG_VERSION: version, TAG_VERDICT: state}
        metrics = {"rows": float(live.rows), "requests": float(live.requests),
                   "windows": float(len(files)), "drifted": float(drifted)}
        if verdict is not None:
            metrics.update({_metric_name(n): v for n, v in verdict.ranked})
        if prediction_psi is not None:
            metrics["prediction_psi"] = prediction_psi
        params = {"alias": alias, "psi_threshold": str(monitor.psi_threshold),
                  "prediction_psi_threshold": str(monitor.prediction_psi_threshold),
                  "min_rows": str(monitor.min_rows), "stats_dir": str(stats_dir)[:500],
                  "window_start": str(live.start), "window_end": str(live.end)}
        with tempfile.TemporaryDirectory(prefix="mlkube-drift-") as tmp:
            report = None
            if verdict is not None:
                report = Path(tmp) / "drift"
                drift.write_report(verdict, report)
            run_id, uri = _log(ctx, experiment_id, tags, metrics, params, report)
    if verdict is not None:
        top = ", ".join(f"{n} {v:.3f}" for n, v in verdict.ranked[:3])
        ctx.log(("DRIFTED" if drifted else "no drift") + f": highest PSI {top}"
                + (f"; predictions {prediction_psi:.3f}" if prediction_psi is not None else "")
                + f"; report {uri}")
    result: dict[str, Any] = {
        "model_name": name, "champion_version": version, "drifted": drifted,
        "prediction_psi": prediction_psi, "requests": live.requests, "rows": live.rows,
        "windows": len(files), "run_id": run_id, "report_uri": uri}
    result["psi"] = _psi_field(verdict, result)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the step."""
    return run_step(SPEC, run, argv)


if __name__ == "__main__":
    sys.exit(main())
