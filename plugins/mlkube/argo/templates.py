"""The ``mlkube-steps`` WorkflowTemplate: one reusable template per step.

Each container template is built by :func:`mlkube.kube.pod.step_pod` from the step's
:class:`~mlkube.spec.StepSpec`, the same call the Airflow operators make, and converted to
Hera's models: command, arguments, image, resources, GPU scheduling, volumes, environment and
the restricted security context are never listed here. Deploy is a step like the others: its
program rolls the model out on the cluster (KServe, else Deployment + Service + HPA), under
the deploy ServiceAccount, with the same guarantees as everywhere else.

``register`` and ``deploy`` hold the model's mutex (:func:`model_mutex`) while they run: the
champion gate (read the alias, evaluate, write it) and a rollout of the model's serving objects
are one at a time across every workflow of the namespace that calls these templates, a
lifecycle run and the retraining cron's runs alike. Each holds it only for its own node and
takes it again on its own, so the two never wait on each other within one run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubernetes.client import V1Container

from mlkube import spec
from mlkube.argo import io
from mlkube.argo.convert import to_hera, to_hera_list
from mlkube.argo.options import LABELS
from mlkube.errors import MlkubeError
from mlkube.kube.pod import Placement, step_pod

if TYPE_CHECKING:
    from hera.workflows import WorkflowTemplate
    from hera.workflows.models import RetryStrategy, Synchronization, Template, TemplateRef

    from mlkube.argo.options import RenderOptions

# IntOrString fields are written as strings: Argo's JSON schema declares them so.
# Retry what may pass on a second try (pod lost, node drained, OOM, API errors); never a
# step's own one-line error (exit 1: bad input that a retry would only repeat).
RETRY_EXPRESSION = ("lastRetry.status == 'Error' or "
                    "(lastRetry.status == 'Failed' and asInt(lastRetry.exitCode) != 1)")
@dataclass(frozen=True, kw_only=True)
class StepTemplate:
    """One container template: which step, run how."""

    name: str
    step: spec.StepSpec
    fixed: dict[str, Any] = field(default_factory=dict)  # option values the template sets
    cpu: str | None = None
    memory: str | None = None
    gpus: int | None = None  # None: the step's own
    deploys: bool = False  # runs under the deploy ServiceAccount, which may serve models
    locked: bool = False  # holds the model's mutex while it runs (model_mutex)


STEP_TEMPLATES = (
    StepTemplate(name="prepare-data", step=spec.PREPARE_DATA),
    StepTemplate(name="tune-worker", step=spec.TUNE, fixed={"role": "worker"}),
    StepTemplate(name="select-best", step=spec.TUNE, fixed={"role": "select"},
                 cpu="500m", memory="1Gi"),
    StepTemplate(name="train", step=spec.TRAIN),
    StepTemplate(name="register", step=spec.REGISTER, locked=True),
    StepTemplate(name="deploy", step=spec.DEPLOY, deploys=True, locked=True),
    StepTemplate(name="monitor", step=spec.MONITOR),
)
PREFLIGHT_TEMPLATE = "preflight"
PREFLIGHT_PODS = "/etc/mlkube/preflight-pods.yaml"
TEMPLATE_NAMES = (PREFLIGHT_TEMPLATE, *(t.name for t in STEP_TEMPLATES))


def retry_strategy(options: RenderOptions) -> RetryStrategy:
    """Retries with exponential backoff (30 s, 60 s, 120 s, ... at most 10 minutes)."""
    from hera.workflows.models import Backoff, IntOrString, RetryStrategy

    return RetryStrategy(limit=IntOrString(root=str(options.retry_limit)), retry_policy="Always",
                         expression=RETRY_EXPRESSION,
                         backoff=Backoff(duration="30s", factor=IntOrString(root="2"),
                                         max_duration="10m"))


def model_mutex(options: RenderOptions) -> Synchronization:
    """The template-level mutex of ``options.model_name`` (:func:`mlkube.spec.model_lock`).

    Argo holds a template's mutex for as long as that template's node runs, retries and their
    backoff included, and releases it when the node ends; a workflow that finds it held waits,
    first come first served, in the workflow's own namespace.
    """
    from hera.workflows.models import Mutex, Synchronization

    return Synchronization(mutexes=[Mutex(name=spec.model_lock(options.model_name))])


def placement(template: StepTemplate, options: RenderOptions) -> Placement:
    """Where the template's pod runs: the shared volume, MLflow, the step's image and size."""
    gpu = (template.step.resources.gpus if template.gpus is None else template.gpus) > 0
    return Placement(
        image=options.gpu_image if gpu else options.image,
        cpu=template.cpu, memory=template.memory, cpu_limit=options.cpu_limit,
        gpus=template.gpus,
        gpu_product=options.gpu_product if gpu else None,
        artifact_pvc=options.artifact_pvc,
        env={"MLFLOW_TRACKING_URI": options.mlflow_tracking_uri, **io.outputs_env()},
        secret_env=options.secret_env,
        queue_name=options.queue_name,
        priority_class_name=options.priority_class_name,
    )


def pod_fields(labels: Mapping[str, str], priority_class_name: str | None,
               grace_seconds: int | None = None) -> dict[str, Any]:
    """The template fields for its pod's labels, PriorityClass and termination grace period.

    Argo templates have no ``terminationGracePeriodSeconds``: it goes in ``podSpecPatch``
    (Argo applies the workflow's own patch, if any, first).
    """
    from hera.workflows.models import Metadata

    fields: dict[str, Any] = {}
    if labels:
        fields["metadata"] = Metadata(labels=dict(labels))
    if priority_class_name:
        fields["priority_class_name"] = priority_class_name
    if grace_seconds is not None:
        fields["pod_spec_patch"] = json.dumps({"terminationGracePeriodSeconds": grace_seconds})
    return fields


def template_values(template: StepTemplate, options: RenderOptions) -> dict[str, Any]:
    """The step's option values: input placeholders, and what the template fixes."""
    fixed = dict(template.fixed)
    if template.deploys:
        fixed["service_name"] = options.service_name
    return io.step_values(template.step, fixed)


def step_template(template: StepTemplate, options: RenderOptions) -> Template:
    """The container template running ``template.step`` with its inputs and outputs."""
    from hera.workflows.models import (
        Container,
        IntOrString,
        PodSecurityContext,
        Toleration,
        Volume,
    )
    from hera.workflows.models import Template as ModelTemplate

    values = template_values(template, options)
    pod = step_pod(template.step, values, placement(template, options), what=template.name)
    gpu = (template.step.resources.gpus if template.gpus is None else template.gpus) > 0
    deadline = options.train_deadline_seconds if gpu else options.step_deadline_seconds
    return ModelTemplate(
        name=template.name,
        inputs=io.step_inputs(template.step),
        outputs=io.step_outputs(template.step),
        container=to_hera(pod.container, Container),
        volumes=to_hera_list(pod.volumes, Volume),
        tolerations=to_hera_list(pod.tolerations, Toleration),
        node_selector=pod.node_selector or None,
        security_context=to_hera(pod.security_context, PodSecurityContext),
        retry_strategy=retry_strategy(options),
        active_deadline_seconds=IntOrString(root=str(deadline)),
        service_account_name=options.deploy_service_account if template.deploys else None,
        synchronization=model_mutex(options) if template.locked else None,
        **pod_fields(pod.labels, pod.priority_class_name, pod.termination_grace_period_seconds),
    )


def preflight_pods(options: RenderOptions) -> list[dict[str, Any]]:
    """Every step template's pod, as Pods preflight can judge (resources, placement, volumes).

    The step arguments are left out: they hold the templates' own parameters, which Argo
    would try to resolve here, and they do not decide where a pod can run.
    """
    from mlkube.kube.serving import to_dict

    pods = []
    for template in STEP_TEMPLATES:
        pieces = step_pod(template.step, template_values(template, options),
                          placement(template, options), what=template.name)
        pieces.container.args = None
        account = options.deploy_service_account if template.deploys else None
        pod = to_dict(pieces.pod(f"{options.steps_name}-{template.name}", options.namespace,
                                 account))
        if template.step is spec.TRAIN and options.train_nodes > 1:
            from mlkube.kube.multinode import NODES_ANNOTATION

            pod["metadata"]["annotations"] = {NODES_ANNOTATION: str(options.train_nodes)}
        pods.append(pod)
    return pods


def preflight_template(options: RenderOptions) -> Template:
    """``mlkube preflight`` on every step's pod: fail at once instead of a pod left Pending.

    It runs under the workflow's account, which may read the namespace's quotas, LimitRanges
    and claims; nodes are cluster-scoped, so their check runs only where a ClusterRole lets
    the account list them (otherwise it is skipped, with a warning in the log).
    """
    import yaml
    from hera.workflows.models import (
        Artifact,
        Container,
        Inputs,
        IntOrString,
        PodSecurityContext,
        RawArtifact,
    )
    from hera.workflows.models import Template as ModelTemplate

    from mlkube.kube.pod import resources
    from mlkube.kube.security import container_security_context, pod_security_context

    small = Placement(image=options.image, cpu="100m", memory="256Mi", cpu_limit=options.cpu_limit,
                      queue_name=options.queue_name,
                      priority_class_name=options.priority_class_name)
    container = V1Container(
        name="main", image=options.image or spec.PREPARE_DATA.image,
        command=["python", "-m", "mlkube.cli", "preflight", "--pod", PREFLIGHT_PODS],
        resources=resources(spec.REGISTER, small, PREFLIGHT_TEMPLATE),
        security_context=container_security_context())
    pods = yaml.safe_dump_all(preflight_pods(options), sort_keys=False)
    return ModelTemplate(
        name=PREFLIGHT_TEMPLATE,
        inputs=Inputs(artifacts=[Artifact(name="pods", path=PREFLIGHT_PODS,
                                          raw=RawArtifact(data=pods))]),
        container=to_hera(container, Container),
        security_context=to_hera(pod_security_context(), PodSecurityContext),
        active_deadline_seconds=IntOrString(root="300"),
        **pod_fields(small.pod_labels(), small.priority_class_name),  # queued like the steps
    )


MULTINODE_PARTS = ("train-config", "train-rendezvous", "train-nodes", "train-result")


def multinode_objects(template: StepTemplate, options: RenderOptions) -> list[dict[str, Any]]:
    """The run's ConfigMap (the config document), headless Service and Indexed Job, with Argo
    placeholders: each pod mounts the config where the step templates put it."""
    from kubernetes.client import V1ConfigMapVolumeSource, V1Volume, V1VolumeMount

    from mlkube.kube import multinode
    from mlkube.kube.serving import to_dict

    name = "{{workflow.name}}-train"
    pod = step_pod(template.step, template_values(template, options),
                   placement(template, options), what=template.name)
    config_dir, config_file = io.CONFIG_PATH.rsplit("/", 1)
    pod.volumes.append(V1Volume(name="config", config_map=V1ConfigMapVolumeSource(name=name)))
    pod.container.volume_mounts = [*(pod.container.volume_mounts or []),
                                   V1VolumeMount(name="config", mount_path=config_dir,
                                                 read_only=True)]
    service, job = multinode.indexed_job(
        pod, name=name, namespace=None, nodes=options.train_nodes,
        service_account=options.workflow_service_account, backoff_limit=options.retry_limit,
        active_deadline_seconds=options.train_deadline_seconds)
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
              "data": {config_file: f"{{{{inputs.parameters.{io.CONFIG_INPUT}}}}}"}}
    return [config, to_dict(service), to_dict(job)]


