"""DAG-building helpers: the tuning fan-out as mapped worker tasks plus a selection task."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlkube.airflow.operators import TuneOperator
from mlkube.errors import MlkubeError

if TYPE_CHECKING:
    from airflow.sdk.definitions.mappedoperator import MappedOperator


def tune_fan_out(*, workers: int, task_id: str = "tune", dataset: Any,
                 **kwargs: Any) -> tuple[MappedOperator, TuneOperator]:
    """Add ``workers`` parallel trial workers (one mapped task) and the best-trial selection.

    The workers share one Optuna study (same ``study_name`` and ``storage``, both derived from
    the dataset unless given); the selection reports the best trial, whose ``best_params``
    the training takes::

        workers, best = tune_fan_out(workers=4, dataset=prepare.output["dataset_uri"])
        TrainOperator(task_id="train", dataset=..., hyperparameters=best.output["best_params"])

    Args:
        workers: how many trial workers run in parallel (mapped task instances).
        task_id: prefix of the two tasks: ``<task_id>_workers`` and ``<task_id>_select``.
        dataset: the prepared dataset URI (usually ``prepare.output["dataset_uri"]``).
        **kwargs: passed to every :class:`TuneOperator` (``n_trials``, ``storage``,
            ``study_name``, resources, MLflow settings, KubernetesPodOperator options, ...).

    Returns:
        The mapped worker task and the selection task (already ordered after the workers).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise MlkubeError(f"tune_fan_out: workers is {workers!r}; give a whole number >= 1")
    for reserved in ("role", "worker_index"):
        if reserved in kwargs:
            raise MlkubeError(f"tune_fan_out sets {reserved} itself; leave it out")
    mapped = TuneOperator.partial(
        task_id=f"{task_id}_workers", role="worker", dataset=dataset, **kwargs
    ).expand(worker_index=list(range(workers)))
    select = TuneOperator(task_id=f"{task_id}_select", role="select", dataset=dataset, **kwargs)
    mapped >> select
    return mapped, select
