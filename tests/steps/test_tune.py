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


def _study_with_parent(state: Path, name: str) -> optuna.Study:
    """An empty study whose parent MLflow run exists, as a creator leaves it."""
    from mlkube.steps.tune import PARENT_ATTR

    study = optuna.create_study(study_name=name, storage=f"sqlite:///{state / 'optuna.db'}",
                                direction="maximize")
    with mlflow.start_run() as parent:
        pass
    study.set_user_attr(PARENT_ATTR, parent.info.run_id)
    return study


def test_a_worker_recovers_a_study_whose_creator_and_first_worker_died(
        dataset: str, state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No parent run recorded, a slot never queued, a trial RUNNING without a heartbeat (an
    earlier mlkube's worker, killed): the next worker still ends the study with n_trials."""
    from mlkube.steps.tune import PARENT_ATTR

    monkeypatch.setenv("MLKUBE_TUNE_HEARTBEAT", "1,2")
    study = optuna.create_study(study_name="orphaned", direction="maximize",
                                storage=f"sqlite:///{state / 'optuna.db'}")
    killed = study.ask()  # trial 0: RUNNING, and no heartbeat ever
    learning_rate = killed.suggest_float("learning_rate", 1e-4, 3e-2, log=True)
    config = write_config(tmp_path / "c.yaml", tune={"n_trials": 2, "epochs": 2, "pruner": "none"})
    code, result, _ = run("tune", "--config", str(config), "--dataset", dataset,
                          "--role", "worker", "--study-name", "orphaned", tmp=tmp_path)
    assert code == 0 and result is not None and result["trials"] == 2
    study = optuna.load_study(study_name="orphaned", storage=f"sqlite:///{state / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.params["learning_rate"] == learning_rate
    assert study.user_attrs[PARENT_ATTR] == result["mlflow_run_id"]
    children = mlflow.search_runs(
        experiment_names=["mlkube-test"], output_format="list",
        filter_string=f"tags.`mlflow.parentRunId` = '{result['mlflow_run_id']}'")
    assert {r.info.run_id for r in children} == {t.user_attrs["mlflow_run_id"]
                                                 for t in study.trials[1:]}


def test_a_slot_queued_twice_runs_once(dataset: str, state: Path, tmp_path: Path) -> None:
    """Two workers refilling the same slot at once queue it twice; it still runs once."""
    from optuna.trial import TrialState, create_trial

    study = _study_with_parent(state, "copies")
    for _ in range(2):
        study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"mlkube_slot": 0}))
    config = write_config(tmp_path / "c.yaml", tune={"n_trials": 1, "epochs": 2, "pruner": "none"})
    code, result, _ = run("tune", "--config", str(config), "--dataset", dataset,
                          "--role", "worker", "--study-name", "copies", tmp=tmp_path)
    assert code == 0 and result is not None and result["trials"] == 1
    first, second = optuna.load_study(study_name="copies",
                                      storage=f"sqlite:///{state / 'optuna.db'}").trials
    assert first.state == TrialState.COMPLETE and first.params
    assert second.state == TrialState.FAIL and second.system_attrs["mlkube_duplicate"]
    assert not second.params and "mlflow_run_id" not in second.user_attrs  # never ran


