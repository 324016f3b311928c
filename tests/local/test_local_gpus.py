"""The local backend's ``gpus``: the step is told, as in a pod, and train checks it."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pytest
import torch

from mlkube import spec
from mlkube.airflow.local_run import LocalStep
from mlkube.errors import MlkubeError
from mlkube_testing import run

LOG = logging.getLogger("test")


@pytest.fixture
def dataset(state: Path, tmp_path: Path) -> str:
    _, prepared, _ = run("prepare-data", tmp=tmp_path)
    assert prepared is not None
    return str(prepared["dataset_uri"])


def _train_runs() -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(experiments, "tags.`mlkube.step` = 'train'"))


def test_a_gpu_asked_for_on_this_cpu_only_machine_fails_the_step_in_one_line(
        dataset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert torch.version.cuda is None  # this machine's torch is the CPU build
    monkeypatch.delenv(spec.GPUS_ENV, raising=False)
    step = LocalStep(spec.TRAIN, {"dataset": dataset, "epochs": 1}, env={}, gpus=1)
    with pytest.raises(MlkubeError) as failure:
        step.run(LOG)
    assert str(failure.value) == (
        f"error: asked for 1 GPU (MLKUBE_GPUS=1) but torch sees 0: likely cause: CPU-only torch "
        f"build (torch {torch.__version__}); use a CUDA build of torch, as in the GPU image "
        f"{spec.GPU_IMAGE}; or set gpus to 0 to train on the CPU")
    assert _train_runs() == []


@pytest.mark.parametrize("gpus", [0, None])
def test_no_gpu_asked_for_trains_on_the_cpu(dataset: str, monkeypatch: pytest.MonkeyPatch,
                                            gpus: int | None) -> None:
    monkeypatch.delenv(spec.GPUS_ENV, raising=False)
    step = LocalStep(spec.TRAIN, {"dataset": dataset, "epochs": 1,
                                  "params": {"hidden_sizes": "16"}}, env={}, gpus=gpus)
    assert step.env.get(spec.GPUS_ENV) == (None if gpus is None else "0")
    result = step.run(LOG)
    assert result["device"] == "cpu"
    assert [r.info.run_id for r in _train_runs()] == [result["run_id"]]


def test_gpus_overrides_the_env_and_is_checked() -> None:
    assert LocalStep(spec.TRAIN, {}, env={spec.GPUS_ENV: "8"}, gpus=2).env[spec.GPUS_ENV] == "2"
    with pytest.raises(MlkubeError, match=r"^step train: gpus is -1; give a whole number of GPUs"):
        LocalStep(spec.TRAIN, {}, env={}, gpus=-1)
