"""The ``mlkube-lifecycle`` WorkflowTemplate: the whole lifecycle as one DAG.

    prepare-data → tune-worker × P → select-best → train (GPU) → register → deploy

Every task calls a template of ``mlkube-steps`` by ``templateRef``. Data moves by reference:
datasets and checkpoints on the shared volume, models in MLflow; parameters carry only URIs,
run ids and small JSON. With ``skip-unchanged=true`` (the retraining cron), tuning and training
run only when prepare-data reports the dataset changed; a skipped task's dependants wait on its
``Succeeded``, so they are skipped too, except deploy: it serves the ``champion`` alias on
every run (idempotent), so a champion whose deploy failed earlier is served now.

The retraining CronWorkflow (:mod:`mlkube.argo.cron`) runs the same DAG with the ``monitor``
template beside prepare-data (:func:`lifecycle_tasks` with ``retrain=True``): tuning and
training run when the data changed or the served version drifted (:data:`RETRAIN_WHEN`), and
train and register record why (:data:`RETRAIN_REASON`, the tag ``mlkube.retrain_reason``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlkube.argo.options import LABELS
from mlkube.argo.templates import step_ref

if TYPE_CHECKING:
    from hera.workflows import Parameter, Task, Workflow, WorkflowTemplate

    from mlkube.argo.options import RenderOptions

ENTRYPOINT = "lifecycle"
CONFIG = "config"
SKIP_UNCHANGED = "skip-unchanged"
TRAINING_WHEN = (f"{{{{workflow.parameters.{SKIP_UNCHANGED}}}}} == false || "
                 "{{tasks.prepare-data.outputs.parameters.changed}} == true")


# The retraining cron: the data changed, or the monitor says the served version drifted (a
# fresh deployment, nothing served yet, is not drifted: monitor --no-data not-drifted).
RETRAIN_WHEN = ("{{tasks.prepare-data.outputs.parameters.changed}} == true || "
                "{{tasks.monitor.outputs.parameters.drifted}} == true")
# Why (train and register --reason): "data changed", "drift: psi {...}", or both; an Argo
# expression (hyphenated names indexed, as Argo's expressions require).
_CHANGED = "tasks['prepare-data'].outputs.parameters.changed == 'true'"
_DRIFTED = "tasks.monitor.outputs.parameters.drifted == 'true'"
_DRIFT = "'drift: psi ' + tasks.monitor.outputs.parameters.psi"
RETRAIN_REASON = (f"{{{{={_CHANGED} ? ({_DRIFTED} ? 'data changed; ' + {_DRIFT} : "
                  f"'data changed') : {_DRIFT}}}}}")


def _out(task: str, key: str) -> str:
    return f"{{{{tasks.{task}.outputs.parameters.{key}}}}}"


def _task(options: RenderOptions, name: str, depends: str | None = None,
          when: str | None = None, with_items: list[int] | None = None,
          **arguments: str) -> Task:
    """A task calling the step template ``name``; ``arguments`` use Python names (run_id).

    Called inside a ``DAG`` context, which collects the task.
    """
    from hera.workflows import Task

    args = {key.replace("_", "-"): value for key, value in arguments.items()}
    return Task(name=name, template_ref=step_ref(options, name), depends=depends, when=when,
                with_items=with_items, arguments=args)


def lifecycle_tasks(options: RenderOptions, config: str, retrain: bool = False) -> None:
    """The lifecycle's tasks, inside a ``DAG`` context; ``retrain``: the cron's, with the
    monitor beside prepare-data and training on changed data or drift."""
    dataset = _out("prepare-data", "dataset_uri")
    when, ready = TRAINING_WHEN, "prepare-data.Succeeded"
    reason: dict[str, Any] = {}
    _task(options, "preflight")
    _task(options, "prepare-data", depends="preflight.Succeeded", config=config)
    if retrain:
        _task(options, "monitor", depends="preflight.Succeeded", config=config,
              no_data="not-drifted")
        when, reason = RETRAIN_WHEN, {"reason": RETRAIN_REASON}
        ready = "prepare-data.Succeeded && monitor.Succeeded"
    _task(options, "tune-worker", depends=ready, when=when,
          with_items=list(range(options.workers)), config=config, dataset=dataset)
    _task(options, "select-best", depends="tune-worker.Succeeded", when=when,
          config=config, dataset=dataset)
    _task(options, "train", depends="select-best.Succeeded", when=when,
          config=config, dataset=dataset, params=_out("select-best", "best_params"), **reason)
    _task(options, "register", depends="train.Succeeded", config=config,
          dataset=dataset, run_id=_out("train", "run_id"), **reason)
    # the champion alias, on every run: after a new registration, and when training
    # was skipped (register omitted), so that what serves converges to the champion
    _task(options, "deploy", depends="register.Succeeded || register.Omitted",
          config=config, dataset=dataset)


def config_parameter() -> Parameter:
    """The workflow's ``config`` argument: the lifecycle config document."""
    from hera.workflows import Parameter

    return Parameter(name=CONFIG, value="{}",
                     description="lifecycle config (YAML), the same file `mlkube run` reads")


def run_policy(options: RenderOptions) -> dict[str, Any]:
    """The workflow's account, deadline, pod GC and TTL (the lifecycle's and the cron's)."""
    from hera.workflows.models import PodGC, TTLStrategy

    return {"service_account_name": options.workflow_service_account,
            "active_deadline_seconds": options.workflow_deadline_seconds,
            "pod_gc": PodGC(strategy="OnPodSuccess", delete_delay_duration="10m"),
            "ttl_strategy": TTLStrategy(seconds_after_success=7 * 86400,
                                        seconds_after_failure=14 * 86400)}


def lifecycle_template(options: RenderOptions) -> WorkflowTemplate:
    """The lifecycle DAG as a WorkflowTemplate, with deadlines, pod GC and its account."""
    from hera.workflows import DAG, Parameter, WorkflowTemplate

    with WorkflowTemplate(
        name=options.lifecycle_name, namespace=options.namespace,
        labels=dict(LABELS),
        annotations={"workflows.argoproj.io/description":
                     "preflight -> prepare -> tune x P -> select -> train (GPU) -> register "
                     "-> deploy"},
        entrypoint=ENTRYPOINT,
        arguments=[
            config_parameter(),
            Parameter(name=SKIP_UNCHANGED, value="false", enum=["true", "false"],
                      description="skip tuning and training when the dataset digest is the "
                                  "champion's"),
        ],
        **run_policy(options),
    ) as workflow:
        with DAG(name=ENTRYPOINT, parallelism=options.parallelism):
            lifecycle_tasks(options, f"{{{{workflow.parameters.{CONFIG}}}}}")
    return workflow


def lifecycle_run(options: RenderOptions) -> Workflow:
    """A Workflow that runs ``mlkube-lifecycle`` with its defaults (what `submit` creates)."""
    from hera.workflows import Workflow
    from hera.workflows.models import WorkflowTemplateRef

    return Workflow(generate_name=f"{options.lifecycle_name}-", namespace=options.namespace,
                    labels=dict(LABELS),
                    workflow_template_ref=WorkflowTemplateRef(name=options.lifecycle_name))
