"""Training across nodes: the same train program under torchrun in N pods.

By default a pure-Kubernetes Indexed Job: N pods (``completionMode: Indexed``), each one node
of the torchrun job, its node rank the pod's ``JOB_COMPLETION_INDEX``, and a headless Service
giving the pods stable names, so every pod reaches the rendezvous on the pod of index 0
(``MASTER_ADDR``). Where Kubeflow Trainer is installed (its ``TrainJob`` kind is served),
:func:`train_job` gives the same run as a ``TrainJob`` on its ``torch-distributed`` runtime,
which sets torchrun's environment itself.

Either way rank 0 (node 0, first process) is the leader: it logs to MLflow, writes the
checkpoints and the model, and writes the step's result; the pods share the artifact claim.
With a Kueue queue, the Job is created suspended and carries the queue label (Kueue admits the
Job as a whole, then unsuspends it); its pods do not carry the label, so Kueue's pod
integration does not also gate them one by one.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from kubernetes.client import (
    V1Affinity,
    V1Container,
    V1ContainerPort,
    V1EnvVar,
    V1Job,
    V1JobSpec,
    V1LabelSelector,
    V1ObjectMeta,
    V1PodAffinityTerm,
    V1PodAntiAffinity,
    V1PodSpec,
    V1PodTemplateSpec,
    V1Service,
    V1ServicePort,
    V1ServiceSpec,
)

from mlkube import spec
from mlkube.errors import MlkubeError
from mlkube.kube.pod import QUEUE_LABEL, StepPod, scheduler_reason

RENDEZVOUS_PORT = 29500
# On a pod preflight judges: how many pods of its shape run at once, one a node (multi-node).
NODES_ANNOTATION = "mlkube.dev/nodes"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by the Job controller on its pods
TRAINJOB_API = ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
TORCH_RUNTIME = "torch-distributed"  # Kubeflow Trainer's ClusterTrainingRuntime for PyTorch


def check_nodes(nodes: object, what: str = "nodes") -> int:
    """A whole number of nodes, at least 1."""
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise MlkubeError(f"{what} is {nodes!r}; give a whole number of nodes, at least 1 "
                          "(1 = one pod; more = an Indexed Job of that many pods)")
    return nodes


def nodes_problem(pod: Any, fits: tuple[str, ...], total: int) -> str | None:
    """Why ``pod`` cannot train on the nodes its annotation asks for, if it cannot: each of
    those pods needs a node of its own, so at least that many nodes must fit one."""
    wanted = int(((pod.metadata.annotations or {}) if pod.metadata else {}).get(NODES_ANNOTATION, 1))
    if wanted <= len(fits):
        return None
    limits = (pod.spec.containers[0].resources.limits or {}) if pod.spec.containers[0].resources else {}
    gpus = limits.get("nvidia.com/gpu", "0")
    return (f"pod {pod.metadata.name} trains on {wanted} nodes at once, one pod ({gpus} "
            f"GPU{'' if gpus == '1' else 's'}) a "
            f"node, but only {len(fits)} of {total} nodes can take one"
            f"{': ' + ', '.join(fits[:10]) if fits else ''}; train on fewer nodes or with fewer "
            "GPUs a node, or add nodes")


def verdict(pod: Any, found: dict[str, Any]) -> Any:
    """:func:`mlkube.kube.preflight.verdict` on what ``read_cluster`` found, and room for every
    pod of its kind that trains at once (:data:`NODES_ANNOTATION`), one a node.

    Raises:
        MlkubeError: one line, why the pod (or its Job) can never run.
    """
    from mlkube.kube import preflight

    result = preflight.verdict(pod, **found)
    if found.get("nodes") is not None:
        problem = nodes_problem(pod, result.nodes, len(found["nodes"]))
        if problem:
            raise MlkubeError(problem)
    return result


def _processes(container: V1Container) -> int:
    limits = (container.resources.limits or {}) if container.resources else {}
    return max(1, int(limits.get("nvidia.com/gpu", 1)))


def indexed_job(step_pod: StepPod, *, name: str, namespace: str | None, nodes: int,
                service_account: str | None = None, backoff_limit: int = 3,
                active_deadline_seconds: int | None = None) -> list[Any]:
    """The headless Service and the Indexed Job that run ``step_pod``'s train program on
    ``nodes`` pods (each with the step pod's GPUs: one torchrun process per GPU)."""
    check_nodes(nodes)
    if nodes < 2:
        raise MlkubeError(f"{name}: an Indexed Job is for nodes >= 2 (got {nodes}); one node "
                          "runs as the step's own pod")
    container = copy.deepcopy(step_pod.container)
    container.command = spec.TRAIN.command("python", processes=_processes(container), nodes=nodes)
    container.env = [*(container.env or []),
                     V1EnvVar(name="MASTER_ADDR", value=f"{name}-0.{name}"),
                     V1EnvVar(name="MASTER_PORT", value=str(RENDEZVOUS_PORT))]
    container.ports = [V1ContainerPort(name="rendezvous", container_port=RENDEZVOUS_PORT)]
    queue = step_pod.labels.get(QUEUE_LABEL)
    pod_labels = {k: v for k, v in step_pod.labels.items() if k != QUEUE_LABEL}
    template = V1PodTemplateSpec(
        metadata=V1ObjectMeta(labels=pod_labels or None),
        spec=V1PodSpec(containers=[container], volumes=step_pod.volumes or None,
                       tolerations=step_pod.tolerations or None,
                       node_selector=step_pod.node_selector or None,
                       security_context=step_pod.security_context,
                       service_account_name=service_account,
                       priority_class_name=step_pod.priority_class_name,
                       termination_grace_period_seconds=step_pod.termination_grace_period_seconds,
                       subdomain=name, restart_policy="Never",
                       # one pod a node: "nodes" means machines, and preflight checks that many fit
                       affinity=V1Affinity(pod_anti_affinity=V1PodAntiAffinity(
                           required_during_scheduling_ignored_during_execution=[V1PodAffinityTerm(
                               label_selector=V1LabelSelector(match_labels={JOB_NAME_LABEL: name}),
                               topology_key="kubernetes.io/hostname")]))))
    job = V1Job(api_version="batch/v1", kind="Job",
                metadata=V1ObjectMeta(name=name, namespace=namespace,
                                      labels={QUEUE_LABEL: queue} if queue else None),
                spec=V1JobSpec(completion_mode="Indexed", completions=nodes, parallelism=nodes,
                               backoff_limit=backoff_limit, suspend=True if queue else None,
                               active_deadline_seconds=active_deadline_seconds,
                               template=template))
    service = V1Service(api_version="v1", kind="Service",
                        metadata=V1ObjectMeta(name=name, namespace=namespace),
                        spec=V1ServiceSpec(cluster_ip="None", publish_not_ready_addresses=True,
                                           selector={JOB_NAME_LABEL: name},
                                           ports=[V1ServicePort(name="rendezvous",
                                                                port=RENDEZVOUS_PORT)]))
    return [service, job]


def train_job(step_pod: StepPod, *, name: str, namespace: str | None, nodes: int,
              service_account: str | None = None) -> dict[str, Any]:
    """The same run as a Kubeflow Trainer ``TrainJob`` (v1alpha1) on ``torch-distributed``:
    the runtime sets torchrun's node count, rank and rendezvous (``PET_*``), so the command is
    torchrun with the step's module and arguments only."""
    from mlkube.kube.serving import to_dict

    check_nodes(nodes)
    container = to_dict(step_pod.container)
    queue = step_pod.labels.get(QUEUE_LABEL)
    trainer = {"image": container["image"],
               "command": ["python", "-m", spec.TORCHRUN, "-m", spec.TRAIN.module],
               "args": container.get("args", []), "env": container.get("env", []),
               "numNodes": nodes, "numProcPerNode": _processes(step_pod.container),
               "resourcesPerNode": container["resources"]}
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    if queue:
        metadata["labels"] = {QUEUE_LABEL: queue}
    # the runtime's pods are the "node" job; what the step pod adds goes in as overrides
    pod: dict[str, Any] = {"containers": [{"name": "node",
                                           "volumeMounts": container.get("volumeMounts", [])}]}
    for key, value in (("volumes", step_pod.volumes), ("tolerations", step_pod.tolerations),
                       ("nodeSelector", step_pod.node_selector),
                       ("serviceAccountName", service_account)):
        if value:
            pod[key] = to_dict(value) if not isinstance(value, str) else value
    body: dict[str, Any] = {
        "apiVersion": f"{TRAINJOB_API[0]}/{TRAINJOB_API[1]}", "kind": "TrainJob",
        "metadata": metadata,
        "spec": {"runtimeRef": {"name": TORCH_RUNTIME, "apiGroup": TRAINJOB_API[0],
                                "kind": "ClusterTrainingRuntime"},
                 "trainer": trainer,
                 "podTemplateOverrides": [{"targetJobs": [{"name": "node"}], "spec": pod}]}}
    if queue:
        body["spec"]["suspend"] = True
    return body


def trainjob_served(api_client: Any) -> bool:
    """Whether the cluster serves Kubeflow Trainer's TrainJob (its CRD is installed)."""
    from kubernetes.client import ApiException, ApisApi

    group, version, _ = TRAINJOB_API
    try:
        groups = ApisApi(api_client).get_api_versions().groups or []
    except ApiException:
        return False
    return any(g.name == group and any(v.version == version for v in g.versions) for g in groups)


def job_name(*parts: str) -> str:
    """A name for the Job and Service of one run (a DNS-1123 label, stable for the run)."""
    import hashlib

    return "mlkube-train-" + hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]


