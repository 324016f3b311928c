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


def test_every_study_logs_its_efficiency_curve(dataset: str, state: Path, tmp_path: Path) -> None:
    """Best value so far against trial-epochs spent (benchmarks/README.md compares it to a grid)."""
    from mlkube.steps.tune import CURVE_METRIC

    config = write_config(tmp_path / "c.yaml", tune={"n_trials": 4, "workers": 1, "epochs": 3})
    code, result, _ = run("tune", "--config", str(config), "--dataset", dataset, tmp=tmp_path)
    assert code == 0 and result is not None
    client = mlflow.MlflowClient()
    curve = sorted((m.step, m.value) for m in client.get_metric_history(result["mlflow_run_id"],
                                                                         CURVE_METRIC))
    study = optuna.load_study(study_name=result["study_name"],
                              storage=f"sqlite:///{state / 'optuna.db'}")
    spent = sum(len(t.intermediate_values) for t in study.trials
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert curve[-1] == (spent, pytest.approx(result["best_value"]))
    assert [v for _, v in curve] == sorted(v for _, v in curve)  # accuracy: never gets worse
    assert len({s for s, _ in curve}) == len(curve)

    again, _, _ = run("tune", "--config", str(config), "--dataset", dataset, tmp=tmp_path)
    assert again == 0
    assert len(client.get_metric_history(result["mlflow_run_id"], CURVE_METRIC)) == len(curve)


def test_the_curve_counts_pruned_epochs_and_only_complete_trials_win() -> None:
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from mlkube.steps.tune import efficiency_curve

    space = {"x": FloatDistribution(0, 1)}

    def trial(state: TrialState, epochs: int, value: float | None) -> optuna.trial.FrozenTrial:
        made = create_trial(state=state, params={"x": 0.5}, distributions=space, value=value,
                            intermediate_values={e: 0.1 * e for e in range(1, epochs + 1)})
        return made

    trials = [trial(TrialState.COMPLETE, 3, 0.80), trial(TrialState.PRUNED, 1, None),
              trial(TrialState.COMPLETE, 3, 0.75), trial(TrialState.COMPLETE, 3, 0.90)]
    assert efficiency_curve(trials, "maximize") == [(3, 0.80), (4, 0.80), (7, 0.80), (10, 0.90)]
    assert efficiency_curve(trials, "minimize") == [(3, 0.80), (4, 0.80), (7, 0.75), (10, 0.75)]


def test_the_grid_anchor_covers_the_tuners_search_space() -> None:
    """benchmarks/tune_vs_grid.py compares the tuner with a grid over the very same space."""
    import importlib.util

    from mlkube import config as configmod

    path = Path(__file__).parents[2] / "benchmarks" / "tune_vs_grid.py"
    module_spec = importlib.util.spec_from_file_location("tune_vs_grid", path)
    assert module_spec is not None and module_spec.loader is not None
    bench = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(bench)
    space = configmod.load(None).tune.search_space
    points = bench.grid_points(space, 4)
    assert len(points) == 4 * 3 * 4
    for name, dim in space.items():
        values = {p[name] for p in points}
        if dim.type == "categorical":
            assert values == set(dim.choices)
        else:
            assert min(values) == pytest.approx(dim.low) and max(values) == pytest.approx(dim.high)
    base = configmod.load(None).model
    for point in points:  # every point is a model the tuner could have trained
        configmod.model_params(base, point)
