"""``mlkube demo drift`` end to end on a fresh state: the lifecycle, shifted traffic, the monitor,
retraining on drift, the shadow gate and the canary, checked in MLflow and the runtime.

The configs pin the model (one hidden layer of 16 and the model section's learning rate, 0.003:
tune's space has one choice), so each outcome is the models', measured beforehand with
benchmarks/drift_shift.py (the same training code, on this machine's CPU):

- the default shift (in-support: the held-out rows in the top two training deciles of
  mean_radius): the champion (seed 0, 4 epochs) scores 0.965 on the test split, the demo's
  challenger (seed 1, 8 epochs) 0.988, so it is better offline and shadowed; the two agree on 30
  of 30 of those rows, over the gate's 0.9: it is promoted;
- out-of-range (two features moved +3 training standard deviations): a champion of 1 epoch
  scores 0.9059, its challenger of 2 epochs 0.9765, better offline and shadowed, but the two
  agree on only 0.724 of those rows: the shadow gate keeps the champion.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest

from mlkube.targets import local
from mlkube_testing import write_config

pytestmark = pytest.mark.slow

PINNED_TUNE = {"n_trials": 2, "workers": 2, "epochs": 2,
               "search_space": {"hidden_sizes": {"type": "categorical", "choices": ["16"]}}}


def _demo(state: Path, config: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Run ``mlkube demo drift`` on a fresh state; its summary and its output."""
    done = subprocess.run([sys.executable, "-m", "mlkube.cli", "demo", "drift", "--config",
                           str(config), *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "nothing serves mlkube-demo" in done.stdout  # a fresh state: the lifecycle ran first
    (summary_file,) = state.glob("runs/drift-demo-*/drift-demo.json")
    return json.loads(summary_file.read_text()), done.stdout


def test_drift_demo_in_support_shift_retrains_shadows_canaries_and_promotes(
        state: Path, tmp_path: Path) -> None:
    summary, out = _demo(state, write_config(tmp_path / "c.yaml", model={"epochs": 4},
                                             tune=PINNED_TUNE))
    assert summary["shift"] == "in-support" and "inside the training range" in out
    client = mlflow.MlflowClient()

    monitor = client.get_run(summary["monitor_run_id"])
    assert monitor.data.tags["mlkube.monitor_verdict"] == "drifted" and summary["drifted"]
    assert max(summary["psi"].values()) > 0.2  # monitor.psi_threshold, the default
    assert Path(summary["report"]).is_file() and summary["report"] in out
    assert summary["report"].endswith("drift/report.html")

    reasons = [run.data.tags.get("mlkube.retrain_reason", "")
               for run in mlflow.search_runs(experiment_names=["mlkube-test"],
                                             output_format="list")]
    assert summary["reason"].startswith("drift (v1)") and summary["reason"] in reasons

    # promoted: the champion alias moved to the challenger, and what serves is it
    assert summary["outcome"] == "promoted", summary
    challenger = summary["challenger_version"]
    assert challenger not in (None, "1") and summary["champion_before"] == "1"
    (server,) = local.servers(state)
    assert local.served_version(server) == challenger == summary["serving_version"]
    assert str(client.get_model_version_by_alias("mlkube-demo", "champion").version) == challenger
    assert str(client.get_model_version_by_alias("mlkube-demo", "serving").version) == challenger
    assert summary["champion_after"] == challenger
    tags = client.get_model_version("mlkube-demo", challenger).tags
    assert tags["mlkube.gate"].startswith("live: agreement ") and ">= 0.9 over " in \
        tags["mlkube.gate"] and tags["mlkube.gate"].endswith("beside v1"), tags["mlkube.gate"]
    assert tags["mlkube.retrain_reason"] == summary["reason"]
    assert summary["canary"].endswith("promoted") and "outcome        promoted" in out


def test_drift_demo_out_of_range_shift_keeps_the_champion_when_the_shadow_disagrees(
        state: Path, tmp_path: Path) -> None:
    summary, out = _demo(state, write_config(tmp_path / "c.yaml", model={"epochs": 1},
                                             tune=PINNED_TUNE), "--shift", "out-of-range")
    assert summary["shift"] == "out-of-range" and "out of the training range" in out
    assert summary["drifted"] and max(summary["psi"].values()) > 0.2
    client = mlflow.MlflowClient()
    challenger = summary["challenger_version"]
    assert challenger not in (None, "1")
    assert summary["offline"]["challenger"] > summary["offline"]["champion"]  # shadowed
    gate = client.get_model_version("mlkube-demo", challenger).tags["mlkube.gate"]
    found = re.fullmatch(r"live: agreement (\d\.\d{3}) under 0\.9 over (\d+) live requests "
                         r"beside v1; not promoted", gate)
    assert found and int(found[2]) >= 50, gate
    assert summary["outcome"].startswith("not promoted: the shadow gate kept champion v1")
    assert summary["canary"] is None  # kept before any canary
    (server,) = local.servers(state)
    assert local.served_version(server) == "1" == summary["serving_version"]
    for alias, version in (("champion", "1"), ("serving", "1"), ("challenger", challenger)):
        assert str(client.get_model_version_by_alias("mlkube-demo", alias).version) == version
