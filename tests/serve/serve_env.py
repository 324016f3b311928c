"""Helpers for the serving tests: the registry the fixtures build (see conftest.py), training
and logging models, ``mlkube serve model`` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlkube_testing import free_port, run

NAME = "serve-test"
HERE = Path(__file__).parent


@dataclass
class Registry:
    """What the module's registry holds."""

    state: Path
    tracking_uri: str
    rows: Any  # test-split feature rows, float32 (n, 30)
    features: list[str]
    versions: dict[str, str] = field(default_factory=dict)  # role -> version of NAME
    gated_uri: str = ""
    gate: Path = Path()

    def uri(self, role: str) -> str:
        """``models:/serve-test/<version>`` of a role (trained, retrained, nan, deleted,
        small)."""
        return f"models:/{NAME}/{self.versions[role]}"


def train(dataset: str, tmp: Path, epochs: int, hidden: str) -> str:
    code, result, _ = run("train", "--dataset", dataset, "--epochs", str(epochs), "--params",
                          json.dumps({"hidden_sizes": hidden}), tmp=tmp)
    assert code == 0 and result is not None
    return str(result["model_uri"])


def log_pyfunc(experiment_id: str, example: Any, config: dict[str, Any],
                metadata: dict[str, Any]) -> str:
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 30))]),
                               outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 2))]))
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(HERE / "pyfunc_models.py"),
                                       model_config=config, signature=signature,
                                       input_example=example, metadata=metadata,
                                       pip_requirements=["mlflow", "numpy"])
    return str(info.model_uri)


@dataclass
class Server:
    """A ``mlkube serve model`` process."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self, path: str) -> int:
        """The HTTP status of ``GET path`` (0: no answer)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def wait(self, path: str, status: int, timeout: float = 180.0) -> None:
        """Wait until ``GET path`` answers ``status``; fail if the process exits first."""
        deadline = time.monotonic() + timeout
        while self.status(path) != status:
            assert self.process.poll() is None, f"server exited: {self.output()}"
            assert time.monotonic() < deadline, f"{path} never answered {status}: {self.output()}"
            time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_server(model_uri: str, name: str, version: str, log: Path,
                 *extra: str) -> Server:
    """Start ``python -m mlkube.cli serve model`` on a free loopback port (not waiting)."""
    port = free_port()
    command = [sys.executable, "-m", "mlkube.cli", "serve", "model", "--model-uri", model_uri,
               "--name", name, "--version", version, "--port", str(port), *extra]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env=dict(os.environ), start_new_session=True)
    return Server(process=process, port=port, log=log)
