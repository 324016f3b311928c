"""Benchmark: `mlkube run` with the default config, cold (fresh state) and again (idempotent).

    .venv/bin/python benchmarks/lifecycle.py [--repeat 1]

Prints the per-step split from the run's summary. The anchor, measured in the same run, is
one Python process importing what a step imports (mlflow, torch, optuna, pandas): each step
is at least one such process, so `total / anchor` says how much the lifecycle costs beyond
starting its processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MLKUBE = [sys.executable, "-m", "mlkube.cli"]


def anchor(repeat: int = 3) -> float:
    """Median wall time of a process that imports the steps' heavy libraries."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mlflow, torch, optuna, pandas"], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def lifecycle(state: Path) -> dict[str, object]:
    """One `mlkube run`; returns its summary."""
    env = dict(os.environ, MLKUBE_STATE_DIR=str(state))
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([*MLKUBE, "run"], check=True, env=env, stdout=subprocess.DEVNULL)
    (summary,) = sorted(state.glob("runs/*/summary.json"), key=os.path.getmtime)[-1:]
    return dict(json.loads(summary.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    base = anchor()
    report: dict[str, object] = {"anchor_import_s": round(base, 2), "cold": [], "again": []}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp) / "state"
            try:
                for kind in ("cold", "again"):
                    summary = lifecycle(state)
                    entry = {"total_s": summary["total_s"], "steps_s": summary["timings_s"],
                             "total_over_anchor": round(float(summary["total_s"]) / base, 1)}
                    report[kind].append(entry)  # type: ignore[attr-defined]
            finally:
                env = dict(os.environ, MLKUBE_STATE_DIR=str(state))
                subprocess.run([*MLKUBE, "serve", "stop"], env=env, stdout=subprocess.DEVNULL)
    print(json.dumps(report, indent=2))
    cold = statistics.median(e["total_s"] for e in report["cold"])  # type: ignore[attr-defined]
    again = statistics.median(e["total_s"] for e in report["again"])  # type: ignore[attr-defined]
    from ratios import record  # benchmarks/ratios.py
    record("lifecycle", "`mlkube run`, default config, cold: total / one process's imports",
           cold / base, "total ≤ 60 s", cold <= 60,
           f"cold {cold:.1f} s, again {again:.1f} s, imports {base:.2f} s",
           "benchmarks/lifecycle.py")


if __name__ == "__main__":
    main()
