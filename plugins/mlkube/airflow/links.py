"""The operator extra link to the task's MLflow run (or, for register, the model version)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


def mlflow_url(base: str | None, result: dict[str, Any]) -> str | None:
    """The MLflow UI page for a step result, or ``None`` without a UI or a run.

    Args:
        base: the MLflow UI address (``http://mlflow.example``), or ``None``.
        result: the step's result document.
    """
    if not base:
        return None
    if result.get("version") and result.get("model_name") and "promoted" in result:
        return f"{base}/#/models/{result['model_name']}/versions/{result['version']}"
    run_id = result.get("run_id") or result.get("best_run_id") or result.get("mlflow_run_id")
    return f"{base}/#/runs/{run_id}" if run_id else None


class MlflowRunLink(BaseOperatorLink):
    """"MLflow" button on a step task: the run (or model version) the step logged.

    In Airflow 3 the worker asks for the link right after the task ran and stores it as an
    XCom under :attr:`xcom_key`; the UI shows that. The operator keeps the URL it built from the
    step result in ``mlflow_link``.
    """

    name = "MLflow"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The URL the operator built from its result, or ``""`` when there is none."""
        return str(getattr(operator, "mlflow_link", None) or "")
