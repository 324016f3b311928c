"""DeployModelOperator on a cluster: the serving objects it applies, checked without a cluster."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from kubernetes.dynamic.resource import ResourceField

from mlkube.airflow import DeployModelOperator
from mlkube.airflow.cluster_deploy import _condition, manifests
from mlkube.errors import MlkubeError
from mlkube.kube import serving

K8S_VERSION = "1.33.0"


def deploy(**kwargs: Any) -> DeployModelOperator:
    values = {"task_id": "deploy", "dataset": "/d", "model_name": "Churn Model", "version": "7",
              "storage_uri": "s3://models/churn/7", **kwargs}
    return DeployModelOperator(**values)


def test_plain_serving_objects_are_valid_and_restricted() -> None:
    model = deploy(cpu="2", memory="4Gi", min_replicas=2, max_replicas=5).model_serving("ml")
    assert model.name == "churn-model" and model.version == "7"
    objects = manifests(model, "deployment")
    assert [o["kind"] for o in objects] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    pod = objects[0]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert "s3://models/churn/7" in container["command"]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert objects[2]["spec"]["minReplicas"] == 2 and objects[2]["spec"]["maxReplicas"] == 5
    annotations = objects[0]["metadata"]["annotations"]
    assert annotations[serving.MODEL_VERSION_ANNOTATION] == "7"


def test_kserve_needs_storage_it_can_download() -> None:
    (isvc,) = manifests(deploy().model_serving("ml"), "kserve")
    assert isvc["kind"] == "InferenceService"
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://models/churn/7"
    local = deploy(storage_uri="file:///tmp/mlruns/1/model").model_serving("ml")
    with pytest.raises(MlkubeError, match="not one KServe downloads from"):
        manifests(local, "kserve")


def test_cluster_deploy_needs_registers_outputs() -> None:
    with pytest.raises(MlkubeError, match=r"task 'deploy': version is needed.*champion_version"):
        deploy(version=None).model_serving("ml")


def test_serving_target_is_checked_at_parse_time() -> None:
    with pytest.raises(MlkubeError, match="task 'deploy': serving is 'seldon'"):
        deploy(serving="seldon")


def _live(kind: str, status: dict[str, Any], replicas: int = 2, generation: int = 3) -> Any:
    """A live object as kubernetes' dynamic client returns it: nested ResourceFields."""
    def field(value: Any) -> Any:
        if isinstance(value, dict):
            return ResourceField(params={k: field(v) for k, v in value.items()})
        return value

    return field({"kind": kind, "status": status, "spec": {"replicas": replicas},
                  "metadata": {"generation": generation}})


def test_readiness_conditions() -> None:
    rolled = {"observedGeneration": 3, "updatedReplicas": 2, "availableReplicas": 2}
    assert _condition(_live("Deployment", rolled), "Deployment") == (True, None)
    rolling = {"observedGeneration": 3, "updatedReplicas": 1, "availableReplicas": 2}
    assert _condition(_live("Deployment", rolling), "Deployment") == (False, None)
    loaded = {"modelStatus": {"transitionStatus": "UpToDate",
                              "states": {"activeModelState": "Loaded"}}}
    assert _condition(_live("InferenceService", loaded), "InferenceService") == (True, None)
    failed = {"modelStatus": {"transitionStatus": "BlockedByFailedLoad",
                              "lastFailureInfo": {"message": "model file not found"}}}
    assert _condition(_live("InferenceService", failed), "InferenceService") == (
        False, "model file not found")
    assert _condition(_live("InferenceService", {}), "InferenceService") == (False, None)
