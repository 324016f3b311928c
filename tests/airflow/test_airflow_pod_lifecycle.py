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

from mlkube import spec
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


# -- training on several nodes ---------------------------------------------------------------

NOT_FINISHED = "mlkube train: error: run abc has not finished (no result.json)"


def _gpu_nodes(api: FakeApiServer, count: int) -> None:
    for i in range(count):
        api.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"gpu-{i}"},
                 "spec": {}, "status": {"allocatable": {"cpu": "32", "memory": "256Gi",
                                                        "nvidia.com/gpu": "1", "pods": "110"}}})


def _run_nodes(dag: str, tmp_path: Path, finished: Callable[[FakeApiServer], bool],
               nodes: int = 2) -> tuple[Any, list[Any], FakeApiServer]:
    """A multi-node train task: its result-only pods say 'not finished' (exit 3) until
    ``finished(api)``, then the result; the Job completes ``ready_after`` ticks after it is
    created."""
    pod_lifecycle.FAILURES.clear()
    api: FakeApiServer

    def outcome(spec: dict[str, Any]) -> Outcome:
        if finished(api):
            return Outcome(message=json.dumps(RESULT))
        return Outcome(state="crash", exit_code=3, message=NOT_FINISHED)

    with FakeApiServer(outcome=outcome, ready_after=5) as api:
        _gpu_nodes(api, nodes)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(api.kubeconfig()))
        run = pod_lifecycle.DAGS[dag].test(run_conf={"kubeconfig": str(kubeconfig)})
        pods = [r.body for r in api.requests if r.method == "POST"]
    return run, pods, api


def _job_complete(api: FakeApiServer) -> bool:
    return any((j.get("status") or {}).get("succeeded") for j in api.objects("Job"))


def test_training_on_two_nodes_runs_the_job_then_reads_the_result(
        airflow_db: None, tmp_path: Path) -> None:
    run, pods, api = _run_nodes("nodes2", tmp_path, _job_complete)
    assert result(run, "train") == RESULT
    assert len(api.applies("Job")) == 1 and len(pods) == 2  # asked, trained, read
    for pod in pods:  # the task's own pods only read: on the CPU image, without a GPU
        container = pod["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
        assert container["image"] == spec.CPU_IMAGE
        assert container["args"][container["args"].index("--result-only") + 1] == "true"


def test_a_run_that_finished_before_starts_no_job(airflow_db: None, tmp_path: Path) -> None:
    run, pods, api = _run_nodes("nodes2", tmp_path, lambda api: True)
    assert result(run, "train") == RESULT
    assert api.applies("Job") == [] and len(pods) == 1


def test_more_nodes_than_can_take_a_pod_fail_before_the_job_is_created(
        airflow_db: None, tmp_path: Path) -> None:
    """nodes=3 on 2 GPU nodes: the Job was created and timed out on the cluster; now the task
    fails in one line, as `mlkube preflight --nodes 3` does, before anything is applied."""
    run, _, api = _run_nodes("nodes3", tmp_path, _job_complete)
    assert task_states(run)["train"] == "failed"
    error = _failure()
    assert "\n" not in error and api.applies("Job") == []
    assert error.startswith("task 'train': pod mlkube-train-")
    assert error.endswith("trains on 3 nodes at once, one pod (1 GPU) a node, but only 2 of 2 "
                          "nodes can take one: gpu-0, gpu-1; train on fewer nodes or with fewer "
                          "GPUs a node, or add nodes")
