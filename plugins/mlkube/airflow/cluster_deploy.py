"""Deploy on the kubernetes backend: apply the serving objects, wait until they serve.

The deploy step program serves on loopback; on a cluster, serving is Kubernetes objects, built
by :mod:`mlkube.kube.serving` (the same builders the Argo deploy template applies): a KServe
``InferenceService`` where the cluster has KServe, else Deployment + Service + HPA. They are
applied server-side (idempotent: the same version applied twice changes nothing) with the
task's Kubernetes connection. A new version replaces the old one by a rolling update, so the
old version keeps serving until the new one is ready; if it never gets ready, the task fails
with the reason and the old one is still serving.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes.client import ApiClient

from mlkube.errors import MlkubeError
from mlkube.kube import serving

Target = Literal["auto", "kserve", "deployment"]
TARGETS: tuple[Target, ...] = ("auto", "kserve", "deployment")
FIELD_MANAGER = "mlkube"


def manifests(model: serving.ModelServing, target: Literal["kserve", "deployment"]) -> list[dict[str, Any]]:
    """The objects that serve ``model``, as JSON data ready to apply."""
    if target == "kserve":
        serving.check_kserve_storage(model.storage_uri)
        return [serving.inference_service(model)]
    return [serving.to_dict(obj) for obj in serving.plain_serving(model)]


def endpoint(model: serving.ModelServing, target: str, live: Any, namespace: str) -> str:
    """Where the model answers: KServe's URL, or the Service's cluster address."""
    if target == "kserve":
        return str(live.status.url)
    return f"http://{model.name}.{namespace}.svc.cluster.local/invocations"


def _condition(live: Any, kind: str) -> tuple[bool, str | None]:
    """(ready, failure) for a live InferenceService or Deployment."""
    status = live.status
    if status is None:
        return False, None
    if kind == "InferenceService":
        model = status.modelStatus
        transition = model.transitionStatus if model else None
        if transition in ("BlockedByFailedLoad", "InvalidSpec"):
            failure = model.lastFailureInfo.message if model.lastFailureInfo else transition
            return False, str(failure)
        loaded = bool(model and model.states and model.states.activeModelState == "Loaded")
        return transition == "UpToDate" and loaded, None
    wanted = live.spec.replicas or 1
    current = (status.observedGeneration or 0) >= (live.metadata.generation or 0)
    ready = current and (status.updatedReplicas or 0) >= wanted and (status.availableReplicas or 0) >= wanted
    return ready, None


@dataclass(kw_only=True)
class ClusterDeploy:
    """One deployment of a fixed model version to a cluster."""

    api_client: ApiClient
    model: serving.ModelServing
    namespace: str
    target: Target = "auto"
    timeout: float = 600.0
    poll: float = 5.0
    log: Callable[[str], Any] = print

    def _dynamic(self) -> Any:
        from kubernetes.dynamic import DynamicClient

        return DynamicClient(self.api_client)

    def _resource(self, client: Any, body: dict[str, Any]) -> Any:
        return client.resources.get(api_version=body["apiVersion"], kind=body["kind"])

    def choose(self, client: Any) -> Literal["kserve", "deployment"]:
        """KServe when asked for or (``auto``) when the cluster serves its API."""
        if self.target != "auto":
            return self.target
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            client.resources.get(api_version=serving.KSERVE_API_VERSION, kind="InferenceService")
        except ResourceNotFoundError:
            return "deployment"
        return "kserve"

    def _previous_version(self, client: Any, body: dict[str, Any]) -> str:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            live = self._resource(client, body).get(name=self.model.name, namespace=self.namespace)
        except NotFoundError:
            return ""
        annotations = dict(live.metadata.annotations or {})
        return str(annotations.get(serving.MODEL_VERSION_ANNOTATION, ""))

    def _wait(self, client: Any, body: dict[str, Any]) -> Any:
        resource = self._resource(client, body)
        deadline = time.monotonic() + self.timeout
        while True:
            live = resource.get(name=self.model.name, namespace=self.namespace)
            ready, failure = _condition(live, body["kind"])
            if ready:
                return live
            if failure or time.monotonic() > deadline:
                reason = failure or f"not ready after {self.timeout:.0f}s"
                raise MlkubeError(
                    f"{body['kind']} {self.namespace}/{self.model.name} serving "
                    f"{self.model.model_name} v{self.model.version}: {reason}; the previous "
                    "version (if any) keeps serving; see the objects' events"
                )
            self.log(f"waiting for {body['kind']} {self.model.name} to serve v{self.model.version}")
            time.sleep(self.poll)

    def run(self) -> dict[str, Any]:
        """Apply, wait until ready, and return deploy's result document."""
        client = self._dynamic()
        target = self.choose(client)
        bodies = manifests(self.model, target)
        replaced = self._previous_version(client, bodies[0])
        for body in bodies:
            self.log(f"applying {body['kind']} {self.namespace}/{self.model.name} ({target})")
            self._resource(client, body).server_side_apply(
                body=body, name=self.model.name, namespace=self.namespace,
                field_manager=FIELD_MANAGER, force_conflicts=True)
        live = self._wait(client, bodies[0])
        return {"model_name": self.model.model_name, "version": self.model.version,
                "endpoint": endpoint(self.model, target, live, self.namespace),
                "replaced_version": "" if replaced == self.model.version else replaced}
