"""``mlkube demo drift``: the closed loop on the local mode, shown step by step.

After the lifecycle (``make run`` / ``make demo``; run here first if nothing serves):

1. shifted traffic (``--shift``, :data:`SHIFTS`): rows of the prepared data set's held-out splits
   (validation and test: rows no model was fitted on) are sent to the published endpoint, one
   row a request, until the runtime writes a window of them (it writes one every 1000 requests,
   or every 60 s with requests; see :mod:`mlkube.serve.stats`):

   - ``in-support`` (the default): a covariate shift inside the training data's range, the
     held-out rows whose first feature is at or above its training
     :data:`SUPPORT_QUANTILE` quantile (on the bundled data: the largest fifth of tumours, by
     mean radius; the features that go with it, perimeter and area, move too). The monitor
     flags it, and two models fitted on the same data agree on such real rows, so the shadow
     gate passes and a challenger better offline is canaried and promoted;
   - ``out-of-range``: the held-out rows with their first :data:`SHIFTED_FEATURES` features moved
     by :data:`SHIFT_STD` training standard deviations, out of the training range, where two
     models extrapolate each their own way: whether they agree on ``registry.min_agreement``
     of the rows depends on the two (benchmarks/drift_shift.py measures it); when they do not,
     the shadow gate keeps the champion, which the summary says ("not promoted").

2. the monitor step judges those windows: drifted or not, the features of highest PSI and the
   drift report's path;
3. on drift, retraining with the reason: train (``--reason``) and register, under a demo config
   written to ``<state>/demo/drift.yaml`` (the user's, with a live gate and a canary: see
   :data:`LIVE_GATE`; and another seed with twice the epochs, since the same inputs would train
   the same weights again), then deploy, which shadows the challenger beside the champion, gates
   it on agreement, then canaries and promotes it, while a background thread keeps sending the
   shifted traffic that fills those windows;
4. a summary from MLflow and the runtime: what happened, including "not promoted" outcomes.

Every step is its own process, as in ``mlkube run``; nothing here fakes a verdict.
:class:`Traffic`, :func:`held_out_rows`, :func:`shifted_rows` and :func:`send_until_window` are
also what tests/dags/test_dag_runs.py sends through Airflow's retraining DAG.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlkube import config as configmod
from mlkube import spec
from mlkube.errors import MlkubeError
from mlkube.local.runner import LocalRun
from mlkube.result import atomic_write_text, read_result

IN_SUPPORT, OUT_OF_RANGE = "in-support", "out-of-range"
SHIFTS = (IN_SUPPORT, OUT_OF_RANGE)
# in-support: the held-out rows whose first feature is at or above this quantile of its training
# values (the top two deciles; PSI far over the threshold, all inside the training range)
SUPPORT_QUANTILE = 0.8
SHIFT_STD = 3.0  # out-of-range: how far the shifted features move, in training standard deviations
SHIFTED_FEATURES = 2  # out-of-range: how many features (the first ones) move
MAX_SHIFTED_REQUESTS = 5000  # the runtime writes a window at 1000 by default
WINDOW_WAIT = 120.0  # seconds at most for the runtime's window
# The demo's live gate (over the user's config): small windows, so a loopback demo fills them.
LIVE_GATE: dict[str, dict[str, Any]] = {
    "registry": {"min_live_requests": 50},
    "serving": {"canary_share": 0.5, "canary_requests": 50, "canary_seconds": 120,
                "shadow_share": 1.0, "shadow_seconds": 120},
}


def _say(text: str = "") -> None:
    print(text, flush=True)


def _step(local: LocalRun, step: spec.StepSpec, values: dict[str, Any],
          config_path: str | None) -> tuple[int, dict[str, Any] | None, list[str]]:
    """Run one step program, its output indented on the terminal; (exit, result, lines)."""
    result_file = local.folder / f"{step.name}.json"
    result_file.unlink(missing_ok=True)
    args = step.arguments({"config": config_path, "pipeline_run_id": local.run_id,
                           "result_file": str(result_file), **values})
    _say(f"==> {step.name}")
    process = subprocess.Popen([*step.command(sys.executable), *args], env=local.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if line.strip():
            _say("    " + line.rstrip("\n"))
    code = process.wait()
    return code, (read_result(result_file) if code == 0 and result_file.exists() else None), lines


def _must(found: tuple[int, dict[str, Any] | None, list[str]], name: str) -> dict[str, Any]:
    code, result, _ = found
    if result is None:
        raise MlkubeError(f"step {name} failed (exit {code}); its error is above")
    return result


def _serving(state_dir: Path, name: str, port: int) -> tuple[str, str] | None:
    """(base URL, version) of the model's running local server, or ``None``."""
    from mlkube.targets import local

    server = local.current(state_dir, name)
    if server is None or not local.running(server) or server.port != port:
        return None
    version = local.served_version(server)
    return (server.base_url, version) if version else None


