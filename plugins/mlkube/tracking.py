"""The MLflow side: the embedded default store, experiments, and run lookups.

Without MLFLOW_TRACKING_URI, a step uses the embedded default: MLflow on SQLite with
artifacts, both under the state directory. In a pod, the operator sets MLFLOW_TRACKING_URI
(and credentials from a Secret) and this module uses whatever server that names.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlkube.errors import MlkubeError, database_unusable, first_line, safe_url

if TYPE_CHECKING:
    from mlflow import MlflowClient

TAG_STEP = "mlkube.step"
TAG_DIGEST = "mlkube.dataset_digest"
TAG_PIPELINE_RUN = "mlkube.pipeline_run_id"
TAG_CODE_VERSION = "mlkube.code_version"
TAG_RUN_KEY = "mlkube.run_key"
TAG_REASON = "mlkube.retrain_reason"  # why a retraining run trained (train and register --reason)


def embedded_tracking_uri(state_dir: Path) -> str:
    """The tracking URI of the embedded default store."""
    return f"sqlite:///{state_dir / 'mlflow.db'}"


SERVER_DATABASES = ("postgresql", "mysql", "mssql")


@functools.cache
def _check_database(uri: str) -> None:
    """Fail in seconds, in one line, where MLflow's own retries take minutes and log warnings;
    and size MLflow's connection pool per process (a few connections a worker)."""
    import sqlalchemy
    import sqlalchemy.exc

    os.environ.setdefault("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "2")
    os.environ.setdefault("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", "1")
    connect_args = {"connect_timeout": 10} if uri.startswith("postgresql") else {}
    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args=connect_args)
    try:
        engine.connect().close()
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        raise database_unusable("MLflow's database", uri, exc, "MLFLOW_TRACKING_URI") from None
    finally:
        engine.dispose()


def configure(state_dir: Path, experiment: str) -> str:
    """Point MLflow at the configured server (or the embedded store); return the experiment id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="mlflow")
    default = embedded_tracking_uri(state_dir)
    embedded = os.environ.setdefault("MLFLOW_TRACKING_URI", default) == default
    if embedded:
        state_dir.mkdir(parents=True, exist_ok=True)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    if not embedded and uri.split(":", 1)[0].split("+")[0] in SERVER_DATABASES:
        _check_database(uri)
    mlflow.set_tracking_uri(uri)
    try:
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            return str(found.experiment_id)
        location = (state_dir / "mlruns").as_uri() if embedded else None
        try:
            return str(mlflow.create_experiment(experiment, artifact_location=location))
        except MlflowException:  # created by a parallel worker in the meantime
            found = mlflow.get_experiment_by_name(experiment)
            if found is None:
                raise
            return str(found.experiment_id)
    except MlflowException as exc:
        raise MlkubeError(
            f"MLflow at {safe_url(os.environ['MLFLOW_TRACKING_URI'])} refused experiment {experiment!r}: "
            f"{first_line(exc)}"
        ) from None


def client() -> MlflowClient:
    """A client for the configured tracking server."""
    from mlflow import MlflowClient

    return MlflowClient()


def find_run(experiment_id: str, tags: dict[str, str]) -> Any | None:
    """The newest finished run carrying all ``tags``, or ``None``."""
    query = " and ".join([*(f"tags.`{k}` = '{v}'" for k, v in tags.items()),
                          "attributes.status = 'FINISHED'"])
    runs = client().search_runs([experiment_id], filter_string=query,
                                order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def run_exists(run_id: str) -> bool:
    """Whether the configured store knows ``run_id`` (state on a shared volume may outlive it)."""
    from mlflow.exceptions import MlflowException

    try:
        client().get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise MlkubeError(f"MLflow at {os.environ.get('MLFLOW_TRACKING_URI')} cannot be asked "
                          f"for run {run_id}: {first_line(exc)}") from None
    return True


def lineage_tags(step: str, pipeline_run_id: str | None) -> dict[str, str]:
    """Tags every run and model version carries."""
    from mlkube import __version__

    tags = {TAG_STEP: step, TAG_CODE_VERSION: os.environ.get("MLKUBE_CODE_VERSION", __version__)}
    if pipeline_run_id:
        tags[TAG_PIPELINE_RUN] = pipeline_run_id
    return tags


def reason_tags(reason: str | None) -> dict[str, str]:
    """The retraining reason as a tag (``--reason``), none when it is empty."""
    return {TAG_REASON: reason[:5000]} if reason else {}


def log_history(run_id: str, key: str, history: dict[int, float]) -> None:
    """Log a per-epoch metric history in one request."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for step, value in history.items()]
    if metrics:
        client().log_batch(run_id, metrics=metrics)
