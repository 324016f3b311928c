"""The GPU benchmark runs where the GPU machine can run it: torch, numpy and PyYAML only.

A small CPU run of benchmarks/train_gpu_vs_loop.py (the device check of issue 10 is run by
hand on a GPU machine; no timing is asserted here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_train_gpu_vs_loop_runs_on_torch_alone(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins")}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_gpu_vs_loop.py"), "--device", "cpu",
         "--rows", "4096", "--features", "16", "--hidden", "32,32", "--batch-size", "512",
         "--epochs", "1", "--matmul", "256", "--no-compile", "--results", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "train_gpu_vs_loop_cpu.json").read_text())
    assert report["imported"] == []  # no mlflow, optuna, pyarrow, pandas or sklearn
    assert report["rows"] == 4096 and report["flop_per_sample"] == 6 * (16 * 32 + 32 * 32 + 32 * 2)
    for name in ("bare_eager", "trainer", "step_epoch"):
        assert report[name]["samples_per_s"] > 0
    # the step's epoch is the trainer's plus evaluating and checkpointing: never faster
    assert report["step_epoch"]["epoch_s"] > report["trainer"]["epoch_s"]
    assert report["step_extras_ms"]["checkpoint_bytes"] > 16 * 32 * 4  # the weights, at least
    assert report["val_accuracy"] > 0.6  # the trainer learned the separable task
    assert report["ratio_to_bare_eager"]["bare_eager"] == 1.0
