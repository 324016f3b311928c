"""The retraining DAG closes the loop under dag.test() on the local backend, on real traffic
(issue 17's "Done when", through Airflow), three runs:

1. a fresh deployment: the data is new, so the champion (v1) is trained, registered and served;
2. unshifted live traffic (the prepared data set's held-out rows, as they are, one a request to
   the runtime) makes a window; the next run judges it, does not drift, does not retrain;
3. shifted live traffic (``mlkube demo drift``'s default shift: the held-out rows in the top two
   training deciles of the first feature, inside the training range) makes a window; the next
   run, under the demo's live gate and canary (the demo's config: ``drift_demo.demo_config``)
   and with the shifted traffic going on in a background thread, monitors drifted, emits the
   drift asset's event, trains, registers the challenger "awaiting live evidence", and deploy
   shadows it beside the champion, gates it on live agreement, canaries it and promotes it.

The rollback half (a second test, runs 1 and 3 only): the same shifted run with
``serving.canary_max_p99_ms: 0.001`` (one microsecond: no model answers within it, and the
config allows any bound > 0), so the challenger passes the shadow gate, takes ``champion``, and
its canary is worse than the bounds: deploy unloads it, v1 serves on, ``champion`` goes back to
v1, and the deploy task fails with the step's one line (the run is marked failed).

The traffic, the rows and the demo's config are ``mlkube.local.drift_demo``'s (one description
of each). The model is pinned (one hidden layer of 16, seed 0 and 4 epochs; the demo's config
retrains with seed 1 and 8): the champion scores 0.965 on the test split and the challenger
0.988, so the challenger is better offline; on the shifted rows the two agree on 30 of 30 rows,
and the held-out rows' highest feature PSI, cycled to 1000 requests, is 0.155 (threshold 0.2):
measured outside the DAG with benchmarks/drift_shift.py (the same training code, this CPU).

Real Airflow 3, real MLflow (SQLite), real PyTorch, and a real model server on loopback.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from dag_runs import get_dag, result, stop_servers, task_states

from mlkube.airflow import pools
from mlkube_testing import free_port

pytestmark = pytest.mark.slow

MODEL = "mlkube-demo"
# small and pinned (see the module doc); the monitor judges the newest window only (the
# runtime writes one every 1000 requests)
CONFIG: dict[str, Any] = {
    "model": {"epochs": 4, "hidden_sizes": [16]},
    "monitor": {"sample_rows": 1000},
}


@pytest.fixture
def local_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    airflow_db: None) -> Iterator[Path]:
    """The local backend with a throwaway state directory and the small config."""
    state = tmp_path / "state"
    config = tmp_path / "lifecycle.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "serving": {"port": free_port()}}))
    monkeypatch.setenv("MLKUBE_BACKEND", "local")
    monkeypatch.setenv("MLKUBE_STATE_DIR", str(state))
    monkeypatch.setenv("MLKUBE_CONFIG", str(config))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLKUBE_MLFLOW_CONN_ID", raising=False)
    try:
        yield state
    finally:
        stop_servers(state)


def _drift_events(*runs: Any) -> list[Any]:
    """The events of the ``mlkube_drift`` asset in Airflow's metadata database that ``runs``
    emitted (the database is the session's: other tests' runs emit theirs)."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id ==
                                                        AssetModel.id)
                               .where(AssetModel.name == "mlkube_drift")).all()
        return [(row.source_task_id, row.source_run_id, dict(row.extra or {})) for row in rows
                if row.source_run_id in {run.run_id for run in runs}]


def _client(state: Path) -> Any:
    from mlkube import tracking

    tracking.configure(state, "mlkube")
    return tracking.client()


@dataclass
class Deployed:
    """What the first run left: the champion (v1) serving, and where its windows go."""

    state: Path
    server: Any  # mlkube.targets.local.Server
    dataset: str
    windows: Path
    client: Any  # MLflow's client
    run: Any  # the first DAG run
    deploy: dict[str, Any]  # its deploy result


@dataclass
class Shifted:
    """A run after shifted traffic, under the demo's live gate, with the traffic going on."""

    run: Any  # the DAG run
    logs: str
    background: Any  # drift_demo.Traffic
    reason: str = ""


