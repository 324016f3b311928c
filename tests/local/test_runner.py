"""``mlkube run`` end to end on the embedded default, and its failure modes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd

from mlkube.serve import client
from mlkube.targets import local
from mlkube_testing import write_config

MLKUBE = [sys.executable, "-m", "mlkube.cli"]


def _mlkube(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MLKUBE, *args], capture_output=True, text=True, timeout=600)


def test_run_whole_lifecycle_to_a_live_endpoint(state: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml")
    done = _mlkube("run", "--config", str(config))
    assert done.returncode == 0, done.stderr[-2000:]
    for step in ("prepare-data", "tune", "train", "register", "deploy"):
        assert f"==> {step}" in done.stdout
    assert "finished in" in done.stdout and "MLflow UI" in done.stdout
    (summary_file,) = state.glob("runs/*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["promoted"] == "true" and summary["champion_version"] == "1"
    assert set(summary["timings_s"]) == {"prepare-data", "tune", "train", "register", "deploy"}

    prepared = json.loads((summary_file.parent / "prepare-data.json").read_text())
    rows = pd.read_parquet(Path(prepared["dataset_uri"]) / "test.parquet").drop(columns="target")
    base_url = summary["endpoint"].split("/v2/")[0]
    outputs = client.infer(base_url, "mlkube-demo", rows.head(4).to_numpy(dtype=float).tolist())
    assert len(outputs["label"]) == 4
    version = mlflow.MlflowClient().get_model_version_by_alias("mlkube-demo", "champion")
    assert version.tags["mlkube.pipeline_run_id"] == summary["run_id"]

    status = _mlkube("serve", "status")
    assert status.returncode == 0 and "mlkube-demo v1 up" in status.stdout
    assert _mlkube("serve", "stop").returncode == 0
    assert local.servers(state) == []
    assert _mlkube("serve", "status").stdout.strip() == "nothing is deployed locally"


def test_bad_config_stops_before_any_step(state: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("modle:\n  epochs: 3\n")
    store = (state / "mlflow.db").read_bytes()  # the empty store every test starts with
    done = _mlkube("run", "--config", str(config))
    assert done.returncode == 1
    assert done.stderr.strip() == (f"mlkube run: error: {config}: unknown config key 'modle'; "
                                   "known keys here: experiment, state_dir, data, model, tune, "
                                   "registry, serving, monitor")
    assert "==>" not in done.stdout and (state / "mlflow.db").read_bytes() == store
    assert sorted(p.name for p in state.iterdir()) == ["mlflow.db"]  # nothing else either


def test_failing_step_stops_the_run_with_its_reason(state: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", data={"path": str(tmp_path / "missing.csv")})
    done = _mlkube("run", "--config", str(config))
    assert done.returncode == 1
    errors = [x for x in done.stderr.splitlines() if x.startswith("mlkube ")]
    assert errors == [
        f"mlkube prepare-data: error: input file {tmp_path / 'missing.csv'} not found: check "
        "data.path / --input",
        "mlkube run: error: step prepare-data failed (exit 1); its error is above",
    ]
    assert "==> tune" not in done.stdout and not (state / "serving").exists()
