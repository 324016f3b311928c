"""train on two "nodes": two torchrun process groups over Gloo, each given the environment the
pods of an Indexed Job get (JOB_COMPLETION_INDEX, MASTER_ADDR, MASTER_PORT), running the exact
command mlkube renders for them, with $(VAR) expanded as the kubelet does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from mlkube import spec
from mlkube_testing import error_lines, free_port, run


def kubelet_expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """``$(VAR)`` replaced by the container's variable, as Kubernetes does for command/args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), arg) for arg in argv]


def test_two_nodes_train_one_model_and_one_result(dataset: str, state: Path, tmp_path: Path) -> None:
    command = spec.TRAIN.command(sys.executable, processes=1, nodes=2)
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in command and "--standalone" not in command
    port = str(free_port())
    nodes = []
    for index in (0, 1):
        env = dict(os.environ, JOB_COMPLETION_INDEX=str(index), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1")
        result = tmp_path / f"result-{index}.json"
        argv = kubelet_expand([*command, "--dataset", dataset, "--epochs", "3", "--params",
                               '{"hidden_sizes": "16"}', "--result-file", str(result)], env)
        nodes.append((subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True), result))
    outputs = [process.communicate(timeout=300) for process, _ in nodes]
    for (process, _), (_, err) in zip(nodes, outputs, strict=True):
        assert process.returncode == 0, err[-2000:]
    assert "training on cpu x2 for 3 epochs" in outputs[0][0]
    follows = [line for line in outputs[1][0].splitlines() if line.startswith("[train] rank 1")]
    assert follows[0] == ("[train] rank 1 of 2: training on cpu with rank 0, which logs to "
                          "MLflow and writes the result")  # the follower pod's log was empty
    assert [line.split(" loss ")[0] for line in follows[1:]] == [
        "[train] rank 1: epoch 1/3", "[train] rank 1: epoch 2/3", "[train] rank 1: epoch 3/3",
        "[train] rank 1: done after 3 epochs"]
    leader, follower = (json.loads(r.read_text()) if r.exists() else None for _, r in nodes)
    assert follower is None  # one process writes the result
    assert leader is not None and leader["epochs"] == 3 and leader["value"] > 0.8
    assert mlflow.get_run(leader["run_id"]).data.params["world_size"] == "2"
    trains = mlflow.search_runs(experiment_names=["mlkube"], output_format="list",
                                filter_string="tags.`mlkube.step` = 'train'")
    assert len(trains) == 1  # and one MLflow run, with one model


def test_result_only_reports_a_finished_run_and_refuses_an_unfinished_one(
        dataset: str, state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--dataset", dataset, "--epochs", "2", "--params", '{"hidden_sizes": "8"}')
    code, result, err = run("train", *args, "--result-only", "true", tmp=tmp_path, capsys=capsys)
    lines = error_lines(err)
    # its own exit status: the operator then trains the run on the Job, not for any failure
    assert code == spec.NOT_FINISHED_EXIT and result is None and len(lines) == 1
    assert "has not finished" in lines[0]
    assert not (state / "artifacts" / "checkpoints").exists() or not any(
        (state / "artifacts" / "checkpoints").rglob("*.pt"))  # it trained nothing
    code, trained, _ = run("train", *args, tmp=tmp_path)
    assert code == 0 and trained is not None
    code, reported, _ = run("train", *args, "--result-only", "true", tmp=tmp_path)
    assert code == 0 and reported == trained