def _fresh_deployment(state: Path) -> Deployed:
    """Run 1: a fresh deployment (nothing served yet, so nothing drifted, and no event): the
    champion v1 is trained, registered and served."""
    from mlkube import drift
    from mlkube.targets import local

    dag = get_dag("scheduled_retraining")
    # register and deploy take the model's pool; it exists, as README.md has users create it
    assert pools.create_pools([dag]) == ["mlkube-mlkube-demo"]
    first = dag.test()
    assert task_states(first) == {**{task: "success" for task in (
        "prepare_data", "monitor", "should_retrain", "train", "register", "deploy")},
        "drift_detected": "skipped"}
    assert result(first, "prepare_data")["changed"] == "true"
    assert result(first, "monitor")["drifted"] is False
    assert str(result(first, "register")["promoted"]).lower() == "true"
    champion = result(first, "register")["version"]
    assert champion == "1" and result(first, "deploy")["version"] == "1"
    client = _client(state)
    assert client.get_run(result(first, "train")["run_id"]).data.tags[
        "mlkube.retrain_reason"] == "data changed"
    assert client.get_model_version(MODEL, "1").tags["mlkube.retrain_reason"] == "data changed"
    server = local.current(state, MODEL)
    assert server is not None and local.served_version(server) == "1"
    return Deployed(state=state, server=server, dataset=result(first, "prepare_data")[
        "dataset_uri"], windows=state / "monitoring" / drift.safe_name(MODEL) / "1",
        client=client, run=first, deploy=result(first, "deploy"))


def _shifted_run(deployed: Deployed, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str], **serving: Any) -> Shifted:
    """Shifted traffic until the runtime writes a window, then a run under the demo's config
    (``serving`` merged into its serving section) with the traffic going on in the background;
    what every such run shows up to register: drifted, the drift event, a challenger v2 better
    offline, "awaiting live evidence"."""
    from mlkube import config as configmod
    from mlkube.local import drift_demo

    state, server = deployed.state, deployed.server
    rows, _ = drift_demo.shifted_rows(deployed.dataset, drift_demo.IN_SUPPORT)
    drift_demo.send_until_window(drift_demo.Traffic(server.base_url, MODEL, rows),
                                 deployed.windows)
    mine = state.parent / "lifecycle.yaml"
    gated = drift_demo.demo_config(str(mine), state, configmod.load(str(mine)))
    if serving:
        raw = yaml.safe_load(gated.read_text())
        raw["serving"] = {**raw["serving"], **serving}
        gated.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MLKUBE_CONFIG", str(gated))
    capsys.readouterr()
    with drift_demo.Traffic(server.base_url, MODEL, rows) as background:
        run = get_dag("scheduled_retraining").test()
    shifted = Shifted(run=run, logs=capsys.readouterr().out, background=background)
    assert background.sent > 0, "the background traffic never got an answer"
    states = task_states(run)
    assert {task: states.get(task) for task in (
        "prepare_data", "monitor", "should_retrain", "drift_detected", "train", "register")} \
        == dict.fromkeys(("prepare_data", "monitor", "should_retrain", "drift_detected",
                          "train", "register"), "success"), shifted.logs[-5000:]
    monitored = result(run, "monitor")
    assert monitored["drifted"] is True and monitored["champion_version"] == "1"
    assert monitored["rows"] >= 1000 and max(monitored["psi"].values()) > 0.2
    shifted.reason = result(run, "should_retrain")
    assert shifted.reason.startswith("drift (v1): psi "), shifted.reason
    registered = result(run, "register")
    assert registered["version"] == "2" and str(registered["promoted"]).lower() == "false"
    assert registered["challenger_value"] > registered["champion_value"]  # better offline
    client = deployed.client
    assert client.get_run(result(run, "train")["run_id"]).data.tags[
        "mlkube.retrain_reason"] == shifted.reason
    assert client.get_model_version(MODEL, "2").tags["mlkube.retrain_reason"] == shifted.reason
    ((task_id, run_id, extra),) = _drift_events(deployed.run, run)
    assert (task_id, run_id) == ("drift_detected", run.run_id)
    assert extra["champion_version"] == "1" and extra["report_uri"].endswith("report.html")
    # shadowed beside the champion, and it passed the live agreement gate
    assert "shadow v2 beside champion v1: waiting for 50 mirrored" in shifted.logs
    assert "shadow v2: agreement " in shifted.logs and "it takes the champion alias" in \
        shifted.logs, shifted.logs[-5000:]
    return shifted


def _alias(client: Any, alias: str) -> str:
    return str(client.get_model_version_by_alias(MODEL, alias).version)