def multinode_train_templates(template: StepTemplate, options: RenderOptions) -> list[Any]:
    """``train`` on ``options.train_nodes`` nodes: a steps template creating the run's
    ConfigMap, Service and Indexed Job (owned by the workflow), waiting for the Job, then
    reading the leader's result with ``--result-only`` in a small pod (train's outputs)."""
    from hera.workflows.models import (
        Arguments,
        Inputs,
        Outputs,
        ParallelSteps,
        Parameter,
        ResourceTemplate,
        ValueFrom,
        WorkflowStep,
    )
    from hera.workflows.models import Template as ModelTemplate

    inputs = io.step_inputs(template.step)
    params = Inputs(parameters=inputs.parameters)
    passed = Arguments(parameters=[Parameter(name=p.name, value=f"{{{{inputs.parameters.{p.name}}}}}")
                                   for p in inputs.parameters or []])
    nodes = options.train_nodes
    conditions = {"train-nodes": (f"status.succeeded > {nodes - 1}",
                                  f"status.failed > {options.retry_limit}")}
    resources = []
    for part, obj in zip(MULTINODE_PARTS, multinode_objects(template, options), strict=False):
        success, failure = conditions.get(part, (None, None))
        # JSON, and the config document through toJson: a YAML document substituted into a
        # manifest's text would break its quoting
        manifest = json.dumps(obj).replace(
            f'"{{{{inputs.parameters.{io.CONFIG_INPUT}}}}}"',
            f"{{{{=toJson(inputs.parameters.{io.CONFIG_INPUT})}}}}")
        resources.append(ModelTemplate(
            name=part, inputs=params,
            resource=ResourceTemplate(action="create", manifest=manifest, set_owner_reference=True,
                                      success_condition=success, failure_condition=failure)))
    result = step_template(StepTemplate(name="train-result", step=template.step, gpus=0,
                                        cpu="500m", memory="2Gi",
                                        fixed={"result_only": "true"}), options)
    steps = [ParallelSteps([WorkflowStep(name=part.removeprefix("train-"), template=part,
                                         arguments=passed)]) for part in MULTINODE_PARTS]
    outputs = Outputs(parameters=[
        Parameter(name=key, value_from=ValueFrom(parameter=f"{{{{steps.result.outputs.parameters.{key}}}}}"))
        for key in template.step.result_keys])
    train = ModelTemplate(name=template.name, inputs=params, outputs=outputs, steps=steps)
    return [train, *resources, result]


def steps_template(options: RenderOptions) -> WorkflowTemplate:
    """The ``mlkube-steps`` WorkflowTemplate: every step, callable by ``templateRef``."""
    from hera.workflows import WorkflowTemplate

    templates: list[Any] = [preflight_template(options)]
    for template in STEP_TEMPLATES:
        if template.step is spec.TRAIN and options.train_nodes > 1:
            templates += multinode_train_templates(template, options)
        else:
            templates.append(step_template(template, options))
    return WorkflowTemplate(
        name=options.steps_name, namespace=options.namespace,
        labels=dict(LABELS),
        annotations={"workflows.argoproj.io/description":
                     "mlkube's lifecycle steps; call them with templateRef"},
        templates=templates,
    )


def step_ref(options: RenderOptions, template: str) -> TemplateRef:
    """A ``templateRef`` to one of the steps, checked to exist."""
    from hera.workflows.models import TemplateRef

    if template not in TEMPLATE_NAMES:
        raise MlkubeError(
            f"templateRef {options.steps_name}/{template}: no such template; "
            f"{options.steps_name} has {', '.join(TEMPLATE_NAMES)}"
        )
    return TemplateRef(name=options.steps_name, template=template)
