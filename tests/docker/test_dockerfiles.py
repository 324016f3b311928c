"""The images: no Docker engine here, so check what they install and run against the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert mlflow_pin and ("'.[ml]'" in text or f"mlflow=={mlflow_pin.group(1)}" in text)


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_image_command_runs(name: str) -> None:
    cmd = re.search(r"^CMD (\[.*\])$", (DOCKER / name).read_text(), re.M)
    assert cmd is not None
    argv = eval(cmd.group(1))  # a JSON-style list literal
    assert argv[0] == "python"
    done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout


def test_server_command_is_the_local_backends_server() -> None:
    text = (DOCKER / "Dockerfile.server").read_text()
    source = (Path(__file__).parents[2] / "plugins/mlkube/local/serving.py").read_text()
    assert "mlflow models serve" in text and '"models", "serve"' in source
    assert "--env-manager local" in text and '"--env-manager", "local"' in source
