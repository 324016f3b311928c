"""The step result is read from the finished pod's termination message (no XCom sidecar)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from kubernetes.client import (
    V1ContainerState,
    V1ContainerStateRunning,
    V1ContainerStateTerminated,
    V1ContainerStatus,
    V1Pod,
    V1PodStatus,
)

from mlkube.airflow import RegisterModelOperator, TrainOperator
from mlkube.airflow.links import mlflow_url
from mlkube.airflow.termination import result_from_pod
from mlkube.errors import MlkubeError
from mlkube.result import dumps

RESULT = {"run_id": "0f3c", "model_uri": "runs:/0f3c/model", "metric": "accuracy",
          "value": 0.93, "epochs": 30, "device": "cuda"}


def finished(pod: V1Pod, *, exit_code: int = 0, message: str | None = None,
             phase: str = "Succeeded") -> V1Pod:
    """``pod`` as the API server reports it once its base container has terminated."""
    now = datetime.now(UTC)
    terminated = V1ContainerStateTerminated(exit_code=exit_code, message=message,
                                            reason="Completed" if exit_code == 0 else "Error",
                                            started_at=now, finished_at=now)
    status = V1ContainerStatus(name="base", image=pod.spec.containers[0].image, image_id="",
                               ready=False, restart_count=0, state=V1ContainerState(terminated=terminated))
    pod.status = V1PodStatus(phase=phase, container_statuses=[status])
    return pod


@pytest.fixture
def train() -> TrainOperator:
    return TrainOperator(task_id="train", dataset="/d", mlflow_tracking_uri="http://mlflow:5000")


def test_result_is_the_termination_message(train: TrainOperator) -> None:
    pod = finished(train.build_pod_request_obj(dry_run=True), message=dumps(RESULT))
    assert result_from_pod(pod) == RESULT
    assert train._result_from(pod) == RESULT


def test_finish_sets_the_mlflow_link(train: TrainOperator) -> None:
    assert train._finish(RESULT) == RESULT
    assert train.mlflow_link == "http://mlflow:5000/#/runs/0f3c"
    assert train.operator_extra_links[0].get_link(train, ti_key=None) == train.mlflow_link  # type: ignore[arg-type]


def test_register_links_to_the_model_version() -> None:
    result = {"model_name": "churn", "version": "3", "promoted": True}
    assert mlflow_url("http://ui", result) == "http://ui/#/models/churn/versions/3"
    assert mlflow_url(None, result) is None
    op = RegisterModelOperator(task_id="register", dataset="/d", run_id="r")
    op._finish(result)
    assert op.mlflow_link is None  # no UI known: no link


def test_empty_message_says_what_the_step_must_do(train: TrainOperator) -> None:
    pod = finished(train.build_pod_request_obj(dry_run=True), message=None)
    with pytest.raises(MlkubeError, match="no termination message.*/dev/termination-log"):
        result_from_pod(pod)


def test_failed_step_reports_its_last_line(train: TrainOperator) -> None:
    pod = finished(train.build_pod_request_obj(dry_run=True), exit_code=1, phase="Failed",
                   message="loading\nmlkube train: error: --dataset /d not found")
    with pytest.raises(MlkubeError, match="code 1: mlkube train: error: --dataset /d not found"):
        result_from_pod(pod)


def test_not_json(train: TrainOperator) -> None:
    pod = finished(train.build_pod_request_obj(dry_run=True), message="done")
    with pytest.raises(MlkubeError, match="not a JSON result"):
        result_from_pod(pod)
    pod = finished(train.build_pod_request_obj(dry_run=True), message=json.dumps([1, 2]))
    with pytest.raises(MlkubeError, match="holds list"):
        result_from_pod(pod)


def test_still_running_or_never_started(train: TrainOperator) -> None:
    pod = train.build_pod_request_obj(dry_run=True)
    pod.status = V1PodStatus(phase="Running", container_statuses=[V1ContainerStatus(
        name="base", image="x", image_id="", ready=True, restart_count=0,
        state=V1ContainerState(running=V1ContainerStateRunning()))])
    with pytest.raises(MlkubeError, match="has not terminated"):
        result_from_pod(pod)
    pod.status = V1PodStatus(phase="Pending")
    with pytest.raises(MlkubeError, match="never started"):
        result_from_pod(pod)


def test_pod_gone_before_reading(train: TrainOperator) -> None:
    with pytest.raises(MlkubeError, match="'train'.*gone.*run the task again"):
        train._result_from(None)
