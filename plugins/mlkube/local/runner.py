"""``mlkube run``: the five steps in order, each a separate process, on the embedded default.

Each step's result document is read from disk and wired into the next step's options; the
runner itself never imports the heavy libraries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlkube import config as configmod
from mlkube import spec
from mlkube.errors import MlkubeError
from mlkube.result import atomic_write_text, read_result
from mlkube.tracking import embedded_tracking_uri


@dataclass(kw_only=True)
class LocalRun:
    """One run of the lifecycle on this machine."""

    config_path: str | None
    state_dir: Path
    run_id: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """Where this run's result documents go."""
        return self.state_dir / "runs" / self.run_id

    def env(self) -> dict[str, str]:
        """The steps' environment: the state directory, and MLflow unless one is configured."""
        env = dict(os.environ, MLKUBE_STATE_DIR=str(self.state_dir), PYTHONUNBUFFERED="1")
        env.setdefault("MLFLOW_TRACKING_URI", embedded_tracking_uri(self.state_dir))
        return env

    def step(self, step: spec.StepSpec, values: dict[str, Any]) -> dict[str, Any]:
        """Run one step program to completion and return its result."""
        result_file = self.folder / f"{step.name}.json"
        args = step.arguments({"config": self.config_path, "pipeline_run_id": self.run_id,
                               "result_file": str(result_file), **values})
        print(f"==> {step.name}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([*step.command(sys.executable), *args], env=self.env())
        self.timings[step.name] = round(time.perf_counter() - started, 1)
        if code != 0:
            raise MlkubeError(f"step {step.name} failed (exit {code}); its error is above")
        return read_result(result_file)


def lifecycle(config_path: str | None) -> dict[str, Any]:
    """Run prepare-data → tune → train → register → deploy; return the summary."""
    config = configmod.load(config_path)  # bad config fails here, before any step runs
    state_dir = configmod.state_dir(config)
    local = LocalRun(config_path=str(Path(config_path).resolve()) if config_path else None,
                     state_dir=state_dir, run_id=time.strftime("local-%Y%m%dT%H%M%S"))
    started = time.perf_counter()
    prepared = local.step(spec.PREPARE_DATA, {})
    dataset = prepared["dataset_uri"]
    tuned = local.step(spec.TUNE, {"dataset": dataset})
    trained = local.step(spec.TRAIN, {"dataset": dataset, "params": tuned["best_params"]})
    registered = local.step(spec.REGISTER, {"dataset": dataset, "run_id": trained["run_id"]})
    deployed = local.step(spec.DEPLOY, {"dataset": dataset})
    summary = {
        "run_id": local.run_id, "dataset_digest": prepared["dataset_digest"],
        "best_params": tuned["best_params"], "model_name": registered["model_name"],
        "version": registered["version"], "promoted": registered["promoted"],
        "champion_version": registered["champion_version"], "metric": registered["metric"],
        "challenger_value": registered["challenger_value"],
        "champion_value": registered["champion_value"], "endpoint": deployed["endpoint"],
        "tracking_uri": local.env()["MLFLOW_TRACKING_URI"], "timings_s": local.timings,
        "total_s": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(local.folder / "summary.json", json.dumps(summary, indent=2))
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """The closing lines of ``mlkube run``."""
    steps = ", ".join(f"{k} {v}s" for k, v in summary["timings_s"].items())
    outcome = ("is the champion" if summary["promoted"] == "true"  # now, or already was
               else "did not beat the champion")
    print(f"""
mlkube run {summary['run_id']} finished in {summary['total_s']}s ({steps})
  model      {summary['model_name']} v{summary['version']} {outcome}; champion is v{summary['champion_version']}
  test {summary['metric']:<5} {summary['challenger_value']:.4f}
  endpoint   {summary['endpoint']}  (mlkube serve status; mlkube serve stop)
  try it     curl -s -H 'Content-Type: application/json' -d '{{"inputs": [{{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [...30 features...]}}]}}' {summary['endpoint']}
  MLflow UI  mlflow ui --backend-store-uri {summary['tracking_uri']}""", flush=True)
