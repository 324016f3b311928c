"""Shared fixtures: every test gets its own state directory and MLflow store.

Tests marked ``cluster`` or ``gpu`` run only when asked for (README.md, "tests/"): pytest's
addopts deselect them, ``pytest -m cluster`` runs them and skips each with the reason where
there is no kubeconfig (no CUDA GPU).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _kubeconfig_present() -> bool:
    path = Path(os.environ.get("KUBECONFIG", Path.home() / ".kube" / "config"))
    return path.is_file()


def _cuda_present() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip cluster tests without a kubeconfig and GPU tests without CUDA."""
    for item in items:
        if "cluster" in item.keywords and not _kubeconfig_present():
            item.add_marker(pytest.mark.skip(reason="no kubeconfig: cluster tests need a cluster"))
        if "gpu" in item.keywords and not _cuda_present():
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU"))


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made, once a session: each test's store starts
    as a copy (making the tables runs MLflow's migrations, 1.5 s a store)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_mlflow_store: Path) -> Path:
    """A fresh state directory with its own MLflow store; servers stopped afterwards."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    shutil.copyfile(empty_mlflow_store, state_dir / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLKUBE_STATE_DIR", str(state_dir))
    uri = f"sqlite:///{state_dir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    if "mlflow" in sys.modules:  # a step run in this process earlier pinned MLflow's global URI
        sys.modules["mlflow"].set_tracking_uri(uri)
    yield state_dir
    from mlkube.targets import local

    if (state_dir / "serving").is_dir():
        for server in local.servers(state_dir):
            local.stop(server)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server on loopback for the session (tests/postgres_server.py)."""
    from postgres_server import Postgres, available

    if not available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL (initdb, pg_ctl) is not installed; CI machines have it")
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed")
    server = Postgres().start()
    yield server
    server.stop()
