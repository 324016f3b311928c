"""The cluster serving targets (:mod:`mlkube.targets.deployment`, :mod:`mlkube.targets.kserve`)
and their choice (:func:`mlkube.targets.choose`), with the real ``kubernetes`` client against a
fake API server.

The fake (``fake_apiserver.py``) does server-side apply the way the API server does (defaults,
field ownership per manager, conflicts, generations), runs the HPA, Deployment, ReplicaSet and
KServe controllers and the kubelet on their own clock as each test scripts the pods, and
checks every request against RBAC where a test gives it the deploy Role; every object it
holds, status included, is checked against Kubernetes' 1.36 schema and KServe's CRD when a
test ends.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fake_apiserver import FakeApiServer, Outcome, owners, version_of
from kubernetes.client import V1EnvVar, V1EnvVarSource, V1SecretKeySelector

from mlkube import targets
from mlkube.argo.schema import ARGO_SCHEMA_FILE, KSERVE_CRD_FILE, Validator, packaged_schema
from mlkube.config import ServingConfig
from mlkube.errors import MlkubeError
from mlkube.kube import api as kube_api
from mlkube.kube import applied, serving
from mlkube.targets.base import ServingTarget
from mlkube.targets.deployment import HANDOVER_MANAGER, REVISION_ANNOTATION, DeploymentTarget
from mlkube.targets.kserve import KServeTarget

NAME = "Churn Model"
SECRET = V1EnvVarSource(secret_key_ref=V1SecretKeySelector(name="mlflow", key="password"))
SERVING = serving.ModelServing(
    name="churn", model_name=NAME,
    env=(V1EnvVar(name="MLFLOW_TRACKING_URI", value="http://mlflow.ml.svc.cluster.local:5000"),
         V1EnvVar(name="MLFLOW_TRACKING_PASSWORD", value_from=SECRET)))
MLFLOW_ERROR = ("When an mlflow-artifacts URI was supplied, the tracking URI must be a valid "
                "http or https URI")
CRASH_LOG = ("loading models:/Churn Model/8\nTraceback (most recent call last):\n"
             '  File "/usr/local/lib/python3.11/site-packages/mlflow/store/artifact/'
             'mlflow_artifacts_repo.py", line 48, in resolve_uri\n'
             f"mlflow.exceptions.MlflowException: {MLFLOW_ERROR}\n")


def uri(version: str) -> str:
    return f"models:/{NAME}/{version}"


def fails_for(bad: str, outcome: Outcome) -> Any:
    """Pods of version ``bad`` get ``outcome``; every other version is ready."""
    return lambda pod: outcome if version_of(pod) == bad else Outcome()


@pytest.fixture(scope="module")
def crd() -> Validator:
    return Validator(argo_schema=packaged_schema(ARGO_SCHEMA_FILE),
                     kserve_crd=packaged_schema(KSERVE_CRD_FILE))


def _checked(fake: FakeApiServer, crd: Validator) -> None:
    """Everything the fake holds looks like what a real API server returns, and every body
    mlkube applied is a valid object on its own (built-in kinds against Kubernetes 1.33)."""
    assert fake.schema_errors() == []
    for request in fake.applies():
        body = request.body
        if request.query["fieldManager"] == HANDOVER_MANAGER:  # the replica count only
            assert request.query["force"] in ("False", "false")
            assert body == {"apiVersion": "apps/v1", "kind": "Deployment",
                            "metadata": {"name": "churn", "namespace": "ml"},
                            "spec": {"replicas": body["spec"]["replicas"]}}
            continue
        assert request.query["fieldManager"] == "mlkube"
        assert request.query["force"] in ("True", "true")
        if body["kind"] == "InferenceService":
            assert crd.isvc_errors(body) == []
        else:
            kubernetes_validate.validate(body, "1.33.0", strict=True)


@pytest.fixture
def fake(crd: Validator) -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server
        _checked(server, crd)


@pytest.fixture
def kfake(crd: Validator) -> Iterator[FakeApiServer]:
    with FakeApiServer(kserve=True) as server:
        yield server
        _checked(server, crd)


def target(server: FakeApiServer, kind: targets.Kind = "auto", timeout: float = 5,
           **kwargs: Any) -> ServingTarget:
    """The target :func:`mlkube.targets.choose` picks on ``server`` for :data:`SERVING`."""
    kwargs.setdefault("log", lambda line: None)
    return targets.choose(kind, model_name=SERVING.model_name, service_name=SERVING.name,
                          serving_env=lambda: SERVING.env, api_client=server.api_client(),
                          namespace="ml", config=ServingConfig(pod_start_timeout=timeout),
                          poll=0.01, **kwargs)


def one_line(exc: pytest.ExceptionInfo[MlkubeError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# --- Deployment -------------------------------------------------------------------------------


def test_first_rollout_serves_the_version_behind_the_service(fake: FakeApiServer) -> None:
    deploy = target(fake)
    assert isinstance(deploy, DeploymentTarget) and deploy.name == "deployment"
    assert deploy.live_version() is None
    deploy.roll_out("7", uri("7"))
    assert deploy.live_version() == "7"
    assert deploy.base_url == "http://churn.ml.svc.cluster.local"
    assert deploy.model_name == NAME
    assert [r.body["kind"] for r in fake.applies()] == ["Deployment", "Service",
                                                        "HorizontalPodAutoscaler"]
    assert {r.content_type for r in fake.applies()} == {"application/apply-patch+yaml"}
    live = fake.get("Deployment", "churn")
    assert live is not None and live["metadata"]["generation"] == 1
    container = live["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlkube", "serve", "model", "--model-uri", uri("7"),
                                    "--name", NAME, "--version", "7", "--host", "0.0.0.0",
                                    "--port", "8080"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/Churn%20Model/ready"
    assert container["env"][1] == {"name": "MLFLOW_TRACKING_PASSWORD", "valueFrom": {
        "secretKeyRef": {"name": "mlflow", "key": "password"}}}
    assert live["spec"]["strategy"] == {"type": "RollingUpdate",
                                        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    service = fake.get("Service", "churn")
    assert service is not None and service["spec"]["ports"][0]["port"] == 80
    deploy.promote()  # nothing to promote on a Deployment
    assert len(fake.applies()) == 3


def test_the_same_version_again_changes_nothing(fake: FakeApiServer) -> None:
    deploy = target(fake)
    deploy.roll_out("7", uri("7"))
    before = fake.get("Deployment", "churn")
    deploy.roll_out("7", uri("7"))
    after = fake.get("Deployment", "churn")
    assert before is not None and after is not None
    assert after["metadata"]["generation"] == before["metadata"]["generation"] == 1
    assert after["spec"] == before["spec"]


def replicas(fake: FakeApiServer) -> int:
    return int(fake.get("Deployment", "churn")["spec"]["replicas"])  # type: ignore[index]


def test_a_new_version_replaces_the_previous_one(fake: FakeApiServer) -> None:
    deploy = target(fake)
    deploy.roll_out("7", uri("7"))
    fake.hpa_wants["churn"] = 3  # the HPA scales it up meanwhile (through the scale subresource)
    fake.wait_for(lambda: replicas(fake) == 3)
    deploy.roll_out("8", uri("8"))
    assert deploy.live_version() == "8"
    live = fake.get("Deployment", "churn")
    assert live is not None and live["metadata"]["generation"] == 3
    assert live["spec"]["replicas"] == 3, "a rollout keeps what the autoscaler scaled to"
    assert owners(live, "spec.replicas") == {"kube-controller-manager"}
    assert live["metadata"]["annotations"][serving.MODEL_VERSION_ANNOTATION] == "8"
    pods = fake.objects("Pod")
    assert len(pods) == 3 and {version_of(p["spec"]) for p in pods} == {"8"}
    old, new = sorted(fake.objects("ReplicaSet"),
                      key=lambda rs: int(rs["metadata"]["annotations"][REVISION_ANNOTATION]))
    assert (old["spec"]["replicas"], new["spec"]["replicas"]) == (0, 3)


def test_a_rollout_never_undoes_what_the_autoscaler_just_scaled_to(fake: FakeApiServer) -> None:
    """The HPA scales between the deploy step's read of the Deployment and its apply.

    mlkube used to re-apply the count it had read (forced), so its apply took ``spec.replicas``
    back from the HPA and scaled the Deployment down under load. Now the count is handed over
    to a second manager (not forced: the HPA's fresh write makes that a conflict, which is
    fine) and mlkube's apply leaves it out.
    """
    deploy = target(fake)
    deploy.roll_out("7", uri("7"))
    applies: list[str] = []

    def hpa_scales_now(request: Any) -> None:
        if request.method == "PATCH" and request.path.endswith("/deployments/churn"):
            applies.append(request.query["fieldManager"])
            if replicas(fake) == 1:  # what the deploy step has just read
                fake.write_scale("ml", "churn", 3, "kube-controller-manager")

    fake.on_request = hpa_scales_now
    deploy.roll_out("8", uri("8"))
    fake.on_request = None
    assert applies == [HANDOVER_MANAGER, "mlkube"]
    live = fake.get("Deployment", "churn")
    assert live is not None and live["spec"]["replicas"] == 3
    assert owners(live, "spec.replicas") == {"kube-controller-manager"}
    assert deploy.live_version() == "8" and len(fake.objects("Pod")) == 3


def test_the_replica_count_is_handed_over_not_reset(fake: FakeApiServer) -> None:
    """The HPA has not scaled yet: mlkube's apply alone owns the count it created the
    Deployment with, and leaving it out alone would reset it to 1."""
    two = dataclasses.replace(SERVING, min_replicas=2)
    deploy = DeploymentTarget(api_client=fake.api_client(), serving=two, namespace="ml",
                              timeout=5, poll=0.01, log=lambda line: None)
    deploy.roll_out("7", uri("7"))
    assert owners(fake.get("Deployment", "churn"), "spec.replicas") == {"mlkube"}  # type: ignore[arg-type]
    deploy.roll_out("8", uri("8"))
    live = fake.get("Deployment", "churn")
    assert live is not None and live["spec"]["replicas"] == 2
    assert owners(live, "spec.replicas") == {HANDOVER_MANAGER}
    assert "replicas" not in fake.applies("Deployment")[-1].body["spec"]
    fake.hpa_wants["churn"] = 3
    fake.wait_for(lambda: replicas(fake) == 3)
    assert owners(fake.get("Deployment", "churn"), "spec.replicas") == {  # type: ignore[arg-type]
        "kube-controller-manager"}
    deploy.roll_out("9", uri("9"))
    assert replicas(fake) == 3 and deploy.live_version() == "9"
    assert len(fake.applies("Deployment")) == 4, "one hand-over, then none is needed"


def test_a_rollout_waits_one_pod_start_for_each_replica(fake: FakeApiServer) -> None:
    """maxSurge 1: N replicas are N pod starts one after the other; the wait was one
    serving.ready_timeout (120 s, for the local server) whatever the replica count."""
    three = dataclasses.replace(SERVING, min_replicas=3)

    def deployer(timeout: float) -> ServingTarget:
        return DeploymentTarget(api_client=fake.api_client(), serving=three, namespace="ml",
                                timeout=timeout, poll=0.01, log=lambda line: None)

    deployer(5).roll_out("7", uri("7"))  # 3 replicas up, however loaded the machine is
    deploy = deployer(0.3)
    fake.outcome = fails_for("8", Outcome("starting"))
    started = time.monotonic()
    with pytest.raises(MlkubeError) as failed:
        deploy.roll_out("8", uri("8"))
    assert time.monotonic() - started >= 0.9
    assert "not ready after 0.9s (3 pod starts of 0.3s)" in one_line(failed)


def test_old_pods_serve_until_new_ones_are_ready(fake: FakeApiServer) -> None:
    """maxSurge 1, maxUnavailable 0: never fewer ready pods than replicas, one new pod at a
    time, old and new serving together while it rolls."""
    three = dataclasses.replace(SERVING, min_replicas=3)
    deploy = DeploymentTarget(api_client=fake.api_client(), serving=three, namespace="ml",
                              timeout=5, poll=0.01, log=lambda line: None)
    deploy.roll_out("7", uri("7"))
    seen: list[tuple[int, int, int]] = []  # (v7 ready, v8 ready, pods) after every step
    step = fake.step

    def step_and_sample(ticks: int = 1) -> None:
        step(ticks)
        pods = fake.objects("Pod")
        ready = [p for p in pods if all(c.get("ready") for c in
                                        p["status"].get("containerStatuses") or [{}])]
        seen.append((sum(version_of(p["spec"]) == "7" for p in ready),
                     sum(version_of(p["spec"]) == "8" for p in ready), len(pods)))

    fake.step = step_and_sample  # type: ignore[method-assign]  # what the clock calls
    deploy.roll_out("8", uri("8"))
    fake.step = step  # type: ignore[method-assign]
    assert all(old + new >= 3 and pods <= 4 for old, new, pods in seen), seen
    assert {(3, 1, 4), (2, 2, 4), (1, 3, 4)} <= set(seen), "old and new pods serve together"
    assert seen[-1] == (0, 3, 3)


def test_a_failing_version_gets_one_surge_pod_and_the_old_pods_stay(fake: FakeApiServer) -> None:
    fake.outcome = fails_for("8", Outcome("crash", CRASH_LOG))
    three = dataclasses.replace(SERVING, min_replicas=3)
    deploy = DeploymentTarget(api_client=fake.api_client(), serving=three, namespace="ml",
                              timeout=5, poll=0.01, log=lambda line: None)
    deploy.roll_out("7", uri("7"))
    with pytest.raises(MlkubeError, match="the previous version \\(v7\\) keeps serving"):
        deploy.roll_out("8", uri("8"))
    old, new = sorted(fake.objects("ReplicaSet"),
                      key=lambda rs: int(rs["metadata"]["annotations"][REVISION_ANNOTATION]))
    assert (old["spec"]["replicas"], new["spec"]["replicas"]) == (3, 1)
    pods = fake.objects("Pod")
    assert sorted(version_of(p["spec"]) for p in pods) == ["7", "7", "7", "8"]
    deploy.roll_back("7")
    assert deploy.live_version() == "7"
    assert sorted(version_of(p["spec"]) for p in fake.objects("Pod")) == ["7", "7", "7"]


def test_a_progress_deadline_someone_set_fails_the_rollout_at_that_deadline(
        fake: FakeApiServer) -> None:
    """A field another manager applied (here the deadline, by kubectl) survives mlkube's
    apply, and the Deployment controller's ProgressDeadlineExceeded ends the wait."""
    from fake_apiserver import KINDS

    fake.outcome = fails_for("8", Outcome("starting"))
    deploy = target(fake, timeout=30)
    deploy.roll_out("7", uri("7"))
    deadline = {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "churn", "namespace": "ml"},
                "spec": {"progressDeadlineSeconds": 1}}
    assert fake.apply(KINDS["Deployment"], "ml", "churn", deadline, "kubectl")[0] == 200
    with pytest.raises(MlkubeError) as failed:
        deploy.roll_out("8", uri("8"))
    message = one_line(failed)
    live = fake.get("Deployment", "churn")
    assert live is not None and live["spec"]["progressDeadlineSeconds"] == 1
    rs = next(r for r in fake.objects("ReplicaSet")
              if version_of(r["spec"]["template"]["spec"]) == "8")
    assert f'ProgressDeadlineExceeded: ReplicaSet "{rs["metadata"]["name"]}" has timed out ' \
        "progressing." in message
    assert "running, not ready yet" in message and "not ready after" not in message
    assert "the previous version (v7) keeps serving" in message


