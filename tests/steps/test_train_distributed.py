"""train under torchrun: two processes (Gloo on the CPU here, NCCL on GPUs), one result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow

from mlkube import spec


def test_two_processes_train_one_model(dataset: str, state: Path, tmp_path: Path) -> None:
    command = spec.TRAIN.command(sys.executable, processes=2)
    assert command[1:3] == ["-m", "mlkube.torchrun"]  # what a 2-GPU pod runs
    result_file = tmp_path / "train.json"
    done = subprocess.run(
        [*command, "--dataset", dataset, "--epochs", "3", "--params", '{"hidden_sizes": "16"}',
         "--result-file", str(result_file)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "training on cpu x2 for 3 epochs" in done.stdout
    assert sum(line.startswith("[train] epoch ") for line in done.stdout.splitlines()) == 3
    result = json.loads(result_file.read_text())
    assert result["epochs"] == 3 and result["value"] > 0.8
    run = mlflow.get_run(result["run_id"])
    assert run.data.params["world_size"] == "2"
    trains = mlflow.search_runs(experiment_names=["mlkube"], output_format="list",
                                filter_string="tags.`mlkube.step` = 'train'")
    assert len(trains) == 1  # one leader logs; the follower only trains
