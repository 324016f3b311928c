"""DeployModelOperator: serve a fixed model version, locally or on the cluster."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mlkube import spec
from mlkube.airflow import backend as backends
from mlkube.airflow import cluster_deploy
from mlkube.airflow.base import StepOperator
from mlkube.errors import MlkubeError
from mlkube.kube.serving import ModelServing

if TYPE_CHECKING:
    from airflow.sdk import Context


class DeployModelOperator(StepOperator):
    """Serve a fixed model version; smoke-test (locally) and keep the old one on failure.

    On the ``local`` backend the deploy step serves ``models:/<name>@<alias>`` on loopback.
    On the ``kubernetes`` backend no step pod runs: the operator applies the serving objects
    (KServe ``InferenceService`` when the cluster has KServe, else Deployment + Service + HPA;
    :mod:`mlkube.airflow.cluster_deploy`) with the task's Kubernetes connection and waits until
    they serve; pass register's ``model_name``, ``champion_version`` and ``champion_uri``.
    Result: ``model_name``, ``version``, ``endpoint``, ``replaced_version``.

    Args:
        dataset: the prepared dataset URI (rows for the local smoke test).
        model_name: the registered model.
        alias: the alias to serve locally (resolved to a fixed version); default ``champion``.
        port: first of the two loopback ports (local serving).
        version: the model version to serve on a cluster (register's ``champion_version``).
        storage_uri: that version's files (register's ``champion_uri``); KServe needs an
            object store or ``pvc://`` URI.
        serving: ``auto`` (KServe if installed), ``kserve`` or ``deployment``.
        service_name: name of the serving objects; default: derived from the model name.
        min_replicas: replicas kept running.
        max_replicas: the autoscaler's upper bound.
        ready_timeout: seconds to wait for the new version to serve.
        **kwargs: see :class:`StepOperator`; on a cluster ``image``, ``cpu``, ``memory`` and
            ``artifact_pvc`` size each server replica.
    """

    step = spec.DEPLOY
    step_fields: ClassVar[dict[str, str]] = {
        "dataset": "dataset", "model_name": "model_name", "alias": "alias", "port": "port",
    }
    template_fields: Sequence[str] = (*StepOperator.template_fields, *step_fields,
                                      "version", "storage_uri", "service_name")
    ui_color = "#f8e3c4"

    def __init__(self, *, dataset: str | None = None, model_name: str | None = None,
                 alias: str | None = None, port: int | None = None,
                 version: str | int | None = None, storage_uri: str | None = None,
                 serving: str = "auto", service_name: str | None = None,
                 min_replicas: int = 1, max_replicas: int = 3, ready_timeout: float = 600.0,
                 **kwargs: Any) -> None:
        """Store the parameters; see the class doc."""
        self.dataset = dataset
        self.model_name = model_name
        self.alias = alias
        self.port = port
        self.version = version
        self.storage_uri = storage_uri
        self.serving = serving
        self.service_name = service_name
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.ready_timeout = ready_timeout
        super().__init__(**kwargs)
        if serving not in cluster_deploy.TARGETS:
            raise MlkubeError(f"{self._what}: serving is {serving!r}; use one of: "
                              f"{', '.join(cluster_deploy.TARGETS)}")

    def execute(self, context: Context) -> dict[str, Any]:
        """Serve locally through the deploy step, or apply the serving objects to the cluster."""
        if backends.resolve(self.backend) == "local":
            return super().execute(context)
        return self._finish(self._deploy_to_cluster())

    def model_serving(self, namespace: str | None) -> ModelServing:
        """What to serve on a cluster, from the (rendered) parameters."""
        for attr, source in (("model_name", "model_name"), ("version", "champion_version"),
                             ("storage_uri", "champion_uri")):
            if getattr(self, attr) in (None, ""):
                raise MlkubeError(f"{self._what}: {attr} is needed to deploy on Kubernetes; "
                                  f"pass register's {source}, e.g. register.output[{source!r}]")
        name = self.service_name or re.sub(r"[^a-z0-9]+", "-", str(self.model_name).lower()).strip("-")[:63]
        model = ModelServing(
            name=name, model_name=str(self.model_name), version=str(self.version),
            storage_uri=str(self.storage_uri), namespace=namespace,
            min_replicas=self.min_replicas, max_replicas=self.max_replicas,
            artifact_pvc=self.artifact_pvc,
        )
        sizing: dict[str, Any] = {"image": self.image, "cpu": self.cpu, "memory": self.memory}
        return dataclasses.replace(model, **{k: v for k, v in sizing.items() if v}).validated()

    def _deploy_to_cluster(self) -> dict[str, Any]:
        namespace = self.namespace or self.hook.get_namespace() or "default"
        deploy = cluster_deploy.ClusterDeploy(
            api_client=self.hook.core_v1_client.api_client, model=self.model_serving(namespace),
            namespace=namespace, target=self.serving, timeout=self.ready_timeout,  # type: ignore[arg-type]
            log=self.log.info)
        return deploy.run()
