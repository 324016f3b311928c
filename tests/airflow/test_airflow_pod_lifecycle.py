"""The step operator through KubernetesPodOperator's own lifecycle, against the fake API server.

Real Airflow (``dag.test()``, the task runner, the deferrable trigger run inline) and the real
provider (``execute``, ``await_pod_start``, the trigger, ``cleanup``) create, poll, log and
delete the pod on tests/kube/fake_apiserver.py, whose scheduler and kubelet move it on their own
clock. On a real cluster the provider's cleanup raised "Pod ... returned a failure" (and the
whole pod) over the launch timeout; these tests hold the task to one line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlkube.errors import MlkubeError

TESTS = Path(__file__).parents[1]
sys.path[:0] = [str(TESTS / "airflow" / "dags"), str(TESTS / "kube"), str(TESTS / "dags")]

import pod_lifecycle  # noqa: E402
from dag_runs import result, task_states  # noqa: E402
from fake_apiserver import FakeApiServer, Outcome  # noqa: E402

RESULT = {"run_id": "r1", "model_uri": "runs:/r1/model", "metric": "accuracy", "value": 0.97,
          "epochs": 3, "device": "cpu"}
UNSCHEDULABLE = "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available."


def _run(dag: str, outcome: Callable[[dict[str, Any]], Outcome], tmp_path: Path,
         **fake: Any) -> tuple[Any, FakeApiServer]:
    pod_lifecycle.FAILURES.clear()
    with FakeApiServer(outcome=outcome, **fake) as api:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(api.kubeconfig()))
        run = pod_lifecycle.DAGS[dag].test(run_conf={"kubeconfig": str(kubeconfig)})
    return task_states(run)["train"], api


def _failure() -> str:
    (error,) = pod_lifecycle.FAILURES
    assert isinstance(error, MlkubeError), repr(error)
    return str(error)


@pytest.mark.parametrize("mode", ["sync", "deferrable"])
def test_a_pod_never_scheduled_fails_with_the_schedulers_reason_in_one_line(
        airflow_db: None, tmp_path: Path, mode: str) -> None:
    state, api = _run(mode, lambda spec: Outcome(state="unschedulable", message=UNSCHEDULABLE),
                      tmp_path)
    assert state == "failed"
    error = _failure()
    assert "\n" not in error
    assert error.startswith("task 'train': pod train-")
    assert error.endswith(f"was not scheduled within 1 s: {UNSCHEDULABLE}")
    assert api.objects("Pod") == []  # the provider's cleanup still deleted it


@pytest.mark.parametrize("mode", ["sync", "deferrable"])
def test_a_pod_that_runs_returns_the_steps_result_from_its_termination_message(
        airflow_db: None, tmp_path: Path, mode: str) -> None:
    pod_lifecycle.FAILURES.clear()
    with FakeApiServer(outcome=lambda spec: Outcome(message=json.dumps(RESULT),
                                                    logs="epoch 1/3\n")) as api:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(api.kubeconfig()))
        run = pod_lifecycle.DAGS[mode].test(run_conf={"kubeconfig": str(kubeconfig)})
        created = [r.body for r in api.requests if r.method == "POST"]
        assert api.schema_errors() == []
    assert result(run, "train") == RESULT
    assert pod_lifecycle.FAILURES == []
    assert len(created) == 1 and created[0]["spec"]["restartPolicy"] == "Never"
    assert api.objects("Pod") == []


def test_a_pod_kueue_never_admits_says_so_in_one_line(airflow_db: None, tmp_path: Path) -> None:
    state, api = _run("queued", lambda spec: Outcome(), tmp_path, kueue=True)
    assert state == "failed"
    error = _failure()
    assert "\n" not in error
    assert error.endswith("was not admitted by Kueue queue 'team-a' within 1 s: see `kubectl get "
                          "workloads -n ml`, or raise schedule_timeout_seconds")


def test_a_failed_step_fails_the_task_with_its_own_error_line(
        airflow_db: None, tmp_path: Path) -> None:
    line = "train: asked for 1 GPU, torch sees 0: the image has a CPU-only torch build"
    state, _ = _run("sync", lambda spec: Outcome(state="crash", message=line), tmp_path)
    assert state == "failed"
    error = _failure()
    assert "\n" not in error and error.endswith(f"step exited with code 1: {line}")