def held_out_rows(dataset: str) -> list[list[float]]:
    """The prepared data set's validation and test rows, as they are: unshifted traffic (rows
    from the population the model was trained on that no model was fitted on)."""
    import numpy as np

    from mlkube import data

    x_val, _ = data.load_arrays(dataset, "validation")
    x_test, _ = data.load_arrays(dataset, "test")
    rows: list[list[float]] = np.concatenate([x_val, x_test]).astype(float).tolist()
    return rows


def shifted_rows(dataset: str, shift: str = IN_SUPPORT) -> tuple[list[list[float]], str]:
    """The held-out rows under ``shift`` (one of :data:`SHIFTS`, see the module doc), and the
    shift in words."""
    import numpy as np

    from mlkube import data

    if shift not in SHIFTS:
        raise MlkubeError(f"unknown shift {shift!r}: one of {', '.join(SHIFTS)}")
    info = data.load_info(dataset)
    x_train, _ = data.load_arrays(dataset, "train")
    rows = np.asarray(held_out_rows(dataset))
    if shift == IN_SUPPORT:
        cut = float(np.quantile(x_train[:, 0].astype(float), SUPPORT_QUANTILE))
        kept = rows[rows[:, 0] >= cut]
        if not len(kept):
            raise MlkubeError(f"no held-out row has {info.features[0]} >= {cut:g}, its training "
                              f"{SUPPORT_QUANTILE:g} quantile: nothing to send")
        return kept.tolist(), (
            f"the {len(kept)} held-out rows whose {info.features[0]} is at or above its training "
            f"{SUPPORT_QUANTILE:g} quantile ({cut:g}): a shift inside the training range")
    moved = list(info.features[:SHIFTED_FEATURES])
    for i in range(len(moved)):
        rows[:, i] += SHIFT_STD * float(x_train[:, i].astype(float).std())
    return rows.tolist(), (f"the {len(rows)} held-out rows with {' and '.join(moved)} moved by "
                           f"+{SHIFT_STD:g} training standard deviations, out of the training "
                           "range")


class Traffic:
    """Rows, one a request and in turn, to the published endpoint: :meth:`send` one, or a
    background thread (``with Traffic(...)``) that sends until the block ends."""

    def __init__(self, base_url: str, name: str, rows: list[list[float]]) -> None:
        from mlkube.serve import client

        self.base_url, self.name, self.rows = base_url, name, rows
        self.input_name = str(client.metadata(base_url, name)["inputs"][0]["name"])
        self.sent = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="drift-traffic")

    def send(self) -> None:
        from mlkube.serve import client

        row = self.rows[(self.sent + self.failed) % len(self.rows)]
        try:
            client.infer(self.base_url, self.name, [row], input_name=self.input_name, timeout=10)
            self.sent += 1
        except (MlkubeError, OSError):
            self.failed += 1  # a swap or a canary's bound: counted, the demo goes on

    def _run(self) -> None:
        while not self._stop.is_set():
            self.send()
            self._stop.wait(0.005)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def send_until_window(traffic: Traffic, directory: Path) -> list[Path]:
    """Send requests until the runtime has written a new window under ``directory``."""
    before = set(directory.glob("window-*.json")) if directory.is_dir() else set()
    deadline = time.monotonic() + WINDOW_WAIT
    while traffic.sent + traffic.failed < MAX_SHIFTED_REQUESTS and time.monotonic() < deadline:
        traffic.send()
        if (traffic.sent + traffic.failed) % 50 == 0 and directory.is_dir():
            new = sorted(set(directory.glob("window-*.json")) - before)
            if new:
                return new
    for _ in range(40):  # the runtime writes off the request path: give it a moment
        new = sorted(set(directory.glob("window-*.json")) - before) if directory.is_dir() else []
        if new:
            return new
        time.sleep(0.25)
    raise MlkubeError(f"the runtime wrote no window under {directory} after "
                      f"{traffic.sent} requests: was it started with --no-stats?")


