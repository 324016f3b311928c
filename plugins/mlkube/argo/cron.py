"""The ``mlkube-retrain`` CronWorkflow.

The cron workflow runs the lifecycle WorkflowTemplate with ``skip-unchanged=true``: when
prepare-data reports that the dataset digest equals the champion's, tuning and training are
skipped (a ``when`` on those tasks) and so is everything after them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlkube.schedule import check_schedule

if TYPE_CHECKING:
    from hera.workflows import CronWorkflow

    from mlkube.argo.options import RenderOptions

def retrain_cron(options: RenderOptions) -> CronWorkflow:
    """The CronWorkflow that runs the lifecycle on schedule, skipping unchanged data."""
    from hera.workflows import CronWorkflow, Parameter
    from hera.workflows.models import WorkflowTemplateRef

    from mlkube.argo.lifecycle import SKIP_UNCHANGED
    from mlkube.argo.options import LABELS

    return CronWorkflow(
        name=options.cron_name,
        namespace=options.namespace,
        labels=dict(LABELS),
        schedules=[check_schedule(s) for s in options.schedules],
        timezone=options.timezone,
        concurrency_policy="Forbid",
        starting_deadline_seconds=600,
        successful_jobs_history_limit=3,
        failed_jobs_history_limit=3,
        workflow_template_ref=WorkflowTemplateRef(name=options.lifecycle_name),
        arguments=[Parameter(name=SKIP_UNCHANGED, value="true")],
    )
