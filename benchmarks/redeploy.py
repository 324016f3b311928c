"""Redeploy locally under load: time to the new version answering, and failed requests.

    .venv/bin/python benchmarks/redeploy.py [--clients 8]

In a fresh state directory: prepare the demo data, train and register two versions, deploy
version 1 (the server starts), then point ``champion`` at version 2 and deploy again while
``--clients`` threads keep asking the published URL. It reports, for that second deploy, the
seconds from the deploy step's start to the first answer from version 2, the step's own wall
time, and how many requests failed. The anchor, measured in the same run, is what a redeploy
cost before the runtime swapped models in place: starting ``mlflow models serve`` for version 2
on another port, until it answers a prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

NAME = "mlkube-demo"


def _step(step: str, *args: str, env: dict[str, str]) -> dict[str, object]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", f"mlkube.steps.{step.replace('-', '_')}", *args,
                        "--result-file", out.name], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        result: dict[str, object] = json.loads(Path(out.name).read_text())
        return result


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Load:
    """Clients on the published URL; records failures and when version 2 first answered."""

    def __init__(self, base: str, row: list[float], clients: int) -> None:
        from mlkube.serve import client

        self.client, self.base, self.row = client, base, row
        self.ok = 0
        self.failed: list[str] = []
        self.first_v2: float | None = None
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._ask, daemon=True) for _ in range(clients)]

    def _ask(self) -> None:
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, len(self.row)],
                                       "datatype": "FP32", "data": self.row}]}).encode()
        url = f"{self.base}/v2/models/{NAME}/infer"
        deadline = time.monotonic() + 600
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                request = urllib.request.Request(url, data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
                self.ok += 1
                if answer["model_version"] == "2" and self.first_v2 is None:
                    self.first_v2 = time.monotonic()
            except Exception as exc:  # every failure counts
                self.failed.append(repr(exc))


def _mlflow_serve_to_answer(env: dict[str, str], row: list[float]) -> float:
    """The anchor: a new ``mlflow models serve`` for version 2, start to first prediction."""
    port = _free_port()
    # its server is a child process found on PATH: the venv's bin first, as the old deploy did
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                                f"models:/{NAME}/2", "--env-manager", "local", "-h", "127.0.0.1",
                                "-p", str(port), "--workers", "1"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    body = json.dumps({"inputs": [row]}).encode()
    try:
        while time.monotonic() - start < 300:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5):
                    return time.monotonic() - start
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("mlflow models serve never answered")
    finally:
        os.killpg(process.pid, 15)
        process.wait(30)


def main() -> None:
    """Print the measurements as a table row each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        config = Path(tmp) / "c.yaml"
        config.write_text(json.dumps({"serving": {"port": _free_port()}}))
        env = {**os.environ, "MLKUBE_STATE_DIR": str(state),
               "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}"}
        os.environ.update(env)
        common = ["--config", str(config)]
        dataset = str(_step("prepare-data", *common, env=env)["dataset_uri"])
        runs = [_step("train", *common, "--dataset", dataset, "--epochs", "4", "--params",
                      json.dumps({"seed": seed}), env=env)["run_id"] for seed in (0, 1)]
        import mlflow

        from mlkube import data
        from mlkube.targets import local

        for run_id in runs:
            mlflow.register_model(f"runs:/{run_id}/model", NAME)
        client = mlflow.MlflowClient()
        client.set_registered_model_alias(NAME, "champion", "1")
        started = time.monotonic()
        first = _step("deploy", *common, "--dataset", dataset, env=env)
        cold = time.monotonic() - started
        base = str(first["endpoint"]).split("/v2/")[0]
        x_test, _, _ = data.load_split(dataset, "test")
        row = [float(v) for v in x_test[0]]
        client.set_registered_model_alias(NAME, "champion", "2")
        load = Load(base, row, args.clients)
        for thread in load.threads:
            thread.start()
        time.sleep(2.0)
        started = time.monotonic()
        _step("deploy", *common, "--dataset", dataset, env=env)
        wall = time.monotonic() - started
        time.sleep(2.0)
        load.stop.set()
        for thread in load.threads:
            thread.join(60)
        to_v2 = (load.first_v2 or float("nan")) - started
        for server in local.servers(state):
            local.stop(server)
        anchor = _mlflow_serve_to_answer(env, row)
    print("| measurement | seconds | ratio to anchor |")
    print("|---|---|---|")
    print(f"| anchor: new `mlflow models serve` for v2, start to first answer | {anchor:.1f} | 1× |")
    print(f"| deploy v1, nothing served before (step wall time) | {cold:.1f} | {cold / anchor:.2f}× |")
    print(f"| redeploy v1 → v2: step start to v2 answering | {to_v2:.1f} | {to_v2 / anchor:.2f}× |")
    print(f"| redeploy v1 → v2: step wall time | {wall:.1f} | {wall / anchor:.2f}× |")
    print(f"\n{args.clients} clients during the redeploy: {load.ok} requests answered, "
          f"{len(load.failed)} failed" + (f" (first: {load.failed[0]})" if load.failed else ""))
    from ratios import record  # benchmarks/ratios.py
    record("redeploy", "redeploy v1 → v2 under load: step start to v2 answering / a new "
           "`mlflow models serve`", to_v2 / anchor, "0 failed requests", not load.failed,
           f"{load.ok} answered, {len(load.failed)} failed, {args.clients} clients",
           f"benchmarks/redeploy.py --clients {args.clients}")


if __name__ == "__main__":
    main()
