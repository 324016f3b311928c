"""StepOperator: a KubernetesPodOperator that runs one lifecycle step.

It turns typed ML parameters into the step's pod through :func:`mlkube.kube.pod.step_pod`
(the one place a step becomes a container) and hands the pod to KubernetesPodOperator's own
lifecycle; namespaces, affinity, secrets, deferrable mode, callbacks and ``on_finish_action``
work as usual. The step's JSON result, read from the finished pod's termination message (no
XCom sidecar), is the task's return value. With the ``local`` backend the same step program
runs as a subprocess of the worker instead.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import ApiClient, V1EnvVar, V1Pod

from mlkube.airflow import backend as backends
from mlkube.airflow import checks
from mlkube.airflow.links import MlflowRunLink, mlflow_url
from mlkube.airflow.local_run import LocalStep
from mlkube.airflow.mlflow_connection import MlflowHook, MlflowSettings
from mlkube.airflow.termination import failure, result_from_pod
from mlkube.errors import MlkubeError
from mlkube.kube import multinode, validation
from mlkube.kube import preflight as preflights
from mlkube.kube.pod import (
    Placement,
    SecretEnv,
    StepPod,
    grace_period,
    scheduler_reason,
    step_pod,
)
from mlkube.spec import StepSpec

if TYPE_CHECKING:
    from airflow.sdk import Context

STEP_LABEL = "mlkube.io/step"
# With a Kueue queue, a pod may wait (gated, unscheduled) until the queue admits it: how long
# KubernetesPodOperator waits for that unless told otherwise (its own default is 120 s).
QUEUED_SCHEDULE_TIMEOUT_SECONDS = 24 * 3600
KUEUE_GATE = "kueue.x-k8s.io/admission"
# KubernetesPodOperator parameters the step description owns; the message says what to use.
_OWNED = {
    "cmds": "command= (the step's arguments follow it)",
    "arguments": "the operator's typed parameters",
    "container_resources": "cpu=, memory= and gpus=",
}


def _name(item: Any) -> str | None:
    return item.get("name") if isinstance(item, dict) else getattr(item, "name", None)


def _merge_named(ours: Sequence[Any], theirs: Sequence[Any]) -> list[Any]:
    """``ours`` then ``theirs``; an item of ``theirs`` replaces one of ``ours`` with its name."""
    names = {_name(t) for t in theirs}
    return [o for o in ours if _name(o) not in names] + list(theirs)


def _env_list(env: Mapping[str, str] | Sequence[V1EnvVar] | None) -> list[V1EnvVar]:
    if isinstance(env, Mapping):
        return [V1EnvVar(name=k, value=str(v)) for k, v in env.items()]
    return list(env or [])


def _gated(pod: V1Pod) -> bool:
    """Whether Kueue still holds the pod back: its webhook's scheduling gate is still there."""
    gates = (pod.spec and pod.spec.scheduling_gates) or []
    return any(g.name == KUEUE_GATE for g in gates)


