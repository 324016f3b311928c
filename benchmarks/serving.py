"""Benchmark: `mlflow models serve` vs `mlkube serve model`, same model, same run, under load.

    .venv/bin/python benchmarks/serving.py [--duration 10] [--clients 8] [--json OUT]

Trains the demo model in a temporary state with the real steps (prepare-data, train), registers
it (`models:/mlkube-demo/1`), then, one server at a time on loopback:

- MLflow's scoring server (the anchor): `mlflow models serve --env-manager local --workers 1`,
  `POST /invocations {"inputs": [[...]]}`;
- `mlkube serve model`, V2 infer (`POST /v2/models/mlkube-demo/infer`, JSON tensors);
- `mlkube serve model`, MLflow's `POST /invocations` (the same request body as the anchor);
- `mlkube serve model --no-fast-path` (V2 infer through mlflow.pyfunc, no direct torch call);
- `mlkube serve model --no-stats` (V2 infer without the live statistics; the V2 row above keeps
  them and writes their windows to a stats directory, as the local target does), for the
  statistics' cost (issue 17, item 1);
- with `--kserve-python PY` (a venv with kserve 0.21 and mlflow, see benchmarks/README.md):
  KServe's Python `ModelServer` (1 worker, no gRPC, no latency logging) with a `kserve.Model`
  that predicts through mlflow.pyfunc, V2 infer.

For each: start-to-ready time (process start until its readiness endpoint answers 200), then
for 1-row and 64-row requests, `--clients` threads with one keep-alive http.client connection
each send requests back to back for `--duration` seconds (after a 1 s warm-up): requests/s,
p50 and p99 latency, errors (non-200 answers, wrong row counts, dropped connections); and the
server's resident memory at the end. The load generator shares the machine with the server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

NAME = "mlkube-demo"

# A KServe SDK predictor for an MLflow model, run by the --kserve-python interpreter.
KSERVE_SERVER = """
import os
import uuid

import mlflow
import numpy as np
from kserve import InferOutput, InferResponse, Model, ModelServer


class MLflowModel(Model):
    def __init__(self, name, uri):
        super().__init__(name)
        self.uri = uri

    def load(self):
        self.model = mlflow.pyfunc.load_model(self.uri, suppress_warnings=True)
        self.ready = True
        return True

    def predict(self, payload, headers=None, response_headers=None):
        rows = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        out = np.asarray(self.model.predict(rows), dtype=np.float32)
        output = InferOutput(name="probabilities", shape=list(out.shape), datatype="FP32")
        output.set_data_from_numpy(out, binary_data=False)
        return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name,
                             infer_outputs=[output])


if __name__ == "__main__":
    model = MLflowModel(os.environ["KSERVE_MODEL_NAME"], os.environ["KSERVE_MODEL_URI"])
    model.load()
    ModelServer(workers=1, enable_grpc=False, enable_latency_logging=False).start([model])
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_of(port: int, path: str) -> int:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        code = conn.getresponse().status
        conn.close()
        return code
    except OSError:
        return 0