def _finished(job: dict[str, Any]) -> tuple[str, str] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"], f"{condition.get('reason', '')}: {condition.get('message', '')}"
    return None


def _apply(client: Any, body: dict[str, Any], namespace: str) -> Any:
    from mlkube.kube import api

    resource = client.resources.get(api_version=body["apiVersion"], kind=body["kind"])
    return resource.server_side_apply(body=body, name=body["metadata"]["name"],
                                      namespace=namespace, field_manager=api.FIELD_MANAGER,
                                      force_conflicts=True)


def run_job(api_client: Any, objects: list[Any], namespace: str, *,
            poll_seconds: float = 10.0, timeout_seconds: float | None = None,
            schedule_timeout_seconds: float = 120.0, log: Any = print) -> None:
    """Apply the Service and Job (server-side apply) and wait until the Job completes.

    A Job that failed in an earlier try is deleted and created again, so a retried task trains
    again (from the run's last checkpoint); a Job that completed is left as it is. A failed or
    timed-out Job is one line, with the Job's own reason; so is a Job whose pod the scheduler
    has not placed for ``schedule_timeout_seconds`` (with the scheduler's reason). Whenever
    the wait ends without the Job complete (failed, timed out, or the task itself stopped), the
    Job and its pods are deleted: nothing trains on for a task that has ended.
    """
    from mlkube.kube import api
    from mlkube.kube.serving import to_dict

    client = api.dynamic(api_client)
    bodies = [to_dict(o) for o in objects]
    for body in bodies:
        body["metadata"]["namespace"] = namespace
    job = _Job(client, api_client.configuration.host, namespace,
               next(b for b in bodies if b["kind"] == "Job"), log)
    before = job.read()
    if before is not None and (_finished(before) or ("", ""))[0] == "Failed":
        log(f"Job {job.where} failed before; creating it again")
        job.delete(wait_seconds=poll_seconds)
    try:
        for body in bodies:
            where = f"{body['kind']} {namespace}/{body['metadata']['name']}"
            log(f"applying {where}")
            api.call(f"apply {where}", job.host,
                     functools.partial(_apply, client, body, namespace))
        job.wait(poll_seconds, timeout_seconds, schedule_timeout_seconds)
    except BaseException:
        job.delete()
        raise


