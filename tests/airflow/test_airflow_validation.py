"""Parameters are checked when the DAG is parsed, with a message naming the task."""

from __future__ import annotations

from typing import Any

import pytest

from mlkube.airflow import PrepareDataOperator, TrainOperator, TuneOperator, tune_fan_out
from mlkube.errors import MlkubeError


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"gpus": -1}, r"task 'train': gpus is -1; give a whole number"),
    ({"gpus": 1.5}, r"task 'train': gpus is 1.5"),
    ({"gpus": "2"}, r"task 'train': gpus is '2'"),
    ({"gpus": True}, r"task 'train': gpus is True"),
    ({"memory": "16 GB"}, r"task 'train': memory is '16 GB', not a Kubernetes quantity"),
    ({"cpu": "four"}, r"task 'train': cpu is 'four', not a Kubernetes quantity"),
    ({"shm_size": "lots"}, r"task 'train': shm_size is 'lots'"),
    ({"image": "Not An Image!"}, r"task 'train': image is 'Not An Image!', not a valid image"),
    ({"backend": "docker"}, r"task 'train': backend is 'docker'; use one of: kubernetes, local"),
    ({"epochs": "ten"}, r"task 'train': epochs is 'ten'; it must be int"),
    ({"hyperparameters": "{lr: 1}"}, r"task 'train': hyperparameters is not valid JSON"),
    ({"dataset": None}, r"task 'train': dataset is required"),
    ({"cmds": ["bash"]}, r"task 'train': cmds is set by the step; use command="),
    ({"container_resources": {}}, r"task 'train': container_resources is set by the step"),
    ({"namespace": "My_NS"}, r"task 'train': namespace is 'My_NS', not a DNS-1123 label"),
    ({"epochs": 0}, r"task 'train': epochs: config key 'model.epochs' must be positive"),
    ({"queue_name": "Team_A"}, r"^task 'train': queue_name is 'Team_A', not a DNS-1123 "
                               r"subdomain: use at most 63 lowercase letters, .*'team-a'$"),
    ({"priority_class_name": "High"}, r"^task 'train': priority_class_name is 'High', not a "
                                      r"DNS-1123 subdomain: use at most 253 "),
    ({"termination_grace_period": -5}, r"^task 'train': termination_grace_period is -5; give a "
                                       r"whole number of seconds"),
])
def test_bad_parameters_fail_at_parse_time(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(MlkubeError, match=message) as caught:
        TrainOperator(**{"task_id": "train", "dataset": "/d", **kwargs})
    assert "\n" not in str(caught.value)


def test_choices_are_checked() -> None:
    with pytest.raises(MlkubeError, match="task 'prepare': learning_task is 'clustering'; use one of"):
        PrepareDataOperator(task_id="prepare", learning_task="clustering")
    with pytest.raises(MlkubeError, match="task 'tune': role is 'boss'"):
        TuneOperator(task_id="tune", dataset="/d", role="boss")


def test_templates_and_upstream_outputs_wait_for_run_time() -> None:
    from airflow.sdk import DAG

    with DAG("validation_templates", schedule=None):
        prepare = PrepareDataOperator(task_id="prepare")
        TrainOperator(task_id="train", dataset=prepare.output["dataset_uri"],
                      memory="{{ var.value.train_memory }}",
                      image="{{ var.value.trainer_image }}", epochs="{{ params.epochs }}")


def test_task_group_prefix_is_in_the_message() -> None:
    from airflow.sdk import DAG, TaskGroup

    with DAG("validation_group", schedule=None), TaskGroup("training"):
        with pytest.raises(MlkubeError, match="task 'training.train': gpus"):
            TrainOperator(task_id="train", dataset="/d", gpus=-2)


def test_fan_out_needs_workers() -> None:
    with pytest.raises(MlkubeError, match="workers is 0"):
        tune_fan_out(workers=0, dataset="/d")
    with pytest.raises(MlkubeError, match="sets role itself"):
        tune_fan_out(workers=2, dataset="/d", role="all")


def test_fan_out_maps_workers_and_selects() -> None:
    from airflow.sdk import DAG

    with DAG("fan_out", schedule=None) as dag:
        workers, select = tune_fan_out(workers=3, dataset="/d", n_trials=6)
    assert workers.task_id == "tune_workers" and select.task_id == "tune_select"
    assert workers.expand_input.value == {"worker_index": [0, 1, 2]}
    assert workers.partial_kwargs["role"] == "worker" and select.role == "select"
    assert dag.task_dict["tune_select"].upstream_task_ids == {"tune_workers"}


def test_values_the_step_would_reject_fail_at_parse_time() -> None:
    from mlkube.airflow import RegisterModelOperator

    with pytest.raises(MlkubeError, match="task 'register': model_name: config key "
                                          "'registry.model_name' is 'team/model'"):
        RegisterModelOperator(task_id="register", dataset="/d", run_id="r", model_name="team/model")
    # templated values are only known when the task runs
    RegisterModelOperator(task_id="register", dataset="/d", run_id="r",
                          model_name="{{ params.model }}")


def test_a_config_file_readable_at_parse_time_is_validated(tmp_path: Any) -> None:
    bad = tmp_path / "lifecycle.yaml"
    bad.write_text("registry:\n  model_name: team/model\n")
    with pytest.raises(MlkubeError, match="task 'prepare': config: .*lifecycle.yaml: config key "
                                          "'registry.model_name'"):
        PrepareDataOperator(task_id="prepare", config=str(bad))
    # a path that exists only in the step's image is checked when the step runs
    PrepareDataOperator(task_id="prepare", config="/etc/mlkube/lifecycle.yaml")