def test_a_crash_looping_version_fails_with_its_own_message_and_rolls_back(
        fake: FakeApiServer) -> None:
    fake.outcome = fails_for("8", Outcome("crash", CRASH_LOG))
    deploy = target(fake)
    deploy.roll_out("7", uri("7"))
    first = fake.applies("Deployment")[0].body
    old_template = fake.get("Deployment", "churn")["spec"]["template"]  # type: ignore[index]
    with pytest.raises(MlkubeError) as failed:
        deploy.roll_out("8", uri("8"))
    message = one_line(failed)
    assert "Deployment ml/churn could not roll out Churn Model v8" in message
    assert "CrashLoopBackOff" in message and "exited with code 1 (Error)" in message
    assert MLFLOW_ERROR in message
    assert "the previous version (v7) keeps serving" in message
    assert "not ready after" not in message, "a crash loop fails at once"
    old_pods = [p for p in fake.objects("Pod") if version_of(p["spec"]) == "7"]
    assert old_pods and all(c["ready"] for p in old_pods for c in p["status"]["containerStatuses"])
    assert deploy.live_version() is None, "the object carries v8, which does not serve"

    deploy.roll_back("7")
    assert deploy.live_version() == "7"
    restored = fake.applies("Deployment")[-1].body
    first_less_replicas = {**first, "spec": {k: v for k, v in first["spec"].items()
                                             if k != "replicas"}}
    assert restored == first_less_replicas, (
        "roll_back re-applies exactly what mlkube applied for v7, but the replica count (its "
        "HPA's since the Deployment was created)")
    live = fake.get("Deployment", "churn")
    assert live is not None and live["spec"]["template"] == old_template
    assert live["spec"]["replicas"] == first["spec"]["replicas"]
    assert {version_of(p["spec"]) for p in fake.objects("Pod")} == {"7"}
    service = fake.applies("Service")[-1].body
    assert "clusterIP" not in service["spec"], "nothing the API server allocated is claimed"
    assert service["metadata"]["annotations"][serving.MODEL_VERSION_ANNOTATION] == "7"
    deploy.roll_back("7")  # idempotent
    assert deploy.live_version() == "7"


