"""The model's pool: its register and deploy tasks run one at a time, across DAG runs and DAGs.

Register (the champion gate: read the alias, evaluate, write it) and deploy (a rollout of the
model's serving objects) must not overlap for one model: no two of them at once, whether in
two runs of one DAG or in a run of ``ml_lifecycle`` and one of ``scheduled_retraining``.
Airflow starts a task only when its pool has a free slot, so both tasks of both DAGs take the
model's pool, of one slot, named like the Argo mutex (:func:`mlkube.spec.model_lock`,
``mlkube-<model name>``)::

    RegisterModelOperator(task_id="register", ..., pool=model_pool(config))

The pool must exist in the Airflow that runs the DAG: a task naming a pool that does not exist
is never scheduled (the scheduler logs a warning, nothing else). Create it once
(:func:`set_command`)::

    airflow pools set mlkube-mlkube-demo 1 \\
        "mlkube: one model's register and deploy, one at a time" --include-deferred

``--include-deferred``: a deferred task (``deferrable=True``: the triggerer waits for its pod)
keeps its slot. The demo (``make demo``) and the tests create it with :func:`create_pools`.

Imports nothing heavy: DAG files call :func:`model_pool` at parse time.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlkube import config as configmod
from mlkube import spec
from mlkube.errors import MlkubeError

SLOTS = 1
DESCRIPTION = "mlkube: one model's register and deploy, one at a time"


def _plain(value: Any) -> bool:
    """Whether ``value`` is known at parse time (not a template, not an upstream output)."""
    return isinstance(value, str) and "{{" not in value and "{%" not in value


def model_at_parse(config: Any = None, model_name: Any = None) -> str:
    """The registered model a DAG's register and deploy tasks work on, as seen at parse time.

    ``model_name`` when it is a plain string; else the config file's ``registry.model_name``
    when the file is readable where the DAG is parsed; else the config's default
    (``mlkube-demo``). A config file only the pods can read gives the default: give
    ``model_name`` then.
    """
    if model_name is not None and _plain(model_name):
        try:
            configmod.override(configmod.Config(), "registry.model_name", model_name)
        except MlkubeError as exc:
            raise MlkubeError(f"model_pool: {exc}") from None
        return str(model_name)
    if config is not None and _plain(config) and Path(config).is_file():
        return configmod.load(config).registry.model_name
    return configmod.RegistryConfig().model_name


def model_pool(config: Any = None, model_name: Any = None) -> str:
    """The pool of one slot that the model's register and deploy tasks share.

    Args:
        config: the lifecycle config path the tasks get (``MLKUBE_CONFIG``).
        model_name: the registered model, where the DAG names it itself.
    """
    return spec.model_lock(model_at_parse(config, model_name))


def set_command(pool: str) -> str:
    """The command that creates ``pool`` in an Airflow (what README.md tells users to run)."""
    return f'airflow pools set {pool} {SLOTS} "{DESCRIPTION}" --include-deferred'


def pools_of(dags: Iterable[Any]) -> list[str]:
    """The model pools the tasks of ``dags`` take."""
    return sorted({task.pool for dag in dags for task in dag.tasks
                   if str(task.pool).startswith(spec.MODEL_LOCK_PREFIX)})


def create_pools(dags: Iterable[Any]) -> list[str]:
    """Create every model pool the tasks of ``dags`` take (one slot, deferred tasks counted)
    in this Airflow's metadata database, or set it so; returns their names."""
    from airflow.models.pool import Pool

    names = pools_of(dags)
    for name in names:
        Pool.create_or_update_pool(name, slots=SLOTS, description=DESCRIPTION,
                                   include_deferred=True)
    return names
