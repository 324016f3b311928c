"""Where the deploy step serves a model: one small contract, one module per target.

The deploy step picks a target once (:func:`mlkube.targets.choose`) and runs the same
sequence on each (see :mod:`mlkube.steps.deploy`): the target only knows how to put a version
in front of its published endpoint, and how to put the previous one back.

- :mod:`~mlkube.targets.base`: the contract;
- :mod:`~mlkube.targets.local`: mlkube's server as one process on loopback;
- :mod:`~mlkube.targets.deployment`: Deployment + Service + HPA;
- :mod:`~mlkube.targets.kserve`: a KServe ``InferenceService``;
- :mod:`~mlkube.targets.cluster`: what the two cluster targets share.

Importing this package imports nothing heavy: each target is imported when it is chosen.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlkube.errors import MlkubeError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from mlkube.config import ServingConfig
    from mlkube.targets.base import ServingTarget

Kind = Literal["auto", "local", "deployment", "kserve"]
KINDS: tuple[Kind, ...] = ("auto", "local", "deployment", "kserve")


def in_cluster() -> bool:
    """Whether this process runs in a pod (the API server's address is in its environment)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def serves_locally(kind: str) -> bool:
    """Whether ``kind`` is the local target: ``local``, or ``auto`` outside a cluster."""
    return kind == "local" or (kind == "auto" and not in_cluster())


def _own_claim(namespace: str, log: Callable[[str], Any]) -> str | None:
    """The artifact claim this pod mounts, for serving pods in ``namespace``; ``None`` where
    it mounts none or they live elsewhere. Makes the live windows' directory on it (as the
    images' user, whom the serving pods run as too) before any serving pod mounts it."""
    from mlkube.kube import api
    from mlkube.spec import ARTIFACT_CLAIM_ENV, ARTIFACT_MOUNT, MONITORING_DIR

    claim = os.environ.get(ARTIFACT_CLAIM_ENV) or None
    if claim is None:
        return None
    if namespace != api.own_namespace():
        log(f"serving in namespace {namespace}, not this pod's: its pods mount no artifact "
            f"claim ({claim} lives here), so they write no live windows for the monitor")
        return None
    if Path(ARTIFACT_MOUNT).is_dir():
        try:
            Path(MONITORING_DIR).mkdir(exist_ok=True)
        except OSError:  # the kubelet makes it when it mounts the sub-path
            pass
    return claim


def choose(kind: str = "auto", *, model_name: str, state_dir: Path | str = ".mlkube",
           config: ServingConfig | None = None,
           serving_env: Callable[[], Iterable[Any]] = tuple, namespace: str | None = None,
           service_name: str | None = None, server_image: str | None = None,
           canary_percent: int | None = None, verify_batch: int | None = None,
           artifact_pvc: str | None = None, api_client: ApiClient | None = None,
           poll: float = 2, log: Callable[[str], Any] = print) -> ServingTarget:
    """The target to serve ``model_name`` on, chosen once.

    ``local`` serves on loopback; ``auto`` is the local target outside a cluster, and in a
    pod KServe where the cluster serves its API, else Deployment + Service + HPA.

    Args:
        kind: ``auto``, ``local``, ``deployment`` or ``kserve``.
        model_name: the registered model (its name on the V2 server).
        state_dir: local target: where the server's record lives.
        config: the config's ``serving`` section: the local server's host, port, start
            timeout and limits; a cluster target's ``pod_start_timeout``.
        serving_env: cluster targets: the serving containers' environment (the tracking URI
            and Secret references); called before anything reaches the cluster, so what it
            refuses is refused at once.
        namespace: cluster targets: where the serving objects live (default: the pod's own).
        service_name: cluster targets: the serving objects' name (default: from the model).
        server_image: cluster targets: the serving runtime image (default: the package's).
        canary_percent: KServe only: the share of traffic a new version takes until
            :meth:`~mlkube.targets.base.ServingTarget.promote`.
        verify_batch: the largest batch (rows) the runtime verifies every version on before
            it takes traffic, besides 1 row (``None``: the runtime's default).
        artifact_pvc: cluster targets: the artifact claim the serving pods mount, so that
            they write their live windows to ``spec.MONITORING_DIR`` where the monitor step
            reads them (:class:`~mlkube.kube.serving.ModelServing`); default: the claim this
            pod mounts (``spec.ARTIFACT_CLAIM_ENV``, which step pods get), where the serving
            namespace is this pod's own (a claim is namespaced), on a Deployment only: KServe's
            (Knative's) pods mount a claim only when one is given.
        api_client: the cluster to serve on (default: :func:`mlkube.kube.api.api_client`);
            given, ``auto`` chooses between the cluster targets.
        poll: cluster targets: seconds between status reads.
        log: where progress lines go.
    """
    from mlkube.config import ServingConfig

    config = config or ServingConfig()
    if kind not in KINDS:
        raise MlkubeError(f"serving target is {kind!r}; use one of: {', '.join(KINDS)}")
    if kind == "local" or (api_client is None and serves_locally(kind)):
        from mlkube.targets.local import LocalTarget

        return LocalTarget(state_dir=Path(state_dir), model_name=model_name, host=config.host,
                           port=config.port, ready_timeout=config.ready_timeout, log=log,
                           max_body_bytes=config.max_body_bytes, idle_timeout=config.idle_timeout,
                           verify_batch=verify_batch)
    import re

    from mlkube.kube import api
    from mlkube.kube.serving import ModelServing
    from mlkube.spec import SERVER_IMAGE
    from mlkube.targets.cluster import INFERENCE_SERVICE
    from mlkube.targets.deployment import DeploymentTarget
    from mlkube.targets.kserve import KServeTarget, kserve_served

    env = tuple(serving_env())  # before any cluster call: a local store is refused at once
    namespace = namespace or api.own_namespace()
    service = service_name or re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")[:63]
    if api_client is None:
        api_client = api.api_client()
    client = api.dynamic(api_client)
    host = api_client.configuration.host
    served = api.call("discover the cluster's APIs", host, lambda: kserve_served(client))
    if kind == "kserve" and not served:
        raise MlkubeError(
            f"serving target 'kserve' was asked for, but the cluster at {host} does not serve "
            f"{INFERENCE_SERVICE[0]} InferenceService (KServe is not installed): install KServe, "
            "or use the 'deployment' or 'auto' target"
        )
    kserve = kind == "kserve" or (kind == "auto" and served)
    if artifact_pvc is None and kserve:
        # Knative refuses pods with a claim unless its PVC features are on: only when asked
        log("KServe's serving pods mount no artifact claim unless one is given (Knative needs "
            "kubernetes.podspec-persistent-volume-claim and -write for it): they write no live "
            "windows for the monitor; /metrics still has their statistics")
    elif artifact_pvc is None:
        artifact_pvc = _own_claim(namespace, log)
    serving = ModelServing(name=service, model_name=model_name, namespace=namespace, env=env,
                           image=server_image or SERVER_IMAGE, verify_batch=verify_batch,
                           artifact_pvc=artifact_pvc or None)
    common: dict[str, Any] = {"api_client": api_client, "serving": serving,
                              "namespace": namespace, "timeout": config.pod_start_timeout,
                              "poll": poll, "log": log}
    if kserve:
        return KServeTarget(canary_percent=canary_percent, **common)
    if canary_percent is not None:
        if kind == "deployment":
            raise MlkubeError(f"canary percent {canary_percent} needs the kserve target; a "
                              "Deployment rolls its pods over instead (drop the canary percent)")
        log(f"the cluster has no KServe: serving with a Deployment, which rolls its pods over "
            f"instead of a {canary_percent}% canary")
    return DeploymentTarget(**common)