def rss_mb(pid: int) -> float:
    """Resident memory of a process group (from /proc)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pid:  # the process group id
                continue
            for line in (status.parent / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return round(total / 1024, 1)


def train_demo(state: Path) -> tuple[str, list[list[float]], dict[str, str]]:
    """Prepare and train with the real steps, register version 1; (URI, test rows, env)."""
    env = dict(os.environ, MLKUBE_STATE_DIR=str(state),
               MLFLOW_TRACKING_URI=f"sqlite:///{state / 'mlflow.db'}")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    step = [sys.executable, "-m", "mlkube.cli", "step"]
    subprocess.run([*step, "prepare-data", "--result-file", str(state / "p.json")], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dataset = json.loads((state / "p.json").read_text())["dataset_uri"]
    subprocess.run([*step, "train", "--dataset", dataset, "--result-file", str(state / "t.json")],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    model_uri = json.loads((state / "t.json").read_text())["model_uri"]
    subprocess.run([sys.executable, "-c", "import sys, mlflow; "
                    f"mlflow.register_model(sys.argv[1], {NAME!r})", model_uri], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import pandas as pd

    frame = pd.read_parquet(Path(dataset) / "test.parquet").drop(columns="target")
    rows = frame.to_numpy(dtype=float).tolist()
    return f"models:/{NAME}/1", (rows * 2)[:64], env


def v2_body(rows: list[list[float]]) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                        "data": [v for row in rows for v in row]}]}


def v2_rows(answer: dict[str, Any]) -> int:
    return int(answer["outputs"][0]["shape"][0])


def mlflow_body(rows: list[list[float]]) -> dict[str, Any]:
    return {"inputs": rows}


def mlflow_rows(answer: dict[str, Any]) -> int:
    return len(answer["predictions"])


def load(port: int, path: str, body: bytes, rows: int, count_rows: Any, clients: int,
         duration: float) -> dict[str, Any]:
    """``clients`` keep-alive connections posting ``body`` for ``duration`` s after a warm-up."""
    headers = {"Content-Type": "application/json"}
    start = time.perf_counter() + 1.0  # warm-up until then
    stop = start + duration
    results: list[tuple[list[float], int]] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        latencies: list[float] = []
        errors = 0
        checked = False
        while True:
            began = time.perf_counter()
            if began >= stop:
                break
            try:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                answer = response.read()
                ok = response.status == 200
                if ok and not checked:  # the content once per client; the status every time
                    ok = count_rows(json.loads(answer)) == rows
                    checked = True
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            ended = time.perf_counter()
            if began >= start:
                if ok:
                    latencies.append(ended - began)
                else:
                    errors += 1
        conn.close()
        with lock:
            results.append((latencies, errors))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(e for _, e in results)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return {"requests_per_s": round(len(latencies) / duration, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
            "p99_ms": round(p99 * 1000, 2), "errors": errors, "requests": len(latencies)}


def measure(label: str, command: list[str], ready_path: str, path: str, make_body: Any,
            count_rows: Any, rows: list[list[float]], env: dict[str, str], port: int,
            args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env, start_new_session=True)
    try:
        while status_of(port, ready_path) != 200:
            if process.poll() is not None:
                raise RuntimeError(f"{label}: {command[:4]} exited {process.returncode}")
            if time.perf_counter() - started > 180:
                raise RuntimeError(f"{label}: not ready after 180 s")
            time.sleep(0.05)
        report: dict[str, Any] = {"server": label, "ready_s": round(time.perf_counter() - started,
                                                                     2)}
        for n in (1, 64):
            body = json.dumps(make_body(rows[:n])).encode()
            report[f"{n}_rows"] = load(port, path, body, n, count_rows, args.clients,
                                       args.duration)
        report["rss_mb"] = rss_mb(process.pid)
        print(json.dumps(report), file=sys.stderr, flush=True)
        return report
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def table(reports: list[dict[str, Any]]) -> str:
    lines = ["| server | start → ready | rows | requests/s | p50 | p99 | errors | RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in reports:
        for n in (1, 64):
            m = r[f"{n}_rows"]
            lines.append(f"| {r['server']} | {r['ready_s']:.1f} s | {n} | {m['requests_per_s']:,.0f}"
                         f" | {m['p50_ms']:.2f} ms | {m['p99_ms']:.2f} ms | {m['errors']} | "
                         f"{r['rss_mb']:.0f} MB |")
    anchor = reports[0]
    lines += ["", f"| ratio to {anchor['server']} | start → ready | rows | requests/s | p99 |",
              "|---|---|---|---|---|"]
    for r in reports[1:]:
        for n in (1, 64):
            a, m = anchor[f"{n}_rows"], r[f"{n}_rows"]
            lines.append(f"| {r['server']} | {r['ready_s'] / anchor['ready_s']:.2f}× | {n} | "
                         f"{m['requests_per_s'] / a['requests_per_s']:.2f}× | "
                         f"{m['p99_ms'] / a['p99_ms']:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--kserve-python", help="python of a venv with kserve and mlflow")
    parser.add_argument("--only", nargs="*", help="keys of the servers to measure beside the "
                        "anchor (default all): mlkube-v2 mlkube-invocations mlkube-pyfunc "
                        "mlkube-nostats kserve")
    args = parser.parse_args()
    mlkube = [sys.executable, "-m", "mlkube.cli", "serve", "model"]
    with tempfile.TemporaryDirectory() as tmp:
        uri, rows, env = train_demo(Path(tmp) / "state")
        servers = []
        port = free_port()
        servers.append(("mlflow", "`mlflow models serve` (anchor)", [
            sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager",
            "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"], "/ping",
            "/invocations", mlflow_body, mlflow_rows, port))
        stats = ["--stats-dir", str(Path(tmp) / "monitoring")]  # as the local target runs it
        for key, label, extra, path, body, count in (
                ("mlkube-v2", "`mlkube serve model`, V2 infer", stats,
                 f"/v2/models/{NAME}/infer", v2_body, v2_rows),
                ("mlkube-nostats", "`mlkube serve model --no-stats`, V2 infer", ["--no-stats"],
                 f"/v2/models/{NAME}/infer", v2_body, v2_rows),
                ("mlkube-invocations", "`mlkube serve model`, /invocations", [],
                 "/invocations", mlflow_body, mlflow_rows),
                ("mlkube-pyfunc", "`mlkube serve model --no-fast-path`, V2 infer",
                 ["--no-fast-path"], f"/v2/models/{NAME}/infer", v2_body, v2_rows)):
            port = free_port()
            servers.append((key, label, [*mlkube, "--model-uri", uri, "--name", NAME, "--version",
                                         "1", "--port", str(port), *extra],
                            "/v2/health/ready", path, body, count, port))
        envs = {key: env for key, *_ in servers}
        if args.kserve_python:
            script = Path(tmp) / "kserve_server.py"
            script.write_text(KSERVE_SERVER)
            port = free_port()
            servers.append(("kserve", "KServe 0.21 `ModelServer` (pyfunc), V2 infer",
                            [args.kserve_python, str(script), "--http_port", str(port)],
                            "/v2/health/ready", f"/v2/models/{NAME}/infer", v2_body, v2_rows,
                            port))
            bin_dir = Path(args.kserve_python).parent
            envs["kserve"] = dict(env, KSERVE_MODEL_NAME=NAME, KSERVE_MODEL_URI=uri,
                                  PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        reports = []
        for key, label, command, ready_path, path, body, count, port in servers:
            if args.only and key not in args.only and key != "mlflow":
                continue
            reports.append(measure(label, command, ready_path, path, body, count, rows,
                                   envs[key], port, args))
    print(table(reports))
    from ratios import record  # benchmarks/ratios.py

    if len(reports) > 1:  # the first server after the anchor: `mlkube serve model`, V2
        for n in (1, 64):
            a, m = reports[0][f"{n}_rows"], reports[1][f"{n}_rows"]
            throughput = m["requests_per_s"] / a["requests_per_s"]
            p99 = m["p99_ms"] / a["p99_ms"]
            record(f"serving_{n}_rows", f"model server, {n}-row requests: requests/s, "
                   "mlkube V2 / `mlflow models serve`", throughput,
                   "≥ 2× requests/s, ≤ 0.5× p99, 0 errors",
                   throughput >= 2 and p99 <= 0.5 and m["errors"] == 0,
                   f"p99 {p99:.2f}×, {m['errors']} errors, {args.clients} clients",
                   "benchmarks/serving.py")
    found = {r["server"]: r for r in reports}
    on = found.get("`mlkube serve model`, V2 infer")
    off = found.get("`mlkube serve model --no-stats`, V2 infer")
    if on and off:  # what the live statistics cost (issue 17, item 1)
        for n in (1, 64):
            a, m = off[f"{n}_rows"], on[f"{n}_rows"]
            throughput = m["requests_per_s"] / a["requests_per_s"]
            record(f"serving_stats_{n}_rows", f"live statistics, {n}-row requests: requests/s, "
                   "V2 with them (windows written) / `--no-stats`", throughput, "≥ 0.95×",
                   throughput >= 0.95 and m["errors"] == 0,
                   f"{m['requests_per_s']:,.0f} vs {a['requests_per_s']:,.0f} req/s, p99 "
                   f"{m['p99_ms']:.2f} vs {a['p99_ms']:.2f} ms, {args.clients} clients",
                   "benchmarks/serving.py")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2) + "\n")


if __name__ == "__main__":
    main()
