"""What a render of the Argo objects can be told, checked before anything is built."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlkube import config as configmod
from mlkube import spec
from mlkube.errors import MlkubeError
from mlkube.kube import rbac, validation
from mlkube.kube.pod import SecretEnv

# On every Argo object mlkube renders (``kubectl get wftmpl -l app.kubernetes.io/part-of=mlkube``).
LABELS = {"app.kubernetes.io/part-of": "mlkube"}


@dataclass(frozen=True, kw_only=True)
class RenderOptions:
    """Names, sizes and schedules of the rendered objects; the defaults give workflows/.

    Attributes:
        steps_name: the WorkflowTemplate holding one template per step.
        lifecycle_name: the WorkflowTemplate holding the lifecycle DAG.
        cron_name: the retraining CronWorkflow.
        namespace: namespace written into the objects, or ``None`` for the one applied to.
        workers: tune workers fanned out (P).
        parallelism: at most this many lifecycle pods at once (bounds the tune fan-out).
        schedules: cron expressions for retraining (five fields, or a ``@`` descriptor).
        timezone: the IANA time zone the schedules are read in.
        artifact_pvc: the ReadWriteMany claim shared by the steps (datasets, checkpoints).
        gpu_product: pin training to nodes with this ``nvidia.com/gpu.product`` label.
        image: the CPU steps' image, or ``None`` for the step's default.
        gpu_image: the training image, or ``None`` for the step's default.
        cpu_limit: a CPU limit on every step container, for namespaces whose quota tracks
            ``limits.cpu`` (``None``: no CPU limit; memory is always limited).
        train_nodes: nodes training runs on; more than 1: an Indexed Job of that many pods
            (each with the train step's GPUs) under torchrun (:mod:`mlkube.kube.multinode`).
        queue_name: the Kueue LocalQueue every pod of the workflow waits in (the
            ``kueue.x-k8s.io/queue-name`` label on each template's pod), or ``None``.
        priority_class_name: the PriorityClass of every pod of the workflow, or ``None``.
        mlflow_tracking_uri: the MLflow server every step logs to.
        secret_env: credentials as Secret references (e.g. MLflow or object-store keys).
        service_name: the serving objects (InferenceService, or Deployment + Service + HPA) deploy creates.
        model_name: the registered model these templates train and serve (the config
            document's ``registry.model_name``): ``register`` and ``deploy`` hold its mutex,
            :func:`mlkube.spec.model_lock`, so that one of them runs at a time across every
            workflow of the namespace (a lifecycle run, the retraining cron's runs).
        workflow_service_account: runs the step pods (reports their results only).
        deploy_service_account: runs the deploy step (may manage its serving objects only).
        retry_limit: retries of a step after a transient failure.
        step_deadline_seconds: how long a CPU step may run.
        train_deadline_seconds: how long training may run.
        workflow_deadline_seconds: how long the whole lifecycle may run.
    """

    steps_name: str = "mlkube-steps"
    lifecycle_name: str = "mlkube-lifecycle"
    cron_name: str = "mlkube-retrain"
    namespace: str | None = None
    workers: int = 2
    parallelism: int = 2
    schedules: Sequence[str] = ("0 3 * * *",)
    timezone: str = "UTC"
    artifact_pvc: str = spec.ARTIFACT_CLAIM
    gpu_product: str | None = None
    image: str | None = None
    gpu_image: str | None = None
    cpu_limit: str | None = None
    queue_name: str | None = None
    priority_class_name: str | None = None
    train_nodes: int = 1
    mlflow_tracking_uri: str = spec.CLUSTER_MLFLOW_URI
    secret_env: Sequence[SecretEnv] = ()
    service_name: str = "mlkube-demo"
    model_name: str = configmod.RegistryConfig().model_name
    workflow_service_account: str = rbac.WORKFLOW_SERVICE_ACCOUNT
    deploy_service_account: str = rbac.DEPLOY_SERVICE_ACCOUNT
    retry_limit: int = 3
    step_deadline_seconds: int = 3600
    train_deadline_seconds: int = 6 * 3600
    workflow_deadline_seconds: int = 12 * 3600

    def validated(self) -> RenderOptions:
        """Check every field; an error names the option, what is wrong and what to write."""
        from mlkube.schedule import check_schedule

        for what in ("steps_name", "lifecycle_name", "cron_name", "artifact_pvc", "service_name",
                     "workflow_service_account", "deploy_service_account"):
            validation.dns1123_label(getattr(self, what), what)
        if self.namespace is not None:
            validation.dns1123_label(self.namespace, "namespace")
        _model_name(self.model_name)
        for what in ("workers", "parallelism", "step_deadline_seconds", "train_deadline_seconds",
                     "workflow_deadline_seconds"):
            _positive(getattr(self, what), what)
        if isinstance(self.retry_limit, bool) or not isinstance(self.retry_limit, int) \
                or self.retry_limit < 0:
            raise MlkubeError(f"retry_limit is {self.retry_limit!r}: give a whole number >= 0")
        if not self.schedules:
            raise MlkubeError("schedules is empty: give at least one cron expression, e.g. '0 3 * * *'")
        for schedule in self.schedules:
            check_schedule(schedule)
        if self.image is not None:
            validation.image(self.image, "image")
        if self.gpu_image is not None:
            validation.image(self.gpu_image, "gpu_image")
        if self.queue_name is not None:
            validation.queue_name(self.queue_name, "queue_name")
        from mlkube.kube.multinode import check_nodes

        check_nodes(self.train_nodes, "train_nodes")
        if self.priority_class_name is not None:
            validation.priority_class_name(self.priority_class_name, "priority_class_name")
        return self


def _model_name(value: object) -> None:
    """A registered model's name, by the registry's rules (as in the config document)."""
    if not isinstance(value, str):
        raise MlkubeError(f"model_name is {value!r}: give the registered model's name (the "
                          "config's registry.model_name)")
    try:
        configmod.override(configmod.Config(), "registry.model_name", value)
    except MlkubeError as exc:
        raise MlkubeError(f"model_name: {exc}") from None


def _positive(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MlkubeError(f"{what} is {value!r}: give a whole number of at least 1")