def test_roll_back_to_objects_another_tool_applied(fake: FakeApiServer) -> None:
    """No mlkube managedFields to read back: labels, annotations and spec are restored, and
    the roll-back still never takes an old pod down first."""
    from fake_apiserver import KINDS

    fake.outcome = fails_for("8", Outcome("crash", CRASH_LOG))
    old = serving.to_dict(serving.deployment(dataclasses.replace(
        SERVING, version="7", model_uri=uri("7"), namespace="ml")))
    del old["spec"]["strategy"]
    code, _ = fake.apply(KINDS["Deployment"], "ml", "churn", old, "kubectl")
    assert code == 201
    deploy = target(fake)
    assert fake.wait_for(lambda: deploy.live_version() == "7")  # once its controller got there
    with pytest.raises(MlkubeError, match="v7"):
        deploy.roll_out("8", uri("8"))
    deploy.roll_back("7")
    assert deploy.live_version() == "7"
    restored = fake.applies("Deployment")[-1].body
    assert restored["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert restored["spec"]["template"]["spec"]["containers"][0]["command"][4] == uri("7")
    assert fake.get("Service", "churn") is None, "it did not exist before the rollout"


def test_the_same_crash_in_every_replica_is_said_once(fake: FakeApiServer) -> None:
    fake.outcome = fails_for("7", Outcome("crash", CRASH_LOG))
    three = dataclasses.replace(SERVING, min_replicas=3)
    deploy = DeploymentTarget(api_client=fake.api_client(), serving=three, namespace="ml",
                              poll=0.01, log=lambda line: None)
    with pytest.raises(MlkubeError) as failed:
        deploy.roll_out("7", uri("7"))
    message = one_line(failed)
    assert message.count(MLFLOW_ERROR) == 1 and "(and 2 more pods)" in message


def test_an_unschedulable_version_reports_failed_scheduling(fake: FakeApiServer) -> None:
    fake.outcome = fails_for("8", Outcome("unschedulable"))
    deploy = target(fake, timeout=1)
    deploy.roll_out("7", uri("7"))
    with pytest.raises(MlkubeError) as failed:
        deploy.roll_out("8", uri("8"))
    message = one_line(failed)
    assert "not ready after 1s" in message
    assert "is not scheduled (Unschedulable): 0/3 nodes are available: 3 Insufficient memory" \
        in message
    # the FailedScheduling event says the same sentence as the pod's condition: said once
    assert message.count("0/3 nodes are available: 3 Insufficient memory") == 1


def test_an_image_that_cannot_be_pulled_fails_at_once(fake: FakeApiServer) -> None:
    fake.outcome = fails_for("7", Outcome("image-pull"))
    with pytest.raises(MlkubeError) as failed:
        target(fake, timeout=60).roll_out("7", uri("7"))
    message = one_line(failed)
    assert f'ImagePullBackOff (Back-off pulling image "{serving.SERVER_IMAGE}"' in message
    assert "nothing served before" in message


def test_pods_refused_by_admission_are_reported(fake: FakeApiServer) -> None:
    fake.outcome = fails_for("7", Outcome("forbidden"))
    with pytest.raises(MlkubeError) as failed:
        target(fake).roll_out("7", uri("7"))
    message = one_line(failed)
    assert "FailedCreate" in message and "exceeded quota: compute" in message


def test_a_version_still_loading_at_the_deadline_says_what_its_probes_see(
        fake: FakeApiServer) -> None:
    fake.outcome = fails_for("7", Outcome("starting"))
    with pytest.raises(MlkubeError) as failed:
        target(fake, timeout=0.5).roll_out("7", uri("7"))
    message = one_line(failed)
    assert "running, not ready yet (restarts: 0)" in message
    assert "Unhealthy on pod churn-" in message and "statuscode: 503" in message


def test_a_stale_ready_status_is_not_taken_for_the_new_version(fake: FakeApiServer) -> None:
    deploy = target(fake, timeout=1)
    deploy.roll_out("7", uri("7"))
    fake.ready_after = 10**9  # the controller never gets to the new generation
    with pytest.raises(MlkubeError) as failed:
        deploy.roll_out("8", uri("8"))
    live = fake.get("Deployment", "churn")
    assert live is not None
    status = live["status"]
    assert status["updatedReplicas"] == status["availableReplicas"] == status["replicas"] == 1
    assert status["observedGeneration"] == 1 < live["metadata"]["generation"]
    assert "has not yet observed generation 2 (its status is of 1)" in one_line(failed)
    assert deploy.live_version() is None


def test_the_controller_gets_there_after_a_few_ticks(fake: FakeApiServer) -> None:
    fake.ready_after = 4  # ticks of its own clock before it observes the new generation
    lines: list[str] = []
    deploy = target(fake, "deployment", log=lines.append)
    deploy.roll_out("7", uri("7"))
    reads = [r for r in fake.requests if r.method == "GET"
             and r.path == "/apis/apps/v1/namespaces/ml/deployments/churn"]
    assert len(reads) >= 4 and deploy.live_version() == "7"
    assert ("waiting for Deployment ml/churn: the Deployment controller has not yet observed "
            "generation 1 (its status is of 0)") in lines


def test_roll_back_to_nothing_deletes_what_roll_out_created(fake: FakeApiServer) -> None:
    fake.outcome = fails_for("7", Outcome("crash", CRASH_LOG))
    deploy = target(fake)
    with pytest.raises(MlkubeError, match="nothing served before"):
        deploy.roll_out("7", uri("7"))
    deploy.roll_back(None)
    assert [key for key in fake.store if key[0] != "Event"] == []
    deploy.roll_back(None)  # idempotent
    assert [r.method for r in fake.requests].count("DELETE") == 6


def test_roll_back_without_a_rollout(fake: FakeApiServer) -> None:
    deploy = target(fake)
    deploy.roll_back(None)
    assert fake.applies() == [] and not any(r.method == "DELETE" for r in fake.requests)
    applied = len(fake.applies())
    target(fake).roll_out("7", uri("7"))
    assert len(fake.applies()) > applied
    applied = len(fake.applies())
    target(fake).roll_back("7")  # already serving: nothing to do
    assert len(fake.applies()) == applied


def test_roll_back_renders_the_version_again_when_the_objects_no_longer_hold_it(
        fake: FakeApiServer) -> None:
    """A deploy killed after its apply leaves the broken v8 on the Deployment; its retry knows
    nothing of v7's objects, and rolls back to v7 (the serving record) by rendering it again."""
    target(fake).roll_out("7", uri("7"))
    fake.outcome = fails_for("8", Outcome("crash", CRASH_LOG))
    killed = target(fake)
    with pytest.raises(MlkubeError):
        killed.roll_out("8", uri("8"))  # (the step would have been killed here)
    retry = target(fake)
    with pytest.raises(MlkubeError, match="the deploy step rolls back"):
        retry.roll_out("8", uri("8"))
    retry.roll_back("7")
    assert retry.live_version() == "7"
    pods = [p for p in fake.objects("Pod")]
    assert pods and {version_of(p["spec"]) for p in pods} == {"7"}


def test_the_api_servers_refusal_is_one_line(fake: FakeApiServer) -> None:
    fake.forbidden = {("PATCH", "Deployment")}
    with pytest.raises(MlkubeError) as failed:
        target(fake).roll_out("7", uri("7"))
    message = one_line(failed)
    assert ('User "system:serviceaccount:ml:mlkube-deploy" cannot patch resource "deployments" '
            'in API group "apps"') in message
    assert "mlkube.kube.serving.deploy_rbac" in message


def test_an_unreachable_api_server_is_one_line() -> None:
    from kubernetes.client import ApiClient, Configuration

    with FakeApiServer() as gone:
        url = gone.url
    configuration = Configuration(host=url)
    configuration.retries = 0
    with pytest.raises(MlkubeError) as failed:
        targets.choose("auto", model_name=NAME, serving_env=lambda: SERVING.env,
                       api_client=ApiClient(configuration), namespace="ml")
    assert f"the Kubernetes API at {url} does not answer" in one_line(failed)


# --- choosing the target ----------------------------------------------------------------------


def test_auto_picks_kserve_where_its_api_is_served(kfake: FakeApiServer,
                                                   fake: FakeApiServer) -> None:
    assert isinstance(target(kfake), KServeTarget)
    assert isinstance(target(kfake, "deployment"), DeploymentTarget)
    assert isinstance(target(fake), DeploymentTarget)
    with pytest.raises(MlkubeError) as failed:
        target(fake, "kserve")
    assert "serving target 'kserve' was asked for, but the cluster" in one_line(failed)
    assert "does not serve serving.kserve.io/v1beta1 InferenceService" in str(failed.value)
    with pytest.raises(MlkubeError, match="serving target is 'seldon'"):
        target(fake, "seldon")  # type: ignore[arg-type]
    with pytest.raises(MlkubeError, match="canary percent 10 needs the kserve target"):
        target(fake, "deployment", canary_percent=10)
    lines: list[str] = []
    target(fake, canary_percent=10, log=lines.append)
    assert "rolls its pods over instead of a 10% canary" in lines[0]


def test_serving_pods_mount_the_deploy_pods_claim_and_write_live_windows_on_it(
        fake: FakeApiServer, kfake: FakeApiServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """In a step pod (kube.pod sets MLKUBE_ARTIFACT_CLAIM), a Deployment's serving pods mount
    the same claim: the models read-only, the monitoring sub-path read-write, --stats-dir on
    it; the deploy pod makes that directory first (as the images' user). KServe's mount it only
    when asked; serving in another namespace, where the claim is not, they mount nothing."""
    from mlkube import spec

    mount = tmp_path / "mnt"
    mount.mkdir()
    monkeypatch.setattr(spec, "ARTIFACT_MOUNT", str(mount))
    monkeypatch.setattr(spec, "MONITORING_DIR", str(mount / "monitoring"))
    monkeypatch.setenv(spec.ARTIFACT_CLAIM_ENV, "mlkube-artifacts")
    monkeypatch.setattr(kube_api, "own_namespace", lambda: "ml")
    deploy = target(fake)
    assert isinstance(deploy, DeploymentTarget)
    assert deploy.serving.artifact_pvc == "mlkube-artifacts"
    assert (mount / "monitoring").is_dir()
    deploy.roll_out("7", uri("7"))
    live = fake.get("Deployment", "churn")
    assert live is not None
    pod = live["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "artifacts", "persistentVolumeClaim": {
        "claimName": "mlkube-artifacts"}}]
    (container,) = pod["containers"]
    assert [(m["mountPath"], m.get("subPath"), m["readOnly"]) for m in container[
        "volumeMounts"]] == [("/mnt/mlkube", None, True),
                             ("/mnt/mlkube/monitoring", "monitoring", False)]
    assert container["command"][-2:] == ["--stats-dir", "/mnt/mlkube/monitoring"]
    said: list[str] = []
    isvc = target(kfake, log=said.append)  # Knative refuses a claim unless its features are on
    assert isinstance(isvc, KServeTarget) and isvc.serving.artifact_pvc is None
    assert "KServe's serving pods mount no artifact claim unless one is given" in said[0]
    asked = target(kfake, artifact_pvc="mlkube-artifacts")
    assert asked.serving.artifact_pvc == "mlkube-artifacts"  # type: ignore[attr-defined]
    explicit = target(fake, artifact_pvc="other-claim")
    assert explicit.serving.artifact_pvc == "other-claim"  # type: ignore[attr-defined]

    lines: list[str] = []
    elsewhere = targets.choose("deployment", model_name=NAME, service_name="churn",
                               serving_env=lambda: SERVING.env, api_client=fake.api_client(),
                               namespace="team-b", log=lines.append)
    assert elsewhere.serving.artifact_pvc is None  # type: ignore[attr-defined]
    assert "not this pod's" in lines[0] and "no live windows" in lines[0]
    monkeypatch.delenv(spec.ARTIFACT_CLAIM_ENV)
    assert target(fake).serving.artifact_pvc is None  # type: ignore[attr-defined]


