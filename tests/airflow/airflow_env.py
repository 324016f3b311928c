"""Point Airflow at a throwaway home before anything imports it (shared by tests/dags)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
# DAGs only the tests run (dag.test() needs a DAG its bundles hold): tests/airflow/dags
TEST_DAGS = Path(__file__).resolve().parent / "dags"
LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"


def configure() -> Path:
    """Set the Airflow environment once per process; returns AIRFLOW_HOME.

    One home (one SQLite database) per pytest-xdist worker: pytest loads the conftest.py of
    the paths it is given in the controller too, whose environment the workers inherit, and
    two workers creating one database's tables at once fail. A subprocess of a worker (same
    worker id) keeps the worker's home.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if ("MLKUBE_TEST_AIRFLOW_HOME" in os.environ
            and os.environ.get("MLKUBE_TEST_AIRFLOW_WORKER", "") == worker):
        return Path(os.environ["MLKUBE_TEST_AIRFLOW_HOME"])
    home = Path(tempfile.mkdtemp(prefix="mlkube-airflow-"))
    (home / "plugins").mkdir()
    os.environ.update({
        "MLKUBE_TEST_AIRFLOW_HOME": str(home),
        "MLKUBE_TEST_AIRFLOW_WORKER": worker,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        # plugins/ as the plugins folder is tested in a subprocess of its own
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([
            {"name": "dags-folder", "classpath": LOCAL_BUNDLE, "kwargs": {}},
            {"name": "mlkube-tests", "classpath": LOCAL_BUNDLE,
             "kwargs": {"path": str(TEST_DAGS)}}]),
    })
    return home


def migrate_db() -> None:
    """Create the Airflow metadata database (SQLite) in the test home."""
    from airflow.utils import db

    db.initdb()
