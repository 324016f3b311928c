"""Against a real cluster (needs a kubeconfig; skipped without one): the API server, with its
admission (Pod Security included) and CRDs, accepts what mlkube renders. Server-side dry run
only: nothing is created.

    .venv/bin/python -m pytest -m cluster tests/cluster      # MLKUBE_TEST_NAMESPACE=default
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from mlkube import spec
from mlkube.kube import preflight
from mlkube.kube.pod import Placement, step_pod

pytestmark = pytest.mark.cluster
NAMESPACE = os.environ.get("MLKUBE_TEST_NAMESPACE", "default")
WORKFLOWS = Path(__file__).parents[2] / "workflows"
VALUES = {"dataset": "/mnt/mlkube/datasets/0123456789abcdef", "run_id": "0" * 32}


@pytest.fixture(scope="module")
def api():  # type: ignore[no-untyped-def]
    from kubernetes import client, config

    config.load_kube_config()
    return client.ApiClient()


def _pod(step: spec.StepSpec, gpus: int | None = None):  # type: ignore[no-untyped-def]
    from kubernetes.client import V1ObjectMeta, V1Pod, V1PodSpec

    values = {k: v for k, v in VALUES.items() if any(o.dest == k for o in step.options)}
    parts = step_pod(step, values, Placement(artifact_pvc="mlkube-artifacts", gpus=gpus))
    return V1Pod(api_version="v1", kind="Pod",
                 metadata=V1ObjectMeta(generate_name=f"mlkube-{step.name}-"),
                 spec=V1PodSpec(containers=[parts.container], volumes=parts.volumes,
                                tolerations=parts.tolerations, node_selector=parts.node_selector,
                                security_context=parts.security_context, restart_policy="Never"))


@pytest.mark.parametrize("step", list(spec.STEPS.values()), ids=list(spec.STEPS))
def test_step_pod_is_admitted(api, step: spec.StepSpec) -> None:  # type: ignore[no-untyped-def]
    from kubernetes.client import CoreV1Api

    created = CoreV1Api(api).create_namespaced_pod(NAMESPACE, _pod(step, gpus=0), dry_run="All")
    container = created.spec.containers[0]
    assert container.command == step.command()
    assert created.spec.security_context.run_as_non_root is True


def test_preflight_with_the_real_nodes(api) -> None:  # type: ignore[no-untyped-def]
    from kubernetes.client import CoreV1Api

    nodes = CoreV1Api(api).list_node().items
    small = _pod(spec.PREPARE_DATA)
    small.spec.containers[0].resources.requests = {"cpu": "10m", "memory": "16Mi"}
    preflight.check_nodes(small, nodes)
    huge = _pod(spec.PREPARE_DATA)
    huge.spec.containers[0].resources.requests = {"cpu": "100000", "memory": "1Pi"}
    # a request over its limit is refused at admission, before any node is looked at
    with pytest.raises(Exception, match=r"memory request 1Pi must be less than or equal to its "
                                        r"limit 2Gi"):
        preflight.check_nodes(huge, nodes)
    huge.spec.containers[0].resources.limits = {"memory": "1Pi"}
    with pytest.raises(Exception, match=r"0/\d+ nodes are available: .*Insufficient (cpu|memory)"):
        preflight.check_nodes(huge, nodes)


def test_argo_objects_are_accepted(api) -> None:  # type: ignore[no-untyped-def]
    from kubernetes.client import ApiextensionsV1Api, CustomObjectsApi
    from kubernetes.client.exceptions import ApiException

    try:
        ApiextensionsV1Api(api).read_custom_resource_definition("workflowtemplates.argoproj.io")
    except ApiException:
        pytest.skip("Argo Workflows is not installed in this cluster")
    plural = {"WorkflowTemplate": "workflowtemplates", "CronWorkflow": "cronworkflows",
              "Workflow": "workflows"}
    checked = 0
    for path in sorted(WORKFLOWS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in plural:
                CustomObjectsApi(api).create_namespaced_custom_object(
                    "argoproj.io", "v1alpha1", NAMESPACE, plural[doc["kind"]], doc, dry_run="All")
                checked += 1
    assert checked >= 4


def _tiny_server(model: str) -> list[str]:
    """A stand-in for the serving runtime: busybox's httpd answering the V2 health paths."""
    root = "/tmp/www"
    return ["sh", "-c", f"mkdir -p {root}/v2/models/{model} {root}/v2/health && "
            f"echo ok > {root}/v2/models/{model}/ready && echo ok > {root}/v2/health/live && "
            f"exec httpd -f -p 8080 -h {root}"]


def test_a_deployment_rolls_out_fails_with_its_reason_and_rolls_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Really rolled out (not a dry run): a tiny image serves v1, a v2 that exits with an
    error is reported in its own words while v1 keeps serving, and v1 comes back."""
    import uuid

    from kubernetes.client import AppsV1Api, AutoscalingV2Api, CoreV1Api
    from kubernetes.client.exceptions import ApiException

    from mlkube.errors import MlkubeError
    from mlkube.kube import api, serving
    from mlkube.targets.deployment import DeploymentTarget

    def command(model: serving.ModelServing) -> list[str]:
        if model.version == "2":
            return ["sh", "-c", "echo 'tiny: cannot load models:/tiny/2' >&2; exit 3"]
        return _tiny_server("tiny")

    monkeypatch.setattr(serving, "server_command", command)
    name = f"mlkube-rollout-{uuid.uuid4().hex[:6]}"
    model = serving.ModelServing(name=name, model_name="tiny", cpu="10m", memory="32Mi",
                                 image=os.environ.get("MLKUBE_TEST_TINY_IMAGE", "busybox:1.36"))
    client = api.api_client()
    target = DeploymentTarget(api_client=client, serving=model, namespace=NAMESPACE,
                              timeout=300, poll=2)
    try:
        assert target.live_version() is None
        target.roll_out("1", "models:/tiny/1")
        assert target.live_version() == "1"
        with pytest.raises(MlkubeError, match="cannot load models:/tiny/2") as failed:
            target.roll_out("2", "models:/tiny/2")
        assert "the previous version (v1) keeps serving" in str(failed.value)
        target.roll_back("1")
        assert target.live_version() == "1"
    finally:
        for delete in (AutoscalingV2Api(client).delete_namespaced_horizontal_pod_autoscaler,
                       CoreV1Api(client).delete_namespaced_service,
                       AppsV1Api(client).delete_namespaced_deployment):
            try:
                delete(name, NAMESPACE)
            except ApiException:
                pass
