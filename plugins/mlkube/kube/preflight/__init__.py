"""Preflight: can this pod ever be admitted and scheduled, decided the way Kubernetes decides it.

Before a pod is submitted, :func:`verdict` runs what the API server and kube-scheduler (v1.36)
would run on it, as pure functions of typed ``kubernetes.client`` objects the caller has listed:

1. API defaulting (``pkg/apis/core/v1/defaults.go``): quantities rounded up to milli units,
   container requests defaulted from limits, pod-level requests and limits defaulted.
2. LimitRanger's mutation (``plugin/pkg/admission/limitranger/admission.go``): each container's
   unset limits take the LimitRange's ``default`` and its unset requests ``defaultRequest`` (with
   the LimitRange item's own defaulting: ``default`` from ``max``, ``defaultRequest`` from
   ``default``, then from ``min``). This happens before every other check.
3. Validation (``pkg/apis/core/validation/validation.go``): resource names, no negative values,
   requests at most limits, extended resources whole and with requests equal to limits,
   hugepages with cpu or memory, pod-level resources, tolerations and required node affinity.
4. LimitRanger's validation: ``min``, ``max`` and ``maxLimitRequestRatio`` per Container and Pod.
5. ResourceQuota admission (``plugin/pkg/admission/resourcequota``, the pod evaluator in
   ``pkg/quota/v1/evaluator/core/pods.go``): for every quota whose scopes match the pod
   (Terminating, NotTerminating, BestEffort, NotBestEffort, PriorityClass,
   CrossNamespacePodAffinity), the "must specify" rule (a quota that tracks cpu or memory
   requests or limits rejects a pod with a container that leaves them unset, unless pod-level
   resources are set), then ``status.used`` plus the pod's usage against the hard limit for
   ``requests.*``, ``limits.*``, bare names, hugepages, ``requests.<extended>``, ``pods`` and
   ``count/pods``.
6. Volumes (the scheduler's VolumeBinding PreFilter): each PersistentVolumeClaim the pod mounts
   exists, is not Lost and is not being deleted; and (its Filter) a claim already bound to a
   PersistentVolume with required node affinity (a local or zonal disk) admits only the nodes
   that affinity matches.
7. Nodes, filter by filter in the scheduler's order, the first failing filter naming why a node
   is rejected: NodeUnschedulable (cordon, unless ``node.kubernetes.io/unschedulable`` is
   tolerated), TaintToleration (NoSchedule and NoExecute taints; PreferNoSchedule never blocks;
   the not-ready/unreachable NoExecute tolerations that DefaultTolerationSeconds adds to every
   pod are added here too), NodeAffinity (nodeSelector and required node affinity: terms ORed,
   expressions ANDed, In/NotIn/Exists/DoesNotExist/Gt/Lt, matchFields on metadata.name) and
   NodeResourcesFit (allocatable, never capacity, for every resource the pod requests, extended
   ones included; the node's pod-count limit). A pod with ``spec.nodeName`` preset skips the
   scheduler: its node must exist and the kubelet's admission must pass (resources, node
   affinity, untolerated NoExecute taints; extended resources the node does not list at all are
   dropped, as the kubelet does).

"Can never" means "not even on an empty node": the scheduler compares a node's allocatable
minus the requests of the pods already there, but nodes are listed without their pods, so
preflight compares with allocatable alone. Likewise the pod-count limit (allocatable ``pods``)
is compared with the pods already on a node only when ``pods_per_node`` says how many there
are; without it, with none (a node that allows no pods at all still fails; one that reports no
allocatable ``pods`` is not checked for it). Quotas are taken as they are now (``status.used``),
since admission happens once, now.

Not modelled: host ports, pod (anti-)affinity and topology spread (they depend on other pods),
the topology of claims not bound yet (WaitForFirstConsumer) and attach limits, DRA, scheduling gates, admission webhooks and policies,
RuntimeClass admission (``spec.overhead`` is taken as given), the ResourceQuota admission
configuration's limitedResources, whether a named PriorityClass exists (Priority admission),
and quotas whose status the controller has not written yet (they are taken at ``spec.hard`` with
nothing used, as they will be once it has). Tolerations with the Lt/Gt operators are compared as
``toleration.go`` does with the TaintTolerationComparisonOperators feature gate on.

The package is laid out as the Kubernetes code it mirrors, one module per step, each naming its
source: :mod:`.resources` (quantities, resource names), :mod:`.podspec` (the pod's requests and
limits, aggregated), :mod:`.defaults` (1), :mod:`.limitranges` (2 and 4), :mod:`.validation` (3),
:mod:`.quota` (5), :mod:`.volumes` (6), and for 7 :mod:`.unschedulable`, :mod:`.taints`,
:mod:`.nodeaffinity`, :mod:`.fit` (sharing :mod:`.framework`) and :mod:`.nodename`. This module
composes them in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.client import (
    V1LimitRange,
    V1Node,
    V1PersistentVolume,
    V1PersistentVolumeClaim,
    V1Pod,
    V1ResourceQuota,
)

from mlkube.errors import MlkubeError
from mlkube.kube.preflight.defaults import _api_defaults
from mlkube.kube.preflight.fit import _fit
from mlkube.kube.preflight.framework import _classes, _Placing
from mlkube.kube.preflight.limitranges import _apply_limit_ranges, _limit_range_violations
from mlkube.kube.preflight.nodeaffinity import _selection
from mlkube.kube.preflight.nodename import _admit_bound
from mlkube.kube.preflight.podspec import _limits_of, _pod_field, _read, _ref, _requests_of, _Spec
from mlkube.kube.preflight.quota import _quota_problem
from mlkube.kube.preflight.resources import Requests, Resources, _asks, _Rejected
from mlkube.kube.preflight.taints import _taint_filter, _tolerations
from mlkube.kube.preflight.unschedulable import _cordoned
from mlkube.kube.preflight.validation import _invalid
from mlkube.kube.preflight.volumes import (
    _claims_problem,
    _mounted_claims,
    _volume_affinities,
    _volume_conflict,
)

__all__ = ["Requests", "Resources", "Verdict", "check_nodes", "check_quotas", "effective_requests",
           "pod_requests", "read_cluster", "verdict"]


@dataclass(frozen=True)
class Verdict:
    """What preflight found for a pod that may run.

    Attributes:
        nodes: the nodes it fits (empty node sense), in the order given; for a pod with
            ``spec.nodeName``, that node. Empty when the node check was skipped.
        requests: the effective requests the scheduler uses (every resource name).
        limits: the effective limits ResourceQuota counts.
        skipped: the checks that were not made (``"nodes"``, ``"claims"``, ``"volumes"``).
    """

    nodes: tuple[str, ...]
    requests: Resources
    limits: Resources
    skipped: tuple[str, ...] = ()

    @property
    def asks(self) -> str:
        """The requests as the "never" lines write them: ``cpu=4, memory=16Gi``."""
        return _asks(self.requests)


def _scheduler_reason(p: _Placing, node: V1Node) -> str | None:
    """The first filter (in kube-scheduler's order) that rejects ``node``."""
    reason = (_cordoned(p, node) or _taint_filter(p, node) or _selection(p.pod, node)
              or _volume_conflict(p, node))
    if reason:
        return reason
    return ", ".join(_fit(p, node, p.requests)) or None


def _place(p: _Placing, spec: _Spec, nodes: Sequence[V1Node], head: str) -> tuple[str, ...]:
    bound = _pod_field(p.pod, "node_name")
    if bound:
        return _admit_bound(p, spec, nodes, head, bound)
    if not nodes:
        raise MlkubeError(f"{head}: 0/0 nodes are available: there are no nodes in the cluster")
    verdicts = [(n.metadata.name, _scheduler_reason(p, n)) for n in nodes]
    fitting = tuple(name for name, reason in verdicts if reason is None)
    if not fitting:
        raise MlkubeError(f"{head}: 0/{len(nodes)} nodes are available: "
                          + _classes([r for _, r in verdicts if r]))
    return fitting


# -- the entry point --------------------------------------------------------------------------


def _prepared(pod: V1Pod, limit_ranges: Sequence[V1LimitRange]) -> _Spec:
    spec = _read(pod)
    _api_defaults(spec)
    _apply_limit_ranges(spec, limit_ranges)
    return spec


def effective_requests(pod: V1Pod, limit_ranges: Iterable[V1LimitRange] = ()) -> Resources:
    """What the scheduler asks nodes for: requests defaulted from limits and LimitRanges, app
    containers and sidecars summed, the largest init phase, pod-level requests, overhead.

    Raises:
        MlkubeError: when a quantity cannot be read.
    """
    try:
        return _requests_of(_prepared(pod, list(limit_ranges)))
    except _Rejected as exc:
        raise MlkubeError(f"pod {_ref(pod)}: rejected at admission: {exc}") from None


pod_requests = effective_requests


def verdict(pod: V1Pod, *, nodes: Iterable[V1Node] | None,
            quotas: Iterable[V1ResourceQuota] = (), limit_ranges: Iterable[V1LimitRange] = (),
            claims: Iterable[V1PersistentVolumeClaim] | None = None,
            volumes: Iterable[V1PersistentVolume] | None = None,
            pods_per_node: Mapping[str, int] | None = None) -> Verdict:
    """Decide whether ``pod`` can ever be admitted and scheduled (see the module docstring).

    Args:
        pod: the pod as it would be submitted (its namespace's objects are the ones passed).
        nodes: the cluster's nodes; ``None`` when they could not be listed (no node check).
        quotas: the namespace's ResourceQuotas (``status.used`` is what is used now).
        limit_ranges: the namespace's LimitRanges.
        claims: the namespace's PersistentVolumeClaims; ``None`` when unknown (no check).
        volumes: the cluster's PersistentVolumes, for the node affinity of bound claims;
            ``None`` when unknown (no check).
        pods_per_node: how many pods each node runs now, for its pod-count limit.

    Returns:
        What was found: the fitting nodes, the effective requests and limits, what was skipped.

    Raises:
        MlkubeError: one line saying what the pod asks and why it can never run.
    """
    limit_ranges = list(limit_ranges)
    claims = None if claims is None else list(claims)
    try:
        spec = _prepared(pod, limit_ranges)
    except _Rejected as exc:
        raise MlkubeError(f"pod {_ref(pod)}: rejected at admission: {exc}") from None
    requests, limits = _requests_of(spec), _limits_of(spec)
    head = f"pod {_ref(pod)} asks {_asks(requests)}"
    try:
        problems = _invalid(pod, spec) or _limit_range_violations(spec, limit_ranges)
        problem = "; ".join(problems) or _quota_problem(pod, spec, list(quotas), requests, limits)
    except _Rejected as exc:
        problem = str(exc)
    if problem:
        raise MlkubeError(f"{head}: rejected at admission: {problem}")
    node_list = None if nodes is None else list(nodes)
    skipped = tuple(what for what, absent in (("nodes", node_list is None),
                                              ("claims", claims is None),
                                              ("volumes", volumes is None and claims is not None
                                               and bool(_mounted_claims(pod)))) if absent)
    volume = None if claims is None else _claims_problem(pod, claims)
    if volume:
        where = "" if node_list is None else f"0/{len(node_list)} nodes are available: "
        raise MlkubeError(f"{head}: {where}{volume}")
    if node_list is None:
        return Verdict(nodes=(), requests=requests, limits=limits, skipped=skipped)
    placing = _Placing(pod=pod, requests=requests, tolerations=_tolerations(pod),
                       pods_per_node=pods_per_node,
                       volume_affinities=_volume_affinities(pod, claims or (), volumes or ()))
    fitting = _place(placing, spec, node_list, head)
    return Verdict(nodes=fitting, requests=requests, limits=limits, skipped=skipped)


def check_nodes(pod: V1Pod, nodes: Iterable[V1Node]) -> None:
    """Fail unless some node can ever take ``pod`` (:func:`verdict` with nodes only).

    Raises:
        MlkubeError: what the pod asks and, per class of node, why it was rejected.
    """
    verdict(pod, nodes=nodes)


def check_quotas(pod: V1Pod, quotas: Iterable[V1ResourceQuota]) -> None:
    """Fail when the namespace's quotas would reject ``pod`` (:func:`verdict` without nodes).

    Raises:
        MlkubeError: naming the quota, the resource, what is used, the limit and the ask.
    """
    verdict(pod, nodes=None, quotas=quotas)


def read_cluster(core: Any, namespace: str, warn: Callable[[str], Any]) -> dict[str, Any]:
    """What :func:`verdict` needs about ``namespace``, listed with ``core`` (a ``CoreV1Api``).

    A list the caller may not read (HTTP 401/403) is skipped with a warning: ``None`` for
    nodes and claims, nothing for quotas and LimitRanges. Both adapters and the CLI call this.
    """
    from kubernetes.client import ApiException

    reads = {
        "nodes": lambda: core.list_node().items,
        "quotas": lambda: core.list_namespaced_resource_quota(namespace).items,
        "limit_ranges": lambda: core.list_namespaced_limit_range(namespace).items,
        "claims": lambda: core.list_namespaced_persistent_volume_claim(namespace).items,
        "volumes": lambda: core.list_persistent_volume().items,
    }
    found: dict[str, Any] = {}
    for what, read in reads.items():
        try:
            found[what] = read()
        except ApiException as exc:
            if exc.status not in (401, 403):
                raise
            warn(f"preflight: may not list {what.replace('_', ' ')} (HTTP {exc.status}); that "
                 "check is skipped")
            found[what] = None if what in ("nodes", "claims", "volumes") else ()
    return found
