"""Airflow test setup: a temporary AIRFLOW_HOME set before airflow is imported."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import airflow_env  # noqa: E402

airflow_env.configure()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """The metadata database, migrated once per session."""
    airflow_env.migrate_db()