def test_a_slot_that_failed_three_times_is_given_up(dataset: str, state: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from optuna.trial import TrialState, create_trial

    study = _study_with_parent(state, "hopeless")
    for _ in range(3):
        study.add_trial(create_trial(state=TrialState.FAIL, system_attrs={"mlkube_slot": 0}))
    config = write_config(tmp_path / "c.yaml", tune={"n_trials": 2, "epochs": 2, "pruner": "none"})
    code, result, _ = run("tune", "--config", str(config), "--dataset", dataset,
                          "--role", "worker", "--study-name", "hopeless", tmp=tmp_path)
    assert code == 0 and result is not None and result["trials"] == 1  # the honest count
    states = [t.state.name for t in optuna.load_study(
        study_name="hopeless", storage=f"sqlite:///{state / 'optuna.db'}").trials]
    assert states == ["FAIL", "FAIL", "FAIL", "COMPLETE"]
    assert "slot(s) [0] given up after 3 failed attempts" in capsys.readouterr().out


def test_a_bad_heartbeat_setting_is_one_line(dataset: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLKUBE_TUNE_HEARTBEAT", "60,10")
    code, result, err = run("tune", "--dataset", dataset, tmp=tmp_path, capsys=capsys)
    lines = error_lines(err)
    assert code == 1 and result is None and len(lines) == 1, err
    assert "MLKUBE_TUNE_HEARTBEAT is '60,10'" in lines[0] and "'10,60'" in lines[0]



def test_a_live_trial_longer_than_the_grace_period_is_not_failed(
        dataset: str, state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its worker's heartbeat keeps it alive while another worker waits and watches."""
    import subprocess
    import sys
    import time

    from optuna.trial import TrialState

    from mlkube import spec

    monkeypatch.setenv("MLKUBE_TUNE_HEARTBEAT", "1,2")
    url = f"sqlite:///{state / 'optuna.db'}"
    # a trial far longer than the test watches it; both workers are killed at the end
    config = write_config(tmp_path / "c.yaml", tune={"n_trials": 1, "epochs": 10_000,
                                                     "pruner": "none"})
    command = [*spec.TUNE.command(sys.executable), "--config", str(config), "--dataset", dataset,
               "--role", "worker", "--study-name", "long"]
    logs = tmp_path / "first.log", tmp_path / "watcher.log"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for log in logs:
            with log.open("w") as out:
                workers.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 120
            while not [t for t in _trials(url, "long") if t.intermediate_values]:
                assert time.monotonic() < deadline and workers[0].poll() is None
                time.sleep(0.1)
        while "waiting for 1 trial(s) running in other workers" not in logs[1].read_text():
            assert time.monotonic() < deadline and workers[1].poll() is None
            time.sleep(0.1)
        for _ in range(40):  # 4 s, twice the grace period, of watching
            assert [t.state for t in _trials(url, "long")] == [TrialState.RUNNING]
            time.sleep(0.1)
        assert all(worker.poll() is None for worker in workers)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    assert "was failed by another worker" not in logs[0].read_text()
    assert "queued again with its parameters" not in logs[1].read_text()


def test_a_worker_paused_past_the_grace_period_loses_its_trial_to_a_retry(
        dataset: str, state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A frozen worker looks dead: its trial is failed and run again elsewhere; when it wakes
    it drops its result, and the study still holds one finished trial a slot."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from optuna.trial import TrialState

    from mlkube import spec

    monkeypatch.setenv("MLKUBE_TUNE_HEARTBEAT", "1,2")
    url = f"sqlite:///{state / 'optuna.db'}"
    # epochs enough that the trial is caught mid-way (each epoch's report is a database write):
    # with 20 it could finish between two looks on a loaded machine (a CI run saw it)
    config = write_config(tmp_path / "c.yaml", tune={"n_trials": 1, "epochs": 200,
                                                     "pruner": "none"})
    args = ["--config", str(config), "--dataset", dataset, "--role", "worker", "--study-name", "nap"]
    log = tmp_path / "paused.log"
    with log.open("w") as out:
        paused = subprocess.Popen([*spec.TUNE.command(sys.executable), *args], stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not [t for t in _trials(url, "nap") if 1 <= len(t.intermediate_values) <= 150]:
            assert paused.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(paused.pid, signal.SIGSTOP)
        assert [t.state for t in _trials(url, "nap")] == [TrialState.RUNNING]
        code, result, _ = run("tune", *args, tmp=tmp_path)
        os.kill(paused.pid, signal.SIGCONT)
        assert paused.wait(120) == 0, log.read_text()
    finally:
        paused.kill()
    assert code == 0 and result is not None and result["trials"] == 1
    first, retry = _trials(url, "nap")
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.params == first.params and retry.system_attrs["failed_trial"] == 0
    assert "trial 0 was failed by another worker" in log.read_text()


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, read with the step's own engine options (SQLite: a long lock
    timeout; with the default one a look while a worker writes can fail "database is locked",
    as a CI run saw)."""
    from optuna.storages import RDBStorage

    from mlkube.steps.tune import engine_options

    try:
        store = RDBStorage(url, engine_kwargs=engine_options(url))
        return optuna.load_study(study_name=name, storage=store).trials
    except KeyError:  # not created yet
        return []

