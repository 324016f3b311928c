"""Serving manifests: KServe against its CRD, the built-in kinds against Kubernetes' schema."""

from __future__ import annotations

import dataclasses
from typing import Any

import kubernetes_validate
import pytest
from kubernetes.client import V1EnvVar, V1EnvVarSource, V1SecretKeySelector

from mlkube.argo.schema import ARGO_SCHEMA_FILE, KSERVE_CRD_FILE, Validator, packaged_schema
from mlkube.errors import MlkubeError
from mlkube.kube import serving
from mlkube.spec import ARTIFACT_MOUNT, MONITORING_DIR, SERVER_IMAGE

SECRET = V1EnvVarSource(secret_key_ref=V1SecretKeySelector(name="mlflow", key="password"))
ENV = (V1EnvVar(name="MLFLOW_TRACKING_URI", value="http://mlflow.ml.svc.cluster.local:5000"),
       V1EnvVar(name="MLFLOW_TRACKING_PASSWORD", value_from=SECRET))
SERVING = serving.ModelServing(name="churn", model_name="Churn Model", version="7",
                               model_uri="models:/Churn Model/7", namespace="ml", env=ENV)
COMMAND = ["mlkube", "serve", "model", "--model-uri", "models:/Churn Model/7", "--name",
           "Churn Model", "--version", "7", "--host", "0.0.0.0", "--port", "8080"]
K8S_VERSION = "1.33.0"


@pytest.fixture(scope="module")
def crd() -> Validator:
    return Validator(argo_schema=packaged_schema(ARGO_SCHEMA_FILE),
                     kserve_crd=packaged_schema(KSERVE_CRD_FILE))


def test_inference_service_runs_the_v2_runtime_as_its_predictor(crd: Validator) -> None:
    isvc = serving.inference_service(SERVING)
    assert crd.isvc_errors(isvc) == []
    assert isvc["metadata"]["name"] == "churn" and isvc["metadata"]["namespace"] == "ml"
    assert isvc["metadata"]["annotations"] == {serving.MODEL_NAME_ANNOTATION: "Churn Model",
                                               serving.MODEL_VERSION_ANNOTATION: "7"}
    predictor = isvc["spec"]["predictor"]
    assert "model" not in predictor and "canaryTrafficPercent" not in predictor
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == SERVER_IMAGE and container["command"] == COMMAND
    assert container["env"] == [{"name": "PROTOCOL", "value": "v2"},
                                {"name": "MLFLOW_TRACKING_URI",
                                 "value": "http://mlflow.ml.svc.cluster.local:5000"},
                                {"name": "MLFLOW_TRACKING_PASSWORD", "valueFrom": {
                                    "secretKeyRef": {"name": "mlflow", "key": "password"}}}]
    assert container["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    ready = {"path": "/v2/models/Churn%20Model/ready", "port": 8080}
    assert container["readinessProbe"]["httpGet"] == container["startupProbe"]["httpGet"] == ready
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"][
        "periodSeconds"] >= 300
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                      "limits": {"cpu": "500m", "memory": "1Gi"}}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    canary = serving.inference_service(SERVING, canary_percent=10)
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert crd.isvc_errors(canary) == []


def test_inference_service_is_restricted_and_strictly_valid(crd: Validator) -> None:
    isvc = serving.inference_service(SERVING)
    predictor = isvc["spec"]["predictor"]
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert predictor["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert predictor["automountServiceAccountToken"] is False
    container = predictor["containers"][0]["securityContext"]
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["allowPrivilegeEscalation"] is False
    predictor["containers"][0]["readinessprobe"] = {}
    (error,) = crd.isvc_errors(isvc)
    assert "readinessprobe" in error


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"canary_percent": 0}, "canary percent is 0: use 1 to 100"),
    ({"canary_percent": 101}, "canary percent is 101"),
])
def test_inference_service_checks_the_canary(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(MlkubeError, match=message):
        serving.inference_service(SERVING, **kwargs)


def test_inference_service_names_fit_knative_revisions() -> None:
    long = dataclasses.replace(SERVING, name="a" * 48)
    with pytest.raises(MlkubeError, match="KServe needs at most 47"):
        serving.inference_service(long)
    serving.inference_service(dataclasses.replace(SERVING, name="a" * 47))


def _valid(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = serving.to_dict(obj)
    kubernetes_validate.validate(data, K8S_VERSION, strict=True)
    return data


def test_plain_serving_objects_validate_and_fit_together() -> None:
    deployment, service, hpa = (_valid(o) for o in serving.plain_serving(SERVING))
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    assert deployment["spec"]["template"]["metadata"]["annotations"][
        serving.MODEL_VERSION_ANNOTATION] == "7"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "churn"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == COMMAND and container["env"][0]["name"] == "MLFLOW_TRACKING_URI"
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/models/Churn%20Model/ready",
                                                      "port": "http"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": serving.DRAIN_SECONDS}}}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http",
                                         "protocol": "TCP"}]