def test_retraining_loop_on_real_traffic_unshifted_then_shifted(
        local_lifecycle: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from mlkube.local import drift_demo
    from mlkube.targets import local

    deployed = _fresh_deployment(local_lifecycle)
    server, client = deployed.server, deployed.client

    # 2. unshifted traffic: the held-out rows as they are; judged, not drifted, not retrained
    unshifted = drift_demo.Traffic(server.base_url, MODEL,
                                   drift_demo.held_out_rows(deployed.dataset))
    drift_demo.send_until_window(unshifted, deployed.windows)
    assert unshifted.sent >= 1000 and unshifted.failed == 0
    second = get_dag("scheduled_retraining").test()
    monitored = result(second, "monitor")
    assert monitored["drifted"] is False and monitored["champion_version"] == "1"
    assert monitored["rows"] >= 1000, monitored  # judged: not a too-few-rows "not drifted"
    assert max(monitored["psi"].values()) <= 0.2, monitored["psi"]
    assert task_states(second) == {"prepare_data": "success", "monitor": "success",
                                   "should_retrain": "success", "drift_detected": "skipped",
                                   "train": "skipped", "register": "skipped",
                                   "deploy": "success"}
    assert result(second, "prepare_data")["changed"] == "false"
    assert result(second, "deploy") == deployed.deploy
    assert _drift_events(deployed.run, second) == []
    assert [str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")] == ["1"]

    # 3. shifted traffic, then a run under the demo's live gate with the traffic going on:
    # shadowed, gated on live agreement, canaried, promoted; MLflow and the runtime agree
    third = _shifted_run(deployed, monkeypatch, capsys)
    logs = third.logs
    assert task_states(third.run)["deploy"] == "success", logs[-5000:]
    gate = client.get_model_version(MODEL, "2").tags["mlkube.gate"]
    found = re.fullmatch(r"live: agreement \d\.\d{3} >= 0\.9 over (\d+) live requests beside v1",
                         gate)
    assert found and int(found[1]) >= 50, gate  # registry.min_live_requests
    assert re.search(r"canary v2: error rate [\d.]+%, p99 [\d.]+ ms over \d+ requests, within "
                     r"the bounds: promoted", logs), logs[-5000:]
    assert _alias(client, "champion") == "2" and _alias(client, "serving") == "2"
    assert result(third.run, "deploy")["version"] == "2"
    assert result(third.run, "deploy")["replaced_version"] == "1"
    assert local.served_version(server) == "2"


def test_a_retrained_challenger_worse_in_its_canary_is_rolled_back_under_airflow(
        local_lifecycle: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The rollback half: the same shifted run, but the canary's p99 bound is one microsecond
    (serving.canary_max_p99_ms: 0.001, which no model answers within), so the challenger that
    passed the shadow gate is worse on the canary's live bounds: it is unloaded, v1 serves on,
    and the champion alias, which the shadow gate had moved to v2, goes back to v1."""
    from mlkube.serve import client as serve_client
    from mlkube.targets import local

    deployed = _fresh_deployment(local_lifecycle)
    server, client = deployed.server, deployed.client
    shifted = _shifted_run(deployed, monkeypatch, capsys, canary_max_p99_ms=0.001)
    logs, run = shifted.logs, shifted.run

    # the deploy task failed, in one line naming the bound and the version that serves
    assert task_states(run)["deploy"] == "failed", logs[-5000:]
    assert run.state == "failed"
    with pytest.raises(AssertionError, match="no result for deploy"):
        result(run, "deploy")
    # the step's one error line is the task's error (which Airflow logs under its traceback)
    (line,) = re.findall(r"mlkube deploy: error: ([^\n]*?/infer)", logs)
    assert f"mlkube.errors.MlkubeError: error: {line}\n" in logs, logs[-5000:]
    found = re.fullmatch(r"version 2 failed its rollout \(canary v2: p99 ([\d.]+) ms over the "
                         r"bound 0\.001 ms \(serving\.canary_max_p99_ms\) over (\d+) requests\); "
                         r"rolled back: version 1 serves at (\S+)", line)
    assert found and float(found[1]) > 0.001 and int(found[2]) >= 1, line
    assert found[3] == deployed.deploy["endpoint"], line
    assert "canary v2 rolled back: the champion alias is v1 again" in logs

    # MLflow: champion and serving on v1, no challenger left to shadow again; v2's tags
    assert _alias(client, "champion") == "1" and _alias(client, "serving") == "1"
    assert "challenger" not in client.get_registered_model(MODEL).aliases
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["mlkube.retrain_reason"] == shifted.reason
    gate = re.fullmatch(r"live: agreement \d\.\d{3} >= 0\.9 over (\d+) live requests beside v1; "
                        r"canary (p99 [\d.]+ ms over the bound 0\.001 ms .*): rolled back, "
                        r"champion v1 restored", tags["mlkube.gate"])
    assert gate and int(gate[1]) >= 50, tags["mlkube.gate"]  # registry.min_live_requests
    assert gate[2] in line

    # the runtime: v1 serves, neither a canary nor a shadow is loaded; no request failed
    assert local.served_version(server) == "1"
    live = serve_client.live_numbers(server.base_url, MODEL)
    assert live["canary"] is None and live["shadow"] is None, live
    assert shifted.background.failed == 0
