"""tune on a real PostgreSQL server: Optuna's storage and MLflow's store, four worker processes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest

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