def test_plain_serving_pod_is_restricted() -> None:
    deployment = _valid(serving.deployment(SERVING))
    pod = deployment["spec"]["template"]["spec"]
    _assert_restricted(pod)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}


def test_the_verify_batch_is_written_only_when_set(crd: Validator) -> None:
    assert serving.server_command(SERVING) == COMMAND  # unset: the runtime's default
    batched = dataclasses.replace(SERVING, verify_batch=500)
    command = [*COMMAND, "--verify-batch", "500"]
    isvc = serving.inference_service(batched)
    assert crd.isvc_errors(isvc) == [] and isvc["spec"]["predictor"]["containers"][0][
        "command"] == command
    pod = _valid(serving.deployment(batched))["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == command


# The volume types the "restricted" Pod Security profile allows (Kubernetes' pod security
# standards: no hostPath, no NFS/iSCSI/... inline volumes).
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}


def _assert_restricted(pod: dict[str, Any]) -> None:
    """The "restricted" profile's checks on a pod spec (or a KServe predictor)."""
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and context.get("runAsUser", 1) != 0
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(pod.get(f) for f in ("hostNetwork", "hostPID", "hostIPC"))
    for volume in pod.get("volumes") or ():
        assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, volume
    for container in pod["containers"]:
        own = container["securityContext"]
        assert own["allowPrivilegeEscalation"] is False
        assert own["capabilities"] == {"drop": ["ALL"]}
        assert own.get("privileged") is not True and own.get("runAsUser", 1) != 0
        assert not any(p.get("hostPort") for p in container.get("ports") or ())


WITH_PVC = serving.ModelServing(name="churn", model_name="m", version="1",
                                model_uri=f"{ARTIFACT_MOUNT}/models/1",
                                artifact_pvc="mlkube-artifacts")
# the claim, read-write as a volume; its mounts: the models read-only, the live windows'
# sub-directory alone read-write
PVC_VOLUMES = [{"name": "artifacts", "persistentVolumeClaim": {"claimName": "mlkube-artifacts"}}]
PVC_MOUNTS = [{"name": "artifacts", "mountPath": ARTIFACT_MOUNT, "readOnly": True},
              {"name": "artifacts", "mountPath": MONITORING_DIR, "subPath": "monitoring",
               "readOnly": False}]


def test_the_artifact_claim_is_read_only_but_for_the_live_windows(crd: Validator) -> None:
    assert MONITORING_DIR == f"{ARTIFACT_MOUNT}/monitoring"
    command = ["mlkube", "serve", "model", "--model-uri", f"{ARTIFACT_MOUNT}/models/1", "--name",
               "m", "--version", "1", "--host", "0.0.0.0", "--port", "8080",
               "--stats-dir", MONITORING_DIR]
    pod = _valid(serving.deployment(WITH_PVC))["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["volumes"] == PVC_VOLUMES and container["volumeMounts"] == PVC_MOUNTS
    assert container["command"] == command
    _assert_restricted(pod)
    isvc = serving.inference_service(WITH_PVC)
    assert crd.isvc_errors(isvc) == []
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert predictor["volumes"] == PVC_VOLUMES and container["volumeMounts"] == PVC_MOUNTS
    assert container["command"] == command
    _assert_restricted(predictor)


def test_without_a_claim_no_volume_and_no_windows_written(crd: Validator) -> None:
    pod = _valid(serving.deployment(SERVING))["spec"]["template"]["spec"]
    assert "volumes" not in pod and "volumeMounts" not in pod["containers"][0]
    assert "--stats-dir" not in pod["containers"][0]["command"]
    predictor = serving.inference_service(SERVING)["spec"]["predictor"]
    assert "volumes" not in predictor and "volumeMounts" not in predictor["containers"][0]
    assert "--stats-dir" not in predictor["containers"][0]["command"]


def test_the_restricted_check_catches_a_host_path() -> None:
    pod = _valid(serving.deployment(WITH_PVC))["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/var"}})
    with pytest.raises(AssertionError):
        _assert_restricted(pod)


