"""Benchmark: `mlflow models serve` vs `mlkube serve model`, same model, same run, under load.

    .venv/bin/python benchmarks/serving.py [--duration 10] [--clients 8] [--passes 3] [--json OUT]
    make bench-mlserver    # .venv-mlserver, then MLflow, mlkube V2, MLServer and the echo

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
  that predicts through mlflow.pyfunc, V2 infer;
- with `--mlserver-python PY` (a venv with mlserver 1.7.1 and mlserver-mlflow 1.7.1, `make
  bench-mlserver-venv`): MLServer, the runtime KServe uses for MLflow models, `mlserver start`
  on a model repository of one model (``mlserver_mlflow.MLflowRuntime``, the registered URI),
  V2 infer with the same request body (settings: ``mlserver_settings``);
- `echo`: the ceiling, a minimal Starlette app on uvicorn (httptools, uvloop, as mlkube's
  server) that parses the same V2 JSON body and answers a fixed V2 response of the same shape
  (no model, no checks).

For each: start-to-ready time (process start until its readiness endpoint answers 200), then
for 1-row and 64-row requests, `--clients` threads with one keep-alive http.client connection
each send requests back to back for `--duration` seconds (after a 1 s warm-up): requests/s,
p50 and p99 latency, errors (non-200 answers, wrong row counts, dropped connections); and the
server's resident memory at the end; and the CPU time the server's processes used during the
measured seconds (from /proc), per request and as requests/s per core of server CPU. The load
generator shares the machine with the server. With `--passes N` every server is measured N
times, in turn (pass 1 of every server, then pass 2, ...), and each figure is the median of
its passes; the machine's load average is noted before and after every measurement.
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

# The ceiling: a minimal Starlette app on uvicorn that parses the V2 JSON body with the parser
# mlkube's runtime uses (pydantic-core's from_json, else json.loads) and answers a fixed V2
# response of the shape mlkube answers (probabilities [n, 2] FP32 and label [n] BYTES), encoded
# once per row count.
ECHO_SERVER = """
import json
import sys

try:
    from pydantic_core import from_json as loads
except ImportError:
    from json import loads

import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

ANSWERS = {}


def answer(rows):
    if rows not in ANSWERS:
        ANSWERS[rows] = json.dumps({
            "model_name": "mlkube-demo", "model_version": "1", "outputs": [
                {"name": "probabilities", "shape": [rows, 2], "datatype": "FP32",
                 "data": [0.015625, 0.984375] * rows},
                {"name": "label", "shape": [rows], "datatype": "BYTES", "data": ["1"] * rows}]},
            separators=(",", ":")).encode()
    return ANSWERS[rows]


async def infer(request):
    request_json = loads(await request.body())
    rows = int(request_json["inputs"][0]["shape"][0])
    return Response(answer(rows), media_type="application/json")


async def ready(request):
    return Response(b"", status_code=200)


app = Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"]),
                        Route("/v2/health/ready", ready)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), workers=1, log_level="warning",
                access_log=False)
