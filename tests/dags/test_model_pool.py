"""register and deploy of one model take one pool of one slot (issue 16, item 7): across runs of
a DAG and across the two DAGs, Airflow's scheduler starts one of them at a time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from dag_runs import REPO, get_dag

from mlkube.airflow import pools
from mlkube.errors import MlkubeError
from mlkube.spec import model_lock

DAG_IDS = ("ml_lifecycle", "scheduled_retraining")
LOCKED = {"register", "deploy"}


def test_register_and_deploy_take_the_models_pool_in_both_dags() -> None:
    for dag_id in DAG_IDS:
        dag = get_dag(dag_id)
        taken = {t.task_id: (t.pool, t.pool_slots) for t in dag.tasks}
        for task_id in LOCKED:
            assert taken[task_id] == ("mlkube-mlkube-demo", 1), dag_id
        assert all(pool == "default_pool" for task_id, (pool, _) in taken.items()
                   if task_id not in LOCKED), (dag_id, taken)
        assert pools.pools_of([dag]) == [model_lock("mlkube-demo")]


def test_the_pool_is_the_config_files_model(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "lifecycle.yaml"
    config.write_text(yaml.safe_dump({"registry": {"model_name": "Churn_Model"}}))
    monkeypatch.setenv("MLKUBE_CONFIG", str(config))
    names = {dag_id: {get_dag(dag_id).task_dict[t].pool for t in LOCKED} for dag_id in DAG_IDS}
    assert names == {dag_id: {model_lock("Churn_Model")} for dag_id in DAG_IDS}
    assert model_lock("Churn_Model") != model_lock("mlkube-demo")


def test_the_model_seen_at_parse_time(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"registry": {"model_name": "churn"}}))
    assert pools.model_pool() == "mlkube-mlkube-demo"  # the config's default
    assert pools.model_pool(str(config)) == "mlkube-churn"
    assert pools.model_pool(str(config), model_name="fraud") == "mlkube-fraud"  # named wins
    # known only when the task runs: the config file decides, else the default
    assert pools.model_pool(str(config), model_name="{{ params.model }}") == "mlkube-churn"
    assert pools.model_pool(str(tmp_path / "only-in-the-pod.yaml")) == "mlkube-mlkube-demo"
    assert pools.model_pool("{{ var.value.config }}") == "mlkube-mlkube-demo"
    with pytest.raises(MlkubeError, match="model_pool: config key 'registry.model_name'"):
        pools.model_pool(model_name="team/model")
    assert pools.set_command("mlkube-churn").startswith("airflow pools set mlkube-churn 1 ")


@pytest.fixture
def scheduler_runs(airflow_db: None) -> Iterator[dict[str, Any]]:
    """One running DAG run of each DAG in the metadata database (the DAGs synced and
    unpaused as the DAG processor would), their model pool created; deleted afterwards."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dag import DagModel
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.sdk import timezone
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from sqlalchemy import delete, update

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(str(REPO / "dags"), bundle_path=REPO / "dags", bundle_name="dags-folder")
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    assert pools.create_pools(bag.dags.values()) == ["mlkube-mlkube-demo"]
    now = timezone.utcnow()
    run_ids = {dag_id: f"pool-test-{dag_id}-{now.timestamp()}" for dag_id in DAG_IDS}
    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id.in_(DAG_IDS))
                        .values(is_paused=False))
        for i, dag_id in enumerate(DAG_IDS):
            when = now + timedelta(seconds=i)
            DBDagBag().get_latest_version_of_dag(dag_id, session=session).create_dagrun(
                run_id=run_ids[dag_id], logical_date=when, data_interval=(when, when),
                run_after=when, run_type=DagRunType.MANUAL,
                triggered_by=DagRunTriggeredByType.TEST, state=DagRunState.RUNNING,
                session=session)
    try:
        yield run_ids
    finally:
        with create_session() as session:  # their task instances go with them
            session.execute(delete(DagRun).where(DagRun.run_id.in_(run_ids.values())))


def _set(run_ids: dict[str, str], state: Any, *tasks: tuple[str, str]) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        for dag_id, task_id in tasks:
            session.execute(update(TaskInstance).where(
                TaskInstance.dag_id == dag_id, TaskInstance.task_id == task_id,
                TaskInstance.run_id == run_ids[dag_id]).values(state=state))


def _queue(run_ids: dict[str, str]) -> set[tuple[str, str]]:
    """What the scheduler's critical section moves to queued now (ours only)."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.utils.session import create_session

    with create_session() as session:
        queued = SchedulerJobRunner(job=Job())._executable_task_instances_to_queued(
            max_tis=32, session=session)
        return {(ti.dag_id, ti.task_id) for ti in queued if ti.run_id in run_ids.values()}


def test_the_scheduler_starts_one_of_them_at_a_time(scheduler_runs: dict[str, str]) -> None:
    from airflow.models.pool import Pool
    from airflow.utils.state import TaskInstanceState

    pool = Pool.get_pool("mlkube-mlkube-demo")
    assert pool is not None and pool.slots == 1 and pool.include_deferred
    runs = scheduler_runs
    lifecycle_register = ("ml_lifecycle", "register")
    retrain_deploy = ("scheduled_retraining", "deploy")
    prepares = {("ml_lifecycle", "prepare_data"), ("scheduled_retraining", "prepare_data")}
    # both ready at once, with a task of each run in the default pool beside them
    _set(runs, TaskInstanceState.SCHEDULED, lifecycle_register, retrain_deploy, *prepares)
    first = _queue(runs)
    assert first - prepares in ({lifecycle_register}, {retrain_deploy}), first
    assert prepares <= first  # the default pool lets both runs' other tasks go
    (started,) = first - prepares
    (waiting,) = {lifecycle_register, retrain_deploy} - {started}
    # while it runs (or waits for its pod, deferred) the other stays scheduled
    for state in (TaskInstanceState.RUNNING, TaskInstanceState.DEFERRED):
        _set(runs, state, started)
        assert _queue(runs) == set()
    # and starts once it has ended
    _set(runs, TaskInstanceState.SUCCESS, started)
    assert _queue(runs) == {waiting}
