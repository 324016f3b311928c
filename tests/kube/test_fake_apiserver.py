"""The fake API server's own behaviour, where tests/kube/test_targets_cluster.py relies on it to
act as Kubernetes does: server-side apply with field ownership per manager, the scale
subresource and the HPA, controllers on their own clock, rolling updates, and RBAC.

Each test goes through HTTP with the real ``kubernetes`` client where the client matters (the
status codes, the messages), and looks at the store directly where only the outcome does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fake_apiserver import (
    CONTROLLER_MANAGER,
    KINDS,
    FakeApiServer,
    Outcome,
    owners,
    version_of,
)
from kubernetes.client import AppsV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, ForbiddenError

DEPLOYMENT = KINDS["Deployment"]
HPA = KINDS["HorizontalPodAutoscaler"]


def deployment(version: str = "1", replicas: int | None = None,
               **spec: Any) -> dict[str, Any]:
    """A Deployment ``web`` whose pods run ``version`` (what ``outcome`` functions read)."""
    body: dict[str, Any] = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "ml", "labels": {"app": "web"}},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{
                                  "name": "web", "image": "nginx:1.27",
                                  "command": ["serve", "--version", version]}]}},
                 **spec}}
    if replicas is not None:
        body["spec"]["replicas"] = replicas
    return body


ROLLING = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def autoscaler(low: int = 1, high: int = 5) -> dict[str, Any]:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "ml"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": "web"},
                     "minReplicas": low, "maxReplicas": high,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu",
                         "target": {"type": "Utilization", "averageUtilization": 70}}}]}}


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server
        assert server.schema_errors() == []


@pytest.fixture
def stepped() -> Iterator[FakeApiServer]:
    """A fake whose controllers move only when the test calls ``step``."""
    with FakeApiServer(clock=False) as server:
        yield server
        assert server.schema_errors() == []


class Client:
    """Server-side apply through the real dynamic client."""

    def __init__(self, server: FakeApiServer) -> None:
        self.dynamic = DynamicClient(server.api_client())

    def apply(self, body: dict[str, Any], manager: str, force: bool | None = None
              ) -> dict[str, Any]:
        resource = self.dynamic.resources.get(api_version=body["apiVersion"], kind=body["kind"])
        return dict(resource.server_side_apply(
            body=body, name=body["metadata"]["name"], namespace="ml", field_manager=manager,
            force_conflicts=force).to_dict())


def status_of(exc: Any) -> dict[str, Any]:
    return dict(json.loads(exc.body))


def live(api: FakeApiServer, kind: str = "Deployment", name: str = "web") -> dict[str, Any]:
    obj = api.get(kind, name)
    assert obj is not None, f"{kind} {name} is not there"
    return obj


# --- server-side apply ------------------------------------------------------------------------


def test_a_field_another_manager_owns_conflicts_unless_forced(api: FakeApiServer) -> None:
    client = Client(api)
    client.apply({**deployment(replicas=2),
                  "metadata": {"name": "web", "namespace": "ml",
                               "labels": {"app": "web", "team": "ml"}}}, "kubectl")
    with pytest.raises(ConflictError) as conflict:
        client.apply(deployment(replicas=3), "mlkube")
    status = status_of(conflict.value)
    assert status["code"] == 409 and status["reason"] == "Conflict"
    assert status["message"] == 'Apply failed with 1 conflict: conflict with "kubectl": .spec.replicas'
    assert status["details"]["causes"] == [{"reason": "FieldManagerConflict",
                                            "message": 'conflict with "kubectl"',
                                            "field": ".spec.replicas"}]
    assert live(api)["spec"]["replicas"] == 2, "a conflict changes nothing"

    client.apply(deployment(replicas=2), "mlkube")  # the same value: owned by both
    assert owners(live(api), "spec.replicas") == {"kubectl", "mlkube"}

    client.apply(deployment(replicas=3), "mlkube", force=True)
    obj = live(api)
    assert obj["spec"]["replicas"] == 3 and obj["metadata"]["generation"] == 2
    assert owners(obj, "spec.replicas") == {"mlkube"}, "forcing takes the field"
    assert obj["metadata"]["labels"] == {"app": "web", "team": "ml"}, \
        "a field only another manager applied survives an apply that leaves it out"

    with pytest.raises(ConflictError) as conflicts:
        client.apply(deployment(version="2"), "kubectl")  # and no replicas: mlkube's now
    assert status_of(conflicts.value)["message"] == (
        'Apply failed with 1 conflict: conflict with "mlkube": '
        '.spec.template.spec.containers[name="web"].command')


def test_a_field_no_longer_applied_goes_unless_another_manager_owns_it(
        api: FakeApiServer) -> None:
    client = Client(api)
    client.apply(deployment(replicas=3, minReadySeconds=5), "kubectl")
    client.apply(deployment(replicas=3), "mlkube")
    client.apply(deployment(), "kubectl")  # kubectl drops replicas and minReadySeconds
    obj = live(api)
    assert obj["spec"]["replicas"] == 3, "mlkube still owns it"
    assert "minReadySeconds" not in obj["spec"], "nobody else owned it"
    client.apply(deployment(), "mlkube")
    assert live(api)["spec"]["replicas"] == 1, "nobody owns it: back to the default"
    client.apply({**deployment(), "metadata": {"name": "web", "namespace": "ml"}}, "kubectl")
    assert live(api)["metadata"]["labels"] == {"app": "web"}, "mlkube applies it too"


def test_keyed_lists_merge_item_by_item(api: FakeApiServer) -> None:
    client = Client(api)
    base = deployment()
    base["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    client.apply(base, "mlkube")
    sidecar = {"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "ml"},
               "spec": {"template": {"spec": {"containers": [
                   {"name": "web", "env": [{"name": "B", "value": "2"}]},
                   {"name": "proxy", "image": "envoy:1.31"}]}}}}
    client.apply(sidecar, "injector")
    containers = live(api)["spec"]["template"]["spec"]["containers"]
    assert {c["name"] for c in containers} == {"web", "proxy"}
    web = next(c for c in containers if c["name"] == "web")
    assert {e["name"] for e in web["env"]} == {"A", "B"}
    assert web["command"] == ["serve", "--version", "1"]
    assert web["imagePullPolicy"] == "IfNotPresent", "defaults stay"
    client.apply(deployment(), "mlkube")  # mlkube drops its env var A
    web = live(api)["spec"]["template"]["spec"]["containers"][0]
    assert [e["name"] for e in web["env"]] == ["B"]


def test_an_update_takes_the_fields_it_changes(api: FakeApiServer) -> None:
    client = Client(api)
    client.apply(deployment(replicas=1), "mlkube")
    AppsV1Api(api.api_client()).patch_namespaced_deployment(
        "web", "ml", {"metadata": {"labels": {"app": "other"}}}, field_manager="kubectl-label")
    obj = live(api)
    assert owners(obj, "metadata.labels.app") == {"kubectl-label"}
    with pytest.raises(ConflictError) as conflict:
        client.apply(deployment(replicas=1), "mlkube")
    assert status_of(conflict.value)["message"] == (
        'Apply failed with 1 conflict: conflict with "kubectl-label" using apps/v1: '
        ".metadata.labels.app")


# --- the scale subresource and the HPA --------------------------------------------------------


def test_the_scale_subresource_writes_replicas_as_an_update(api: FakeApiServer) -> None:
    client = Client(api)
    client.apply(deployment(replicas=1), "mlkube")
    apps = AppsV1Api(api.api_client())
    scale = apps.patch_namespaced_deployment_scale("web", "ml", {"spec": {"replicas": 3}},
                                                   field_manager=CONTROLLER_MANAGER)
    assert scale.spec.replicas == 3 and scale.status.selector == "app=web"
    assert apps.read_namespaced_deployment_scale("web", "ml").spec.replicas == 3
    obj = live(api)
    assert obj["spec"]["replicas"] == 3 and obj["metadata"]["generation"] == 2
    (entry,) = [m for m in obj["metadata"]["managedFields"] if m.get("subresource") == "scale"]
    assert entry == {"manager": CONTROLLER_MANAGER, "operation": "Update",
                     "apiVersion": "apps/v1", "time": entry["time"], "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {"f:replicas": {}}}, "subresource": "scale"}
    assert owners(obj, "spec.replicas") == {CONTROLLER_MANAGER}
    with pytest.raises(ConflictError) as conflict:
        client.apply(deployment(replicas=1), "mlkube")
    assert status_of(conflict.value)["message"] == (
        'Apply failed with 1 conflict: conflict with "kube-controller-manager" with '
        'subresource "scale" using apps/v1: .spec.replicas')
    client.apply(deployment(), "mlkube")
    assert live(api)["spec"]["replicas"] == 3, "an apply without replicas keeps the count"
    with pytest.raises(ApiException) as invalid:
        apps.patch_namespaced_deployment_scale("web", "ml", {"spec": {"replicas": -1}})
    assert invalid.value.status == 422


def test_the_hpa_scales_through_the_scale_subresource_on_its_own(api: FakeApiServer) -> None:
    client = Client(api)
    client.apply(deployment(replicas=1, strategy=ROLLING), "mlkube")
    client.apply(autoscaler(low=2), "mlkube")
    api.wait_for(lambda: live(api)["spec"]["replicas"] == 2)  # below minReplicas: raised
    api.hpa_wants["web"] = 4
    api.wait_for(lambda: live(api)["spec"]["replicas"] == 4)
    assert owners(live(api), "spec.replicas") == {CONTROLLER_MANAGER}
    api.wait_for(lambda: live(api)["status"].get("availableReplicas") == 4)
    api.wait_for(lambda: live(api, "HorizontalPodAutoscaler")["status"]["currentReplicas"] == 4)
    api.hpa_wants["web"] = 9
    api.wait_for(lambda: live(api)["spec"]["replicas"] == 5)
    status = live(api, "HorizontalPodAutoscaler")["status"]
    assert status["desiredReplicas"] == 5 and "lastScaleTime" in status
    limited = next(c for c in status["conditions"] if c["type"] == "ScalingLimited")
    assert (limited["status"], limited["reason"]) == ("True", "TooManyReplicas")


# --- controllers on their own clock -----------------------------------------------------------


def test_controllers_act_on_their_own_clock_not_when_read(api: FakeApiServer) -> None:
    code, _ = api.apply(DEPLOYMENT, "ml", "web", deployment(replicas=2), "mlkube")
    assert code == 201
    api.wait_for(lambda: live(api)["status"].get("availableReplicas") == 2)
    assert not [r for r in api.requests if r.method == "GET"], "nobody read anything"


def test_without_a_clock_nothing_moves_until_a_step(stepped: FakeApiServer) -> None:
    stepped.apply(DEPLOYMENT, "ml", "web", deployment(replicas=2), "mlkube")
    apps = AppsV1Api(stepped.api_client())
    for _ in range(3):
        assert apps.read_namespaced_deployment("web", "ml").status.observed_generation is None
    stepped.step()
    status = live(stepped)["status"]
    assert status["observedGeneration"] == 1 and "availableReplicas" not in status
    assert {p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            for p in stepped.objects("Pod")} == {"ContainerCreating"}
    stepped.step(2)
    assert live(stepped)["status"]["availableReplicas"] == 2


def test_ready_after_is_ticks_before_a_new_generation_is_observed() -> None:
    with FakeApiServer(clock=False, ready_after=3) as api:
        api.apply(DEPLOYMENT, "ml", "web", deployment(), "mlkube")
        api.step(2)
        assert live(api)["status"] == {}
        api.step()
        assert live(api)["status"]["observedGeneration"] == 1


def _pods_by_version(api: FakeApiServer) -> dict[str, tuple[int, int]]:
    """version → (pods, ready pods)."""
    out: dict[str, tuple[int, int]] = {}
    for pod in api.objects("Pod"):
        ready = all(c.get("ready") for c in pod["status"].get("containerStatuses") or [{}])
        pods, ready_pods = out.get(version_of(pod["spec"]), (0, 0))
        out[version_of(pod["spec"])] = (pods + 1, ready_pods + ready)
    return out


def test_a_rolling_update_surges_one_pod_at_a_time(stepped: FakeApiServer) -> None:
    stepped.apply(DEPLOYMENT, "ml", "web", deployment("1", replicas=3, strategy=ROLLING),
                  "mlkube")
    stepped.step(3)
    assert _pods_by_version(stepped) == {"1": (3, 3)}
    stepped.apply(DEPLOYMENT, "ml", "web", deployment("2", replicas=3, strategy=ROLLING),
                  "mlkube")
    seen = []
    for _ in range(30):
        stepped.step()
        pods = _pods_by_version(stepped)
        seen.append(pods)
        total = sum(n for n, _ in pods.values())
        ready = sum(r for _, r in pods.values())
        assert total <= 4, f"more than replicas + maxSurge pods: {pods}"
        assert ready >= 3, f"fewer than replicas - maxUnavailable pods ready: {pods}"
        assert pods.get("2", (0, 0))[0] - pods.get("2", (0, 0))[1] <= 1, "one new pod at a time"
        if pods == {"2": (3, 3)}:
            break
    assert seen[-1] == {"2": (3, 3)}
    assert {"1": (3, 3), "2": (1, 1)} in seen, "old and new pods serve together"
    assert {"1": (2, 2), "2": (2, 2)} in seen and {"1": (1, 1), "2": (3, 3)} in seen
    stepped.step()  # the Deployment's status comes from its ReplicaSets', a step behind
    status = live(stepped)["status"]
    assert status["replicas"] == status["updatedReplicas"] == status["availableReplicas"] == 3
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "NewReplicaSetAvailable"
    scaled = [e["message"] for e in stepped.objects("Event") if e["reason"] == "ScalingReplicaSet"]
    assert len([m for m in scaled if "Scaled up" in m]) == 4  # 0→3, then 0→1→2→3
    assert len([m for m in scaled if "Scaled down" in m]) == 3  # 3→2→1→0


def test_a_failing_new_pod_leaves_the_old_replica_set_whole(stepped: FakeApiServer) -> None:
    stepped.outcome = lambda spec: Outcome("crash", "boom") if version_of(spec) == "2" \
        else Outcome()
    stepped.apply(DEPLOYMENT, "ml", "web", deployment("1", replicas=3, strategy=ROLLING),
                  "mlkube")
    stepped.step(3)
    stepped.apply(DEPLOYMENT, "ml", "web", deployment("2", replicas=3, strategy=ROLLING),
                  "mlkube")
    stepped.step(10)
    assert _pods_by_version(stepped) == {"1": (3, 3), "2": (1, 0)}
    old, new = sorted(stepped.objects("ReplicaSet"),
                      key=lambda rs: int(rs["metadata"]["annotations"][
                          "deployment.kubernetes.io/revision"]))
    assert (old["spec"]["replicas"], new["spec"]["replicas"]) == (3, 1)
    status = live(stepped)["status"]
    assert (status["replicas"], status["updatedReplicas"], status["availableReplicas"]) == (4, 1, 3)
    available = next(c for c in status["conditions"] if c["type"] == "Available")
    assert available["status"] == "True"


def test_no_progress_within_the_deadline_is_progress_deadline_exceeded(
        api: FakeApiServer) -> None:
    api.outcome = lambda spec: Outcome("starting") if version_of(spec) == "2" else Outcome()
    client = Client(api)
    client.apply(deployment("1", strategy=ROLLING, progressDeadlineSeconds=1), "kubectl")
    api.wait_for(lambda: live(api)["status"].get("availableReplicas") == 1)
    client.apply(deployment("2", strategy=ROLLING, progressDeadlineSeconds=1), "kubectl")

    def progressing() -> dict[str, Any]:
        status = live(api)["status"]
        if status.get("observedGeneration") != 2:
            return {}
        return next(c for c in status["conditions"] if c["type"] == "Progressing")

    assert api.wait_for(progressing)["status"] == "True"
    condition = api.wait_for(lambda: progressing()["status"] == "False" and progressing(),
                             timeout=10)
    rs = next(r for r in api.objects("ReplicaSet") if r["spec"]["replicas"] == 1
              and version_of(r["spec"]["template"]["spec"]) == "2")
    assert condition["reason"] == "ProgressDeadlineExceeded"
    assert condition["message"] == f'ReplicaSet "{rs["metadata"]["name"]}" has timed out progressing.'
    assert _pods_by_version(api) == {"1": (1, 1), "2": (1, 0)}


# --- RBAC -------------------------------------------------------------------------------------


def rbac(*rules: dict[str, Any]) -> list[dict[str, Any]]:
    """A Role and its RoleBinding as mlkube renders them (no namespace: applied to one)."""
    meta = {"name": "mlkube-deploy"}
    return [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
             "rules": list(rules)},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": meta,
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                         "name": "mlkube-deploy"},
             "subjects": [{"kind": "ServiceAccount", "name": "mlkube-deploy"}]}]


def test_every_request_is_checked_against_the_role() -> None:
    deployments = {"apiGroups": ["apps"], "resources": ["deployments"],
                   "verbs": ["get", "list", "patch"]}
    with FakeApiServer(rbac=rbac(deployments)) as api:
        client = Client(api)  # discovery is open to every authenticated user
        with pytest.raises(ForbiddenError) as refused:
            client.apply(deployment(), "mlkube")
        assert status_of(refused.value)["message"] == (
            'deployments.apps "web" is forbidden: User "system:serviceaccount:ml:mlkube-deploy" '
            'cannot create resource "deployments" in API group "apps" in the namespace "ml"'), \
            "an apply that creates needs create"
        deployments["verbs"].append("create")
        client.apply(deployment(), "mlkube")
        client.apply(deployment(replicas=2), "mlkube")
        apps, core = AppsV1Api(api.api_client()), CoreV1Api(api.api_client())
        assert apps.read_namespaced_deployment("web", "ml").spec.replicas == 2
        with pytest.raises(ApiException) as scale:
            apps.read_namespaced_deployment_scale("web", "ml")
        assert status_of(scale.value)["message"] == (
            'deployments.apps "web" is forbidden: User "system:serviceaccount:ml:mlkube-deploy" '
            'cannot get resource "deployments/scale" in API group "apps" in the namespace "ml"')
        with pytest.raises(ApiException) as pods:
            core.list_namespaced_pod("ml")
        assert status_of(pods.value)["message"] == (
            'pods is forbidden: User "system:serviceaccount:ml:mlkube-deploy" cannot list '
            'resource "pods" in API group "" in the namespace "ml"')
        with pytest.raises(ApiException) as elsewhere:
            apps.list_namespaced_deployment("other")
        assert 'in the namespace "other"' in status_of(elsewhere.value)["message"]
        with pytest.raises(ApiException) as delete:
            apps.delete_namespaced_deployment("web", "ml")
        assert delete.value.status == 403
        assert api.refusals == [("create", "deployments", "ml", "web"),
                                ("get", "deployments/scale", "ml", "web"),
                                ("list", "pods", "ml", ""), ("list", "deployments", "other", ""),
                                ("delete", "deployments", "ml", "web")]
        api.user = "system:serviceaccount:ml:someone-else"
        with pytest.raises(ApiException) as stranger:
            apps.read_namespaced_deployment("web", "ml")
        assert 'User "system:serviceaccount:ml:someone-else" cannot get' in \
            status_of(stranger.value)["message"]
