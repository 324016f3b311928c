"""The ``mlkube-retrain`` CronWorkflow.

On schedule, the lifecycle's DAG (:func:`mlkube.argo.lifecycle.lifecycle_tasks`) with the
``monitor`` template beside prepare-data: tuning, training and registration run when
prepare-data reports the dataset changed OR the monitor says the served version drifted
(``when``: :data:`~mlkube.argo.lifecycle.RETRAIN_WHEN`); train and register record why as the
tag ``mlkube.retrain_reason``. Deploy runs every time. A fresh deployment, nothing served
yet, is not drifted (monitor ``--no-data not-drifted``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlkube.schedule import check_schedule

if TYPE_CHECKING:
    from hera.workflows import CronWorkflow

    from mlkube.argo.options import RenderOptions


def retrain_cron(options: RenderOptions) -> CronWorkflow:
    """The CronWorkflow that retrains on schedule when the data changed or the model drifted."""
    from hera.workflows import DAG, CronWorkflow

    from mlkube.argo.lifecycle import (
        CONFIG,
        ENTRYPOINT,
        config_parameter,
        lifecycle_tasks,
        run_policy,
    )
    from mlkube.argo.options import LABELS

    with CronWorkflow(
        name=options.cron_name,
        namespace=options.namespace,
        labels=dict(LABELS),
        annotations={"workflows.argoproj.io/description":
                     "preflight -> prepare + monitor -> (changed or drifted) tune x P -> select "
                     "-> train (GPU) -> register -> deploy"},
        schedules=[check_schedule(s) for s in options.schedules],
        timezone=options.timezone,
        concurrency_policy="Forbid",
        starting_deadline_seconds=600,
        successful_jobs_history_limit=3,
        failed_jobs_history_limit=3,
        entrypoint=ENTRYPOINT,
        arguments=[config_parameter()],
        **run_policy(options),
    ) as cron:
        with DAG(name=ENTRYPOINT, parallelism=options.parallelism):
            lifecycle_tasks(options, f"{{{{workflow.parameters.{CONFIG}}}}}", retrain=True)
    return cron
