"""Fixtures for the step tests: a prepared demo dataset and trained models."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mlkube_testing import run


@pytest.fixture
def dataset(state: Path, tmp_path: Path) -> str:
    """The bundled demo data, prepared."""
    _, result, _ = run("prepare-data", tmp=tmp_path)
    assert result is not None
    return str(result["dataset_uri"])


@pytest.fixture
def train(dataset: str, tmp_path: Path) -> Callable[..., str]:
    """Train a model with the given hyperparameters; returns its MLflow run id."""

    def trained(epochs: int = 3, **params: object) -> str:
        code, result, _ = run("train", "--dataset", dataset, "--epochs", str(epochs),
                              "--params", json.dumps({"hidden_sizes": "16", **params}), tmp=tmp_path)
        assert code == 0 and result is not None
        return str(result["run_id"])

    return trained
