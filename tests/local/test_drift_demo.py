"""``mlkube demo drift`` end to end on a fresh state: the lifecycle, shifted traffic, the
monitor, retraining on drift, the shadow gate and the canary, checked in MLflow and the runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from mlkube.targets import local
from mlkube_testing import write_config

pytestmark = pytest.mark.slow


def test_drift_demo_retrains_shadows_and_promotes_or_says_why_not(state: Path,
                                                                    tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tune={"n_trials": 2, "workers": 2, "epochs": 2})
    done = subprocess.run([sys.executable, "-m", "mlkube.cli", "demo", "drift", "--config",
                           str(config)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "nothing serves mlkube-demo" in done.stdout  # a fresh state: the lifecycle ran first
    (summary_file,) = state.glob("runs/drift-demo-*/drift-demo.json")
    summary = json.loads(summary_file.read_text())
    client = mlflow.MlflowClient()

    monitor = client.get_run(summary["monitor_run_id"])
    assert monitor.data.tags["mlkube.monitor_verdict"] == "drifted" and summary["drifted"]
    assert Path(summary["report"]).is_file() and summary["report"] in done.stdout
    assert summary["report"].endswith("drift/report.html")

    reasons = [run.data.tags.get("mlkube.retrain_reason", "")
               for run in mlflow.search_runs(experiment_names=["mlkube-test"],
                                             output_format="list")]
    assert summary["reason"].startswith("drift (v1)") and summary["reason"] in reasons

    (server,) = local.servers(state)
    served = local.served_version(server)
    champion = str(client.get_model_version_by_alias("mlkube-demo", "champion").version)
    assert served == summary["serving_version"] == champion == summary["champion_after"]
    assert str(client.get_model_version_by_alias("mlkube-demo", "serving").version) == served
    if summary["outcome"] == "promoted":
        assert served == summary["challenger_version"] != "1"
        gate = client.get_model_version("mlkube-demo", served).tags["mlkube.gate"]
        assert gate.startswith("live: agreement") and summary["canary"].endswith("promoted")
    else:  # not better offline, kept by the shadow gate, or rolled back by the canary
        assert served == summary["champion_before"] == "1", summary
    assert f"outcome        {summary['outcome']}" in done.stdout
