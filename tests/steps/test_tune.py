"""tune: a real Optuna study, parallel worker processes on one storage, nested MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import optuna
import pytest

from mlkube_testing import error_lines, run, write_config


def test_parallel_workers_share_one_study(dataset: str, state: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "c.yaml", tune={"n_trials": 4, "workers": 2, "epochs": 3})
    code, result, _ = run("tune", "--config", str(config), "--dataset", dataset, tmp=tmp_path,
                          capsys=capsys)
    assert code == 0 and result is not None
    assert set(result["best_params"]) == {"learning_rate", "hidden_sizes", "weight_decay"}
    assert 0.5 < result["best_value"] <= 1.0
    study = optuna.load_study(study_name=result["study_name"],
                              storage=f"sqlite:///{state / 'optuna.db'}")
    assert len(study.trials) >= 4
    # the worker process wrote a log and its trials are in the same study
    assert (state / "logs" / "tune-worker-1.log").exists()
    children = mlflow.search_runs(
        experiment_names=["mlkube-test"], output_format="list",
        filter_string=f"tags.`mlflow.parentRunId` = '{result['mlflow_run_id']}'")
    assert len(children) == len(study.trials)
    assert result["best_run_id"] in {r.info.run_id for r in children}
    best = mlflow.get_run(result["best_run_id"])
    assert float(best.data.params["learning_rate"]) == pytest.approx(result["best_params"]["learning_rate"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result["mlflow_run_id"], "tune")}
    assert "tune/optimization_history.png" in artifacts

    # again: the study is complete, so no trial runs and the answer is the same
    again, same, _ = run("tune", "--config", str(config), "--dataset", dataset, tmp=tmp_path)
    assert again == 0 and same is not None and same["best_params"] == result["best_params"]
    assert len(optuna.load_study(study_name=result["study_name"],
                                 storage=f"sqlite:///{state / 'optuna.db'}").trials) == len(study.trials)


def test_pruning_and_worker_role(dataset: str, state: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tune={"n_trials": 6, "workers": 1, "epochs": 6,
                                                     "pruner": "median"})
    code, result, _ = run("tune", "--config", str(config), "--dataset", dataset,
                          "--role", "worker", "--study-name", "fanout", tmp=tmp_path)
    assert code == 0 and result is not None and result["study_name"] == "fanout"
    study = optuna.load_study(study_name="fanout", storage=f"sqlite:///{state / 'optuna.db'}")
    reported = [t for t in study.trials if t.intermediate_values]
    assert len(reported) == 6 and all(len(t.intermediate_values) >= 1 for t in reported)
    states = {t.state.name for t in study.trials}
    assert states <= {"COMPLETE", "PRUNED"}
    code, selected, _ = run("tune", "--config", str(config), "--dataset", dataset,
                            "--role", "select", "--study-name", "fanout", tmp=tmp_path)
    assert code == 0 and selected is not None
    assert selected["best_value"] == study.best_value and json.dumps(selected["best_params"])


def test_bad_search_space(dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = '{"learning_rate": {"type": "float", "low": 0.5, "high": 0.1}}'
    code, result, err = run("tune", "--dataset", dataset, "--search-space", space,
                            tmp=tmp_path, capsys=capsys)
    assert code == 1 and result is None
    assert len(error_lines(err)) == 1 and "low 0.5 > high 0.1" in error_lines(err)[0]


def test_select_unknown_study(dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run("tune", "--dataset", dataset, "--role", "select", "--study-name", "nope",
                       tmp=tmp_path, capsys=capsys)
    assert code == 1 and "study nope does not exist" in error_lines(err)[0]