"""


def mlserver_settings(http_port: int, grpc_port: int, metrics_port: int,
                      parallel_workers: int) -> dict[str, Any]:
    """MLServer's settings.json: its defaults but for loopback ports, no access log (``debug``
    false: mlkube's server has none either) and ``parallel_workers`` (0: inference on the
    server's event loop; MLServer 1.7.1's default of 1 worker process crashed under load,
    see benchmarks/README.md)."""
    return {"debug": False, "parallel_workers": parallel_workers, "host": "127.0.0.1",
            "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port}


def mlserver_model_settings(uri: str) -> dict[str, Any]:
    """The model's model-settings.json: the MLflow runtime on the registered model's URI (the
    model's signature, a [-1, 30] float32 tensor, makes MLServer decode the request with its
    NumPy codec: the one V2 input, whatever its name, as a float32 array of its shape)."""
    return {"name": NAME, "implementation": "mlserver_mlflow.MLflowRuntime",
            "parameters": {"uri": uri}}


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


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process group's live processes (from /proc)."""
    ticks = 0
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pid:  # the process group id
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


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
         duration: float, pid: int | None = None) -> dict[str, Any]:
    """``clients`` keep-alive connections posting ``body`` for ``duration`` s after a warm-up;
    with ``pid``, the CPU time that process group used during those ``duration`` s."""
    headers = {"Content-Type": "application/json"}
    start = time.perf_counter() + 1.0  # warm-up until then
    stop = start + duration
    results: list[tuple[list[float], int]] = []
    lock = threading.Lock()
    cpu: list[float] = []

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
    if pid is not None:
        threads.append(threading.Thread(target=sample_cpu, args=(pid, (start, stop), cpu)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(e for _, e in results)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    report = {"requests_per_s": round(len(latencies) / duration, 1),
              "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
              "p99_ms": round(p99 * 1000, 2), "errors": errors, "requests": len(latencies)}
    if len(cpu) == 2 and latencies:
        report.update(cpu_figures(cpu[1] - cpu[0], len(latencies), duration))
    return report


def sample_cpu(pid: int, moments: tuple[float, float], out: list[float]) -> None:
    """The process group's CPU seconds at each of ``moments`` (perf_counter times)."""
    for moment in moments:
        time.sleep(max(0.0, moment - time.perf_counter()))
        out.append(cpu_seconds(pid))


def cpu_figures(used: float, requests: int, duration: float) -> dict[str, Any]:
    """The server's ``used`` CPU seconds over ``duration`` s in which it answered ``requests``."""
    return {"server_cores": round(used / duration, 3),
            "server_cpu_ms_per_request": round(used * 1000 / requests, 4),
            "requests_per_s_per_core": round(requests / used, 1) if used else None}


def measure(label: str, command: list[str], ready_path: str, path: str, make_body: Any,
            count_rows: Any, rows: list[list[float]], env: dict[str, str], port: int,
            args: argparse.Namespace, cwd: str | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env, start_new_session=True, cwd=cwd)
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
            before = load_average()
            report[f"{n}_rows"] = load(port, path, body, n, count_rows, args.clients,
                                       args.duration, process.pid)
            report[f"{n}_rows"]["load_average"] = [before, load_average()]
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


def median_report(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's passes as one report: the median of each figure, errors summed, every
    pass's requests/s and load averages kept."""
    def mid(values: list[Any]) -> Any:
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 4) if values else None

    first = passes[0]
    report: dict[str, Any] = {"key": first["key"], "server": first["server"],
                              "passes": len(passes),
                              "ready_s": mid([p["ready_s"] for p in passes]),
                              "rss_mb": mid([p["rss_mb"] for p in passes])}
    for n in (1, 64):
        runs = [p[f"{n}_rows"] for p in passes]
        merged = {name: mid([r.get(name) for r in runs]) for name in (
            "requests_per_s", "p50_ms", "p99_ms", "server_cores", "server_cpu_ms_per_request",
            "requests_per_s_per_core")}
        merged["errors"] = sum(r["errors"] for r in runs)
        merged["requests"] = sum(r["requests"] for r in runs)
        merged["each_requests_per_s"] = [r["requests_per_s"] for r in runs]
        merged["load_averages"] = [r["load_average"] for r in runs]
        report[f"{n}_rows"] = merged
    return report


def table(reports: list[dict[str, Any]]) -> str:
    lines = ["| server | start → ready | rows | requests/s | p50 | p99 | errors | server CPU/request "
             "| requests/s per server core | RSS | load average before → after |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        for n in (1, 64):
            m = r[f"{n}_rows"]
            cpu = m.get("server_cpu_ms_per_request")
            per_core = m.get("requests_per_s_per_core")
            loads = m.get("load_averages") or [m.get("load_average")]
            p50 = f"{m['p50_ms']:.2f} ms" if m["p50_ms"] is not None else "–"  # all failed
            lines.append(
                f"| {r['server']} | {r['ready_s']:.1f} s | {n} | {m['requests_per_s']:,.0f}"
                f" | {p50} | {m['p99_ms']:.2f} ms | {m['errors']} | "
                f"{f'{cpu:.3f} ms' if cpu is not None else ''} | "
                f"{f'{per_core:,.0f}' if per_core is not None else ''} | {r['rss_mb']:.0f} MB | "
                + ", ".join(f"{a:.1f} → {b:.1f}" for a, b in loads if a is not None) + " |")
    anchor = reports[0]
    lines += ["", f"| ratio to {anchor['server']} | start → ready | rows | requests/s | p99 |",
              "|---|---|---|---|---|"]
    for r in reports[1:]:
        for n in (1, 64):
            a, m = anchor[f"{n}_rows"], r[f"{n}_rows"]
            if not a["requests_per_s"] or not a["p99_ms"]:
                continue
            lines.append(f"| {r['server']} | {r['ready_s'] / anchor['ready_s']:.2f}× | {n} | "
                         f"{m['requests_per_s'] / a['requests_per_s']:.2f}× | "
                         f"{m['p99_ms'] / a['p99_ms']:.2f}× |")
    return "\n".join(lines)


def mlserver_config(text: str) -> tuple[int, int | None]:
    """``W`` or ``W/T``: MLServer's parallel_workers and, if given, OMP_NUM_THREADS."""
    workers, _, threads = text.partition("/")
    try:
        return int(workers), int(threads) if threads else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected W or W/T (numbers)") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections")
    parser.add_argument("--passes", type=int, default=1,
                        help="measure every server this many times (in turn); report medians")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--no-record", action="store_true",
                        help="leave benchmarks/results/ratios.json as it is (a trial run)")
    parser.add_argument("--kserve-python", help="python of a venv with kserve and mlflow")
    parser.add_argument("--mlserver-python",
                        help="python of a venv with mlserver and mlserver-mlflow 1.7.1 "
                        "(make bench-mlserver-venv: .venv-mlserver/bin/python)")
    parser.add_argument("--mlserver-configs", nargs="+", default=[(0, None)], type=mlserver_config,
                        help="one MLServer row each: W (parallel_workers W, torch's default "
                        "threads) or W/T (and OMP_NUM_THREADS=T); default 0: inference in the "
                        "server process (1, MLServer's default, needs uvloop < 0.22: Makefile)")
    parser.add_argument("--only", nargs="*", help="keys of the servers to measure beside the "
                        "anchor (default all): mlkube-v2 mlkube-invocations mlkube-pyfunc "
                        "mlkube-nostats mlkube-nostats-again kserve mlserver echo")
    args = parser.parse_args(argv)
    if args.passes < 1:
        parser.error("--passes must be at least 1")
    return args


def load_note(m: dict[str, Any]) -> str:
    """The load averages before → after each pass of a measurement, in words."""
    pairs = m.get("load_averages") or [m["load_average"]]
    return "load " + ", ".join(f"{a:.1f}→{b:.1f}" for a, b in pairs)


def record_mlserver(record: Any, key: str, mlserver: dict[str, Any], mlkube: dict[str, Any],
                    args: argparse.Namespace) -> None:
    """The ratios of mlkube's V2 infer to one MLServer configuration."""
    config = mlserver["server"].split("mlserver-mlflow, ")[1].split(")")[0]
    passes = f", median of {args.passes} passes" if args.passes > 1 else ""
    for n in (1, 64):
        a, m = mlserver[f"{n}_rows"], mlkube[f"{n}_rows"]
        if not a["requests_per_s"] or not a["p99_ms"]:  # every request failed
            continue
        throughput = m["requests_per_s"] / a["requests_per_s"]
        p99 = m["p99_ms"] / a["p99_ms"]
        errors = m["errors"] + a["errors"]
        record(f"serving_{key.replace('-', '_')}_{n}_rows", f"model server, {n}-row "
               "requests: requests/s, mlkube V2 / MLServer 1.7.1 (mlserver-mlflow, "
               f"{config})", throughput,
               "≥ 2× requests/s, ≤ 0.5× p99, 0 errors",
               throughput >= 2 and p99 <= 0.5 and errors == 0,
               f"{m['requests_per_s']:,.0f} vs {a['requests_per_s']:,.0f} req/s, p99 "
               f"{p99:.2f}× ({m['p99_ms']:.2f} vs {a['p99_ms']:.2f} ms), {errors} errors, "
               f"{args.clients} clients{passes}, {load_note(m)}", "make bench-mlserver")


def ratio_rows(reports: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Record the headline ratios in benchmarks/results/ratios.json (benchmarks/ratios.py)."""
    from ratios import record  # benchmarks/ratios.py

    found = {r["key"]: r for r in reports}
    detail_passes = f", median of {args.passes} passes" if args.passes > 1 else ""

    anchor, mlkube = found.get("mlflow"), found.get("mlkube-v2")
    if anchor and mlkube:
        for n in (1, 64):
            a, m = anchor[f"{n}_rows"], mlkube[f"{n}_rows"]
            throughput = m["requests_per_s"] / a["requests_per_s"]
            p99 = m["p99_ms"] / a["p99_ms"]
            record(f"serving_{n}_rows", f"model server, {n}-row requests: requests/s, "
                   "mlkube V2 / `mlflow models serve`", throughput,
                   "≥ 2× requests/s, ≤ 0.5× p99, 0 errors",
                   throughput >= 2 and p99 <= 0.5 and m["errors"] == 0,
                   f"p99 {p99:.2f}×, {m['errors']} errors, {args.clients} clients"
                   f"{detail_passes}", "benchmarks/serving.py")
    for key, mlserver in found.items():
        if key.startswith("mlserver") and mlkube:
            record_mlserver(record, key, mlserver, mlkube, args)
    echo = found.get("echo")
    if echo and mlkube:
        for n in (1, 64):
            a, m = echo[f"{n}_rows"], mlkube[f"{n}_rows"]
            if not a.get("requests_per_s_per_core") or not m.get("requests_per_s_per_core"):
                continue
            share = m["requests_per_s_per_core"] / a["requests_per_s_per_core"]
            record(f"serving_ceiling_{n}_rows", f"model server, {n}-row requests: requests/s "
                   "per server core, mlkube V2 / a Starlette+uvicorn echo of the same V2 JSON",
                   share, "", None,
                   f"{m['requests_per_s_per_core']:,.0f} vs {a['requests_per_s_per_core']:,.0f}"
                   f" req/s per core ({m['requests_per_s']:,.0f} vs {a['requests_per_s']:,.0f}"
                   f" req/s){detail_passes}, {load_note(m)}", "make bench-mlserver")
    on, off = found.get("mlkube-v2"), found.get("mlkube-nostats")
    again = found.get("mlkube-nostats-again")  # the same server as `off`: the noise floor
    if on and off:  # what the live statistics cost (issue 17, item 1)
        for n in (1, 64):
            a, m = off[f"{n}_rows"], on[f"{n}_rows"]
            throughput = m["requests_per_s"] / a["requests_per_s"]
            control = "" if again is None else (
                f", A/A control (`--no-stats` twice) "
                f"{again[f'{n}_rows']['requests_per_s'] / a['requests_per_s']:.2f}×")
            record(f"serving_stats_{n}_rows", f"live statistics, {n}-row requests: requests/s, "
                   "V2 with them (windows written) / `--no-stats`", throughput, "≥ 0.95×",
                   throughput >= 0.95 and m["errors"] == 0,
                   f"{m['requests_per_s']:,.0f} vs {a['requests_per_s']:,.0f} req/s, p99 "
                   f"{m['p99_ms']:.2f} vs {a['p99_ms']:.2f} ms, {args.clients} clients"
                   f"{detail_passes}{control}", "benchmarks/serving.py")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    mlkube = [sys.executable, "-m", "mlkube.cli", "serve", "model"]
    with tempfile.TemporaryDirectory() as tmp:
        uri, rows, env = train_demo(Path(tmp) / "state")
        # (key, label, command, readiness path, infer path, body, row count, port, env, cwd)
        servers: list[tuple[Any, ...]] = []
        port = free_port()
        servers.append(("mlflow", "`mlflow models serve` (anchor)", [
            sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager",
            "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"], "/ping",
            "/invocations", mlflow_body, mlflow_rows, port, env, None))
        stats = ["--stats-dir", str(Path(tmp) / "monitoring")]  # as the local target runs it
        for key, label, extra, path, body, count in (
                ("mlkube-v2", "`mlkube serve model`, V2 infer", stats,
                 f"/v2/models/{NAME}/infer", v2_body, v2_rows),
                ("mlkube-nostats", "`mlkube serve model --no-stats`, V2 infer", ["--no-stats"],
                 f"/v2/models/{NAME}/infer", v2_body, v2_rows),
                ("mlkube-nostats-again", "`mlkube serve model --no-stats` again (A/A control)",
                 ["--no-stats"], f"/v2/models/{NAME}/infer", v2_body, v2_rows),
                ("mlkube-invocations", "`mlkube serve model`, /invocations", [],
                 "/invocations", mlflow_body, mlflow_rows),
                ("mlkube-pyfunc", "`mlkube serve model --no-fast-path`, V2 infer",
                 ["--no-fast-path"], f"/v2/models/{NAME}/infer", v2_body, v2_rows)):
            port = free_port()
            servers.append((key, label, [*mlkube, "--model-uri", uri, "--name", NAME, "--version",
                                         "1", "--port", str(port), *extra],
                            "/v2/health/ready", path, body, count, port, env, None))
        if args.kserve_python:
            script = Path(tmp) / "kserve_server.py"
            script.write_text(KSERVE_SERVER)
            port = free_port()
            bin_dir = Path(args.kserve_python).parent
            servers.append(("kserve", "KServe 0.21 `ModelServer` (pyfunc), V2 infer",
                            [args.kserve_python, str(script), "--http_port", str(port)],
                            "/v2/health/ready", f"/v2/models/{NAME}/infer", v2_body, v2_rows,
                            port, dict(env, KSERVE_MODEL_NAME=NAME, KSERVE_MODEL_URI=uri,
                                       PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"),
                            None))
        for workers, threads in args.mlserver_configs if args.mlserver_python else []:
            key = "mlserver" + (f"-pw{workers}" if workers else "") + (
                f"-t{threads}" if threads else "")
            repository = Path(tmp) / key
            (repository / NAME).mkdir(parents=True)
            port = free_port()
            settings = mlserver_settings(port, free_port(), free_port(), workers)
            (repository / "settings.json").write_text(json.dumps(settings, indent=1))
            (repository / NAME / "model-settings.json").write_text(
                json.dumps(mlserver_model_settings(uri), indent=1))
            bin_dir = Path(args.mlserver_python).absolute().parent
            # the model's readiness: the server's says ready with no model loaded (a worker
            # that crashed while loading it)
            server_env = dict(env, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
            if threads:
                server_env["OMP_NUM_THREADS"] = str(threads)
            servers.append((key, f"MLServer 1.7.1 (mlserver-mlflow, parallel_workers {workers}"
                            + (f", OMP_NUM_THREADS={threads}" if threads else "") + "), V2 infer",
                            [str(bin_dir / "mlserver"), "start", str(repository)],
                            f"/v2/models/{NAME}/ready", f"/v2/models/{NAME}/infer", v2_body,
                            v2_rows, port, server_env, str(repository)))
        script = Path(tmp) / "echo_server.py"
        script.write_text(ECHO_SERVER)
        port = free_port()
        servers.append(("echo", "Starlette+uvicorn echo of the V2 JSON (ceiling)",
                        [sys.executable, str(script), str(port)], "/v2/health/ready",
                        f"/v2/models/{NAME}/infer", v2_body, v2_rows, port, env, None))
        chosen = [s for s in servers if s[0] == "mlflow" or not args.only or s[0] in args.only
                  or (s[0].startswith("mlserver") and "mlserver" in args.only)]
        passes: dict[str, list[dict[str, Any]]] = {s[0]: [] for s in chosen}
        for number in range(args.passes):
            if args.passes > 1:
                print(f"pass {number + 1} of {args.passes}", file=sys.stderr, flush=True)
            for key, label, command, ready_path, path, body, count, port, server_env, cwd \
                    in chosen:
                report = measure(label, command, ready_path, path, body, count, rows,
                                 server_env, port, args, cwd)
                report["key"] = key
                passes[key].append(report)
        reports = [median_report(runs) if args.passes > 1 else runs[0]
                   for runs in passes.values()]
    print(table(reports))
    if not args.no_record:
        ratio_rows(reports, args)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"reports": reports, "passes": passes} if args.passes > 1 else reports,
            indent=2) + "\n")


if __name__ == "__main__":
    main()
