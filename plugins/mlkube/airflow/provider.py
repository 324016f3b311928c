"""Provider registration: ``airflow providers list`` shows mlkube with its connection and link.

Declared in pyproject.toml as the ``apache_airflow_provider`` entry point. Kept import-free:
Airflow reads it in every component at start-up.
"""

from __future__ import annotations

from typing import Any

from mlkube import __version__


def get_provider_info() -> dict[str, Any]:
    """The provider description Airflow's providers manager reads."""
    return {
        "package-name": "mlkube",
        "name": "mlkube",
        "description": "Operators that run the ML lifecycle (prepare, tune, train on GPU, "
                       "register to MLflow, deploy) on Kubernetes or locally.",
        "versions": [__version__],
        "integrations": [{
            "integration-name": "mlkube",
            "external-doc-url": "https://github.com/mlkube/mlkube/blob/main/docs/airflow.md",
            "tags": ["software"],
        }],
        "operators": [{
            "integration-name": "mlkube",
            "python-modules": ["mlkube.airflow.operators", "mlkube.airflow.deploy"],
        }],
        "hooks": [{
            "integration-name": "mlkube",
            "python-modules": ["mlkube.airflow.mlflow_connection"],
        }],
        "connection-types": [{
            "hook-class-name": "mlkube.airflow.mlflow_connection.MlflowHook",
            "connection-type": "mlflow",
            "hook-name": "MLflow",
            "ui-field-behaviour": {
                "hidden-fields": ["schema"],
                "relabeling": {"host": "Tracking URI", "login": "Username (local runs only)",
                               "password": "Password (local runs only)"},
                "placeholders": {"host": "http://mlflow.mlops:5000"},
            },
            "conn-fields": {
                "experiment": {"label": "Experiment", "schema": {"type": ["string", "null"]},
                               "description": "default MLflow experiment"},
                "ui_url": {"label": "UI URL", "schema": {"type": ["string", "null"]},
                           "description": "MLflow UI address for task links; default: host"},
                "credentials_secret": {
                    "label": "Credentials Secret", "schema": {"type": ["string", "null"]},
                    "description": "Kubernetes Secret whose keys become the pod's MLflow "
                                   "credential variables (by reference)",
                },
                "credential_keys": {
                    "label": "Credential keys", "schema": {"type": ["string", "null"]},
                    "description": "comma-separated keys of that Secret; default: "
                                   "MLFLOW_TRACKING_USERNAME,MLFLOW_TRACKING_PASSWORD",
                },
            },
        }],
        "extra-links": ["mlkube.airflow.links.MlflowRunLink"],
    }