def report_path(uri: str) -> str:
    """The drift report's path on disk (a ``file:`` URI), else the URI as it is."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme in ("file", "") and uri else uri


def demo_config(config_path: str | None, state_dir: Path, config: Any) -> Path:
    """The user's config with :data:`LIVE_GATE` and another seed and twice the epochs."""
    import yaml

    raw: dict[str, Any] = {}
    if config_path:
        raw = yaml.safe_load(Path(config_path).read_text()) or {}
    for section, values in LIVE_GATE.items():
        raw[section] = {**(raw.get(section) or {}), **values}
    raw["model"] = {**(raw.get("model") or {}), "seed": config.model.seed + 1,
                    "epochs": config.model.epochs * 2}
    raw["state_dir"] = str(state_dir)
    data = raw.get("data") or {}
    if data.get("path") and not Path(data["path"]).is_absolute() and config_path:
        data["path"] = str((Path.cwd() / data["path"]).resolve())
    path = state_dir / "demo" / "drift.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(raw, sort_keys=False))
    return path


def _gate_words(tag: str) -> str:
    return tag.removeprefix("live: ") if tag else "not judged"


def drift_demo(config_path: str | None, shift: str = IN_SUPPORT) -> dict[str, Any]:
    """Run the demo (module doc) with ``shift`` (one of :data:`SHIFTS`); return its summary
    (also ``<run folder>/drift-demo.json``)."""
    import os

    from mlkube import drift, tracking
    from mlkube.local import runner
    from mlkube.tracking import embedded_tracking_uri

    if shift not in SHIFTS:
        raise MlkubeError(f"unknown shift {shift!r}: one of {', '.join(SHIFTS)}")
    config = configmod.load(config_path)
    state_dir = configmod.state_dir(config)
    # The steps' MLflow (LocalRun.env), for this process's reads of it too.
    os.environ.setdefault("MLFLOW_TRACKING_URI", embedded_tracking_uri(state_dir))
    config_path = str(Path(config_path).resolve()) if config_path else None
    name, port = config.registry.model_name, config.serving.port
    serving = _serving(state_dir, name, port)
    if serving is None:
        _say(f"nothing serves {name} on port {port}: running the lifecycle first (mlkube run)")
        runner.print_summary(runner.lifecycle(config_path))
        serving = _serving(state_dir, name, port)
        if serving is None:
            raise MlkubeError(f"the lifecycle finished but nothing serves {name} on port {port}")
    base_url, champion = serving
    local = LocalRun(config_path=config_path, state_dir=state_dir,
                     run_id=time.strftime("drift-demo-%Y%m%dT%H%M%S"))
    _say(f"\n{name} v{champion} serves at {base_url}")
    prepared = _must(_step(local, spec.PREPARE_DATA, {}, config_path), "prepare-data")
    dataset = prepared["dataset_uri"]
    rows, words = shifted_rows(dataset, shift)

    _say(f"\n1. shifted traffic ({shift}): {words}; one row a request, until the runtime "
         "writes a window")
    directory = state_dir / "monitoring" / drift.safe_name(name) / champion
    traffic = Traffic(base_url, name, rows)
    windows = send_until_window(traffic, directory)
    _say(f"   {traffic.sent} requests answered; the runtime wrote {len(windows)} window(s): "
         f"{windows[-1]}")

    _say("\n2. the monitor judges those windows against v" + champion + "'s training profile")
    monitor = _must(_step(local, spec.MONITOR, {"windows": len(windows)}, config_path), "monitor")
    report = report_path(monitor["report_uri"])
    top = sorted(monitor["psi"].items(), key=lambda item: -float(item[1]))[:3]
    _say(f"   drifted: {str(monitor['drifted']).lower()} over {monitor['rows']} rows; highest PSI "
         + ", ".join(f"{k} {v:.2f}" for k, v in top)
         + f" (threshold {config.monitor.psi_threshold:g})")
    _say(f"   drift report: {report}")
    summary: dict[str, Any] = {
        "run_id": local.run_id, "model_name": name, "shift": shift, "champion_before": champion,
        "drifted": bool(monitor["drifted"]), "psi": dict(top), "monitor_run_id": monitor["run_id"],
        "report": report, "reason": "", "challenger_version": None, "shadow": None,
        "canary": None, "outcome": "no retraining", "serving_version": champion,
    }
    if monitor["drifted"]:
        _retrain(local, config_path, config, state_dir, dataset, monitor, base_url, rows,
                 summary)
    serving = _serving(state_dir, name, port)
    summary["serving_version"] = serving[1] if serving else None
    client = tracking.client()
    summary["champion_after"] = str(client.get_model_version_by_alias(name, "champion").version)
    atomic_write_text(local.folder / "drift-demo.json", json.dumps(summary, indent=2))
    print_summary(summary)
    return summary


