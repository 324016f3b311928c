"""Serving manifests for one fixed model version: KServe, or Deployment + Service + HPA.

Every builder takes a :class:`ModelServing` (what to serve, and how big) and returns the
object an adapter applies: typed ``kubernetes.client`` models for the built-in kinds, and a
plain mapping for the KServe ``InferenceService`` (a custom resource the client has no model
for). Nothing here talks to a cluster, and nothing is adapter-specific: the Argo deploy
template and the Airflow deploy operator both build from here.

Pods run under the "restricted" Pod Security profile (see :mod:`mlkube.kube.security`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.client import (
    ApiClient,
    RbacV1Subject,
    V1Container,
    V1ContainerPort,
    V1Deployment,
    V1DeploymentSpec,
    V1HTTPGetAction,
    V1LabelSelector,
    V1ObjectMeta,
    V1PersistentVolumeClaimVolumeSource,
    V1PodSpec,
    V1PodTemplateSpec,
    V1PolicyRule,
    V1Probe,
    V1ResourceRequirements,
    V1Role,
    V1RoleBinding,
    V1RoleRef,
    V1Service,
    V1ServiceAccount,
    V1ServicePort,
    V1ServiceSpec,
    V1Volume,
    V1VolumeMount,
    V2CrossVersionObjectReference,
    V2HorizontalPodAutoscaler,
    V2HorizontalPodAutoscalerSpec,
    V2MetricSpec,
    V2MetricTarget,
    V2ResourceMetricSource,
)

from mlkube.errors import MlkubeError
from mlkube.kube import security, validation
from mlkube.spec import ARTIFACT_MOUNT, SERVER_IMAGE

KSERVE_API_VERSION = "serving.kserve.io/v1beta1"
MANAGED_BY = "mlkube"
MODEL_NAME_ANNOTATION = "mlkube.io/model-name"
MODEL_VERSION_ANNOTATION = "mlkube.io/model-version"
# Storage URI schemes KServe's storage initializer downloads from.
KSERVE_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "http://", "hdfs://", "webhdfs://",
                  "oci://", "hf://")
SERVER_PORT = 8080


@dataclass(frozen=True, kw_only=True)
class ModelServing:
    """One model version to serve, and the size of what serves it.

    Attributes:
        name: the service's name (a DNS-1123 label): the InferenceService, or the
            Deployment, Service and HPA.
        model_name: the registered model's name (an annotation; any text).
        version: the registered model version served, fixed (never an alias).
        storage_uri: where the model's files are (the registry's artifact source).
        namespace: the namespace, or ``None`` for the one the objects are applied in.
        image: the model server image (Deployment only; KServe picks its MLflow runtime).
        cpu: CPU request per replica.
        memory: memory request and limit per replica.
        min_replicas: replicas kept running.
        max_replicas: the autoscaler's upper bound.
        target_cpu_percent: average CPU utilisation the autoscaler aims for.
        artifact_pvc: a claim holding the model files, mounted read-only at
            ``spec.ARTIFACT_MOUNT`` (Deployment only; KServe reads ``pvc://`` URIs itself).
    """

    name: str
    model_name: str
    version: str
    storage_uri: str
    namespace: str | None = None
    image: str = SERVER_IMAGE
    cpu: str = "500m"
    memory: str = "1Gi"
    min_replicas: int = 1
    max_replicas: int = 3
    target_cpu_percent: int = 70
    artifact_pvc: str | None = None

    def validated(self) -> ModelServing:
        """Check every field; errors name the field and say what to write."""
        validation.dns1123_label(self.name, "serving name")
        if self.namespace is not None:
            validation.dns1123_label(self.namespace, "serving namespace")
        validation.image(self.image, "serving image")
        validation.quantity(self.cpu, "serving cpu")
        validation.quantity(self.memory, "serving memory")
        if not self.storage_uri:
            raise MlkubeError("serving storage_uri is empty: pass the registry's champion_uri")
        if self.min_replicas < 1 or self.max_replicas < self.min_replicas:
            raise MlkubeError(
                f"serving replicas are min {self.min_replicas}, max {self.max_replicas}: "
                "use min_replicas >= 1 and max_replicas >= min_replicas"
            )
        if not 1 <= self.target_cpu_percent <= 100:
            raise MlkubeError(
                f"serving target_cpu_percent is {self.target_cpu_percent}: use 1 to 100"
            )
        return self

    def labels(self) -> dict[str, str]:
        """Labels shared by every object of this service (the Deployment's selector)."""
        return {"app.kubernetes.io/name": self.name, "app.kubernetes.io/managed-by": MANAGED_BY}

    def metadata(self) -> V1ObjectMeta:
        """Name, namespace, labels, and the model served as annotations."""
        return V1ObjectMeta(
            name=self.name, namespace=self.namespace, labels=self.labels(),
            annotations={MODEL_NAME_ANNOTATION: self.model_name,
                         MODEL_VERSION_ANNOTATION: self.version},
        )

    def resources(self) -> V1ResourceRequirements:
        """Requests, with memory limited to its request."""
        return V1ResourceRequirements(requests={"cpu": self.cpu, "memory": self.memory},
                                      limits={"memory": self.memory})


def check_kserve_storage(uri: str) -> str:
    """A storage URI KServe can download from, or an error naming the schemes it can."""
    if not uri.startswith(KSERVE_SCHEMES):
        raise MlkubeError(
            f"storage URI {uri!r} is not one KServe downloads from; use one of "
            f"{', '.join(KSERVE_SCHEMES)} (set MLflow's artifact root to an object store or PVC)"
        )
    return uri


def inference_service(serving: ModelServing) -> dict[str, Any]:
    """A KServe ``InferenceService`` serving the MLflow model over the v2 protocol.

    A plain mapping: the Kubernetes client has no model for this custom resource. The
    storage URI is not checked here, so that an orchestrator may pass a placeholder filled at
    run time; call :func:`check_kserve_storage` where the URI is known.
    """
    serving = serving.validated()
    meta = serving.metadata()
    metadata: dict[str, Any] = {"name": meta.name, "labels": meta.labels,
                                "annotations": meta.annotations}
    if serving.namespace:
        metadata["namespace"] = serving.namespace
    container_security = to_dict(security.container_security_context())
    return {
        "apiVersion": KSERVE_API_VERSION,
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {
            "predictor": {
                "minReplicas": serving.min_replicas,
                "maxReplicas": serving.max_replicas,
                "scaleMetric": "cpu",
                "scaleTarget": serving.target_cpu_percent,
                "securityContext": to_dict(security.pod_security_context()),
                "model": {
                    "modelFormat": {"name": "mlflow"},
                    "protocolVersion": "v2",
                    "storageUri": serving.storage_uri,
                    "resources": to_dict(serving.resources()),
                    "securityContext": container_security,
                },
            },
        },
    }


def server_container(serving: ModelServing) -> V1Container:
    """The MLflow scoring server serving the fixed model version on :data:`SERVER_PORT`."""
    probe = V1Probe(http_get=V1HTTPGetAction(path="/ping", port="http"),
                    period_seconds=5, failure_threshold=3)
    mounts = None
    if serving.artifact_pvc:
        mounts = [V1VolumeMount(name="artifacts", mount_path=ARTIFACT_MOUNT, read_only=True)]
    return V1Container(
        name="server",
        image=serving.image,
        command=["mlflow", "models", "serve", "--model-uri", serving.storage_uri,
                 "--host", "0.0.0.0", "--port", str(SERVER_PORT), "--env-manager", "local"],
        ports=[V1ContainerPort(name="http", container_port=SERVER_PORT)],
        readiness_probe=probe,
        startup_probe=V1Probe(http_get=probe.http_get, period_seconds=5, failure_threshold=60),
        resources=serving.resources(),
        security_context=security.container_security_context(),
        volume_mounts=mounts,
    )


def deployment(serving: ModelServing) -> V1Deployment:
    """A Deployment of the model server (CPU-sized; the HPA sets the replicas)."""
    serving = serving.validated()
    volumes = None
    if serving.artifact_pvc:
        claim = V1PersistentVolumeClaimVolumeSource(claim_name=serving.artifact_pvc, read_only=True)
        volumes = [V1Volume(name="artifacts", persistent_volume_claim=claim)]
    pod = V1PodSpec(containers=[server_container(serving)], volumes=volumes,
                    security_context=security.pod_security_context(),
                    automount_service_account_token=False)
    return V1Deployment(
        api_version="apps/v1", kind="Deployment", metadata=serving.metadata(),
        spec=V1DeploymentSpec(
            replicas=serving.min_replicas,
            selector=V1LabelSelector(match_labels=serving.labels()),
            template=V1PodTemplateSpec(metadata=V1ObjectMeta(labels=serving.labels()), spec=pod),
        ),
    )


def service(serving: ModelServing) -> V1Service:
    """A ClusterIP Service in front of the Deployment's pods."""
    serving = serving.validated()
    port = V1ServicePort(name="http", port=80, target_port="http", protocol="TCP")
    return V1Service(api_version="v1", kind="Service", metadata=serving.metadata(),
                     spec=V1ServiceSpec(selector=serving.labels(), ports=[port]))


def autoscaler(serving: ModelServing) -> V2HorizontalPodAutoscaler:
    """An autoscaling/v2 HPA scaling the Deployment on average CPU utilisation."""
    serving = serving.validated()
    target = V2MetricTarget(type="Utilization", average_utilization=serving.target_cpu_percent)
    metric = V2MetricSpec(type="Resource", resource=V2ResourceMetricSource(name="cpu", target=target))
    return V2HorizontalPodAutoscaler(
        api_version="autoscaling/v2", kind="HorizontalPodAutoscaler", metadata=serving.metadata(),
        spec=V2HorizontalPodAutoscalerSpec(
            scale_target_ref=V2CrossVersionObjectReference(api_version="apps/v1", kind="Deployment",
                                                           name=serving.name),
            min_replicas=serving.min_replicas, max_replicas=serving.max_replicas, metrics=[metric],
        ),
    )


def plain_serving(serving: ModelServing) -> list[Any]:
    """Deployment, Service and HPA: serving where the cluster has no KServe."""
    return [deployment(serving), service(serving), autoscaler(serving)]


# What the deploy step applies: nothing else (no pods/exec, no secrets, no cluster scope).
DEPLOY_RULES = (
    V1PolicyRule(api_groups=["serving.kserve.io"], resources=["inferenceservices"],
                 verbs=["get", "list", "watch", "create", "patch", "update"]),
    V1PolicyRule(api_groups=["apps"], resources=["deployments"],
                 verbs=["get", "list", "watch", "create", "patch", "update"]),
    V1PolicyRule(api_groups=[""], resources=["services"], verbs=["get", "create", "patch", "update"]),
    V1PolicyRule(api_groups=["autoscaling"], resources=["horizontalpodautoscalers"],
                 verbs=["get", "create", "patch", "update"]),
)


def deploy_rbac(name: str, namespace: str | None = None,
                extra_rules: Sequence[V1PolicyRule] = ()) -> list[Any]:
    """A ServiceAccount, Role and RoleBinding that let the deploy step serve models.

    Args:
        name: the name of all three objects (a DNS-1123 label).
        namespace: their namespace, or ``None`` for the one they are applied in.
        extra_rules: what the orchestrator's own machinery needs besides (e.g. Argo's
            executor reporting task results).
    """
    return service_account_rbac(name, [*DEPLOY_RULES, *extra_rules], namespace)


def service_account_rbac(name: str, rules: Sequence[V1PolicyRule],
                         namespace: str | None = None) -> list[Any]:
    """A ServiceAccount bound to a namespaced Role holding ``rules``, all three named ``name``."""
    validation.dns1123_label(name, "service account name")
    meta = V1ObjectMeta(name=name, namespace=namespace,
                        labels={"app.kubernetes.io/managed-by": MANAGED_BY})
    account = V1ServiceAccount(api_version="v1", kind="ServiceAccount", metadata=meta)
    role = V1Role(api_version="rbac.authorization.k8s.io/v1", kind="Role", metadata=meta,
                  rules=list(rules))
    binding = V1RoleBinding(
        api_version="rbac.authorization.k8s.io/v1", kind="RoleBinding", metadata=meta,
        role_ref=V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=name),
        subjects=[RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)],
    )
    return [account, role, binding]


def to_dict(obj: Any) -> Any:
    """A typed ``kubernetes.client`` object as plain JSON data (camelCase keys, no nulls)."""
    return ApiClient().sanitize_for_serialization(obj)