class _Job:
    """One training Job: read it, wait for it, say why its pods wait, delete it."""

    def __init__(self, client: Any, host: str, namespace: str, body: dict[str, Any],
                 log: Any) -> None:
        self.client, self.host, self.namespace, self.log = client, host, namespace, log
        self.name = body["metadata"]["name"]
        self.completions = body["spec"]["completions"]
        self.where = f"{namespace}/{self.name}"
        self.jobs = client.resources.get(api_version="batch/v1", kind="Job")

    def read(self) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        from mlkube.kube import api

        def get() -> dict[str, Any] | None:
            try:
                return dict(self.jobs.get(name=self.name, namespace=self.namespace).to_dict())
            except NotFoundError:
                return None

        return api.call(f"read Job {self.where}", self.host, get)

    def delete(self, wait_seconds: float | None = None) -> None:
        """Delete the Job and its pods; with ``wait_seconds``, poll until it is gone."""
        import time

        from kubernetes.dynamic.exceptions import NotFoundError

        from mlkube.kube import api

        def delete() -> None:
            try:
                self.jobs.delete(name=self.name, namespace=self.namespace,
                                 body={"propagationPolicy": "Foreground"})
            except NotFoundError:
                return

        if self.read() is None:
            return
        api.call(f"delete Job {self.where}", self.host, delete)
        self.log(f"deleted Job {self.where} and its pods")
        while wait_seconds is not None and self.read() is not None:
            time.sleep(wait_seconds)

    def wait(self, poll_seconds: float, timeout_seconds: float | None,
             schedule_timeout_seconds: float) -> None:
        import time

        started = time.monotonic()
        pending: dict[str, float] = {}  # pod → when it was first seen unscheduled
        while True:
            live = self.read() or {}
            done = _finished(live)
            if done and done[0] == "Complete":
                self.log(f"Job {self.where}: {self.completions} nodes completed")
                return
            if done:
                raise MlkubeError(f"training Job {self.where} failed ({done[1].strip(': ')}); "
                                  f"see kubectl -n {self.namespace} logs -l "
                                  f"{JOB_NAME_LABEL}={self.name}")
            waiting = self.unscheduled()
            now = time.monotonic()
            for pod in list(pending):
                if pod not in waiting:
                    pending.pop(pod)
            for pod, reason in waiting.items():
                if now - pending.setdefault(pod, now) > schedule_timeout_seconds:
                    raise MlkubeError(f"training Job {self.where}: pod {pod} was not scheduled "
                                      f"within {schedule_timeout_seconds:.0f} s: {reason}")
            if timeout_seconds is not None and now - started > timeout_seconds:
                why = "; ".join(f"pod {p} is not scheduled: {r}" for p, r in waiting.items())
                if (live.get("spec") or {}).get("suspend"):
                    why = "it is still suspended, waiting for its Kueue queue to admit it"
                raise MlkubeError(f"training Job {self.where} did not complete within "
                                  f"{timeout_seconds:.0f} s" + (f": {why}" if why else
                                                                f"; see kubectl -n "
                                                                f"{self.namespace} describe job "
                                                                f"{self.name}"))
            time.sleep(poll_seconds)

    def unscheduled(self) -> dict[str, str]:
        """The Job's pods the scheduler has not placed, each with its reason."""
        from mlkube.kube import api

        pods = self.client.resources.get(api_version="v1", kind="Pod")
        events = self.client.resources.get(api_version="v1", kind="Event")
        listed = api.call(f"list the pods of Job {self.where}", self.host, lambda: pods.get(
            namespace=self.namespace, label_selector=f"{JOB_NAME_LABEL}={self.name}").to_dict())
        found = {}
        for pod in listed.get("items") or []:
            name = pod["metadata"]["name"]
            scheduled = next((c for c in (pod.get("status") or {}).get("conditions") or []
                              if c.get("type") == "PodScheduled"), None)
            if scheduled is None or scheduled.get("status") != "False":
                continue
            said = api.call(f"list the events of pod {name}", self.host, functools.partial(
                lambda n: events.get(namespace=self.namespace,
                                     field_selector=f"involvedObject.name={n}").to_dict(), name))
            message = (scheduler_reason(said.get("items") or []) or scheduled.get("message")
                       or scheduled.get("reason", ""))
            found[name] = str(message).strip().splitlines()[0] if message else "no reason given"
        return found
