"""The ``mlflow`` Airflow connection type and the MLflow settings it gives a step.

A connection names the tracking server (host, e.g. ``http://mlflow.mlops:5000``) and, in its
extras, the default experiment, the UI address for links, and the Kubernetes Secret that holds
the credentials. Pods get the credentials only as ``secretKeyRef`` environment variables; a
password stored on the connection itself reaches only local-backend processes, never a pod spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import BaseHook

from mlkube.errors import MlkubeError
from mlkube.kube.pod import SecretEnv

CONN_TYPE = "mlflow"
DEFAULT_CONN_ID = "mlflow_default"
DEFAULT_CREDENTIAL_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass(frozen=True, kw_only=True)
class MlflowSettings:
    """Where a step logs to, and how it authenticates."""

    tracking_uri: str | None = None
    experiment: str | None = None
    ui_url: str | None = None
    credentials_secret: str | None = None
    credential_keys: tuple[str, ...] = DEFAULT_CREDENTIAL_KEYS
    login: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        """Plain environment: the tracking URI and experiment (no credentials)."""
        env = {}
        if self.tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        if self.experiment:
            env["MLFLOW_EXPERIMENT_NAME"] = self.experiment
        return env

    def secret_env(self, what: str) -> list[SecretEnv]:
        """Credentials for a pod, by reference to the Secret; ``what`` names the task."""
        if self.credentials_secret:
            return [SecretEnv(env=key, secret=self.credentials_secret, key=key)
                    for key in self.credential_keys]
        if self.password:
            raise MlkubeError(
                f"{what}: the MLflow connection holds a password, but pods take credentials only "
                "from a Kubernetes Secret by reference; create a Secret with keys "
                f"{', '.join(self.credential_keys)} and set the connection extra "
                "'credentials_secret' to its name"
            )
        return []

    def local_env(self) -> dict[str, str]:
        """Environment for a local-backend process, credentials included."""
        env = self.env()
        if self.login:
            env["MLFLOW_TRACKING_USERNAME"] = self.login
        if self.password:
            env["MLFLOW_TRACKING_PASSWORD"] = self.password
        return env

    def link_base(self) -> str | None:
        """The MLflow UI address, for links to runs and models."""
        if self.ui_url:
            return self.ui_url.rstrip("/")
        if self.tracking_uri and self.tracking_uri.startswith(("http://", "https://")):
            return self.tracking_uri.rstrip("/")
        return None


def _tracking_uri(host: str | None, port: int | None) -> str | None:
    if not host:
        return None
    if "://" in host:
        return host
    return f"http://{host}:{port}" if port else f"http://{host}"


class MlflowHook(BaseHook):
    """Reads an ``mlflow`` connection into :class:`MlflowSettings`.

    Connection fields: host = tracking URI (``http://mlflow.mlops:5000``; a bare host gets
    ``http://`` and the port); login/password = credentials for local runs only. Extras:
    ``experiment``, ``ui_url``, ``credentials_secret`` (a Kubernetes Secret name) and
    ``credential_keys`` (its keys, which are also the env names; default username + password).
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = DEFAULT_CONN_ID) -> None:
        """Remember the connection id; nothing is read until :meth:`get_conn`."""
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id

    def get_conn(self) -> MlflowSettings:
        """The connection's settings."""
        conn = self.get_connection(self.mlflow_conn_id)
        extra: dict[str, Any] = conn.extra_dejson
        keys = extra.get("credential_keys") or DEFAULT_CREDENTIAL_KEYS
        if isinstance(keys, str):
            keys = [k.strip() for k in keys.split(",") if k.strip()]
        return MlflowSettings(
            tracking_uri=_tracking_uri(conn.host, conn.port),
            experiment=extra.get("experiment") or None,
            ui_url=extra.get("ui_url") or None,
            credentials_secret=extra.get("credentials_secret") or None,
            credential_keys=tuple(keys),
            login=conn.login or None,
            password=conn.password or None,
        )