def test_auto_is_local_outside_a_cluster_and_a_refused_env_stops_before_the_cluster(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlkube.targets.local import LocalTarget

    def refused() -> list[Any]:
        raise MlkubeError("the serving env is refused")

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    chosen = targets.choose(model_name=NAME, state_dir=tmp_path, serving_env=refused)
    assert isinstance(chosen, LocalTarget) and chosen.state_dir == tmp_path
    # In a pod (without its token here): the env is refused before the config is even read.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    with pytest.raises(MlkubeError, match="the serving env is refused"):
        targets.choose(model_name=NAME, serving_env=refused)
    with pytest.raises(MlkubeError, match="use one of: auto, local, deployment, kserve"):
        targets.choose("seldon", model_name=NAME)


def test_api_client_from_the_kubeconfig(fake: FakeApiServer, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config = tmp_path / "config"
    config.write_text(yaml.safe_dump(fake.kubeconfig()))
    monkeypatch.setenv("KUBECONFIG", str(config))
    client = kube_api.api_client()
    assert client.configuration.host == fake.url
    chosen = targets.choose("auto", model_name=NAME, serving_env=lambda: SERVING.env,
                            api_client=client, namespace="ml")
    assert chosen.live_version() is None
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(MlkubeError) as failed:
        kube_api.api_client()
    assert f"no usable Kubernetes config at {tmp_path / 'missing'}" in one_line(failed)


def test_api_client_in_a_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.config import incluster_config

    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    with pytest.raises(MlkubeError) as failed:
        kube_api.api_client()
    assert "in-cluster Kubernetes config is unusable" in one_line(failed)
    (tmp_path / "token").write_text("a-token")
    (tmp_path / "ca.crt").write_text("not checked here")
    assert kube_api.api_client().configuration.host == "https://10.96.0.1:443"


# --- KServe -----------------------------------------------------------------------------------


def test_kserve_first_rollout_serves_at_its_address(kfake: FakeApiServer) -> None:
    isvc = target(kfake)
    assert isvc.name == "kserve" and isvc.live_version() is None
    isvc.roll_out("7", uri("7"))
    assert isvc.live_version() == "7"
    assert isvc.base_url == "http://churn.ml.svc.cluster.local"
    live = kfake.get("InferenceService", "churn")
    assert live is not None
    (container,) = live["spec"]["predictor"]["containers"]
    assert container["env"][0] == {"name": "PROTOCOL", "value": "v2"}
    assert "canaryTrafficPercent" not in live["spec"]["predictor"], "no canary with no previous"


def test_kserve_canary_takes_its_share_until_promoted(kfake: FakeApiServer) -> None:
    isvc = target(kfake, canary_percent=20)
    isvc.roll_out("7", uri("7"))
    isvc.promote()
    assert len(kfake.applies()) == 1, "promoting a version without a canary changes nothing"
    isvc.roll_out("8", uri("8"))
    live = kfake.get("InferenceService", "churn")
    assert live is not None and live["spec"]["predictor"]["canaryTrafficPercent"] == 20
    # split: v7, the rolled-out revision's pods' version, serves; v8 does not count as live
    # yet (a deploy killed here and retried judges its canary again)
    assert isvc.live_version() == "7"
    traffic = live["status"]["components"]["predictor"]["traffic"]
    assert [(t["revisionName"], t["percent"]) for t in traffic] == [
        ("churn-predictor-00001", 80), ("churn-predictor-00002", 20)]
    isvc.promote()
    live = kfake.get("InferenceService", "churn")
    assert live is not None and "canaryTrafficPercent" not in live["spec"]["predictor"]
    traffic = live["status"]["components"]["predictor"]["traffic"]
    assert [(t["revisionName"], t["percent"]) for t in traffic] == [("churn-predictor-00002", 100)]
    assert isvc.live_version() == "8"
    isvc.promote()  # idempotent
    assert len(kfake.applies()) == 3


def test_kserve_failure_reason_comes_from_last_failure_info(kfake: FakeApiServer) -> None:
    kfake.outcome = fails_for("8", Outcome("crash", CRASH_LOG))
    isvc = target(kfake, canary_percent=10)
    isvc.roll_out("7", uri("7"))
    with pytest.raises(MlkubeError) as failed:
        isvc.roll_out("8", uri("8"))
    message = one_line(failed)
    assert f"ModelLoadFailed (exit code 1): mlflow.exceptions.MlflowException: {MLFLOW_ERROR}" \
        f" [revision churn-predictor-00002]" in message
    assert "the previous version (v7) keeps serving" in message
    isvc.roll_back("7")
    assert isvc.live_version() == "7"
    live = kfake.get("InferenceService", "churn")
    assert live is not None
    status = live["status"]["components"]["predictor"]
    assert status["latestReadyRevision"] == status["latestCreatedRevision"] == "churn-predictor-00003"
    assert "canaryTrafficPercent" not in live["spec"]["predictor"]
    assert kfake.applies()[-1].body == kfake.applies()[0].body


def test_kserve_roll_back_to_nothing_deletes_it(kfake: FakeApiServer) -> None:
    kfake.outcome = fails_for("7", Outcome("crash", CRASH_LOG))
    isvc = target(kfake)
    with pytest.raises(MlkubeError, match="ModelLoadFailed"):
        isvc.roll_out("7", uri("7"))
    isvc.roll_back(None)
    assert kfake.get("InferenceService", "churn") is None
    assert kfake.objects("Pod") == []


@pytest.fixture
def rawfake(crd: Validator) -> Iterator[FakeApiServer]:
    """A fake whose KServe serves in raw-deployment mode (its default mode)."""
    with FakeApiServer(kserve=True, kserve_mode="RawDeployment") as server:
        yield server
        _checked(server, crd)


def test_kserve_raw_mode_is_judged_on_its_predictor_deployment(rawfake: FakeApiServer) -> None:
    """Raw mode: the InferenceService's address is its predictor Service's; a canary percent
    is never applied (nothing splits the traffic); a crash-looping v8 fails its rollout with
    the container's own reason although KServe's Ready stays True (v7's pod is still
    Available), and v7 serves on; the rollback to nothing deletes the InferenceService and
    what KServe made of it."""
    rawfake.outcome = fails_for("8", Outcome("crash", CRASH_LOG))
    isvc = target(rawfake, canary_percent=20)
    isvc.roll_out("7", uri("7"))
    assert isvc.live_version() == "7"
    assert isvc.base_url == "http://churn-predictor.ml.svc.cluster.local"
    (pod,) = rawfake.objects("Pod")
    assert pod["metadata"]["labels"]["serving.kserve.io/inferenceservice"] == "churn"
    assert "serving.knative.dev/revision" not in pod["metadata"]["labels"]
    with pytest.raises(MlkubeError) as failed:
        isvc.roll_out("8", uri("8"))
    message = one_line(failed)
    assert "could not roll out Churn Model v8: pod churn-predictor-" in message, message
    assert "CrashLoopBackOff" in message and "the previous version (v7) keeps serving" in message
    live = rawfake.get("InferenceService", "churn")
    assert live is not None and live["status"]["deploymentMode"] == "RawDeployment"
    assert {c["type"]: c["status"] for c in live["status"]["conditions"]}["Ready"] == "True"
    assert "canaryTrafficPercent" not in live["spec"]["predictor"]
    isvc.roll_back("7")
    assert isvc.live_version() == "7"
    isvc.roll_back(None)
    assert rawfake.get("InferenceService", "churn") is None
    assert [rawfake.objects(kind) for kind in ("Deployment", "Service", "Pod")] == [[], [], []]


# --- reading back what was applied ------------------------------------------------------------


def test_applied_config_is_what_the_manager_owns() -> None:
    live = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "churn", "namespace": "ml", "uid": "u", "resourceVersion": "9",
                     "labels": {"app": "churn", "team": "ml"},
                     "managedFields": [
                         {"manager": "mlkube", "operation": "Apply", "apiVersion": "v1",
                          "fieldsType": "FieldsV1", "fieldsV1": {
                              "f:metadata": {"f:labels": {"f:app": {}}},
                              "f:spec": {"f:ports": {'k:{"port":80,"protocol":"TCP"}': {
                                  ".": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}},
                                  "f:selector": {}}}},
                         {"manager": "kubectl-label", "operation": "Update", "apiVersion": "v1",
                          "fieldsType": "FieldsV1",
                          "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}}]},
        "spec": {"clusterIP": "10.96.3.4", "clusterIPs": ["10.96.3.4"], "selector": {"app": "c"},
                 "ports": [{"port": 80, "protocol": "TCP", "targetPort": "http", "name": "x"},
                           {"port": 81, "protocol": "TCP", "targetPort": 81}]},
        "status": {"loadBalancer": {}},
    }
    assert applied.applied_config(live) == {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "churn", "namespace": "ml", "labels": {"app": "churn"}},
        "spec": {"ports": [{"port": 80, "protocol": "TCP", "targetPort": "http"}],
                 "selector": {"app": "c"}}}
    assert applied.applied_config(live, manager="someone-else") is None
    fallback = applied.restorable({**live, "metadata": {**live["metadata"], "managedFields": []}})
    assert "clusterIP" not in fallback["spec"] and fallback["spec"]["selector"] == {"app": "c"}


# --- RBAC: what the rendered deploy Role allows -----------------------------------------------


def deploy_role() -> list[dict[str, Any]]:
    """The deploy ServiceAccount, Role and RoleBinding ``mlkube argo render`` writes (and
    ``mlkube platform render``): the deploy step runs as this account."""
    from mlkube.argo.options import RenderOptions
    from mlkube.argo.rbac import rbac_objects

    options = RenderOptions()
    return [serving.to_dict(o) for o in rbac_objects(options)
            if o.metadata.name == options.deploy_service_account]


@pytest.mark.parametrize("kind", ["deployment", "kserve"])
def test_the_rendered_deploy_role_is_all_a_rollout_needs(kind: targets.Kind,
                                                         crd: Validator) -> None:
    """Roll out, scale (the HPA), roll out again, fail, roll back, and roll a failed first
    rollout back to nothing, as the deploy step's service account: nothing is refused."""
    crash = fails_for("9", Outcome("crash", CRASH_LOG))
    with FakeApiServer(kserve=kind == "kserve", rbac=deploy_role(), outcome=crash) as api:
        assert api.user == "system:serviceaccount:ml:mlkube-deploy"
        served = target(api, kind)
        served.roll_out("7", uri("7"))
        api.hpa_wants["churn"] = 2
        if kind == "deployment":
            api.wait_for(lambda: replicas(api) == 2)
        served.roll_out("8", uri("8"))
        with pytest.raises(MlkubeError, match="the previous version \\(v8\\) keeps serving"):
            served.roll_out("9", uri("9"))
        served.roll_back("8")
        assert served.live_version() == "8"
        first = targets.choose(kind, model_name=NAME, service_name="fraud",
                               serving_env=lambda: SERVING.env, api_client=api.api_client(),
                               namespace="ml", config=ServingConfig(pod_start_timeout=5),
                               poll=0.01, log=lambda line: None)
        with pytest.raises(MlkubeError, match="nothing served before"):
            first.roll_out("9", uri("9"))
        first.roll_back(None)
        assert api.get("InferenceService" if kind == "kserve" else "Deployment", "fraud") is None
        assert api.refusals == []
        _checked(api, crd)
        serving_kind = ("inferenceservices" if kind == "kserve" else "deployments")
        own = {serving_kind} | ({"services", "horizontalpodautoscalers"}
                                if kind == "deployment" else set())
        assert api.granted == (
            {(verb, resource) for verb in ("get", "create", "patch", "delete") for resource in own}
            | {("list", "pods"), ("list", "events")}
            # a Deployment's rollback first looks for a canary left in its pods (pod proxy)
            | ({("list", "replicasets"), ("get", "pods/proxy")} if kind == "deployment"
               else set())), \
            "what the rollout uses of the Role (it never watches, updates or lists its objects)"


def _without(objects: list[dict[str, Any]], group: str, resource: str,
             verb: str) -> list[dict[str, Any]]:
    """The deploy RBAC objects with ``verb`` taken from ``resource`` (only) in its Role."""
    out = []
    for obj in objects:
        if obj["kind"] == "Role":
            rules = []
            for rule in obj["rules"]:
                if group in rule["apiGroups"] and resource in rule["resources"]:
                    others = [r for r in rule["resources"] if r != resource]
                    if others:
                        rules.append({**rule, "resources": others})
                    rule = {**rule, "resources": [resource],
                            "verbs": [v for v in rule["verbs"] if v != verb]}
                rules.append(rule)
            obj = {**obj, "rules": rules}
        out.append(obj)
    return out


@pytest.mark.parametrize(("kind", "group", "resource", "verb"), [
    ("deployment", "apps", "deployments", "get"),
    ("deployment", "apps", "deployments", "create"),
    ("deployment", "apps", "deployments", "patch"),
    ("deployment", "apps", "deployments", "delete"),
    ("deployment", "", "services", "create"),
    ("deployment", "", "services", "delete"),
    ("deployment", "autoscaling", "horizontalpodautoscalers", "create"),
    ("deployment", "apps", "replicasets", "list"),
    ("deployment", "", "pods", "list"),
    ("deployment", "", "events", "list"),
    ("kserve", "serving.kserve.io", "inferenceservices", "get"),
    ("kserve", "serving.kserve.io", "inferenceservices", "create"),
    ("kserve", "serving.kserve.io", "inferenceservices", "patch"),
    ("kserve", "serving.kserve.io", "inferenceservices", "delete"),
    ("kserve", "", "pods", "list"),
    ("kserve", "", "events", "list"),
])
def test_a_verb_the_deploy_role_lacks_fails_in_one_line(kind: targets.Kind, group: str,
                                                       resource: str, verb: str) -> None:
    """A first rollout whose pods never get ready (its polls read the ReplicaSet and the pods,
    its failure the events), then the roll-back to nothing (deletes): the first call the Role
    does not allow ends it, in the API server's words and what to do about it."""
    rbac = _without(deploy_role(), group, resource, verb)
    with FakeApiServer(kserve=kind == "kserve", rbac=rbac,
                       outcome=lambda pod: Outcome("starting")) as api:
        served = target(api, kind, timeout=0.5)
        messages = []
        for step in (lambda: served.roll_out("7", uri("7")), lambda: served.roll_back(None)):
            try:
                step()
            except MlkubeError as exc:
                messages.append(str(exc))
                if "is forbidden" in messages[-1]:
                    break
        message = messages[-1]
        assert "\n" not in message
        assert (f'is forbidden: User "system:serviceaccount:ml:mlkube-deploy" cannot {verb} '
                f'resource "{resource}" in API group "{group}" in the namespace "ml"; give the '
                "deploy step's service account mlkube's deploy Role "
                "(mlkube.kube.serving.deploy_rbac)") in message
        assert message.startswith("could not ") and f" in {api.url}: " in message
        assert {(v, r) for v, r, _, _ in api.refusals} == {(verb, resource)}
