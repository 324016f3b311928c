"""The demo entry point runs dags/ml_lifecycle.py through real Airflow to a live endpoint:
the lifecycle DAG's end-to-end test (one run serves both).

What the terminal gets: a start and an end line per task, a summary ending with a real request
to the endpoint and its answer; Airflow's own log goes to a file.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from dag_runs import REPO, predict, recorded_run, small_config, stop_servers

pytestmark = pytest.mark.slow

TASKS = {"prepare_data", "tune_workers[0]", "tune_workers[1]", "tune_select", "train",
         "register", "deploy"}
AIRFLOW_NOISE = ("alembic", "Pushing xcom", "[DAG TEST]", "Task instance state updated")


def _prediction(stdout: str) -> tuple[dict, dict, str]:
    """The request body, the answer and the URL of the summary's curl line."""
    lines = stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  $ curl "))
    argv = shlex.split(lines[at].removeprefix("  $ "))
    return json.loads(argv[argv.index("-d") + 1]), json.loads(lines[at + 1]), argv[-3]


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
        found = re.search(r"endpoint +(http://127\.0\.0\.1:\d+)/v2/models/mlkube-demo/infer",
                          done.stdout)
        assert found, done.stdout[-2000:]
        ready = f"{found.group(1)}/v2/models/mlkube-demo/ready"
        with urllib.request.urlopen(ready, timeout=10) as response:
            assert response.status == 200
        assert (state / "airflow" / "airflow.db").is_file()  # Airflow's own home, not the user's

        # one start and one end line per task instance, and none of Airflow's log
        starts = re.findall(r"^  (\S+) +start$", done.stdout, re.MULTILINE)
        ends = re.findall(r"^  (\S+) +done +\d+\.\d s", done.stdout, re.MULTILINE)
        assert sorted(starts) == sorted(ends) == sorted(TASKS), done.stdout
        assert re.search(r"^  train +done .* accuracy 0\.\d{4}", done.stdout, re.MULTILINE)
        assert re.search(r"^  deploy +done .* v1 at http://", done.stdout, re.MULTILINE)
        assert "\r" not in done.stdout  # no live status line without a terminal
        for noise in AIRFLOW_NOISE:
            assert noise not in done.stdout + done.stderr, noise
        log = state / "airflow" / "demo.log"
        assert str(log) in done.stdout
        text = log.read_text()
        assert all(noise in text for noise in AIRFLOW_NOISE)
        assert "[train] epoch 1/3" in text  # the steps' own output is in the task log

        # the summary ends with a request the user can repeat, and the model's answer
        request, answer, url = _prediction(done.stdout)
        assert url == f"{found.group(1)}/v2/models/mlkube-demo/infer"
        (tensor,) = request["inputs"]
        assert tensor["shape"] == [1, 30] and len(tensor["data"]) == 30
        outputs = {o["name"]: o for o in answer["outputs"]}
        probabilities = outputs["probabilities"]["data"]
        assert len(probabilities) == 2 and math.isclose(sum(probabilities), 1, rel_tol=1e-4)
        assert outputs["probabilities"]["parameters"]["labels"] == ["0", "1"]
        assert outputs["label"]["data"][0] in ("0", "1")

        # what Airflow recorded of the run: every task succeeded, and the steps' results
        states, results = recorded_run(state / "airflow" / "airflow.db")
        with sqlite3.connect(state / "airflow" / "airflow.db") as db:  # the demo made the pool
            assert db.execute("SELECT slots, include_deferred FROM slot_pool WHERE pool = "
                              "'mlkube-mlkube-demo'").fetchall() == [(1, 1)]
        assert states == {task: "success" for task in (
            "prepare_data", "tune_workers", "tune_select", "train", "register", "deploy")}
        prepared = results[("prepare_data", -1)]
        workers = [results[("tune_workers", i)] for i in (0, 1)]
        best = results[("tune_select", -1)]
        assert {w["study_name"] for w in workers} == {best["study_name"]}  # one shared study
        assert best["trials"] == 2
        trained, registered = results[("train", -1)], results[("register", -1)]
        assert registered["version"] == "1" and str(registered["promoted"]).lower() == "true"
        deployed = results[("deploy", -1)]
        assert deployed["version"] == "1"
        assert deployed["endpoint"] == url  # the endpoint the summary printed
        assert trained["run_id"] and trained["device"] in ("cpu", "cuda")
        assert len(predict(deployed["endpoint"], prepared["dataset_uri"])) == 2
    finally:
        stop_servers(state)
