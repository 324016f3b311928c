"""One step's pod pieces, built from its :class:`~mlkube.spec.StepSpec`.

:func:`step_pod` is the single place where a step becomes a container: command and
arguments, image, resources, GPU scheduling, environment (secrets by reference only; the GPUs
the pod was given as ``MLKUBE_GPUS``, which the train step checks against what torch sees), the
artifact volume, the restricted security context, the Kueue queue label, the PriorityClass and
the termination grace period. The Airflow operators and the Argo templates both render what
it returns.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import (
    V1Container,
    V1EnvVar,
    V1EnvVarSource,
    V1ObjectMeta,
    V1PersistentVolumeClaimVolumeSource,
    V1Pod,
    V1PodSecurityContext,
    V1PodSpec,
    V1ResourceRequirements,
    V1SecretKeySelector,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

from mlkube.errors import MlkubeError
from mlkube.kube import gpu, security, validation
from mlkube.spec import (
    ARTIFACT_CLAIM_ENV,
    ARTIFACT_MOUNT,
    CLUSTER_DATABASE,
    CLUSTER_MLFLOW_URI,
    CPU_IMAGE,
    DB_SECRET,
    DB_SECRET_KEY,
    GPU_IMAGE,
    GPUS_ENV,
    RESULT_PATH,
    SECRET_ENV_VAR,
    TUNE_STORAGE_ENV,
    StepSpec,
)

ARTIFACT_VOLUME = "mlkube-artifacts"
# Kueue's label: the LocalQueue a pod waits in. Kueue's pod integration gates a pod carrying
# it (its webhook adds a scheduling gate) until the queue admits it; nothing else is needed.
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
STATE_DIR = f"{ARTIFACT_MOUNT}/state"


@dataclass(frozen=True, kw_only=True)
class SecretEnv:
    """An environment variable taken from a key of a Kubernetes Secret (never inlined)."""

    env: str
    secret: str
    key: str

    def to_k8s(self) -> V1EnvVar:
        """The env var, referencing the Secret."""
        ref = V1SecretKeySelector(name=self.secret, key=self.key)
        return V1EnvVar(name=self.env, value_from=V1EnvVarSource(secret_key_ref=ref))


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where and with what a step runs; ``None`` fields take the step's defaults."""

    image: str | None = None
    cpu: str | None = None
    cpu_limit: str | None = None  # what a namespace whose quota tracks limits.cpu demands
    memory: str | None = None
    gpus: int | None = None
    gpu_product: str | None = None
    shm_size: str = "1Gi"
    artifact_pvc: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Sequence[SecretEnv] = ()
    queue_name: str | None = None  # Kueue LocalQueue (the kueue.x-k8s.io/queue-name label)
    priority_class_name: str | None = None  # the pod's PriorityClass (also Kueue's priority)
    termination_grace_period_seconds: int | None = None  # None: the step's default

    def pod_labels(self) -> dict[str, str]:
        """The labels placement puts on the pod: the Kueue queue, when one is named."""
        return {QUEUE_LABEL: self.queue_name} if self.queue_name else {}

    def validated(self, what: str) -> Placement:
        """Check every field; ``what`` names the task or template in the error."""
        if self.image is not None:
            validation.image(self.image, f"{what}: image")
        if self.cpu is not None:
            validation.quantity(self.cpu, f"{what}: cpu")
        if self.cpu_limit is not None:
            validation.quantity(self.cpu_limit, f"{what}: cpu_limit")
        if self.memory is not None:
            validation.quantity(self.memory, f"{what}: memory")
        if self.gpus is not None:
            validation.gpus(self.gpus, f"{what}: gpus")
        validation.quantity(self.shm_size, f"{what}: shm_size")
        if self.queue_name is not None:
            validation.queue_name(self.queue_name, f"{what}: queue_name")
        if self.priority_class_name is not None:
            validation.priority_class_name(self.priority_class_name, f"{what}: priority_class_name")
        if self.termination_grace_period_seconds is not None:
            validation.seconds(self.termination_grace_period_seconds,
                               f"{what}: termination_grace_period_seconds")
        return self