def _retrain(local: LocalRun, config_path: str | None, config: Any, state_dir: Path,
             dataset: str, monitor: dict[str, Any], base_url: str, rows: list[list[float]],
             summary: dict[str, Any]) -> None:
    from mlkube import live_gates, retrain, tracking

    name = config.registry.model_name
    reason = retrain.reason(False, monitor)
    summary["reason"] = reason
    gated = str(demo_config(config_path, state_dir, config))
    _say(f"\n3. retraining, reason: {reason!r}")
    _say(f"   on the same prepared data (no new labels arrived), seed {config.model.seed + 1} "
         f"and {config.model.epochs * 2} epochs, under {gated}: a challenger better offline "
         f"waits for {LIVE_GATE['registry']['min_live_requests']} shadowed live requests, then a "
         f"canary of {LIVE_GATE['serving']['canary_share']:.0%} for "
         f"{LIVE_GATE['serving']['canary_requests']} requests")
    tuned = _must(_step(local, spec.TUNE, {"dataset": dataset}, config_path), "tune")
    trained = _must(_step(local, spec.TRAIN, {"dataset": dataset, "params": tuned["best_params"],
                                              "reason": reason}, gated), "train")
    registered = _must(_step(local, spec.REGISTER, {"dataset": dataset,
                                                    "run_id": trained["run_id"],
                                                    "reason": reason}, gated), "register")
    version = str(registered["version"])
    summary["challenger_version"] = version
    summary["offline"] = {"metric": registered["metric"],
                          "challenger": registered["challenger_value"],
                          "champion": registered["champion_value"]}
    client = tracking.client()
    tag = str(client.get_model_version(name, version).tags.get(live_gates.TAG_GATE, ""))
    if version == summary["champion_before"]:
        summary["outcome"] = "not promoted: the retraining gave the serving version again"
        return
    if not tag.startswith(live_gates.AWAITING):
        summary["outcome"] = (f"not promoted: v{version} is not better than champion "
                              f"v{summary['champion_before']} offline, so it is not shadowed")
        return
    _say("\n4. deploy: shadow, gate, canary (shifted traffic keeps coming in the background)")
    with Traffic(base_url, name, rows) as traffic:
        code, _, lines = _step(local, spec.DEPLOY, {"dataset": dataset}, gated)
    _say(f"   {traffic.sent} background requests answered, {traffic.failed} failed")
    tag = str(client.get_model_version(name, version).tags.get(live_gates.TAG_GATE, ""))
    summary["shadow"] = _gate_words(tag)
    canary = [x for x in lines if re.search(rf"canary v{version}: ", x)]
    summary["canary"] = re.sub(r"^.*?canary v\d+: ", "", canary[-1]) if canary else None
    champion = str(client.get_model_version_by_alias(name, "champion").version)
    if code != 0:
        summary["outcome"] = (f"rolled back: v{version}'s canary failed its bounds; "
                              f"v{summary['champion_before']} serves")
    elif champion != version and tag.startswith(live_gates.AWAITING):
        summary["outcome"] = (f"not promoted: too few shadowed requests within "
                              f"serving.shadow_seconds; champion v{champion} stays and the next "
                              "deploy judges the challenger")
    elif champion != version:
        summary["outcome"] = (f"not promoted: the shadow gate kept champion v{champion} (the "
                              "challenger agreed with it on fewer of the live rows than "
                              "registry.min_agreement asks: see the shadow line)")
    else:
        summary["outcome"] = "promoted"


def print_summary(summary: dict[str, Any]) -> None:
    """The closing lines of ``mlkube demo drift``."""
    psi = ", ".join(f"{k} {v:.2f}" for k, v in summary["psi"].items()) or "-"
    offline = summary.get("offline")
    _say(f"""
mlkube demo drift {summary['run_id']}
  shift          {summary['shift']}
  drift          {'DRIFTED' if summary['drifted'] else 'no drift'} (highest PSI {psi})
  report         {summary['report'] or '-'}
  reason         {summary['reason'] or '-'}
  challenger     {('v' + summary['challenger_version']) if summary['challenger_version'] else '-'}"""
         + (f" ({offline['metric']} {offline['challenger']:.4f} vs champion "
            f"{offline['champion']:.4f} offline)" if offline and offline['champion'] is not None
            else "") + f"""
  shadow         {summary['shadow'] or '-'}
  canary         {summary['canary'] or '-'}
  outcome        {summary['outcome']}
  serving now    v{summary['serving_version']} (champion v{summary['champion_after']}, before v{summary['champion_before']})""")
