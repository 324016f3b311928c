"""tune on a real PostgreSQL server: Optuna's storage and MLflow's store, four worker processes,
workers killed mid-trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from mlkube import spec
from mlkube_testing import error_lines, run, write_config
from postgres_server import PASSWORD, Postgres

WORKERS, TRIALS = 4, 8


class Peak:
    """The most connections seen open to each database, sampled every 50 ms."""

    def __init__(self, server: Postgres, *databases: str):
        self.server, self.databases = server, databases
        self.peak = dict.fromkeys(databases, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            for name in self.databases:
                self.peak[name] = max(self.peak[name], self.server.connections(name))

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


def test_four_workers_run_exactly_n_trials_each_a_nested_mlflow_run(
        postgres: Postgres, dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    optuna_db, mlflow_db = postgres.database("optuna"), postgres.database("mlflow")
    monkeypatch.setenv("PGPASSWORD", PASSWORD)  # as a pod gets it from the Secret
    tracking_uri = postgres.url(mlflow_db, password=None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    storage = postgres.url(optuna_db, password=None)
    config = write_config(tmp_path / "c.yaml", tune={"n_trials": TRIALS, "workers": WORKERS,
                                                     "epochs": 2, "storage": storage})
    with Peak(postgres, optuna_db, mlflow_db) as seen:
        code, result, _ = run("tune", "--config", str(config), "--dataset", dataset, tmp=tmp_path)
    assert code == 0 and result is not None
    assert postgres.connections(optuna_db) <= 2  # what the step's pool in this process holds

    study = optuna.load_study(study_name=result["study_name"], storage=storage)
    assert [t.number for t in study.trials] == list(range(TRIALS))  # none lost, none extra
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert result["trials"] == sum(t.state.name == "COMPLETE" for t in study.trials)
    children = mlflow.search_runs(
        experiment_names=["mlkube-test"], output_format="list",
        filter_string=f"tags.`mlflow.parentRunId` = '{result['mlflow_run_id']}'")
    assert sorted(int(r.data.tags["mlkube.trial"]) for r in children) == list(range(TRIALS))
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {r.info.run_id for r in children}
    # pools sized per worker: at most 2 Optuna and 3 MLflow connections a worker process,
    # however many trials it ran (no connection kept per trial)
    assert 0 < seen.peak[optuna_db] <= 2 * WORKERS
    assert 0 < seen.peak[mlflow_db] <= 3 * WORKERS


@pytest.mark.parametrize("problem", ["wrong password", "nothing listens"])
def test_unusable_postgresql_is_one_line_naming_the_host_without_the_password(
        problem: str, postgres: Postgres, dataset: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    wrong = "not-the-pw"
    url = postgres.url(postgres.database("optuna"), password=wrong)
    if problem == "nothing listens":
        url = url.replace(f":{postgres.port}/", f":{postgres.port + 1 if postgres.port < 65535 else 1}/")
    code, result, err = run("tune", "--dataset", dataset, "--storage", url, tmp=tmp_path,
                            capsys=capsys)
    lines = error_lines(err)
    assert code == 1 and result is None and len(lines) == 1, err
    assert "Optuna storage postgresql://mlkube:***@127.0.0.1:" in lines[0]
    assert wrong not in err
    assert ("password authentication failed" if problem == "wrong password"
            else "Connection refused") in lines[0]


def test_mlflow_store_on_unusable_postgresql_is_one_line(postgres: Postgres, dataset: str,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres.url(postgres.database("mlflow"), "nope-pw"))
    code, result, err = run("tune", "--dataset", dataset, tmp=tmp_path, capsys=capsys)
    lines = error_lines(err)
    assert code == 1 and result is None and len(lines) == 1, err
    assert "MLflow's database postgresql://mlkube:***@127.0.0.1:" in lines[0]
    assert "password authentication failed" in lines[0] and "nope-pw" not in err


# A heartbeat every second; a trial without one for 3 s is failed and queued again. Trials of
# a few epochs, so that a worker can be caught in the middle of one.
HEARTBEAT, SMALL_TRIALS, EPOCHS = "1,3", 3, 8


@pytest.fixture
def cluster(postgres: Postgres, dataset: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Optuna's storage and MLflow's store on PostgreSQL, a short heartbeat; the storage URL."""
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    tracking_uri = postgres.url(postgres.database("mlflow"), password=None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    monkeypatch.setenv("MLKUBE_TUNE_HEARTBEAT", HEARTBEAT)
    storage = postgres.url(postgres.database("optuna"), password=None)
    optuna.storages.RDBStorage(storage)  # the tables, before any worker
    return storage


def _stop_mid_trial(storage: str, name: str, config: Path, dataset: str, log: Path,
                    sig: signal.Signals) -> int:
    """Start a worker process; once it is training a trial, freeze it and send it ``sig``.

    Returns the number of the trial it was running.
    """
    store = optuna.storages.RDBStorage(storage)
    with log.open("w") as out:
        worker = subprocess.Popen([*spec.TUNE.command(sys.executable), "--config", str(config),
                                   "--dataset", dataset, "--role", "worker", "--study-name", name],
                                  stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            assert worker.poll() is None, log.read_text()
            try:
                study_id = store.get_study_id_from_name(name)
            except KeyError:  # not created yet
                time.sleep(0.1)
                continue
            training = [t for t in store.get_all_trials(study_id, states=(TrialState.RUNNING,))
                        if 1 <= len(t.intermediate_values) <= EPOCHS - 3]
            if not training:
                time.sleep(0.02)
                continue
            os.kill(worker.pid, signal.SIGSTOP)  # frozen: the trial cannot finish meanwhile
            trial_id = store.get_trial_id_from_study_id_trial_number(study_id, training[0].number)
            if store.get_trial(trial_id).state == TrialState.RUNNING:
                os.kill(worker.pid, sig)
                os.kill(worker.pid, signal.SIGCONT)
                worker.wait(60)
                return training[0].number
            os.kill(worker.pid, signal.SIGCONT)
        raise AssertionError(f"no trial was running within 120 s: {log.read_text()}")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def _finish_study(storage: str, name: str, config: Path, dataset: str, tmp_path: Path,
                  killed: int) -> tuple[optuna.Study, dict[str, Any]]:
    """Run another worker; the study ends with exactly n_trials finished, the killed trial
    failed and retried once with its parameters."""
    code, result, _ = run("tune", "--config", str(config), "--dataset", dataset,
                          "--role", "worker", "--study-name", name, tmp=tmp_path)
    assert code == 0 and result is not None
    study = optuna.load_study(study_name=name, storage=storage)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == SMALL_TRIALS
    assert [t.number for t in study.trials if t.state == TrialState.FAIL] == [killed]
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0] in finished
    assert retry[0].params == study.trials[killed].params and retry[0].params
    assert retry[0].system_attrs["mlkube_slot"] == study.trials[killed].system_attrs["mlkube_slot"]
    assert result["trials"] == sum(t.state == TrialState.COMPLETE for t in study.trials)
    return study, result


def test_a_sigkilled_workers_trial_is_failed_and_run_again_by_another_worker(
        cluster: str, dataset: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tune={"n_trials": SMALL_TRIALS, "epochs": EPOCHS,
                                                     "pruner": "none", "storage": cluster})
    killed = _stop_mid_trial(cluster, "killed", config, dataset, tmp_path / "killed.log",
                             signal.SIGKILL)
    # dead without a word: its trial stays RUNNING until its heartbeat is 3 s old
    study = optuna.load_study(study_name="killed", storage=cluster)
    assert study.trials[killed].state == TrialState.RUNNING
    started = time.monotonic()
    study, _ = _finish_study(cluster, "killed", config, dataset, tmp_path, killed)
    assert time.monotonic() - started < 60
    # the killed trial's MLflow run does not stay RUNNING
    run_id = study.trials[killed].user_attrs["mlflow_run_id"]
    assert mlflow.get_run(run_id).info.status == "KILLED"


def test_a_failed_trial_of_a_deleted_pod_is_run_again_by_the_retried_worker(
        cluster: str, dataset: str, tmp_path: Path) -> None:
    """A deleted pod gets SIGTERM: its trial is FAIL at once, and the next worker refills it."""
    config = write_config(tmp_path / "c.yaml", tune={"n_trials": SMALL_TRIALS, "epochs": EPOCHS,
                                                     "pruner": "none", "storage": cluster})
    killed = _stop_mid_trial(cluster, "deleted", config, dataset, tmp_path / "deleted.log",
                             signal.SIGTERM)
    assert "interrupted" in (tmp_path / "deleted.log").read_text()
    study = optuna.load_study(study_name="deleted", storage=cluster)
    assert study.trials[killed].state == TrialState.FAIL
    study, _ = _finish_study(cluster, "deleted", config, dataset, tmp_path, killed)
    assert mlflow.get_run(study.trials[killed].user_attrs["mlflow_run_id"]).info.status == "FAILED"