@dataclass(kw_only=True)
class StepPod:
    """What a step's pod needs beyond the defaults of the orchestrator."""

    container: V1Container
    volumes: list[V1Volume]
    tolerations: list[V1Toleration]
    node_selector: dict[str, str]
    security_context: V1PodSecurityContext
    labels: dict[str, str] = field(default_factory=dict)
    priority_class_name: str | None = None
    termination_grace_period_seconds: int | None = None

    def pod(self, name: str, namespace: str | None,
            service_account: str | None = None) -> V1Pod:
        """These pieces as a whole Pod (what preflight judges; the adapters build their own)."""
        return V1Pod(api_version="v1", kind="Pod",
                     metadata=V1ObjectMeta(name=name, namespace=namespace,
                                           labels=self.labels or None),
                     spec=V1PodSpec(containers=[self.container], volumes=self.volumes or None,
                                    tolerations=self.tolerations or None,
                                    node_selector=self.node_selector or None,
                                    security_context=self.security_context,
                                    service_account_name=service_account,
                                    priority_class_name=self.priority_class_name,
                                    termination_grace_period_seconds=(
                                        self.termination_grace_period_seconds),
                                    restart_policy="Never"))


def scheduler_reason(events: Iterable[Mapping[str, Any]]) -> str | None:
    """The scheduler's latest word on a pod it could not place: the first line of its newest
    FailedScheduling event (events as the API serves them, camelCase)."""
    failed = [e for e in events if e.get("reason") == "FailedScheduling" and e.get("message")]
    if not failed:
        return None
    latest = max(failed, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return str(latest["message"]).strip().splitlines()[0]


def given_gpus(spec: StepSpec, placement: Placement) -> int:
    """The whole GPUs the step's pod gets: the placement's, else the step's."""
    return spec.resources.gpus if placement.gpus is None else placement.gpus


def image(spec: StepSpec, placement: Placement) -> str:
    """The placement's image, else the step's; a GPU step given no GPU runs the CPU image."""
    if placement.image:
        return placement.image
    return CPU_IMAGE if spec.image == GPU_IMAGE and not given_gpus(spec, placement) else spec.image


def resources(spec: StepSpec, placement: Placement, what: str | None = None) -> V1ResourceRequirements:
    """Requests and limits: memory limited to its request, CPU when asked, GPUs whole."""
    from kubernetes.utils import parse_quantity

    cpu = placement.cpu or spec.resources.cpu
    memory = placement.memory or spec.resources.memory
    given = given_gpus(spec, placement)
    requests: dict[str, str] = {"cpu": cpu, "memory": memory}
    limits: dict[str, str] = {"memory": memory}
    if placement.cpu_limit is not None:
        if parse_quantity(placement.cpu_limit) < parse_quantity(cpu):
            raise MlkubeError(f"{what or spec.name}: cpu_limit {placement.cpu_limit} is below the "
                              f"cpu request {cpu}; Kubernetes rejects that: raise cpu_limit or "
                              "lower cpu")
        limits["cpu"] = placement.cpu_limit
    if given:
        requests[gpu.GPU_RESOURCE] = limits[gpu.GPU_RESOURCE] = str(given)
    return V1ResourceRequirements(requests=requests, limits=limits)


def cpu_threads(reqs: V1ResourceRequirements) -> str:
    """``OMP_NUM_THREADS`` for the step's container: the CPUs it may use (its limit, else its
    request), rounded up. A container sees every core of its node, and torch would start a
    thread for each: on a 64-core node a step that asked for 2 CPUs would run 64 threads on
    them and wait on its own threads."""
    import math

    from kubernetes.utils import parse_quantity

    cpu = (reqs.limits or {}).get("cpu") or (reqs.requests or {})["cpu"]
    return str(max(1, math.ceil(parse_quantity(cpu))))


def grace_period(spec: StepSpec, placement: Placement) -> int | None:
    """Seconds from SIGTERM to SIGKILL: the placement's, else the step's (None: Kubernetes' 30)."""
    given = placement.termination_grace_period_seconds
    return spec.termination_grace_period_seconds if given is None else given


def step_arguments(spec: StepSpec, values: Mapping[str, Any], placement: Placement) -> list[str]:
    """The step program's arguments inside a container; with the artifact volume, the
    options' pod defaults (:attr:`~mlkube.spec.Option.pod_default`) where ``values`` gives none."""
    extra: dict[str, Any] = {"result_file": RESULT_PATH}
    if placement.artifact_pvc:
        extra["artifact_root"] = ARTIFACT_MOUNT
    merged = {**extra, **values}
    if placement.artifact_pvc:
        merged |= {o.dest: o.pod_default for o in spec.options
                   if o.pod_default is not None and merged.get(o.dest) is None}
    return spec.arguments(merged)


def step_pod(spec: StepSpec, values: Mapping[str, Any], placement: Placement,
             what: str | None = None) -> StepPod:
    """Build the container and pod-level pieces for running ``spec`` with ``values``."""
    placement = placement.validated(what or spec.name)
    reqs = resources(spec, placement, what)
    plain = dict(placement.env)
    # what the step was given, so that it can tell a GPU it cannot see from none asked for
    # (the resources win over an env entry of the same name)
    plain[GPUS_ENV] = str(given_gpus(spec, placement))
    plain.setdefault("MLFLOW_TRACKING_URI", CLUSTER_MLFLOW_URI)  # the platform's server
    plain.setdefault("OMP_NUM_THREADS", cpu_threads(reqs))
    if spec.database:  # on a cluster, the study storage is the platform's PostgreSQL
        plain.setdefault(TUNE_STORAGE_ENV, f"{CLUSTER_DATABASE}/optuna")
    env = [V1EnvVar(name=k, value=v) for k, v in sorted(plain.items())]
    if spec.database and not any(s.env == "PGPASSWORD" for s in placement.secret_env):
        # optional: a pod without the Secret starts, and the step says in one line that the
        # database refused it (a plain-text password in the URL also works)
        ref = V1SecretKeySelector(name=DB_SECRET, key=DB_SECRET_KEY, optional=True)
        env.append(V1EnvVar(name="PGPASSWORD", value_from=V1EnvVarSource(secret_key_ref=ref)))
    env += [s.to_k8s() for s in placement.secret_env]
    if placement.secret_env:  # references only, for what the step itself creates (deploy)
        refs = [dataclasses.asdict(s) for s in placement.secret_env]
        env.append(V1EnvVar(name=SECRET_ENV_VAR, value=json.dumps(refs, sort_keys=True)))
    volumes: list[V1Volume] = []
    mounts: list[V1VolumeMount] = []
    if placement.artifact_pvc:
        claim = V1PersistentVolumeClaimVolumeSource(claim_name=placement.artifact_pvc)
        volumes.append(V1Volume(name=ARTIFACT_VOLUME, persistent_volume_claim=claim))
        mounts.append(V1VolumeMount(name=ARTIFACT_VOLUME, mount_path=ARTIFACT_MOUNT))
        env.append(V1EnvVar(name="MLKUBE_STATE_DIR", value=STATE_DIR))
        env.append(V1EnvVar(name=ARTIFACT_CLAIM_ENV, value=placement.artifact_pvc))
    tolerations: list[V1Toleration] = []
    selector: dict[str, str] = {}
    if gpu.GPU_RESOURCE in (reqs.limits or {}):
        volume, mount = gpu.shm_volume(placement.shm_size)
        volumes.append(volume)
        mounts.append(mount)
        tolerations = gpu.tolerations()
        selector = gpu.node_selector(placement.gpu_product)
    container = V1Container(
        name="base",
        image=image(spec, placement),
        command=spec.command(processes=int((reqs.limits or {}).get(gpu.GPU_RESOURCE, 1))),
        args=step_arguments(spec, values, placement),
        env=env or None,
        resources=reqs,
        volume_mounts=mounts or None,
        security_context=security.container_security_context(),
        termination_message_path="/dev/termination-log",
        termination_message_policy="FallbackToLogsOnError",
    )
    return StepPod(container=container, volumes=volumes, tolerations=tolerations,
                   node_selector=selector, security_context=security.pod_security_context(),
                   labels=placement.pod_labels(),
                   priority_class_name=placement.priority_class_name,
                   termination_grace_period_seconds=grace_period(spec, placement))
