"""Cluster situations and what kube-scheduler (v1.36) and the API server's admission decide.

Each case is built from typed ``kubernetes.client`` objects and says why Kubernetes decides as it
does, citing the file in kubernetes/kubernetes that decides it. ``fits`` lists the nodes a pod may
run on; ``rejects`` is a regular expression for the one-line message of a pod that never can.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC

from kubernetes.client import (
    V1Affinity,
    V1Container,
    V1LimitRange,
    V1LimitRangeItem,
    V1LimitRangeSpec,
    V1Node,
    V1NodeAffinity,
    V1NodeSelector,
    V1NodeSelectorRequirement,
    V1NodeSelectorTerm,
    V1NodeSpec,
    V1NodeStatus,
    V1ObjectMeta,
    V1PersistentVolume,
    V1PersistentVolumeClaim,
    V1PersistentVolumeClaimSpec,
    V1PersistentVolumeClaimStatus,
    V1PersistentVolumeClaimVolumeSource,
    V1PersistentVolumeSpec,
    V1Pod,
    V1PodSpec,
    V1ResourceQuota,
    V1ResourceQuotaSpec,
    V1ResourceQuotaStatus,
    V1ResourceRequirements,
    V1ScopedResourceSelectorRequirement,
    V1ScopeSelector,
    V1Taint,
    V1Toleration,
    V1Volume,
    V1VolumeNodeAffinity,
)

# Where Kubernetes decides each rule (paths in github.com/kubernetes/kubernetes).
FIT = "pkg/scheduler/framework/plugins/noderesources/fit.go"
PODREQ = "staging/src/k8s.io/component-helpers/resource/helpers.go"
DEFAULTS = "pkg/apis/core/v1/defaults.go"
VALIDATION = "pkg/apis/core/validation/validation.go"
LIMITRANGER = "plugin/pkg/admission/limitranger/admission.go"
QUOTA = "staging/src/k8s.io/apiserver/pkg/admission/plugin/resourcequota/controller.go"
PODQUOTA = "pkg/quota/v1/evaluator/core/pods.go"
CORDON = "pkg/scheduler/framework/plugins/nodeunschedulable/node_unschedulable.go"
TAINTS = ("pkg/scheduler/framework/plugins/tainttoleration/taint_toleration.go, "
          "staging/src/k8s.io/api/core/v1/toleration.go")
DEFAULT_TOLERATIONS = "plugin/pkg/admission/defaulttolerationseconds/admission.go"
AFFINITY = "staging/src/k8s.io/component-helpers/scheduling/corev1/nodeaffinity/nodeaffinity.go"
LABELS = "staging/src/k8s.io/apimachinery/pkg/labels/selector.go"
VOLUMES = "pkg/scheduler/framework/plugins/volumebinding/volume_binding.go"
KUBELET = "pkg/kubelet/lifecycle/predicate.go"
ORDER = "pkg/scheduler/apis/config/v1/default_plugins.go, pkg/scheduler/framework/runtime/framework.go"

GPU = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU, "value": "present", "effect": "NoSchedule"}


# -- builders ---------------------------------------------------------------------------------


def node(name: str, alloc: Mapping[str, str] | None = None, *, labels: Mapping[str, str] | None = None,
         taints: Sequence[Mapping[str, str]] = (), unschedulable: bool | None = None,
         capacity: Mapping[str, str] | None = None) -> V1Node:
    return V1Node(
        metadata=V1ObjectMeta(name=name, labels=dict(labels or {})),
        spec=V1NodeSpec(unschedulable=unschedulable,
                        taints=[V1Taint(**t) for t in taints] or None),
        status=V1NodeStatus(allocatable=None if alloc is None else dict(alloc),
                            capacity=dict(capacity) if capacity else None))


def ctr(name: str = "main", requests: Mapping[str, str] | None = None,
        limits: Mapping[str, str] | None = None, restart: str | None = None) -> V1Container:
    res = V1ResourceRequirements(requests=dict(requests) if requests else None,
                                 limits=dict(limits) if limits else None)
    return V1Container(name=name, image="mlkube:test", resources=res, restart_policy=restart)


def sidecar(name: str, requests: Mapping[str, str]) -> V1Container:
    return ctr(name, requests, restart="Always")


def tol(key: str | None = None, op: str | None = None, value: str | None = None,
        effect: str | None = None) -> V1Toleration:
    return V1Toleration(key=key, operator=op, value=value, effect=effect)


def affinity(*terms: Sequence[tuple[str, str, Sequence[str] | None]],
             fields: Sequence[tuple[str, str, Sequence[str]]] = ()) -> V1Affinity:
    selector_terms = [V1NodeSelectorTerm(match_expressions=[
        V1NodeSelectorRequirement(key=k, operator=op, values=list(v) if v is not None else None)
        for k, op, v in term]) for term in terms]
    if fields:
        selector_terms.append(V1NodeSelectorTerm(match_fields=[
            V1NodeSelectorRequirement(key=k, operator=op, values=list(v)) for k, op, v in fields]))
    return V1Affinity(node_affinity=V1NodeAffinity(
        required_during_scheduling_ignored_during_execution=V1NodeSelector(
            node_selector_terms=selector_terms)))


def pod(*containers: V1Container, init: Sequence[V1Container] = (),
        node_selector: Mapping[str, str] | None = None,
        tolerations: Sequence[V1Toleration] = (), affinity: V1Affinity | None = None,
        node_name: str | None = None, overhead: Mapping[str, str] | None = None,
        requests: Mapping[str, str] | None = None, limits: Mapping[str, str] | None = None,
        claims: Sequence[str] = (), priority_class: str | None = None,
        deadline: int | None = None) -> V1Pod:
    pod_level = (V1ResourceRequirements(requests=dict(requests) if requests else None,
                                        limits=dict(limits) if limits else None)
                 if requests or limits else None)
    volumes = [V1Volume(name=c, persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
        claim_name=c)) for c in claims]
    return V1Pod(
        metadata=V1ObjectMeta(name="step", namespace="ml"),
        spec=V1PodSpec(
            containers=list(containers) or [ctr()], init_containers=list(init) or None,
            node_selector=dict(node_selector) if node_selector else None,
            tolerations=list(tolerations) or None, affinity=affinity, node_name=node_name,
            overhead=dict(overhead) if overhead else None, resources=pod_level,
            volumes=volumes or None, priority_class_name=priority_class,
            active_deadline_seconds=deadline, restart_policy="Never"))


def quota(name: str, hard: Mapping[str, str], used: Mapping[str, str] | None = None, *,
          scopes: Sequence[str] | None = None,
          priority: tuple[str, Sequence[str]] | None = None) -> V1ResourceQuota:
    selector = None
    if priority:
        selector = V1ScopeSelector(match_expressions=[V1ScopedResourceSelectorRequirement(
            scope_name="PriorityClass", operator=priority[0], values=list(priority[1]))])
    used = {k: "0" for k in hard} | dict(used or {})
    return V1ResourceQuota(
        metadata=V1ObjectMeta(name=name, namespace="ml"),
        spec=V1ResourceQuotaSpec(hard=dict(hard), scopes=list(scopes) if scopes else None,
                                 scope_selector=selector),
        status=V1ResourceQuotaStatus(hard=dict(hard), used=used))


def limit_range(kind: str = "Container", **bounds: Mapping[str, str]) -> V1LimitRange:
    item = V1LimitRangeItem(type=kind, default=bounds.get("default"),
                            default_request=bounds.get("default_request"),
                            max=bounds.get("max"), min=bounds.get("min"),
                            max_limit_request_ratio=bounds.get("ratio"))
    return V1LimitRange(metadata=V1ObjectMeta(name="limits", namespace="ml"),
                        spec=V1LimitRangeSpec(limits=[item]))


def pvc(name: str, phase: str = "Bound", deleting: bool = False) -> V1PersistentVolumeClaim:
    from datetime import datetime

    return V1PersistentVolumeClaim(
        metadata=V1ObjectMeta(name=name, namespace="ml", deletion_timestamp=(
            datetime(2026, 1, 1, tzinfo=UTC) if deleting else None)),
        spec=V1PersistentVolumeClaimSpec(volume_name="pv-1"),
        status=V1PersistentVolumeClaimStatus(phase=phase))


def pinned_pv(name: str, hostname: str) -> V1PersistentVolume:
    """A PersistentVolume only one node reaches (a local disk): required node affinity."""
    term = V1NodeSelectorTerm(match_expressions=[V1NodeSelectorRequirement(
        key="kubernetes.io/hostname", operator="In", values=[hostname])])
    return V1PersistentVolume(metadata=V1ObjectMeta(name=name), spec=V1PersistentVolumeSpec(
        node_affinity=V1VolumeNodeAffinity(required=V1NodeSelector(node_selector_terms=[term]))))


CPU4 = node("cpu-4", {"cpu": "4", "memory": "8Gi", "ephemeral-storage": "10Gi", "pods": "110"})
GPU2 = node("gpu-2", {"cpu": "32", "memory": "256Gi", GPU: "2", "pods": "110"})
GPU2_TAINTED = node("gpu-2t", {"cpu": "32", "memory": "256Gi", GPU: "2", "pods": "110"},
                    taints=[GPU_TAINT])
BIG = {"cpu": "64", "memory": "256Gi", "pods": "110"}


@dataclass(frozen=True)
class Case:
    id: str
    why: str
    cite: str
    pod: V1Pod
    nodes: Sequence[V1Node] | None = (CPU4,)
    quotas: Sequence[V1ResourceQuota] = ()
    limit_ranges: Sequence[V1LimitRange] = ()
    claims: Sequence[V1PersistentVolumeClaim] | None = None
    volumes: Sequence[V1PersistentVolume] | None = None
    pods_per_node: Mapping[str, int] | None = None
    fits: tuple[str, ...] | None = field(default=None)
    rejects: str | None = None


def _r(cpu: str | None = None, memory: str | None = None, **more: str) -> dict[str, str]:
    out = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    return out | {k.replace("__", "/").replace("_", "-"): v for k, v in more.items()}


def _gpu(n: str) -> dict[str, str]:
    return {GPU: n}


CASES: list[Case] = [
    # -- effective requests and NodeResourcesFit -------------------------------------------
    Case("fit-exactly-allocatable", "a pod asking exactly the node's allocatable fits: the "
         "filter fails only when the request exceeds allocatable minus requested", FIT,
         pod(ctr(requests=_r("4", "8Gi"))), fits=("cpu-4",)),
    Case("fit-1m-over", "one millicore more than allocatable does not fit", FIT,
         pod(ctr(requests=_r("4001m"))), rejects=r"Insufficient cpu \(has 4, asks 4001m\)"),
    Case("fit-1-byte-over", "one byte of memory more than allocatable does not fit", FIT,
         pod(ctr(requests=_r(memory="8589934593"))),
         rejects=r"Insufficient memory \(has 8Gi, asks 8589934593\)"),
    Case("allocatable-not-capacity", "the scheduler compares with allocatable, which is "
         "capacity minus system reservations", FIT,
         pod(ctr(requests=_r("8"))),
         nodes=[node("n", {"cpu": "7500m", "memory": "30Gi"}, capacity={"cpu": "8"})],
         rejects=r"Insufficient cpu \(has 7500m, asks 8\)"),
    Case("capacity-when-no-allocatable", "a node that reports no allocatable has it defaulted "
         "to its capacity (SetDefaults_NodeStatus)", DEFAULTS,
         pod(ctr(requests=_r("8"))), nodes=[node("n", None, capacity={"cpu": "8"})],
         fits=("n",)),
    Case("limits-only-defaults-requests", "requests default to limits when only limits are set, "
         "so a 6-cpu limit asks 6 cpu", DEFAULTS,
         pod(ctr(limits=_r("6"))), rejects=r"asks cpu=6: 0/1 nodes are available: 1 node: "
                                           r"Insufficient cpu \(has 4, asks 6\)"),
    Case("request-not-limit-counts", "the scheduler counts requests, not limits", PODREQ,
         pod(ctr(requests=_r("2"), limits=_r("6"))), fits=("cpu-4",)),
    Case("app-containers-summed", "app containers run together: their requests add up",
         PODREQ, pod(ctr("a", _r("3")), ctr("b", _r("3"))),
         rejects=r"asks cpu=6: .*Insufficient cpu \(has 4, asks 6\)"),
    Case("regular-init-max", "a regular init container runs alone: the pod asks the larger of "
         "it and the app containers", PODREQ,
         pod(ctr(requests=_r("1")), init=[ctr("prep", _r("4"))]), fits=("cpu-4",)),
    Case("regular-init-too-big", "the largest init container alone can exceed the node", PODREQ,
         pod(ctr(requests=_r("1")), init=[ctr("prep", _r("5"))]),
         rejects=r"Insufficient cpu \(has 4, asks 5\)"),
    Case("sidecar-added", "a sidecar (init container with restartPolicy Always) keeps running, "
         "so it adds to the app containers: 2 + 3 = 5", PODREQ,
         pod(ctr(requests=_r("3")), init=[sidecar("proxy", _r("2"))]),
         rejects=r"asks cpu=5: .*Insufficient cpu \(has 4, asks 5\)"),
    Case("regular-init-not-added", "the same 2-cpu init container without restartPolicy "
         "Always is not added: max(2, 3) = 3", PODREQ,
         pod(ctr(requests=_r("3")), init=[ctr("prep", _r("2"))]), fits=("cpu-4",)),
    Case("init-after-sidecar", "a regular init container runs next to the sidecars started "
         "before it: 1 + 3.5 = 4.5", PODREQ,
         pod(ctr(requests=_r("2")), init=[sidecar("proxy", _r("1")), ctr("prep", _r("3500m"))]),
         rejects=r"Insufficient cpu \(has 4, asks 4500m\)"),
    Case("init-before-sidecar", "a regular init container before the sidecar runs alone: "
         "max(3.5, 2 + 1) = 3.5", PODREQ,
         pod(ctr(requests=_r("2")), init=[ctr("prep", _r("3500m")), sidecar("proxy", _r("1"))]),
         fits=("cpu-4",)),
    Case("pod-level-requests", "pod-level spec.resources requests replace the containers' "
         "aggregate (1 + 1) for cpu and memory", PODREQ,
         pod(ctr("a", _r("1")), ctr("b", _r("1")), requests=_r("3")),
         nodes=[node("n", {"cpu": "2500m", "memory": "8Gi"})],
         rejects=r"asks cpu=3: .*Insufficient cpu \(has 2500m, asks 3\)"),
    Case("pod-level-limits-only", "pod-level requests default to pod-level limits when no "
         "container requests the resource", DEFAULTS,
         pod(ctr(), limits=_r("6")), rejects=r"asks cpu=6: .*Insufficient cpu"),
    Case("pod-level-limit-container-request", "with a pod-level limit, pod-level requests "
         "default to the containers' aggregate request when they set one", DEFAULTS,
         pod(ctr(requests=_r("1")), limits=_r("6")), fits=("cpu-4",)),
    Case("overhead-added", "spec.overhead (from the RuntimeClass) is added to the requests",
         PODREQ, pod(ctr(requests=_r("3800m")), overhead=_r("250m")),
         rejects=r"asks cpu=4050m: .*Insufficient cpu \(has 4, asks 4050m\)"),
    Case("gpu-on-cpu-node", "an extended resource the node does not list is 0 there", FIT,
         pod(ctr(limits=_gpu("1"))),
         rejects=r"Insufficient nvidia\.com/gpu \(has 0, asks 1\)"),
    Case("extended-resource-short", "every extended resource name is compared", FIT,
         pod(ctr(limits={"example.com/fpga": "2"})),
         nodes=[node("n", {"cpu": "4", "example.com/fpga": "1"})],
         rejects=r"Insufficient example\.com/fpga \(has 1, asks 2\)"),
    Case("hugepages-short", "hugepages are scalar resources compared with allocatable", FIT,
         pod(ctr(limits=_r(memory="1Gi", hugepages_2Mi="1Gi"))),
         nodes=[node("n", {"cpu": "4", "memory": "8Gi", "hugepages-2Mi": "512Mi"})],
         rejects=r"Insufficient hugepages-2Mi \(has 512Mi, asks 1Gi\)"),
    Case("ephemeral-storage-short", "ephemeral-storage requests are compared too", FIT,
         pod(ctr(requests=_r(ephemeral_storage="20Gi"))),
         rejects=r"Insufficient ephemeral-storage \(has 10Gi, asks 20Gi\)"),
    Case("best-effort-fits", "a pod without requests passes NodeResourcesFit on any node with "
         "room for one more pod", FIT, pod(ctr()), fits=("cpu-4",)),
    Case("every-insufficient-resource", "NodeResourcesFit reports every resource that does not "
         "fit, not only the first", FIT, pod(ctr(requests=_r("8", "16Gi"))),
         rejects=r"1 node: Insufficient cpu \(has 4, asks 8\), Insufficient memory "
                 r"\(has 8Gi, asks 16Gi\)$"),
    # -- the node's pod count -----------------------------------------------------------------
    Case("pods-full", "a node running as many pods as allocatable pods allows takes no more",
         FIT, pod(ctr()), pods_per_node={"cpu-4": 110},
         rejects=r"Too many pods \(allows 110, has 110\)"),
    Case("pods-one-left", "one pod below the limit still fits", FIT, pod(ctr()),
         pods_per_node={"cpu-4": 109}, fits=("cpu-4",)),
    Case("pods-none-allowed", "a node whose allocatable pods is 0 never takes a pod", FIT,
         pod(ctr()), nodes=[node("n", {"cpu": "4", "pods": "0"})],
         rejects=r"Too many pods \(allows 0, has 0\)"),
    # -- LimitRange ---------------------------------------------------------------------------
    Case("limitrange-default-applied", "a container that declares nothing gets the "
         "LimitRange's default limit, and its request defaults to that default too",
         f"{LIMITRANGER}, {DEFAULTS} (SetDefaults_LimitRangeItem)",
         pod(ctr()), limit_ranges=[limit_range(default=_r("8"))],
         rejects=r"asks cpu=8: .*Insufficient cpu \(has 4, asks 8\)"),
    Case("limitrange-default-request", "defaultRequest sets the request, default the limit",
         LIMITRANGER, pod(ctr()),
         limit_ranges=[limit_range(default=_r("8"), default_request=_r("100m"))],
         fits=("cpu-4",)),
    Case("limitrange-declared-wins", "a request the container sets is kept; only the unset "
         "limit is defaulted", LIMITRANGER, pod(ctr(requests=_r("1"))),
         limit_ranges=[limit_range(default=_r("2"))], fits=("cpu-4",)),
    Case("limitrange-limit-below-request", "a defaulted limit below the container's request "
         "fails validation (requests must not exceed limits)", f"{LIMITRANGER}, {VALIDATION}",
         pod(ctr(requests=_r("2"))), limit_ranges=[limit_range(default=_r("1"))],
         rejects=r"rejected at admission: container main: cpu request 2 must be less than or "
                 r"equal to its limit 1"),
    Case("limitrange-max", "a limit above the LimitRange's max is rejected", LIMITRANGER,
         pod(ctr(limits=_r("3"))), limit_ranges=[limit_range(max=_r("2"))],
         rejects=r"maximum cpu usage per Container is 2, but limit is 3"),
    Case("limitrange-max-defaults-limit", "max also becomes the default limit, so a container "
         "with only a request satisfies it", f"{DEFAULTS} (SetDefaults_LimitRangeItem)",
         pod(ctr(requests=_r(memory="512Mi"))), limit_ranges=[limit_range(max=_r(memory="1Gi"))],
         fits=("cpu-4",)),
    Case("limitrange-min", "a request below the LimitRange's min is rejected", LIMITRANGER,
         pod(ctr(requests=_r(memory="128Mi"))), limit_ranges=[limit_range(min=_r(memory="256Mi"))],
         rejects=r"minimum memory usage per Container is 256Mi, but request is 128Mi"),
    Case("limitrange-ratio", "limit/request above maxLimitRequestRatio is rejected",
         LIMITRANGER, pod(ctr(requests=_r("1"), limits=_r("4"))),
         limit_ranges=[limit_range(ratio=_r("2"))],
         rejects=r"cpu max limit to request ratio per Container is 2, but provided ratio is 4"),
    Case("limitrange-pod-max", "a Pod item bounds the pod's total", LIMITRANGER,
         pod(ctr("a", _r("1500m"), _r("1500m")), ctr("b", _r("1500m"), _r("1500m"))),
         limit_ranges=[limit_range("Pod", max=_r("2"))],
         rejects=r"maximum cpu usage per Pod is 2, but limit is 3"),
    Case("limitrange-before-quota", "LimitRanger mutates before ResourceQuota validates: a "
         "defaulted cpu limit satisfies a quota on limits.cpu", f"{LIMITRANGER}, {PODQUOTA}",
         pod(ctr(requests=_r("1"))), limit_ranges=[limit_range(default=_r("2"))],
         quotas=[quota("compute", {"limits.cpu": "10"})], fits=("cpu-4",)),
    # -- ResourceQuota ------------------------------------------------------------------------
    Case("quota-exact-boundary", "used + asked equal to hard is admitted (LessThanOrEqual)",
         QUOTA, pod(ctr(requests=_r("2"))),
         quotas=[quota("compute", {"requests.cpu": "4"}, {"requests.cpu": "2"})],
         fits=("cpu-4",)),
    Case("quota-1m-over", "one millicore over the quota is rejected", QUOTA,
         pod(ctr(requests=_r("2001m"))),
         quotas=[quota("compute", {"requests.cpu": "4"}, {"requests.cpu": "2"})],
         rejects=r"rejected at admission: exceeded quota compute: requests\.cpu used 2, "
                 r"limit 4, asks 2001m; set cpu \(or cpu_limit\) lower or raise the quota$"),
    Case("quota-bare-name", "a bare cpu quota counts requests.cpu", PODQUOTA,
         pod(ctr(requests=_r("2"))), quotas=[quota("compute", {"cpu": "4"}, {"cpu": "3"})],
         rejects=r"exceeded quota compute: cpu used 3, limit 4, asks 2"),
    Case("quota-limits-memory", "limits.* quotas count the limits", PODQUOTA,
         pod(ctr(requests=_r(memory="1Gi"), limits=_r(memory="4Gi"))),
         quotas=[quota("compute", {"limits.memory": "8Gi"}, {"limits.memory": "6Gi"})],
         rejects=r"limits\.memory used 6Gi, limit 8Gi, asks 4Gi; set memory_limit lower"),
    Case("quota-must-specify", "a quota that tracks limits.cpu rejects a container without a "
         "cpu limit, even with room left", PODQUOTA,
         pod(ctr(requests=_r("1", "1Gi"), limits=_r(memory="1Gi"))),
         quotas=[quota("compute", {"limits.cpu": "8"})],
         rejects=r"rejected at admission: quota compute tracks limits\.cpu, which the pod "
                 r"leaves unset: give the step a cpu_limit \(operators: cpu_limit=; Argo: "
                 r"--cpu-limit\)$"),
    Case("quota-must-specify-by-limit", "a memory limit alone satisfies a requests.memory "
         "quota, since the request defaults to it", f"{PODQUOTA}, {DEFAULTS}",
         pod(ctr(limits=_r(memory="1Gi"))), quotas=[quota("compute", {"requests.memory": "8Gi"})],
         fits=("cpu-4",)),
    Case("quota-must-specify-init", "every init container must set what the quota tracks too",
         PODQUOTA, pod(ctr(requests=_r("1"), limits=_r("1")), init=[ctr("prep")]),
         quotas=[quota("compute", {"limits.cpu": "8"})],
         rejects=r"quota compute tracks limits\.cpu, which the pod leaves unset "
                 r"\(limits\.cpu: prep\)"),
    Case("quota-must-specify-pod-level", "with pod-level resources the per-container 'must "
         "specify' check is skipped", PODQUOTA,
         pod(ctr(), limits=_r("2")), quotas=[quota("compute", {"limits.cpu": "8"})],
         fits=("cpu-4",)),
    Case("quota-pods", "the pods count includes the new pod", PODQUOTA, pod(ctr()),
         quotas=[quota("count", {"pods": "10"}, {"pods": "10"})],
         rejects=r"exceeded quota count: pods used 10, limit 10, asks 1; wait for other pods"),
    Case("quota-count-pods", "count/pods counts the new pod as an object", PODQUOTA, pod(ctr()),
         quotas=[quota("count", {"count/pods": "5"}, {"count/pods": "5"})],
         rejects=r"count/pods used 5, limit 5, asks 1"),
    Case("quota-gpu-boundary", "requests.nvidia.com/gpu: 3 used + 1 = 4 is admitted", PODQUOTA,
         pod(ctr(limits=_gpu("1"))), nodes=[GPU2],
         quotas=[quota("gpus", {"requests.nvidia.com/gpu": "4"}, {"requests.nvidia.com/gpu": "3"})],
         fits=("gpu-2",)),
    Case("quota-gpu-over", "requests.nvidia.com/gpu: 3 used + 2 > 4 is rejected", PODQUOTA,
         pod(ctr(limits=_gpu("2"))), nodes=[GPU2],
         quotas=[quota("gpus", {"requests.nvidia.com/gpu": "4"}, {"requests.nvidia.com/gpu": "3"})],
         rejects=r"requests\.nvidia\.com/gpu used 3, limit 4, asks 2; ask for fewer GPUs"),
    Case("quota-besteffort-no-match", "a BestEffort-scoped quota ignores a pod with requests",
         PODQUOTA, pod(ctr(requests=_r("1"))),
         quotas=[quota("be", {"pods": "0"}, scopes=["BestEffort"])], fits=("cpu-4",)),
    Case("quota-besteffort-match", "a BestEffort-scoped quota counts a pod without requests",
         PODQUOTA, pod(ctr()), quotas=[quota("be", {"pods": "0"}, scopes=["BestEffort"])],
         rejects=r"exceeded quota be: pods used 0, limit 0, asks 1"),
    Case("quota-terminating-no-match", "a Terminating-scoped quota ignores a pod without "
         "activeDeadlineSeconds", PODQUOTA, pod(ctr()),
         quotas=[quota("t", {"pods": "0"}, scopes=["Terminating"])], fits=("cpu-4",)),
    Case("quota-terminating-match", "a Terminating-scoped quota counts a pod with "
         "activeDeadlineSeconds", PODQUOTA, pod(ctr(), deadline=600),
         quotas=[quota("t", {"pods": "0"}, scopes=["Terminating"])],
         rejects=r"exceeded quota t: pods"),
    Case("quota-priority-no-match", "a PriorityClass In [high] quota ignores priority low",
         PODQUOTA, pod(ctr(), priority_class="low"),
         quotas=[quota("hi", {"pods": "0"}, priority=("In", ["high"]))], fits=("cpu-4",)),
    Case("quota-overhead-counted", "the pod's overhead counts against requests.cpu", PODQUOTA,
         pod(ctr(requests=_r("3900m")), overhead=_r("200m")),
         quotas=[quota("compute", {"requests.cpu": "4"})],
         rejects=r"exceeded quota compute: requests\.cpu used 0, limit 4, asks 4100m"),
    Case("quota-untracked", "a quota on storage and claims does not govern pods", PODQUOTA,
         pod(ctr()), quotas=[quota("storage", {"requests.storage": "1Gi",
                                               "persistentvolumeclaims": "0"},
                                   {"requests.storage": "1Gi"})], fits=("cpu-4",)),
    Case("quota-constraints-first", "every matching quota's 'must specify' is checked before "
         "any usage, so quota b's rejection comes before quota a's excess", QUOTA,
         pod(ctr(requests=_r("1"))),
         quotas=[quota("a", {"requests.cpu": "1"}, {"requests.cpu": "1"}),
                 quota("b", {"limits.memory": "8Gi"})],
         rejects=r"quota b tracks limits\.memory, which the pod leaves unset: give the step a "
                 r"memory_limit"),
    # -- validation -----------------------------------------------------------------------------
    Case("gpu-request-ne-limit", "extended resources cannot be overcommitted: request must "
         "equal limit", VALIDATION, pod(ctr(requests=_gpu("1"), limits=_gpu("2"))), nodes=[GPU2],
         rejects=r"rejected at admission: container main: nvidia\.com/gpu request 1 must equal "
                 r"its limit 2"),
    Case("gpu-request-without-limit", "an extended resource request needs a limit", VALIDATION,
         pod(ctr(requests=_gpu("1"))), nodes=[GPU2],
         rejects=r"nvidia\.com/gpu is requested without a limit"),
    Case("gpu-limit-only", "a GPU limit alone is enough: the request defaults to it",
         f"{DEFAULTS}, {VALIDATION}", pod(ctr(limits=_gpu("1"))), nodes=[CPU4, GPU2],
         fits=("gpu-2",)),
    Case("gpu-fractional", "extended resources are whole numbers", VALIDATION,
         pod(ctr(limits=_gpu("500m"))), nodes=[GPU2],
         rejects=r"nvidia\.com/gpu limit 500m must be an integer"),
    Case("hugepages-need-cpu-or-memory", "hugepages alone are invalid", VALIDATION,
         pod(ctr(limits=_r(hugepages_2Mi="2Mi"))), rejects=r"hugepages require a cpu or memory"),
    Case("request-above-limit", "a request above its limit is invalid", VALIDATION,
         pod(ctr(requests=_r("2"), limits=_r("1"))),
         rejects=r"cpu request 2 must be less than or equal to its limit 1"),
    # -- taints and tolerations -------------------------------------------------------------
    Case("noschedule-untolerated", "a NoSchedule taint the pod does not tolerate blocks", TAINTS,
         pod(ctr(limits=_gpu("1"))), nodes=[GPU2_TAINTED],
         rejects=r"1 node: taint nvidia\.com/gpu=present:NoSchedule not tolerated$"),
    Case("prefer-no-schedule", "PreferNoSchedule only lowers the score, it never blocks", TAINTS,
         pod(ctr()), nodes=[node("n", BIG, taints=[{**GPU_TAINT, "effect": "PreferNoSchedule"}])],
         fits=("n",)),
    Case("noexecute-untolerated", "a NoExecute taint the pod does not tolerate blocks", TAINTS,
         pod(ctr()), nodes=[node("n", BIG, taints=[{"key": "maint", "effect": "NoExecute"}])],
         rejects=r"taint maint:NoExecute not tolerated"),
    Case("tolerated-exists", "operator Exists on the key tolerates any value", TAINTS,
         pod(ctr(limits=_gpu("1")), tolerations=[tol(GPU, "Exists", effect="NoSchedule")]),
         nodes=[GPU2_TAINTED], fits=("gpu-2t",)),
    Case("tolerated-equal-wrong-value", "operator Equal compares the value", TAINTS,
         pod(ctr(), tolerations=[tol(GPU, "Equal", "absent", "NoSchedule")]),
         nodes=[GPU2_TAINTED], rejects=r"taint nvidia\.com/gpu=present:NoSchedule not tolerated"),
    Case("tolerated-catch-all", "an empty key with operator Exists tolerates every taint",
         TAINTS, pod(ctr(), tolerations=[tol(op="Exists")]),
         nodes=[node("n", BIG, taints=[GPU_TAINT, {"key": "x", "effect": "NoExecute"}])],
         fits=("n",)),
    Case("toleration-effect-mismatch", "a NoSchedule toleration does not tolerate NoExecute",
         TAINTS, pod(ctr(), tolerations=[tol("maint", "Exists", effect="NoSchedule")]),
         nodes=[node("n", BIG, taints=[{"key": "maint", "effect": "NoExecute"}])],
         rejects=r"taint maint:NoExecute not tolerated"),
    Case("toleration-empty-effect", "an empty effect matches every effect", TAINTS,
         pod(ctr(), tolerations=[tol("maint", "Exists")]),
         nodes=[node("n", BIG, taints=[{"key": "maint", "effect": "NoExecute"}])], fits=("n",)),
    Case("not-ready-noexecute", "every pod gets not-ready/unreachable NoExecute tolerations "
         "from DefaultTolerationSeconds admission", DEFAULT_TOLERATIONS,
         pod(ctr()), nodes=[node("n", BIG, taints=[
             {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}])], fits=("n",)),
    Case("not-ready-noschedule", "the not-ready NoSchedule taint is not tolerated by default",
         f"{TAINTS}, {DEFAULT_TOLERATIONS}", pod(ctr()), nodes=[node("n", BIG, taints=[
             {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}])],
         rejects=r"taint node\.kubernetes\.io/not-ready:NoSchedule not tolerated"),
    Case("unreachable", "an unreachable node carries NoExecute (tolerated by default) and "
         "NoSchedule (not)", f"{TAINTS}, {DEFAULT_TOLERATIONS}", pod(ctr()),
         nodes=[node("n", BIG, taints=[
             {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
             {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}])],
         rejects=r"taint node\.kubernetes\.io/unreachable:NoSchedule not tolerated"),
    # -- cordon -------------------------------------------------------------------------------
    Case("cordoned", "a cordoned node (spec.unschedulable) takes no new pods", CORDON, pod(ctr()),
         nodes=[node("n", BIG, unschedulable=True)], rejects=r"1 node: cordoned"),
    Case("cordoned-tolerated", "a pod tolerating node.kubernetes.io/unschedulable:NoSchedule "
         "ignores the cordon", CORDON,
         pod(ctr(), tolerations=[tol("node.kubernetes.io/unschedulable", "Exists",
                                     effect="NoSchedule")]),
         nodes=[node("n", BIG, unschedulable=True)], fits=("n",)),
    Case("cordoned-catch-all", "a catch-all toleration also tolerates the cordon", CORDON,
         pod(ctr(), tolerations=[tol(op="Exists")]),
         nodes=[node("n", BIG, unschedulable=True)], fits=("n",)),
    Case("first-failing-filter", "filters run in order (NodeUnschedulable, TaintToleration, "
         "NodeAffinity, NodeResourcesFit) and the first failure is the node's reason", ORDER,
         pod(ctr(requests=_r("100"))),
         nodes=[node("n", {"cpu": "1"}, unschedulable=True, taints=[GPU_TAINT])],
         rejects=r"1 node: cordoned \(spec\.unschedulable\)$"),
    # -- node selection -----------------------------------------------------------------------
    Case("nodeselector-mismatch", "every nodeSelector label must match", AFFINITY,
         pod(ctr(), node_selector={"disk": "ssd"}), nodes=[node("n", BIG, labels={"disk": "hdd"})],
         rejects=r"labels do not match nodeSelector disk=ssd"),
    Case("affinity-in", "In matches one of the values", AFFINITY,
         pod(ctr(), affinity=affinity([("zone", "In", ["a", "b"])])),
         nodes=[node("n", BIG, labels={"zone": "b"})], fits=("n",)),
    Case("affinity-notin-absent", "NotIn matches a node without the label", LABELS,
         pod(ctr(), affinity=affinity([("zone", "NotIn", ["a"])])), nodes=[node("n", BIG)],
         fits=("n",)),
    Case("affinity-doesnotexist", "DoesNotExist fails on a node with the label", LABELS,
         pod(ctr(), affinity=affinity([("spot", "DoesNotExist", None)])),
         nodes=[node("n", BIG, labels={"spot": "true"})],
         rejects=r"labels match no required nodeAffinity term"),
    Case("affinity-exists", "Exists matches any value", LABELS,
         pod(ctr(), affinity=affinity([("gpu", "Exists", None)])),
         nodes=[node("n", BIG, labels={"gpu": ""})], fits=("n",)),
    Case("affinity-gt", "Gt compares integers", LABELS,
         pod(ctr(), affinity=affinity([("cores", "Gt", ["4"])])),
         nodes=[node("n", BIG, labels={"cores": "8"})], fits=("n",)),
    Case("affinity-gt-not-integer", "Gt fails on a label that is not an integer", LABELS,
         pod(ctr(), affinity=affinity([("cores", "Gt", ["4"])])),
         nodes=[node("n", BIG, labels={"cores": "eight"})],
         rejects=r"labels match no required nodeAffinity term"),
    Case("affinity-lt-boundary", "Lt is strict: 4 is not less than 4", LABELS,
         pod(ctr(), affinity=affinity([("cores", "Lt", ["4"])])),
         nodes=[node("n", BIG, labels={"cores": "4"})],
         rejects=r"labels match no required nodeAffinity term"),
    Case("affinity-terms-ored", "nodeSelectorTerms are ORed", AFFINITY,
         pod(ctr(), affinity=affinity([("zone", "In", ["a"])], [("zone", "In", ["b"])])),
         nodes=[node("n", BIG, labels={"zone": "b"})], fits=("n",)),
    Case("affinity-expressions-anded", "matchExpressions in a term are ANDed", AFFINITY,
         pod(ctr(), affinity=affinity([("zone", "In", ["b"]), ("disk", "In", ["ssd"])])),
         nodes=[node("n", BIG, labels={"zone": "b", "disk": "hdd"})],
         rejects=r"labels match no required nodeAffinity term"),
    Case("affinity-match-fields", "matchFields selects by metadata.name", AFFINITY,
         pod(ctr(), affinity=affinity(fields=[("metadata.name", "In", ["b"])])),
         nodes=[node("a", BIG), node("b", BIG)], fits=("b",)),
    # -- spec.nodeName --------------------------------------------------------------------------
    Case("nodename-missing", "a pod bound to a node that does not exist never runs", KUBELET,
         pod(ctr(), node_name="ghost"), rejects=r"spec\.nodeName is ghost, which is not in the "
                                                r"cluster"),
    Case("nodename-no-resources", "the kubelet rejects a bound pod its node cannot hold",
         KUBELET, pod(ctr(requests=_r("8")), node_name="cpu-4"),
         rejects=r"spec\.nodeName is cpu-4, whose kubelet rejects it: Insufficient cpu "
                 r"\(has 4, asks 8\)"),
    Case("nodename-ignores-cordon-and-noschedule", "a bound pod skips the scheduler: cordon and "
         "NoSchedule taints do not apply", KUBELET, pod(ctr(requests=_r("1")), node_name="n"),
         nodes=[node("n", BIG, unschedulable=True, taints=[GPU_TAINT])], fits=("n",)),
    Case("nodename-noexecute", "the kubelet rejects an untolerated NoExecute taint", KUBELET,
         pod(ctr(), node_name="n"),
         nodes=[node("n", BIG, taints=[{"key": "maint", "effect": "NoExecute"}])],
         rejects=r"whose kubelet rejects it: taint maint:NoExecute not tolerated"),
    Case("nodename-unlisted-extended", "the kubelet drops extended resources its node does not "
         "list at all (removeMissingExtendedResources)", KUBELET,
         pod(ctr(limits=_gpu("1")), node_name="cpu-4"), fits=("cpu-4",)),
    Case("nodename-listed-extended", "an extended resource the node lists (even as 0) is "
         "checked", KUBELET, pod(ctr(limits=_gpu("1")), node_name="n"),
         nodes=[node("n", {"cpu": "4", GPU: "0"})],
         rejects=r"whose kubelet rejects it: Insufficient nvidia\.com/gpu \(has 0, asks 1\)"),
    # -- volumes --------------------------------------------------------------------------------
    Case("pvc-missing", "a pod mounting a claim that does not exist is unschedulable", VOLUMES,
         pod(ctr(), claims=["artifacts"]), claims=[pvc("other")],
         rejects=r'0/1 nodes are available: persistentvolumeclaim "artifacts" not found'),
    Case("pvc-lost", "a claim whose volume is gone (Lost) is unschedulable", VOLUMES,
         pod(ctr(), claims=["artifacts"]), claims=[pvc("artifacts", "Lost")],
         rejects=r'persistentvolumeclaim "artifacts" bound to non-existent persistentvolume'),
    Case("pvc-deleting", "a claim being deleted is unschedulable", VOLUMES,
         pod(ctr(), claims=["artifacts"]), claims=[pvc("artifacts", deleting=True)],
         rejects=r'persistentvolumeclaim "artifacts" is being deleted'),
    Case("pvc-pending", "a Pending claim may still bind", VOLUMES,
         pod(ctr(), claims=["artifacts"]), claims=[pvc("artifacts", "Pending")], fits=("cpu-4",)),
    Case("pvc-unknown", "claims=None means the claims could not be read: no check", VOLUMES,
         pod(ctr(), claims=["artifacts"]), claims=None, fits=("cpu-4",)),
    Case("pv-node-affinity", "a claim bound to a volume pinned to one node admits only that "
         "node (VolumeBinding Filter: the bound PV's required node affinity)", VOLUMES,
         pod(ctr(), claims=["artifacts"]), claims=[pvc("artifacts")],
         volumes=[pinned_pv("pv-1", "a")],
         nodes=[node(n, {"cpu": "4"}, labels={"kubernetes.io/hostname": n}) for n in "ab"],
         fits=("a",)),
    Case("pv-node-affinity-none", "no node the bound volume reaches fits: the scheduler's "
         "words", VOLUMES, pod(ctr(), claims=["artifacts"]), claims=[pvc("artifacts")],
         volumes=[pinned_pv("pv-1", "elsewhere")],
         nodes=[node("b", {"cpu": "4"}, labels={"kubernetes.io/hostname": "b"})],
         rejects=r"0/1 nodes are available: 1 node: didn't match PersistentVolume's node "
                 r"affinity \(persistentvolume pv-1 of claim artifacts\)"),
    # -- the message ------------------------------------------------------------------------------
    Case("node-classes", "nodes are grouped by why they were rejected, the largest group first",
         f"{TAINTS}, {FIT}", pod(ctr(limits=_gpu("4"))),
         nodes=[node(f"t{i}", {"cpu": "32", GPU: "8"}, taints=[GPU_TAINT]) for i in range(3)]
         + [node("g", {"cpu": "32", GPU: "2"})],
         rejects=r"^pod ml/step asks nvidia\.com/gpu=4: 0/4 nodes are available: 3 nodes: taint "
                 r"nvidia\.com/gpu=present:NoSchedule not tolerated; 1 node: Insufficient "
                 r"nvidia\.com/gpu \(has 2, asks 4\)$"),
]
