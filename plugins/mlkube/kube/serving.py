"""Serving manifests for one fixed model version: KServe, or Deployment + Service + HPA.

Every builder takes a :class:`ModelServing` (what to serve, and how big) and returns the
object an adapter applies: typed ``kubernetes.client`` models for the built-in kinds, and a
plain mapping for the KServe ``InferenceService`` (a custom resource the client has no model
for). Nothing here talks to a cluster (the targets in :mod:`mlkube.targets` do), and nothing is
adapter-specific.

Every target runs mlkube's own serving runtime (``mlkube serve model``, Open Inference Protocol
V2): it loads ``model_uri`` through MLflow (so it needs ``MLFLOW_TRACKING_URI`` and the store's
credentials in :attr:`ModelServing.env`), predicts the model's own input example, a batch of 1
row and a full batch (:attr:`ModelServing.verify_batch` rows), and only then answers 200 on
``/v2/models/<name>/ready``, the readiness probe that gates traffic.

With an artifact claim (:attr:`ModelServing.artifact_pvc`) the pods mount it read-only at
``spec.ARTIFACT_MOUNT`` and its ``spec.MONITORING_SUBPATH`` sub-directory, alone, read-write at
``spec.MONITORING_DIR``, where the runtime writes its live-statistics windows
(``--stats-dir``) and the monitor step reads them. Every replica writes to the same directory:
the runtime puts its host name (the pod's) in each window's name. On KServe's serverless mode
Knative must allow writable claims (``config-features``: ``kubernetes.podspec-persistent-volume-claim``
and ``kubernetes.podspec-persistent-volume-write`` enabled).

Pods run under the "restricted" Pod Security profile (see :mod:`mlkube.kube.security`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes.client import (
    ApiClient,
    RbacV1Subject,
    V1Container,
    V1ContainerPort,
    V1Deployment,
    V1DeploymentSpec,
    V1DeploymentStrategy,
    V1EnvVar,
    V1HTTPGetAction,
    V1LabelSelector,
    V1Lifecycle,
    V1LifecycleHandler,
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
    V1RollingUpdateDeployment,
    V1Service,
    V1ServiceAccount,
    V1ServicePort,
    V1ServiceSpec,
    V1SleepAction,
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
from mlkube.spec import ARTIFACT_MOUNT, MONITORING_DIR, MONITORING_SUBPATH, SERVER_IMAGE

KSERVE_API_VERSION = "serving.kserve.io/v1beta1"
MANAGED_BY = "mlkube"
MODEL_NAME_ANNOTATION = "mlkube.io/model-name"
MODEL_VERSION_ANNOTATION = "mlkube.io/model-version"
SERVER_PORT = 8080
SERVICE_PORT = 80
LIVE_PATH = "/v2/health/live"
# KServe: the predictor container's name, and the variable that tells KServe a custom
# container speaks the V2 protocol (KServe's CustomSpecProtocolEnvVarKey).
KSERVE_CONTAINER = "kserve-container"
KSERVE_PROTOCOL_ENV = "PROTOCOL"
# Knative revision names are <name>-predictor-00001, at most 63 characters.
KSERVE_NAME_MAX = 63 - len("-predictor-00001")
# Seconds a stopping Deployment pod keeps serving while endpoints drop it (no lost requests).
DRAIN_SECONDS = 5
# Environment variable names whose value must come from a Secret, never inline.
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY", re.I)
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


@dataclass(frozen=True, kw_only=True)
class ModelServing:
    """One model version to serve, and the size of what serves it.

    Attributes:
        name: the service's name (a DNS-1123 label starting with a letter): the
            InferenceService, or the Deployment, Service and HPA.
        model_name: the registered model's name: the V2 model name
            (``/v2/models/<model_name>``) and an annotation; any text.
        version: the registered model version served, fixed (never an alias).
        model_uri: what the runtime loads through MLflow, e.g. ``models:/<name>/<version>``
            (works for every artifact store the tracking server knows, ``mlflow-artifacts:/``
            included).
        namespace: the namespace, or ``None`` for the one the objects are applied in.
        image: the serving runtime's image.
        env: the serving container's environment: ``MLFLOW_TRACKING_URI`` and the store's
            credentials, plain values or Secret references (``value_from``); a variable named
            like a secret (``*PASSWORD*``, ``*TOKEN*``, ``*SECRET*``...) must be a reference.
        cpu: CPU request per replica (on KServe also its limit).
        memory: memory request and limit per replica.
        min_replicas: replicas kept running.
        max_replicas: the autoscaler's upper bound.
        target_cpu_percent: average CPU utilisation the Deployment's HPA aims for.
        artifact_pvc: the shared artifact claim: mounted read-only at ``spec.ARTIFACT_MOUNT``
            (the model files of a file artifact store on a shared volume), and its
            ``monitoring`` sub-directory read-write at ``spec.MONITORING_DIR``, where the
            runtime writes its live windows (``--stats-dir``); ``None``: no volume, no
            windows written.
        verify_batch: the full batch (rows) the runtime verifies the model on before the
            pod is ready (``--verify-batch``), e.g. the rows of a batch clients send;
            ``None``: the runtime's default (``serve.loaded.VERIFY_BATCH``), not written.
    """

    name: str
    model_name: str
    version: str = ""
    model_uri: str = ""
    namespace: str | None = None
    image: str = SERVER_IMAGE
    env: tuple[V1EnvVar, ...] = ()
    cpu: str = "500m"
    memory: str = "1Gi"
    min_replicas: int = 1
    max_replicas: int = 3
    target_cpu_percent: int = 70
    artifact_pvc: str | None = None
    verify_batch: int | None = None

    def validated(self) -> ModelServing:
        """Check every field; errors name the field and say what to write."""
        validation.dns1123_label(self.name, "serving name")
        if not self.name[0].isalpha():
            raise MlkubeError(f"serving name is {self.name!r}: start it with a letter "
                              "(a Service name is a DNS-1035 label)")
        if self.namespace is not None:
            validation.dns1123_label(self.namespace, "serving namespace")
        validation.image(self.image, "serving image")
        validation.quantity(self.cpu, "serving cpu")
        validation.quantity(self.memory, "serving memory")
        if not self.model_name:
            raise MlkubeError("serving model_name is empty: pass the registered model's name")
        if not self.version:
            raise MlkubeError("serving version is empty: pass the registered version to serve "
                              "(register's champion_version)")
        if not self.model_uri:
            raise MlkubeError("serving model_uri is empty: pass the version's URI, "
                              "e.g. models:/<name>/<version>")
        if self.min_replicas < 1 or self.max_replicas < self.min_replicas:
            raise MlkubeError(
                f"serving replicas are min {self.min_replicas}, max {self.max_replicas}: "
                "use min_replicas >= 1 and max_replicas >= min_replicas"
            )
        if not 1 <= self.target_cpu_percent <= 100:
            raise MlkubeError(
                f"serving target_cpu_percent is {self.target_cpu_percent}: use 1 to 100"
            )
        if self.verify_batch is not None and (isinstance(self.verify_batch, bool) or not
                                              isinstance(self.verify_batch, int)
                                              or self.verify_batch < 1):
            raise MlkubeError(f"serving verify_batch is {self.verify_batch!r}: use a positive "
                              "number of rows, or none for the runtime's default")
        _check_env(self.env)
        return self

    def labels(self) -> dict[str, str]:
        """Labels shared by every object of this service (the Deployment's selector)."""
        return {"app.kubernetes.io/name": self.name, "app.kubernetes.io/managed-by": MANAGED_BY}

    def annotations(self) -> dict[str, str]:
        """The model served, as annotations (what ``live_version`` reads back)."""
        return {MODEL_NAME_ANNOTATION: self.model_name, MODEL_VERSION_ANNOTATION: self.version}

    def metadata(self) -> V1ObjectMeta:
        """Name, namespace, labels, and the model served as annotations."""
        return V1ObjectMeta(name=self.name, namespace=self.namespace, labels=self.labels(),
                            annotations=self.annotations())

    def resources(self, *, cpu_limit: bool = False) -> V1ResourceRequirements:
        """Requests, with memory (and with ``cpu_limit`` CPU) limited to its request."""
        limits = {"cpu": self.cpu, "memory": self.memory} if cpu_limit else {"memory": self.memory}
        return V1ResourceRequirements(requests={"cpu": self.cpu, "memory": self.memory},
                                      limits=limits)


def _check_env(env: Sequence[V1EnvVar]) -> None:
    seen: set[str] = set()
    for var in env:
        if not isinstance(var, V1EnvVar):
            raise MlkubeError(f"serving env holds {var!r}: give kubernetes.client.V1EnvVar "
                              "objects (value=... or value_from=...)")
        if not var.name or not _ENV_NAME.match(var.name):
            raise MlkubeError(f"serving env name {var.name!r} is not a valid variable name")
        if var.name in seen:
            raise MlkubeError(f"serving env sets {var.name} twice: keep one")
        seen.add(var.name)
        if var.name == KSERVE_PROTOCOL_ENV:
            raise MlkubeError(f"serving env sets {KSERVE_PROTOCOL_ENV}: mlkube sets it (v2)")
        if var.value_from is None and var.value and _SECRET_NAME.search(var.name):
            raise MlkubeError(
                f"serving env {var.name} is set inline: take it from a Secret, e.g. "
                f"V1EnvVar(name={var.name!r}, value_from=V1EnvVarSource(secret_key_ref="
                "V1SecretKeySelector(name=..., key=...)))"
            )


def ready_path(model_name: str) -> str:
    """The V2 readiness path of ``model_name`` (URL-quoted: a model name is any text)."""
    return f"/v2/models/{quote(model_name, safe='')}/ready"


def server_command(serving: ModelServing) -> list[str]:
    """The serving runtime's command line for the fixed version."""
    from mlkube.serve.server import arguments

    return ["mlkube", "serve", "model",
            *arguments(model_uri=serving.model_uri, name=serving.model_name,
                       version=serving.version, host="0.0.0.0", port=SERVER_PORT,
                       verify_batch=serving.verify_batch,
                       stats_dir=MONITORING_DIR if serving.artifact_pvc else None)]


def _probes(serving: ModelServing, port: int | str) -> dict[str, V1Probe]:
    ready = V1HTTPGetAction(path=ready_path(serving.model_name), port=port)
    return {
        # Ready only once the runtime has loaded the model and predicted its input example,
        # 1 row and a full batch.
        "readiness_probe": V1Probe(http_get=ready, period_seconds=5, timeout_seconds=2,
                                   failure_threshold=3),
        # Loading through MLflow may take minutes: up to 10 before the kubelet restarts it.
        "startup_probe": V1Probe(http_get=ready, period_seconds=5, timeout_seconds=2,
                                 failure_threshold=120),
        "liveness_probe": V1Probe(http_get=V1HTTPGetAction(path=LIVE_PATH, port=port),
                                  period_seconds=10, timeout_seconds=2, failure_threshold=3),
    }


def _mounts(serving: ModelServing) -> list[V1VolumeMount] | None:
    if not serving.artifact_pvc:
        return None
    # the model files read-only; the live windows' sub-directory, alone, read-write (mounted
    # after, over the read-only view: the kubelet creates the sub-directory in the claim)
    return [V1VolumeMount(name="artifacts", mount_path=ARTIFACT_MOUNT, read_only=True),
            V1VolumeMount(name="artifacts", mount_path=MONITORING_DIR,
                          sub_path=MONITORING_SUBPATH, read_only=False)]


def _volumes(serving: ModelServing) -> list[V1Volume] | None:
    if not serving.artifact_pvc:
        return None
    # not read-only as a whole (that would make every mount read-only): each mount says
    claim = V1PersistentVolumeClaimVolumeSource(claim_name=serving.artifact_pvc)
    return [V1Volume(name="artifacts", persistent_volume_claim=claim)]


def server_container(serving: ModelServing) -> V1Container:
    """The serving runtime on :data:`SERVER_PORT` (port ``http``), for the Deployment.

    Its termination message falls back to the log's tail, so a crash's own error line shows
    in the pod status (what :mod:`mlkube.kube.diagnosis` reports).
    """
    return V1Container(
        name="server",
        image=serving.image,
        command=server_command(serving),
        env=list(serving.env) or None,
        ports=[V1ContainerPort(name="http", container_port=SERVER_PORT, protocol="TCP")],
        **_probes(serving, "http"),
        # Endpoints drop a stopping pod asynchronously: keep serving a moment, then stop.
        lifecycle=V1Lifecycle(pre_stop=V1LifecycleHandler(sleep=V1SleepAction(
            seconds=DRAIN_SECONDS))),
        resources=serving.resources(),
        security_context=security.container_security_context(),
        termination_message_policy="FallbackToLogsOnError",
        volume_mounts=_mounts(serving),
    )


def kserve_container(serving: ModelServing) -> V1Container:
    """The serving runtime as KServe's custom predictor container, speaking V2.

    Knative (KServe's serverless mode) allows one port named ``http1`` and probes on that
    port; ``PROTOCOL=v2`` tells KServe the protocol (its custom-container convention).
    """
    env = [V1EnvVar(name=KSERVE_PROTOCOL_ENV, value="v2"), *serving.env]
    return V1Container(
        name=KSERVE_CONTAINER,
        image=serving.image,
        command=server_command(serving),
        env=env,
        ports=[V1ContainerPort(name="http1", container_port=SERVER_PORT, protocol="TCP")],
        **_probes(serving, SERVER_PORT),
        resources=serving.resources(cpu_limit=True),
        security_context=security.container_security_context(),
        termination_message_policy="FallbackToLogsOnError",
        volume_mounts=_mounts(serving),
    )


def inference_service(serving: ModelServing, *,
                      canary_percent: int | None = None) -> dict[str, Any]:
    """A KServe ``InferenceService`` whose predictor runs mlkube's V2 runtime.

    A custom predictor container (``spec.predictor.containers``), not ``spec.predictor.model``:
    the model spec needs a ServingRuntime for the model format and KServe's storage
    initializer, which cannot fetch ``models:/`` URIs; the runtime loads through MLflow itself.
    No ``scaleMetric``/``deploymentStrategy``: KServe's webhook rejects them in serverless
    mode, so KServe's own autoscaler defaults apply. A plain mapping: the Kubernetes client
    has no model for this custom resource.

    Args:
        serving: what to serve.
        canary_percent: the share of traffic (1-100) the new revision takes until promoted
            (serverless mode), with KServe's tag routing on (the new revision's own URL is
            ``latest-<predictor>``); ``None``: all of it once ready.
    """
    serving = serving.validated()
    if len(serving.name) > KSERVE_NAME_MAX:
        raise MlkubeError(f"serving name {serving.name!r} is {len(serving.name)} characters: "
                          f"KServe needs at most {KSERVE_NAME_MAX} (its revision names add "
                          "'-predictor-00001')")
    if canary_percent is not None and (isinstance(canary_percent, bool)
                                       or not 1 <= canary_percent <= 100):
        raise MlkubeError(f"canary percent is {canary_percent!r}: use 1 to 100, or none")
    metadata: dict[str, Any] = {"name": serving.name, "labels": serving.labels(),
                                "annotations": serving.annotations()}
    if serving.namespace:
        metadata["namespace"] = serving.namespace
    predictor: dict[str, Any] = {
        "minReplicas": serving.min_replicas,
        "maxReplicas": serving.max_replicas,
        "automountServiceAccountToken": False,
        "securityContext": to_dict(security.pod_security_context()),
        "containers": [to_dict(kserve_container(serving))],
    }
    if serving.artifact_pvc:
        predictor["volumes"] = [to_dict(v) for v in _volumes(serving) or ()]
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
        # Knative's tag routes: the new revision alone at latest-<predictor>, the old at prev-
        metadata["annotations"] = {**metadata["annotations"],
                                   "serving.kserve.io/enable-tag-routing": "true"}
    return {"apiVersion": KSERVE_API_VERSION, "kind": "InferenceService",
            "metadata": metadata, "spec": {"predictor": predictor}}


# One new pod at a time, and no old pod down before a new one is ready.
ROLLING_STRATEGY = V1DeploymentStrategy(
    type="RollingUpdate", rolling_update=V1RollingUpdateDeployment(max_surge=1, max_unavailable=0))


def deployment(serving: ModelServing) -> V1Deployment:
    """A Deployment of the serving runtime (CPU-sized; the HPA sets the replicas).

    It rolls one new pod at a time and never takes an old one down before a new one is ready
    (``maxSurge: 1``, ``maxUnavailable: 0``), so the old version serves until the new one
    answers.
    """
    serving = serving.validated()
    pod = V1PodSpec(containers=[server_container(serving)], volumes=_volumes(serving),
                    security_context=security.pod_security_context(),
                    automount_service_account_token=False)
    return V1Deployment(
        api_version="apps/v1", kind="Deployment", metadata=serving.metadata(),
        spec=V1DeploymentSpec(
            replicas=serving.min_replicas,
            selector=V1LabelSelector(match_labels=serving.labels()),
            strategy=ROLLING_STRATEGY,
            template=V1PodTemplateSpec(
                metadata=V1ObjectMeta(labels=serving.labels(), annotations=serving.annotations()),
                spec=pod),
        ),
    )


def service(serving: ModelServing) -> V1Service:
    """A ClusterIP Service in front of the Deployment's pods, on port 80."""
    serving = serving.validated()
    port = V1ServicePort(name="http", port=SERVICE_PORT, target_port="http", protocol="TCP")
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


# What the deploy step's rollout (mlkube.targets.cluster) does, nothing more: apply, read and
# delete its own serving kinds; read the pods, ReplicaSets and events that say why a rollout
# failed; reach the serving runtime in its Deployment's pods through the API server's pod
# proxy (a canary or shadow slot loaded, read, unloaded: mlkube.kube.podproxy; get for a GET,
# create for a POST, no other verb; RBAC cannot narrow it to the serving pods, so it reaches
# any pod's HTTP ports in the namespace, and the step reaches only its own Deployment's). No
# pods/exec or logs, no Secrets (the serving pods reference them; the kubelet reads them),
# nothing cluster-scoped.
_OWN = ["get", "list", "watch", "create", "patch", "update", "delete"]
DEPLOY_RULES = (
    V1PolicyRule(api_groups=["serving.kserve.io"], resources=["inferenceservices"], verbs=_OWN),
    V1PolicyRule(api_groups=["apps"], resources=["deployments"], verbs=_OWN),
    V1PolicyRule(api_groups=[""], resources=["services"], verbs=_OWN),
    V1PolicyRule(api_groups=["autoscaling"], resources=["horizontalpodautoscalers"], verbs=_OWN),
    V1PolicyRule(api_groups=["apps"], resources=["replicasets"], verbs=["get", "list"]),
    V1PolicyRule(api_groups=[""], resources=["pods", "events"], verbs=["get", "list"]),
    V1PolicyRule(api_groups=[""], resources=["pods/proxy"], verbs=["get", "create"]),
    # the model's deploy lock (mlkube.kube.lease): taken, renewed, taken over, given up
    V1PolicyRule(api_groups=["coordination.k8s.io"], resources=["leases"],
                 verbs=["get", "create", "update"]),
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
