"""DeployModelOperator: run the deploy step, which serves a fixed model version on any target."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from mlkube import spec
from mlkube.airflow.base import StepOperator

DEPLOY_SERVICE_ACCOUNT = "mlkube-deploy"


class DeployModelOperator(StepOperator):
    """Serve a fixed model version: verify, roll out, smoke-test, roll back, record.

    The deploy step program does the work on both backends (see :mod:`mlkube.steps.deploy`):
    on ``local`` it serves on loopback; on ``kubernetes`` it runs in a pod under the
    ``mlkube-deploy`` ServiceAccount (its Role may touch only its serving objects) and serves
    through KServe or a Deployment + Service + HPA. Result: ``model_name``, ``version``,
    ``endpoint``, ``replaced_version``.

    Args:
        dataset: the prepared dataset URI (rows for the smoke test).
        model_name: the registered model.
        alias: the alias to serve (resolved to a fixed version); default ``champion``.
        version: the version to serve instead (e.g. register's ``champion_version``).
        target: ``auto`` (local outside a cluster; in a pod KServe when installed, else
            Deployment), ``local``, ``deployment`` or ``kserve``.
        canary_percent: serving.canary_share in percent: the new version's share of live
            requests in its canary phase (0: the config's; 100: no canary phase).
        service_name: name of the serving objects; default: derived from the model name.
        server_image: the serving runtime image on a cluster.
        port: the local server's loopback port.
        **kwargs: see :class:`StepOperator`; ``service_account_name`` defaults to
            ``mlkube-deploy``.
    """

    step = spec.DEPLOY
    step_fields: ClassVar[dict[str, str]] = {
        "dataset": "dataset", "model_name": "model_name", "alias": "alias", "version": "version",
        "target": "target", "canary_percent": "canary_percent", "service_name": "service_name",
        "server_image": "server_image", "port": "port",
    }
    template_fields: Sequence[str] = (*StepOperator.template_fields, *step_fields)
    ui_color = "#f8e3c4"

    def __init__(self, *, dataset: str | None = None, model_name: str | None = None,
                 alias: str | None = None, version: str | int | None = None,
                 target: str | None = None, canary_percent: int | None = None,
                 service_name: str | None = None, server_image: str | None = None,
                 port: int | None = None, **kwargs: Any) -> None:
        """Store the parameters; see the class doc."""
        self.dataset = dataset
        self.model_name = model_name
        self.alias = alias
        self.version = None if version is None else str(version)
        self.target = target
        self.canary_percent = canary_percent
        self.service_name = service_name
        self.server_image = server_image
        self.port = port
        kwargs.setdefault("service_account_name", DEPLOY_SERVICE_ACCOUNT)
        super().__init__(**kwargs)
