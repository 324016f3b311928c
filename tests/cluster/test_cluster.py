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
    with pytest.raises(Exception, match="no node can allocate that"):
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