def test_kubernetes_validation_is_strict() -> None:
    data = serving.to_dict(serving.service(SERVING))
    data["spec"]["selectr"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(data, K8S_VERSION, strict=True)


def test_deploy_rbac_is_least_privilege_namespaced_and_validates() -> None:
    account, role, binding = (_valid(o) for o in serving.deploy_rbac("deployer", "ml"))
    assert account["metadata"] == role["metadata"] == binding["metadata"]
    assert role["kind"] == "Role", "nothing cluster-scoped"
    verbs = {(group, resource): set(rule["verbs"]) for rule in role["rules"]
             for group in rule["apiGroups"] for resource in rule["resources"]}
    own = {"get", "list", "watch", "create", "patch", "update", "delete"}
    assert verbs == {
        ("serving.kserve.io", "inferenceservices"): own, ("apps", "deployments"): own,
        ("", "services"): own, ("autoscaling", "horizontalpodautoscalers"): own,
        ("apps", "replicasets"): {"get", "list"}, ("", "pods"): {"get", "list"},
        ("", "events"): {"get", "list"}, ("", "pods/proxy"): {"get", "create"},
        ("coordination.k8s.io", "leases"): {"get", "create", "update"}}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "deployer",
                                    "namespace": "ml"}]


@pytest.mark.parametrize(("changes", "message"), [
    ({"name": "Churn_Model"}, "serving name is 'Churn_Model', not a DNS-1123 label"),
    ({"name": "7churn"}, "serving name is '7churn': start it with a letter"),
    ({"namespace": "ML"}, "serving namespace is 'ML'"),
    ({"cpu": "lots"}, "serving cpu is 'lots', not a Kubernetes quantity"),
    ({"model_uri": ""}, "serving model_uri is empty"),
    ({"version": ""}, "serving version is empty"),
    ({"min_replicas": 0}, "serving replicas are min 0, max 3"),
    ({"min_replicas": 4}, "serving replicas are min 4, max 3"),
    ({"target_cpu_percent": 0}, "serving target_cpu_percent is 0"),
    ({"verify_batch": 0}, "serving verify_batch is 0: use a positive number of rows"),
    ({"env": (V1EnvVar(name="AWS_SECRET_ACCESS_KEY", value="abc"),)},
     "serving env AWS_SECRET_ACCESS_KEY is set inline: take it from a Secret"),
    ({"env": (V1EnvVar(name="A", value="1"), V1EnvVar(name="A", value="2"))},
     "serving env sets A twice"),
    ({"env": (V1EnvVar(name="PROTOCOL", value="v1"),)}, "serving env sets PROTOCOL"),
    ({"env": ({"name": "A", "value": "1"},)}, "give kubernetes.client.V1EnvVar objects"),
])
def test_bad_serving_fields_are_named(changes: dict[str, Any], message: str) -> None:
    fields = {"name": "churn", "model_name": "m", "version": "1", "model_uri": "models:/m/1"}
    bad = serving.ModelServing(**(fields | changes))
    for build in (serving.inference_service, serving.deployment, serving.autoscaler):
        with pytest.raises(MlkubeError, match=message):
            build(bad)


def test_secret_references_are_fine_under_any_name() -> None:
    fine = dataclasses.replace(SERVING, env=(
        V1EnvVar(name="AWS_SECRET_ACCESS_KEY", value_from=SECRET),
        V1EnvVar(name="MLFLOW_TRACKING_INSECURE_TLS", value="false")))
    _valid(serving.deployment(fine))
