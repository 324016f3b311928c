"""The example DAGs import cleanly, light (no ML libraries at parse time), wired as designed."""

from __future__ import annotations

import os
import subprocess
import sys

from dag_runs import REPO, get_dag

from mlkube.kube.pod import Placement, given_gpus


def test_dags_import_without_errors() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(REPO / "dags"))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) >= {"ml_lifecycle", "scheduled_retraining"}


def test_parsing_imports_no_ml_libraries() -> None:
    code = (
        "import sys; from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag({str(REPO / 'dags')!r}); assert not bag.import_errors, bag.import_errors;"
        "print(sorted(m for m in ('mlflow', 'torch', 'optuna', 'hera', 'pandas', 'sklearn')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_ml_lifecycle_shape() -> None:
    dag = get_dag("ml_lifecycle")
    tasks = dag.task_dict
    assert tasks["tune_workers"].upstream_task_ids == {"prepare_data"}
    assert tasks["tune_select"].upstream_task_ids == {"prepare_data", "tune_workers"}
    assert tasks["train"].upstream_task_ids == {"prepare_data", "tune_select"}
    assert tasks["register"].upstream_task_ids == {"prepare_data", "train"}
    assert tasks["deploy"].upstream_task_ids == {"prepare_data", "register"}
    assert tasks["deploy"].target is None  # the step's auto: local here, KServe/Deployment in a pod
    assert tasks["deploy"].service_account_name == "mlkube-deploy"
    # a GPU in a pod, by the step's default; an explicit gpus= would be checked locally too
    assert tasks["train"].gpus is None
    assert given_gpus(tasks["train"].step, Placement(gpus=tasks["train"].gpus)) == 1


def test_retraining_schedule_and_gate() -> None:
    dag = get_dag("scheduled_retraining")
    assert dag.timetable.timetable.expression == "0 3 * * *"
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["mlkube_training_data"]
    tasks = dag.task_dict
    # train on changed data or drift: the gate reads prepare-data's and the monitor's results
    assert tasks["should_retrain"].upstream_task_ids == {"prepare_data", "monitor"}
    assert tasks["train"].upstream_task_ids == {"prepare_data", "should_retrain"}
    assert tasks["register"].upstream_task_ids == {"prepare_data", "train", "should_retrain"}
    assert tasks["deploy"].trigger_rule == "none_failed"
    assert tasks["monitor"].no_data == "not-drifted"  # a fresh deployment is not drifted
    # the drift asset's events come from a task of their own, skipped when nothing drifted
    assert tasks["drift_detected"].upstream_task_ids == {"monitor"}
    assert [a.name for a in tasks["drift_detected"].outlets] == ["mlkube_drift"]
    assert not tasks["drift_detected"].downstream_task_ids


def test_a_schedule_airflow_or_argo_would_reject_fails_the_parse() -> None:
    code = (
        "from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag({str(REPO / 'dags' / 'scheduled_retraining.py')!r});"
        "print(list(bag.import_errors.values())[0].strip().splitlines()[-1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120, env={**os.environ,
                                           "MLKUBE_RETRAIN_CRON": "61 * * * *"})
    assert out.stdout.strip().splitlines()[-1] == (
        "mlkube.errors.MlkubeError: dag 'scheduled_retraining': MLKUBE_RETRAIN_CRON '61 * * * *': "
        "minute '61' is not valid; use numbers 0-59, '*', ranges 'a-b', lists 'a,b' and steps '*/n'")
