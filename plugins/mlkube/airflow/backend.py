"""Which backend runs a step: ``kubernetes`` (a pod, the default) or ``local`` (a subprocess).

Chosen per operator (``backend=``), else by the ``MLKUBE_BACKEND`` environment variable, else
by the Airflow config option ``[mlkube] backend`` (``AIRFLOW__MLKUBE__BACKEND``). The choice is
read when the task runs, on the worker, so one DAG file serves both.
"""

from __future__ import annotations

import os
from typing import Literal, cast

from mlkube.errors import MlkubeError

Backend = Literal["kubernetes", "local"]
BACKENDS: tuple[Backend, ...] = ("kubernetes", "local")
ENV = "MLKUBE_BACKEND"


def check(value: str | None, what: str) -> Backend | None:
    """Validate a backend name; ``what`` names where it came from in the error."""
    if value is None:
        return None
    if value not in BACKENDS:
        raise MlkubeError(f"{what} is {value!r}; use one of: {', '.join(BACKENDS)}")
    return cast(Backend, value)


def resolve(explicit: str | None) -> Backend:
    """The backend for a task: the operator's choice, the environment, Airflow config, default."""
    chosen = check(explicit, "backend")
    if chosen:
        return chosen
    chosen = check(os.environ.get(ENV) or None, f"environment variable {ENV}")
    if chosen:
        return chosen
    from airflow.sdk.configuration import conf

    configured = conf.get("mlkube", "backend", fallback=None) or None
    return check(configured, "Airflow config [mlkube] backend") or "kubernetes"
