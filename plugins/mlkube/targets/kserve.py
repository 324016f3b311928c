"""The KServe target: an ``InferenceService`` running mlkube's runtime as its predictor (V2).

KServe keeps routing to the last ready revision while a new one starts; a canary takes its
share of traffic until :meth:`KServeTarget.promote`. :func:`kserve_served` tells whether a
cluster serves the API at all. What it shares with the Deployment target is
:mod:`mlkube.targets.cluster`.
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urlsplit

from kubernetes.client import ApiClient
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from mlkube.errors import MlkubeError
from mlkube.kube import serving as manifests
from mlkube.kube.api import meta_of
from mlkube.kube.applied import restorable
from mlkube.kube.diagnosis import fatal_problems, last_line
from mlkube.kube.serving import ModelServing
from mlkube.targets.cluster import (
    INFERENCE_SERVICE,
    POD,
    ClusterTarget,
    Log,
    Progress,
    conditions_of,
    version_of,
)

KSERVE_ISVC_LABEL = "serving.kserve.io/inferenceservice"
KNATIVE_REVISION_LABEL = "serving.knative.dev/revision"
_KSERVE_FAILED = frozenset({"BlockedByFailedLoad", "InvalidSpec"})


def kserve_served(client: DynamicClient) -> bool:
    """Whether the cluster serves KServe's ``InferenceService`` API."""
    try:
        client.resources.get(api_version=INFERENCE_SERVICE[0], kind=INFERENCE_SERVICE[1])
    except ResourceNotFoundError:
        return False
    return True


class KServeTarget(ClusterTarget):
    """A KServe ``InferenceService`` running mlkube's runtime as its predictor (V2).

    KServe keeps routing to the last ready revision while a new one starts; with
    ``canary_percent`` a new version takes that share of traffic until :meth:`promote`.
    """

    name = "kserve"
    kinds = (INFERENCE_SERVICE,)

    def __init__(self, *, api_client: ApiClient, serving: ModelServing, namespace: str,
                 canary_percent: int | None = None, timeout: float = 600, poll: float = 2,
                 log: Log = print) -> None:
        """Connect; ``canary_percent`` (1-100) is the new version's share until promoted."""
        super().__init__(api_client=api_client, serving=serving, namespace=namespace,
                         timeout=timeout, poll=poll, log=log)
        if canary_percent is not None and (isinstance(canary_percent, bool)
                                           or not 1 <= canary_percent <= 100):
            raise MlkubeError(f"canary percent is {canary_percent!r}: use 1 to 100, or none")
        self.canary_percent = canary_percent

    @property
    def base_url(self) -> str:
        """The InferenceService's cluster-local address (``status.address.url``).

        Before KServe has written one: the address it gives in its default (serverless)
        mode, ``http://<name>.<namespace>.svc.cluster.local``.
        """
        live = self._get(INFERENCE_SERVICE)
        url = (((live or {}).get("status") or {}).get("address") or {}).get("url")
        if not url:
            return f"http://{self.serving.name}.{self.namespace}.svc.cluster.local"
        parts = urlsplit(str(url))
        return f"{parts.scheme}://{parts.netloc}"

    def _bodies(self, serving: ModelServing, live: dict[str, dict[str, Any] | None]
                ) -> list[dict[str, Any]]:
        current = live["InferenceService"]
        # A canary needs something to share the traffic with: a different version serving.
        canary = (self.canary_percent
                  if current is not None and version_of(current) != serving.version else None)
        return [manifests.inference_service(serving, canary_percent=canary)]

    def _serves(self, live: dict[str, Any]) -> bool:
        """Live only with all the traffic: a canary left split by a killed deploy is not."""
        return self._progress(live, full_traffic=True).ready

    def promote(self) -> None:
        """Route all traffic to the new revision: drop ``canaryTrafficPercent``."""
        body = self._applied.get("InferenceService")
        if body is None:
            live = self._get(INFERENCE_SERVICE)
            if live is None:
                raise MlkubeError(f"cannot promote {self._where('InferenceService')}: it does "
                                  "not exist (roll a version out first)")
            body = restorable(live)
        predictor = (body.get("spec") or {}).get("predictor") or {}
        if "canaryTrafficPercent" not in predictor:
            return
        body = copy.deepcopy(body)
        del body["spec"]["predictor"]["canaryTrafficPercent"]
        self._apply(body)
        self._applied["InferenceService"] = body
        self._wait(version_of(body) or "?", "promote", full_traffic=True)

    def _progress(self, live: dict[str, Any], *, full_traffic: bool = False) -> Progress:
        status = live.get("status") or {}
        generation = meta_of(live).get("generation", 0)
        observed = status.get("observedGeneration", 0)
        if observed != generation:
            return Progress(False, note=f"KServe has not yet observed generation {generation} "
                                         f"(its status is of {observed})")
        model = status.get("modelStatus") or {}
        if model.get("transitionStatus") in _KSERVE_FAILED:
            return Progress(False, failure=_failure_info(model))
        predictor = (status.get("components") or {}).get("predictor") or {}
        created = predictor.get("latestCreatedRevision")
        ready_revision = predictor.get("latestReadyRevision")
        ready = conditions_of(live).get("Ready", {})
        if ready.get("status") == "True" and (not created or created == ready_revision):
            if not full_traffic or _full_traffic(predictor):
                return Progress(True)
            return Progress(False, note=f"traffic is moving to revision {ready_revision}")
        fatal = fatal_problems(self._pods(live)[0])
        if fatal:
            return Progress(False, failure=fatal[0])
        waiting = last_line(ready.get("message") or ready.get("reason") or "not ready yet")
        return Progress(False, note=f"revision {created or '?'}: {waiting}")

    def _pods(self, live: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        labels = {KSERVE_ISVC_LABEL: self.serving.name}
        created = (((live.get("status") or {}).get("components") or {}).get("predictor")
                   or {}).get("latestCreatedRevision")
        if created:
            labels[KNATIVE_REVISION_LABEL] = created
        return self._list(POD, labels=labels), [f"InferenceService/{self.serving.name}"]

    def _object_reasons(self, live: dict[str, Any]) -> list[str]:
        status = live.get("status") or {}
        reasons = []
        model = status.get("modelStatus") or {}
        told = ""
        if model.get("lastFailureInfo"):
            reasons.append(_failure_info(model))
            told = last_line(model["lastFailureInfo"].get("message") or "")
        failed = [c for c in status.get("conditions") or []
                  if c.get("status") == "False" and c.get("message")]
        failed.sort(key=lambda c: c.get("type") != "Ready")  # Ready sums the others up
        for condition in failed[:1]:
            message = last_line(condition["message"])
            if not told or told not in message:
                reasons.append(f"{condition.get('type')}: {message}")
        return reasons


def _failure_info(model_status: dict[str, Any]) -> str:
    info = model_status.get("lastFailureInfo") or {}
    text = str(info.get("reason") or model_status.get("transitionStatus"))
    if info.get("exitCode"):
        text += f" (exit code {info['exitCode']})"
    if info.get("message"):
        text += f": {last_line(info['message'])}"
    if info.get("modelRevisionName"):
        text += f" [revision {info['modelRevisionName']}]"
    return text


def _full_traffic(predictor: dict[str, Any]) -> bool:
    traffic = predictor.get("traffic")
    if not traffic:  # raw deployment mode: one Deployment, no revisions
        return True
    latest = predictor.get("latestReadyRevision")
    share = sum(t.get("percent") or 0 for t in traffic
                if t.get("revisionName") == latest or (t.get("latestRevision") and
                                                        not t.get("revisionName")))
    return bool(share >= 100)
