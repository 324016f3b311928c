"""The demo entry point runs dags/ml_lifecycle.py through real Airflow to a live endpoint."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from dag_runs import REPO, small_config, stop_servers

pytestmark = pytest.mark.slow


def test_demo_reaches_a_live_endpoint(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "MLKUBE_", "MLFLOW_"))}
    command = [sys.executable, "-m", "mlkube.airflow.demo", "--state-dir", str(state),
               "--config", str(small_config(tmp_path / "lifecycle.yaml"))]
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
        found = re.search(r"endpoint +(http://127\.0\.0\.1:\d+)/invocations", done.stdout)
        assert found, done.stdout[-2000:]
        with urllib.request.urlopen(f"{found.group(1)}/ping", timeout=10) as response:
            assert response.status == 200
        assert (state / "airflow" / "airflow.db").is_file()  # Airflow's own home, not the user's
    finally:
        stop_servers(state)
