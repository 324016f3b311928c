"""Airflow adapter: KubernetesPodOperator subclasses, one per step (the lifecycle's five, monitor).

The operators are exported lazily, so ``import mlkube.airflow`` alone costs nothing::

    from mlkube.airflow import PrepareDataOperator, TrainOperator

Each operator renders its step's :class:`~mlkube.spec.StepSpec` into a pod (kubernetes
backend) or runs the same step program as a local subprocess (local backend); either way the
step's JSON result becomes the task's return value.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PrepareDataOperator": "mlkube.airflow.operators",
    "TuneOperator": "mlkube.airflow.operators",
    "TrainOperator": "mlkube.airflow.operators",
    "RegisterModelOperator": "mlkube.airflow.operators",
    "MonitorOperator": "mlkube.airflow.operators",
    "DeployModelOperator": "mlkube.airflow.deploy",
    "StepOperator": "mlkube.airflow.base",
    "tune_fan_out": "mlkube.airflow.lifecycle",
    "model_pool": "mlkube.airflow.pools",
    "MlflowHook": "mlkube.airflow.mlflow_connection",
    "MlflowRunLink": "mlkube.airflow.links",
    "SecretEnv": "mlkube.kube.pod",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import an exported name on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mlkube.airflow' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
