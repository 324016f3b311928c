"""DeployModelOperator runs the one deploy program: in a pod on a cluster, as a process locally."""

from __future__ import annotations

import json

import pytest
from test_airflow_pods import base, env_of, submitted

from mlkube import spec
from mlkube.airflow import DeployModelOperator, SecretEnv
from mlkube.errors import MlkubeError


def deploy(**kwargs: object) -> DeployModelOperator:
    values = {"task_id": "deploy", "dataset": "/mnt/mlkube/ds", "model_name": "Churn Model",
              "version": "7", **kwargs}
    return DeployModelOperator(**values)  # type: ignore[arg-type]


def test_the_pod_runs_the_deploy_step_under_the_deploy_service_account() -> None:
    pod = submitted(deploy(target="deployment", canary_percent=0, service_name="churn"))
    assert pod["spec"]["serviceAccountName"] == "mlkube-deploy"
    container = base(pod)
    assert container["command"][-1] == spec.DEPLOY.module
    args = container["args"]
    for flag, value in (("--target", "deployment"), ("--version", "7"),
                        ("--model-name", "Churn Model"), ("--service-name", "churn")):
        assert args[args.index(flag) + 1] == value


def test_serving_containers_get_the_same_secret_references() -> None:
    """What the deploy step hands to the serving pods: references, never values."""
    op = deploy(secret_env=[SecretEnv(env="AWS_SECRET_ACCESS_KEY", secret="s3", key="secret")])
    env = env_of(base(submitted(op)))
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3", "key": "secret"}}
    assert json.loads(env[spec.SECRET_ENV_VAR]) == [
        {"env": "AWS_SECRET_ACCESS_KEY", "key": "secret", "secret": "s3"}]


def test_another_service_account_may_be_given() -> None:
    pod = submitted(deploy(service_account_name="team-deployer"))
    assert pod["spec"]["serviceAccountName"] == "team-deployer"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"target": "seldon"}, "task 'deploy': target is 'seldon'; use one of: auto, local, "
                           "deployment, kserve"),
    ({"canary_percent": "half"}, "task 'deploy': canary_percent is 'half'; it must be int"),
    ({"model_name": "team/model"}, "task 'deploy': model_name: config key 'registry.model_name'"),
])
def test_bad_parameters_fail_at_parse_time(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(MlkubeError, match=message):
        deploy(**kwargs)