class StepOperator(KubernetesPodOperator):
    """Run one lifecycle step; its result is the return value (pushed per key by default).

    Subclasses set :attr:`step` and map their typed parameters to the step's options in
    :attr:`step_fields`.

    Args:
        config: lifecycle YAML path (inside the pod: on the image or a mounted volume).
        experiment: MLflow experiment; default: the connection's, else the config's.
        artifact_root: where datasets and checkpoints go; default: the mounted artifact
            volume (``artifact_pvc``) in a pod, the state directory locally.
        pipeline_run_id: lineage recorded on MLflow runs; default: the DAG run id.
        backend: ``kubernetes`` or ``local``; default: ``MLKUBE_BACKEND``, then Airflow
            config ``[mlkube] backend``, then ``kubernetes``.
        cpu: CPU request (a Kubernetes quantity); default: the step's.
        cpu_limit: CPU limit, for a namespace whose ResourceQuota tracks ``limits.cpu``
            (preflight names it when the quota demands one); default: none.
        memory: memory request and limit (a quantity); default: the step's.
        gpus: whole GPUs (``nvidia.com/gpu``); default: the step's (1 for train).
        gpu_product: GPU product to select nodes by (``nvidia.com/gpu.product``).
        shm_size: size of the memory-backed /dev/shm given to GPU pods.
        artifact_pvc: PersistentVolumeClaim mounted at /mnt/mlkube, shared by the steps.
        queue_name: the Kueue LocalQueue the pod waits in (label ``kueue.x-k8s.io/queue-name``;
            not Airflow's own ``queue``). Kueue admits the pod when the queue has quota; until
            then it is Pending, so ``schedule_timeout_seconds`` defaults to 24 h instead of 120 s.
        priority_class_name: KubernetesPodOperator's own: the pod's PriorityClass (Kueue takes
            the workload's priority from it); checked as a name at parse time.
        termination_grace_period: KubernetesPodOperator's own: seconds between SIGTERM and
            SIGKILL when the pod (or, locally, the process) is stopped; default: the step's
            (train 120 s, to write a checkpoint; others Kubernetes' 30 s).
        secret_env: environment variables taken from Kubernetes Secrets by reference.
        mlflow_conn_id: an ``mlflow`` Airflow connection (tracking URI, credentials Secret).
        mlflow_tracking_uri: the tracking URI, overriding the connection's.
        command: replaces ``python -m <step module>`` (bring your own image and program);
            the step's arguments follow it and it must honour the result contract.
        preflight: before submitting, check that some node can allocate the pod's requests
            and that the namespace quotas have room; fail at once instead of a Pending pod.
            Skipped (with a warning) when the Airflow identity may not list nodes or quotas.
        do_xcom_push: return the step's result (default ``True``); never adds a sidecar.
        multiple_outputs: also push each result key as its own XCom, so that
            ``task.output["key"]`` works (default ``True``).
        **kwargs: everything else KubernetesPodOperator and BaseOperator take (``task_id``,
            ``namespace``, ``image``, ``env_vars``, ``secrets``, ``affinity``, ...).
            ``log_events_on_failure`` defaults to ``True`` so that a pod that never got
            scheduled fails with the scheduler's reason, and ``termination_message_policy``
            to ``FallbackToLogsOnError`` so that a failed step's error line reaches the task.
    """

    step: ClassVar[StepSpec]
    step_fields: ClassVar[dict[str, str]] = {}  # operator attribute → step option name
    template_fields: Sequence[str] = (
        *KubernetesPodOperator.template_fields,
        "config", "experiment", "artifact_root", "pipeline_run_id", "mlflow_tracking_uri",
    )
    operator_extra_links = (MlflowRunLink(),)
    ui_color = "#d6e9f8"

    def __init__(
        self,
        *,
        config: str | None = None,
        experiment: str | None = None,
        artifact_root: str | None = None,
        pipeline_run_id: str | None = "{{ run_id }}",
        backend: str | None = None,
        cpu: str | None = None,
        cpu_limit: str | None = None,
        memory: str | None = None,
        gpus: int | None = None,
        gpu_product: str | None = None,
        shm_size: str = "1Gi",
        artifact_pvc: str | None = None,
        queue_name: str | None = None,
        secret_env: Sequence[SecretEnv] = (),
        mlflow_conn_id: str | None = None,
        mlflow_tracking_uri: str | None = None,
        command: Sequence[str] | None = None,
        preflight: bool = True,
        do_xcom_push: bool = True,
        multiple_outputs: bool = True,
        **kwargs: Any,
    ) -> None:
        """Store the parameters and check those known at parse time (see the class doc)."""
        task = kwargs.get("task_id", "?")
        for name, instead in _OWNED.items():
            if kwargs.get(name) is not None:
                raise MlkubeError(f"task {task!r}: {name} is set by the step; use {instead}")
        kwargs.setdefault("log_events_on_failure", True)
        # A failed step writes no result, so the kubelet puts its last log lines (the one-line
        # error) in the termination message, which KubernetesPodOperator's failure reports.
        kwargs.setdefault("termination_message_policy", "FallbackToLogsOnError")
        if queue_name is not None:  # admission by the queue is part of getting scheduled
            kwargs.setdefault("schedule_timeout_seconds", QUEUED_SCHEDULE_TIMEOUT_SECONDS)
        super().__init__(do_xcom_push=do_xcom_push, multiple_outputs=multiple_outputs, **kwargs)
        self.config = config
        self.experiment = experiment
        self.artifact_root = artifact_root
        self.pipeline_run_id = pipeline_run_id
        self.backend = backend
        self.cpu = cpu
        self.cpu_limit = cpu_limit
        self.memory = memory
        self.gpus = gpus
        self.gpu_product = gpu_product
        self.shm_size = shm_size
        self.artifact_pvc = artifact_pvc
        self.queue_name = queue_name
        self.secret_env = list(secret_env)
        self.mlflow_conn_id = mlflow_conn_id
        self.mlflow_tracking_uri = mlflow_tracking_uri
        self.command = list(command) if command else None
        self.preflight = preflight
        self.mlflow_link: str | None = None
        self._local: LocalStep | None = None
        self._check_parameters()

    # -- parse-time checks ---------------------------------------------------------------

    @property
    def _what(self) -> str:
        return f"task {self.task_id!r}"

    def _check_parameters(self) -> None:
        """Fail when the DAG is parsed, naming the task, for what is already wrong."""
        backends.check(self.backend, f"{self._what}: backend")
        if self.termination_grace_period is not None:  # named as the operator takes it
            validation.seconds(self.termination_grace_period,
                               f"{self._what}: termination_grace_period")
        checks.placement(self._placement_fields(), self._what)
        checks.namespace(self.namespace, f"{self._what}: namespace")
        checks.config_file(self.config, f"{self._what}: config")
        for attr, dest in self.step_fields.items():
            checks.option(self.step.option(dest), getattr(self, attr), f"{self._what}: {attr}")

    # -- what the step gets ----------------------------------------------------------------

    def _placement_fields(self) -> dict[str, Any]:
        return {"image": self.image, "cpu": self.cpu, "cpu_limit": self.cpu_limit,
                "memory": self.memory, "gpus": self.gpus,
                "gpu_product": self.gpu_product, "shm_size": self.shm_size,
                "artifact_pvc": self.artifact_pvc, "queue_name": self.queue_name,
                "priority_class_name": self.priority_class_name,
                "termination_grace_period_seconds": self.termination_grace_period}

    def extra_env(self) -> dict[str, str]:
        """Step-specific plain environment (subclasses add to it)."""
        return {}

    def mlflow_settings(self) -> MlflowSettings:
        """MLflow settings from the connection (if any), the explicit URI and the experiment."""
        settings = MlflowHook(self.mlflow_conn_id).get_conn() if self.mlflow_conn_id else MlflowSettings()
        if self.mlflow_tracking_uri:
            settings = dataclasses.replace(settings, tracking_uri=self.mlflow_tracking_uri)
        if self.experiment:
            settings = dataclasses.replace(settings, experiment=self.experiment)
        return settings

    def step_values(self, settings: MlflowSettings) -> dict[str, Any]:
        """The step's option values (keyed by option name; ``None`` and ``""`` omitted)."""
        values = {"config": self.config, "experiment": settings.experiment,
                  "artifact_root": self.artifact_root, "pipeline_run_id": self.pipeline_run_id}
        values |= {dest: getattr(self, attr) for attr, dest in self.step_fields.items()}
        return {k: v for k, v in values.items() if v is not None and v != ""}

    def step_pod(self, settings: MlflowSettings | None = None) -> StepPod:
        """The step's pod pieces, rendered from its description (kubernetes backend)."""
        settings = settings or self.mlflow_settings()
        return self._pod_pieces(settings, self.step_values(settings), self._placement_fields())

    def _pod_pieces(self, settings: MlflowSettings, values: dict[str, Any],
                    fields: dict[str, Any]) -> StepPod:
        placement = Placement(
            **fields,
            env={**settings.env(), **self.extra_env()},
            secret_env=[*self.secret_env, *settings.secret_env(self._what)],
        )
        return step_pod(self.step, values, placement, what=self._what)

    # -- kubernetes backend ------------------------------------------------------------------

    @contextmanager
    def _without_xcom_sidecar(self) -> Iterator[None]:
        """Run KubernetesPodOperator code with its sidecar off; our result needs none.

        KubernetesPodOperator reads ``do_xcom_push`` as "add the XCom sidecar"; for a step it
        means "return the result", which comes from the termination message instead.
        """
        push = self.do_xcom_push
        self.do_xcom_push = False
        try:
            yield
        finally:
            self.do_xcom_push = push

    def _apply(self, pieces: StepPod) -> None:
        """Hand the step's pod pieces to KubernetesPodOperator, keeping the user's additions."""
        container = pieces.container
        self.image = container.image
        self.cmds = list(self.command) if self.command else list(container.command or [])
        self.arguments = list(container.args or [])
        self.container_resources = container.resources
        self.container_security_context = self.container_security_context or container.security_context
        self.security_context = self.security_context or pieces.security_context
        self.env_vars = _merge_named(container.env or [], _env_list(self.env_vars))
        self.volumes = _merge_named(pieces.volumes, self.volumes)
        self.volume_mounts = _merge_named(container.volume_mounts or [], self.volume_mounts)
        self.tolerations = pieces.tolerations + [t for t in self.tolerations if t not in pieces.tolerations]
        self.node_selector = {**pieces.node_selector, **self.node_selector}
        self.labels = {STEP_LABEL: self.step.name, **self.labels, **pieces.labels}
        self.priority_class_name = pieces.priority_class_name
        self.termination_grace_period = pieces.termination_grace_period_seconds

    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False) -> V1Pod:
        """The pod this task submits: the step's pod pieces through KubernetesPodOperator."""
        pieces = self.step_pod()
        self._apply(pieces)
        with self._without_xcom_sidecar():
            pod = super().build_pod_request_obj(context, dry_run=dry_run)
        for container in pod.spec.containers:
            if container.name == self.base_container_name:
                container.termination_message_path = pieces.container.termination_message_path
        return pod

    def _result_from(self, pod: V1Pod | None) -> dict[str, Any]:
        if pod is None:
            raise MlkubeError(
                f"{self._what}: the step's pod was gone before its result could be read; run the "
                "task again (steps are idempotent)"
            )
        return result_from_pod(pod, self.base_container_name)

    # -- running -----------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        """Run the step on the chosen backend and return its result."""
        if backends.resolve(self.backend) == "local":
            return self._finish(self._run_local())
        if self.preflight:
            self.name = self._set_name(self.name)
            self.pod_request_obj = self.build_pod_request_obj(context)
            self._preflight(self.pod_request_obj)
        with self._without_xcom_sidecar():
            super().execute(context)  # deferrable: defers here, resumes in trigger_reentry
        return self._finish(self._result_from(self.remote_pod))

    def cleanup(self, pod: V1Pod, remote_pod: V1Pod, xcom_result: dict[str, Any] | None = None,
                context: Context | None = None) -> None:
        """KubernetesPodOperator's cleanup (events logged, the pod deleted), then one line.

        Both modes end here when the pod failed: the provider's own error ("Pod ... returned a
        failure" and the whole pod) replaces whatever was raised before, a launch timeout
        included. A pod that was never scheduled fails with the scheduler's reason (or says
        Kueue never admitted it); a step that failed, with its own error line.
        """
        from airflow.providers.common.compat.sdk import AirflowException

        why = self._why_unscheduled(pod, remote_pod)
        try:
            super().cleanup(pod, remote_pod, xcom_result, context)
        except AirflowException:
            if why is None and remote_pod is not None:
                why = failure(remote_pod, self.base_container_name)
            if why is None:
                raise
            raise MlkubeError(f"{self._what}: {why}") from None

    def _why_unscheduled(self, pod: V1Pod, remote_pod: V1Pod | None) -> str | None:
        """Why a pod still Pending was never placed on a node; ``None`` when it was placed."""
        from kubernetes.client.rest import ApiException

        if remote_pod is None or remote_pod.status is None or remote_pod.status.phase != "Pending":
            return None
        try:
            now = self.pod_manager.read_pod(pod)
            events = self.pod_manager.read_pod_events(pod).items
        except ApiException:
            return None
        conditions = {c.type: c for c in (now.status and now.status.conditions) or []}
        scheduled = conditions.get("PodScheduled")
        if now.spec.node_name or (scheduled is not None and scheduled.status == "True"):
            return None
        name, within = pod.metadata.name, f"within {self.schedule_timeout_seconds} s"
        if _gated(now):
            queue = f"Kueue queue {self.queue_name!r}" if self.queue_name else "its scheduling gates"
            return (f"pod {name} was not admitted by {queue} {within}: see `kubectl get "
                    f"workloads -n {pod.metadata.namespace}`, or raise schedule_timeout_seconds")
        served = [ApiClient().sanitize_for_serialization(e) for e in events]
        reason = scheduler_reason(served) or (scheduled.message if scheduled is not None else None)
        return f"pod {name} was not scheduled {within}: {reason}" if reason else None

    def _preflight(self, pod: V1Pod) -> None:
        """Fail now when the pod can never be admitted or scheduled (:mod:`mlkube.kube.preflight`)."""
        found = preflights.read_cluster(self.client, pod.metadata.namespace, self.log.warning)
        try:
            multinode.verdict(pod, found)
        except MlkubeError as exc:
            raise MlkubeError(f"{self._what}: {exc}") from None

    def trigger_reentry(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume after deferral: KubernetesPodOperator finishes the pod, we read the result."""
        with self._without_xcom_sidecar():
            super().trigger_reentry(context, event)
        return self._finish(self._result_from(self.pod))

    def _run_local(self) -> dict[str, Any]:
        settings = self.mlflow_settings()
        env = {e.name: e.value for e in _env_list(self.env_vars) if e.value is not None}
        env |= {**settings.local_env(), **self.extra_env()}
        if self.secret_env:
            self.log.info("local backend: secret_env is for pods; the process inherits the "
                          "worker's environment instead")
        # only GPUs the task names: the step's default (train's 1) would fail a CPU-only worker
        self._local = LocalStep(self.step, self.step_values(settings), env=env,
                                command=self.command, gpus=self.gpus)
        return self._local.run(self.log)

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        self.mlflow_link = mlflow_url(self.mlflow_settings().link_base(), result)
        self.log.info("step %s result: %s", self.step.name, json.dumps(result, sort_keys=True))
        return result

    def on_kill(self) -> None:
        """Stop the local process (SIGTERM, SIGKILL after the grace period), or let
        KubernetesPodOperator delete the pod (with the same grace period)."""
        if self._local is not None:
            grace = grace_period(self.step, Placement(
                termination_grace_period_seconds=self.termination_grace_period))
            if grace is None:
                self._local.terminate()  # Kubernetes' default, as a pod would get
            else:
                self._local.terminate(float(grace))
            return
        super().on_kill()
