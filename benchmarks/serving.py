"""Benchmark: the local model server candidates on the same model, in the same run.

    .venv/bin/python benchmarks/serving.py [--mlserver-python /path/to/venv/bin/python]

Trains the demo model in a temporary state (real steps), then for each server measures the
time from process start to ready, median request latency for 1 and 100 rows, and the server
processes' resident memory. MLflow's scoring server (the one mlkube uses, in this venv) is
the anchor; MLServer (V2 protocol) needs its own venv (see benchmarks/README.md) and is
skipped when none is given.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (from /proc)."""
    children = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
    total = 0
    for child in children:
        try:
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def measure(command: list[str], ready_url: str, predict: Any, rows: list[list[float]],
            env: dict[str, str], cwd: str | None = None) -> dict[str, float]:
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env, cwd=cwd, start_new_session=True)
    try:
        while not ready(ready_url):
            if process.poll() is not None:
                raise RuntimeError(f"{command[:3]} exited {process.returncode}")
            time.sleep(0.1)
        startup = time.perf_counter() - started
        result: dict[str, float] = {"startup_s": round(startup, 2)}
        for n, repeat in ((1, 200), (100, 50)):
            predict(rows[:n])
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                answer = predict(rows[:n])
                times.append(time.perf_counter() - t)
            assert len(answer) == n, answer
            result[f"p50_ms_{n}_rows"] = round(statistics.median(times) * 1000, 2)
        result["rss_mb"] = tree_rss_mb(process.pid)
        return result
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def train_demo(state: Path) -> tuple[str, list[list[float]]]:
    env = dict(os.environ, MLKUBE_STATE_DIR=str(state))
    env.pop("MLFLOW_TRACKING_URI", None)
    step = [sys.executable, "-m", "mlkube.cli", "step"]
    subprocess.run([*step, "prepare-data", "--result-file", str(state / "p.json")], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    dataset = json.loads((state / "p.json").read_text())["dataset_uri"]
    subprocess.run([*step, "train", "--dataset", dataset, "--result-file", str(state / "t.json")],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    model_id = json.loads((state / "t.json").read_text())["model_uri"].removeprefix("models:/")
    (path,) = state.glob(f"mlruns/**/{model_id}/artifacts")
    import pandas as pd

    frame = pd.read_parquet(Path(dataset) / "test.parquet").drop(columns="target")
    rows = frame.to_numpy(dtype=float).tolist()
    return str(path), (rows * 2)[:100]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mlserver-python", help="python of a venv with mlserver-mlflow")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model, rows = train_demo(Path(tmp) / "state")
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        report["mlflow_scoring_server"] = measure(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager",
             "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
            f"{url}/ping", lambda r: post(f"{url}/invocations", {"inputs": r})["predictions"],
            rows, env)
        if args.mlserver_python:
            folder = Path(tmp) / "mlserver"
            folder.mkdir()
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            (folder / "settings.json").write_text(json.dumps(
                {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
                 "parallel_workers": 0, "host": "127.0.0.1"}))
            (folder / "model-settings.json").write_text(json.dumps(
                {"name": "mlkube", "implementation": "mlserver_mlflow.MLflowRuntime",
                 "parameters": {"uri": model}}))

            def v2(r: list[list[float]]) -> Any:
                body = {"inputs": [{"name": "input-0", "shape": [len(r), len(r[0])],
                                    "datatype": "FP32", "data": [v for row in r for v in row]}]}
                out = post(f"{url}/v2/models/mlkube/infer", body)["outputs"][0]
                return [out["data"][i:i + out["shape"][1]] for i in range(0, len(out["data"]), out["shape"][1])]

            bin_dir = Path(args.mlserver_python).parent
            report["mlserver_v2"] = measure(
                [str(bin_dir / "mlserver"), "start", str(folder)], f"{url}/v2/models/mlkube/ready",
                v2, rows, dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"))
            anchor = report["mlflow_scoring_server"]
            report["mlserver_over_mlflow"] = {k: round(report["mlserver_v2"][k] / anchor[k], 2)
                                              for k in anchor}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
