"""The images: no Docker engine here, so check what they install and run against the code."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mlkube.cli import build_parser
from mlkube.kube.security import RUN_AS_USER

DOCKER = Path(__file__).parents[2] / "docker"
PYPROJECT = (Path(__file__).parents[2] / "pyproject.toml").read_text()


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu", "Dockerfile.server"])
def test_image_runs_as_the_pods_user_with_pinned_torch(name: str) -> None:
    text = (DOCKER / name).read_text()
    assert f"--uid {RUN_AS_USER}" in text and f"USER {RUN_AS_USER}:{RUN_AS_USER}" in text
    torch_pin = re.search(r'"torch==([\d.]+)"', PYPROJECT)
    assert torch_pin and f"torch=={torch_pin.group(1)}" in text
    mlflow_pin = re.search(r'"mlflow==([\d.]+)"', PYPROJECT)
    assert mlflow_pin and ("'.[ml" in text or "'.[serve]'" in text
                           or f"mlflow=={mlflow_pin.group(1)}" in text)


def test_the_cpu_image_can_run_the_deploy_step_on_a_cluster() -> None:
    """deploy talks to the API server through the kubernetes client (the kube extra)."""
    assert "pip install '.[ml,kube]'" in (DOCKER / "Dockerfile").read_text()


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_image_command_runs(name: str) -> None:
    cmd = re.search(r"^CMD (\[.*\])$", (DOCKER / name).read_text(), re.M)
    assert cmd is not None
    argv = eval(cmd.group(1))  # a JSON-style list literal
    assert argv[0] == "python"
    done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout


def test_server_image_runs_mlkube_serve_model_from_its_environment() -> None:
    text = (DOCKER / "Dockerfile.server").read_text()
    assert "pip install '.[serve]'" in text and "COPY plugins ./plugins" in text
    assert "EXPOSE 8080" in text
    serve_extra = re.search(r"^serve = \[(.*?)\]", PYPROJECT, re.M | re.S)
    assert serve_extra and all(p in serve_extra.group(1) for p in ("mlflow==", "torch==",
                                                                     "starlette", "uvicorn"))
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None
    argv = json.loads(cmd.group(1))
    assert argv[:2] == ["sh", "-c"] and argv[2].startswith("exec mlkube serve model ")
    line = (argv[2].removeprefix("exec ").replace("$MODEL_URI", "models:/m/3")
            .replace("$MODEL_NAME", "m").replace("$MODEL_VERSION", "3"))
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert args.handler.__name__ == "_serve_model"
    assert (args.model_uri, args.name, args.version) == ("models:/m/3", "m", "3")
    assert (args.host, args.port) == ("0.0.0.0", 8080)
