"""The Airflow plugin: registers the MLflow extra link for the UI.

Declared as the ``airflow.plugins`` entry point; it also loads from ``plugins/`` used as the
plugins folder without installing the package.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mlkube.airflow.links import MlflowRunLink


class MlkubePlugin(AirflowPlugin):
    """mlkube's operator extra link."""

    name = "mlkube"
    operator_extra_links = [MlflowRunLink()]
