"""Serving manifests: KServe against its CRD, the built-in kinds against Kubernetes' schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from mlkube.argo.schema import KSERVE_CRD_FILE, Validator, packaged_schema
from mlkube.errors import MlkubeError
from mlkube.kube import serving
from mlkube.spec import ARTIFACT_MOUNT

SERVING = serving.ModelServing(name="churn", model_name="Churn Model", version="7",
                               storage_uri="s3://models/churn/7", namespace="ml")


@pytest.fixture(scope="module")
def crd() -> Validator:
    return Validator(argo_schema=Path("unused"), kserve_crd=packaged_schema(KSERVE_CRD_FILE))


def test_inference_service_serves_the_fixed_version(crd: Validator) -> None:
    isvc = serving.inference_service(SERVING)
    assert crd.isvc_errors(isvc) == []
    assert isvc["metadata"]["name"] == "churn" and isvc["metadata"]["namespace"] == "ml"
    assert isvc["metadata"]["annotations"] == {serving.MODEL_NAME_ANNOTATION: "Churn Model",
                                               serving.MODEL_VERSION_ANNOTATION: "7"}
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == "s3://models/churn/7"
    assert model["modelFormat"] == {"name": "mlflow"} and model["protocolVersion"] == "v2"


def test_inference_service_is_restricted_and_strictly_valid(crd: Validator) -> None:
    isvc = serving.inference_service(SERVING)
    predictor = isvc["spec"]["predictor"]
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert predictor["model"]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    predictor["model"]["storageURI"] = "s3://typo"
    (error,) = crd.isvc_errors(isvc)
    assert "storageURI" in error


def _valid(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = serving.to_dict(obj)
    kubernetes_validate.validate(data, "1.33", strict=True)
    return data


def test_plain_serving_objects_validate_and_fit_together() -> None:
    deployment, service, hpa = (_valid(o) for o in serving.plain_serving(SERVING))
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "churn"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "s3://models/churn/7" in container["command"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_plain_serving_pod_is_restricted() -> None:
    deployment = _valid(serving.deployment(SERVING))
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}


def test_the_artifact_volume_is_mounted_read_only() -> None:
    with_pvc = serving.ModelServing(name="churn", model_name="m", version="1",
                                    storage_uri=f"{ARTIFACT_MOUNT}/models/1",
                                    artifact_pvc="mlkube-artifacts")
    pod = _valid(serving.deployment(with_pvc))["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "artifacts", "persistentVolumeClaim": {
        "claimName": "mlkube-artifacts", "readOnly": True}}]
    assert pod["containers"][0]["volumeMounts"] == [
        {"name": "artifacts", "mountPath": ARTIFACT_MOUNT, "readOnly": True}]


def test_kubernetes_validation_is_strict() -> None:
    data = serving.to_dict(serving.service(SERVING))
    data["spec"]["selectr"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(data, "1.33", strict=True)


def test_deploy_rbac_is_namespaced_and_validates() -> None:
    account, role, binding = (_valid(o) for o in serving.deploy_rbac("deployer", "ml"))
    assert account["metadata"] == role["metadata"] == binding["metadata"]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"inferenceservices", "deployments", "services",
                         "horizontalpodautoscalers"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "deployer",
                                    "namespace": "ml"}]


@pytest.mark.parametrize(("changes", "message"), [
    ({"name": "Churn_Model"}, "serving name is 'Churn_Model', not a DNS-1123 label"),
    ({"namespace": "ML"}, "serving namespace is 'ML'"),
    ({"cpu": "lots"}, "serving cpu is 'lots', not a Kubernetes quantity"),
    ({"storage_uri": ""}, "serving storage_uri is empty"),
    ({"min_replicas": 0}, "serving replicas are min 0, max 3"),
    ({"min_replicas": 4}, "serving replicas are min 4, max 3"),
    ({"target_cpu_percent": 0}, "serving target_cpu_percent is 0"),
])
def test_bad_serving_fields_are_named(changes: dict[str, Any], message: str) -> None:
    fields = {"name": "churn", "model_name": "m", "version": "1", "storage_uri": "s3://b/m"}
    bad = serving.ModelServing(**(fields | changes))
    for build in (serving.inference_service, serving.deployment, serving.autoscaler):
        with pytest.raises(MlkubeError, match=message):
            build(bad)


def test_kserve_storage_schemes() -> None:
    assert serving.check_kserve_storage("pvc://mlkube-artifacts/models/1") == \
        "pvc://mlkube-artifacts/models/1"
    with pytest.raises(MlkubeError, match="'mlflow-artifacts:/1/abc' is not one KServe downloads"):
        serving.check_kserve_storage("mlflow-artifacts:/1/abc")
