"""The GPU benchmark runs where the GPU machine can run it: torch, numpy and PyYAML only.

A small CPU run of benchmarks/train_gpu_vs_loop.py (the device check of issue 10 is run by
hand on a GPU machine; no timing is asserted here).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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


def _serving() -> Any:
    """benchmarks/serving.py as a module (its imports at module level are the standard library's)."""
    spec = importlib.util.spec_from_file_location("serving_benchmark",
                                                  REPO / "benchmarks" / "serving.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serving_benchmark_arguments() -> None:
    """The serving benchmark's options (the benchmark itself is run by hand: make bench-mlserver)."""
    serving = _serving()
    args = serving.parse_args([])
    assert (args.passes, args.clients, args.duration) == (1, 8, 10.0)
    assert args.mlserver_python is None and args.mlserver_configs == [(0, None)]
    assert not args.no_record
    args = serving.parse_args(["--passes", "3", "--only", "mlkube-v2", "mlserver", "echo",
                               "--mlserver-python", ".venv-mlserver/bin/python", "--no-record",
                               "--mlserver-configs", "0", "0/1", "1"])
    assert args.passes == 3 and args.only == ["mlkube-v2", "mlserver", "echo"]
    assert args.mlserver_configs == [(0, None), (0, 1), (1, None)]
    with pytest.raises(SystemExit):
        serving.parse_args(["--mlserver-configs", "one"])
    assert args.mlserver_python == ".venv-mlserver/bin/python" and args.no_record
    with pytest.raises(SystemExit):
        serving.parse_args(["--passes", "0"])
    settings = serving.mlserver_settings(1, 2, 3, 0)
    assert settings["parallel_workers"] == 0 and settings["debug"] is False
    assert (settings["http_port"], settings["grpc_port"], settings["metrics_port"]) == (1, 2, 3)
    model = serving.mlserver_model_settings("models:/mlkube-demo/1")
    assert model["implementation"] == "mlserver_mlflow.MLflowRuntime"
    assert model["parameters"]["uri"] == "models:/mlkube-demo/1"
    body = serving.v2_body([[1.0, 2.0], [3.0, 4.0]])
    assert body["inputs"][0]["shape"] == [2, 2] and body["inputs"][0]["datatype"] == "FP32"


def test_serving_benchmark_medians() -> None:
    serving = _serving()
    runs = [{"key": "echo", "server": "echo", "ready_s": r, "rss_mb": 30.0,
             **{f"{n}_rows": {"requests_per_s": rate * n, "p50_ms": 1.0, "p99_ms": p99,
                              "errors": 0, "requests": 100, "server_cpu_ms_per_request": 0.1,
                              "requests_per_s_per_core": 10_000.0, "server_cores": 0.5,
                              "load_average": [1.0, 1.2]} for n in (1, 64)}}
            for r, rate, p99 in ((0.2, 300.0, 5.0), (0.1, 100.0, 9.0), (0.3, 200.0, 1.0))]
    report = serving.median_report(runs)
    assert report["passes"] == 3 and report["ready_s"] == 0.2
    assert report["1_rows"]["requests_per_s"] == 200.0 and report["1_rows"]["p99_ms"] == 5.0
    assert report["64_rows"]["each_requests_per_s"] == [19200.0, 6400.0, 12800.0]
    assert report["1_rows"]["requests"] == 300 and report["1_rows"]["errors"] == 0
    assert "| echo |" in serving.table([report])
