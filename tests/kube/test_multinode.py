"""Multi-node training objects: the Indexed Job and its headless Service (strictly valid, the
rendezvous wired as torchrun expects), Kueue's suspend handling, the TrainJob, bad input."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest

from mlkube import spec
from mlkube.errors import MlkubeError
from mlkube.kube import multinode
from mlkube.kube.pod import QUEUE_LABEL, Placement, step_pod
from mlkube.kube.serving import to_dict

K8S_VERSION = "1.33.0"


def _objects(nodes: int = 3, **placement: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    parts = step_pod(spec.TRAIN, {"dataset": "/mnt/mlkube/datasets/x"},
                     Placement(gpus=4, artifact_pvc="mlkube-artifacts", **placement))
    service, job = (to_dict(o) for o in multinode.indexed_job(
        parts, name="train-abc", namespace="ml", nodes=nodes, service_account="mlkube-workflow"))
    return service, job


def test_indexed_job_and_service_are_strictly_valid_and_wired_for_torchrun() -> None:
    service, job = _objects()
    for obj in (service, job):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == "train-abc"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {multinode.JOB_NAME_LABEL: "train-abc"}
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # the pod of index 0 is <job>-0 under the Service's subdomain
    assert env["MASTER_ADDR"] == "train-abc-0.train-abc"
    assert env["MASTER_PORT"] == str(multinode.RENDEZVOUS_PORT)
    assert "--nnodes=3" in container["command"] and "--nproc-per-node=4" in container["command"]
    referenced = set(re.findall(r"\$\((\w+)\)", " ".join(container["command"])))
    # every $(VAR) is the container's own, or the one the Job controller adds to indexed pods
    assert referenced <= set(env) | {"JOB_COMPLETION_INDEX"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] == 120
    assert "suspend" not in job["spec"]


def test_with_a_kueue_queue_the_job_is_suspended_and_labelled_not_its_pods() -> None:
    _, job = _objects(queue_name="gpu-queue", priority_class_name="training")
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"] == {QUEUE_LABEL: "gpu-queue"}
    assert QUEUE_LABEL not in (job["spec"]["template"].get("metadata", {}).get("labels") or {})
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "training"


def test_train_job_carries_the_same_run() -> None:
    parts = step_pod(spec.TRAIN, {"dataset": "/d"},
                     Placement(gpus=2, artifact_pvc="mlkube-artifacts", queue_name="q"))
    body = multinode.train_job(parts, name="train-abc", namespace="ml", nodes=2)
    assert body["kind"] == "TrainJob" and body["spec"]["runtimeRef"]["name"] == "torch-distributed"
    trainer = body["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 2
    assert trainer["command"][-1] == spec.TRAIN.module and "/d" in trainer["args"]
    assert body["spec"]["suspend"] is True and body["metadata"]["labels"] == {QUEUE_LABEL: "q"}
    override = body["spec"]["podTemplateOverrides"][0]["spec"]
    assert override["volumes"][0]["persistentVolumeClaim"]["claimName"] == "mlkube-artifacts"
    # the pieces are core types: each validates strictly as what it is
    container = {"name": "node", "image": trainer["image"], "command": trainer["command"],
                 "args": trainer["args"], "env": trainer["env"],
                 "resources": trainer["resourcesPerNode"],
                 "volumeMounts": override["containers"][0]["volumeMounts"]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
           "spec": {"containers": [container], "volumes": override["volumes"],
                    "tolerations": override["tolerations"]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


@pytest.mark.parametrize(("nodes", "message"), [
    (0, "nodes is 0; give a whole number of nodes, at least 1"),
    (-2, "nodes is -2"),
    (True, "nodes is True"),
    (1, "an Indexed Job is for nodes >= 2"),
])
def test_bad_node_count_is_one_line(nodes: Any, message: str) -> None:
    parts = step_pod(spec.TRAIN, {"dataset": "/d"}, Placement())
    with pytest.raises(MlkubeError, match=re.escape(message)):
        multinode.indexed_job(parts, name="t", namespace=None, nodes=nodes)


def _gpu_node(name: str, gpus: str) -> Any:
    from kubernetes.client import V1Node, V1NodeSpec, V1NodeStatus, V1ObjectMeta

    return V1Node(metadata=V1ObjectMeta(name=name, labels={}), spec=V1NodeSpec(),
                  status=V1NodeStatus(allocatable={"cpu": "32", "memory": "256Gi",
                                                   "nvidia.com/gpu": gpus, "pods": "110"}))


def test_preflight_wants_a_node_for_each_training_pod() -> None:
    import argparse

    from mlkube.kube import cli, preflight

    fields = ("image", "cpu", "cpu_limit", "memory", "gpu_product", "artifact_pvc",
              "queue_name", "priority_class_name")
    args = argparse.Namespace(**dict.fromkeys(fields), gpus=4, nodes=3)
    pod = cli.step_pod_object("train", args, "ml")
    cluster = [_gpu_node("a", "8"), _gpu_node("b", "8"), _gpu_node("c", "2")]
    fits = preflight.verdict(pod, nodes=cluster).nodes
    assert fits == ("a", "b")  # one pod of 4 GPUs fits a and b, not c
    problem = multinode.nodes_problem(pod, fits, len(cluster))
    assert problem == ("pod mlkube-train-preflight trains on 3 nodes at once, one pod (4 GPUs) a "
                       "node, but only 2 of 3 nodes can take one: a, b; train on fewer nodes or "
                       "with fewer GPUs a node, or add nodes")
    args.nodes = 2
    assert multinode.nodes_problem(cli.step_pod_object("train", args, "ml"), fits, 3) is None
    args.nodes = 0
    with pytest.raises(MlkubeError, match=r"^--nodes is 0"):
        cli.step_pod_object("train", args, "ml")


def test_argo_renders_training_on_nodes_as_an_indexed_job_then_the_result() -> None:
    import json

    import yaml

    from mlkube.argo import io
    from mlkube.argo.options import RenderOptions
    from mlkube.argo.render import render
    from mlkube.argo.schema import default_validator, embedded_manifests

    files = render(RenderOptions(train_nodes=2, queue_name="gpu-queue"))
    steps = yaml.safe_load(files["mlkube-steps.yaml"])
    validator = default_validator()
    assert validator.errors(steps) == []  # Argo's schema, and every manifest strictly
    templates = {t["name"]: t for t in steps["spec"]["templates"]}
    train = templates["train"]
    assert [s[0]["template"] for s in train["steps"]] == list(
        ("train-config", "train-rendezvous", "train-nodes", "train-result"))
    assert {p["name"] for p in train["outputs"]["parameters"]} == set(spec.TRAIN.result_keys)
    assert templates["train-nodes"]["resource"]["successCondition"] == "status.succeeded > 1"
    assert "--result-only" in templates["train-result"]["container"]["args"]
    assert "nvidia.com/gpu" not in str(templates["train-result"]["container"]["resources"])
    manifests = {name: m for name, m in embedded_manifests(steps)}
    (config,) = [m for m in manifests.values() if m["kind"] == "ConfigMap"]
    (job,) = [m for m in manifests.values() if m["kind"] == "Job"]
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"] == {QUEUE_LABEL: "gpu-queue"}
    pod = job["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "config")
    assert f"{mount['mountPath']}/{next(iter(config['data']))}" == io.CONFIG_PATH
    # what Argo does to the manifest: a YAML config with quotes and newlines stays one value
    text = templates["train-config"]["resource"]["manifest"]
    document = 'model: {hidden_sizes: [8]}\nexperiment: "it\'s"\n'
    done = text.replace("{{=toJson(inputs.parameters.config)}}", json.dumps(document))
    assert json.loads(done.replace("{{workflow.name}}", "wf-1"))["data"]["config.yaml"] == document
    rbac = yaml.safe_load_all(files["mlkube-rbac.yaml"])
    role = next(d for d in rbac if d["kind"] == "Role" and d["metadata"]["name"] == "mlkube-workflow")
    assert any("jobs" in r["resources"] for r in role["rules"])
    single = list(yaml.safe_load_all(render(RenderOptions())["mlkube-rbac.yaml"]))
    assert single and "jobs" not in str(single)  # one node: no Job rights


def test_run_job_applies_valid_objects_and_waits_for_the_job() -> None:
    from fake_apiserver import FakeApiServer

    parts = step_pod(spec.TRAIN, {"dataset": "/d"}, Placement(gpus=2))
    objects = multinode.indexed_job(parts, name="mlkube-train-1", namespace=None, nodes=2)
    lines: list[str] = []
    with FakeApiServer(ready_after=2) as api:
        multinode.run_job(api.api_client(), objects, "ml", poll_seconds=0.01, log=lines.append)
        assert api.schema_errors() == []  # as stored, status included
        assert api.get("Job", "mlkube-train-1")["spec"]["completionMode"] == "Indexed"
        assert api.get("Service", "mlkube-train-1")["spec"]["clusterIP"] == "None"
        assert lines[-1] == "Job ml/mlkube-train-1: 2 nodes completed"
        # a second try of a completed run leaves the Job alone
        multinode.run_job(api.api_client(), objects, "ml", poll_seconds=0.01, log=lines.append)
        assert not [r for r in api.requests if r.method == "DELETE"]


def test_a_failed_job_is_one_line_and_a_retry_creates_it_again() -> None:
    from fake_apiserver import FakeApiServer

    parts = step_pod(spec.TRAIN, {"dataset": "/d"}, Placement(gpus=2))
    objects = multinode.indexed_job(parts, name="mlkube-train-2", namespace=None, nodes=2)
    with FakeApiServer(job_outcome="Failed") as api:
        with pytest.raises(MlkubeError, match=r"^training Job ml/mlkube-train-2 failed "
                                              r"\(BackoffLimitExceeded: Job has reached the "
                                              r"specified backoff limit\); see kubectl -n ml logs "
                                              r"-l batch.kubernetes.io/job-name=mlkube-train-2$"):
            multinode.run_job(api.api_client(), objects, "ml", poll_seconds=0.01, log=print)
        api.job_outcome = "Complete"
        multinode.run_job(api.api_client(), objects, "ml", poll_seconds=0.01, log=print)
        assert [r.method for r in api.requests if r.method == "DELETE"] == ["DELETE"]
        assert api.get("Job", "mlkube-train-2")["status"]["succeeded"] == 2


def _gpus(container: dict[str, Any]) -> tuple[str | None, str]:
    """(MLKUBE_GPUS, nvidia.com/gpu limit) of a rendered container."""
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    limits = (container.get("resources") or {}).get("limits") or {}
    return env.get(spec.GPUS_ENV), limits.get("nvidia.com/gpu", "0")


def test_each_training_pod_is_told_its_own_gpus_not_the_jobs() -> None:
    _, job = _objects(nodes=3)  # 3 pods of 4 GPUs: each pod's processes check for 4
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert _gpus(job["spec"]["template"]["spec"]["containers"][0]) == ("4", "4")
    parts = step_pod(spec.TRAIN, {"dataset": "/d"}, Placement(gpus=2))
    trainer = multinode.train_job(parts, name="train-abc", namespace="ml", nodes=2)["spec"]["trainer"]
    assert _gpus({"env": trainer["env"], "resources": trainer["resourcesPerNode"]}) == ("2", "2")


def test_argo_and_airflow_multinode_pods_carry_their_gpus() -> None:
    import json
    import sys
    from pathlib import Path

    import yaml

    from mlkube.argo.options import RenderOptions
    from mlkube.argo.render import render

    steps = yaml.safe_load(render(RenderOptions(train_nodes=2))["mlkube-steps.yaml"])
    templates = {t["name"]: t for t in steps["spec"]["templates"]}
    job = json.loads(templates["train-nodes"]["resource"]["manifest"])
    assert _gpus(job["spec"]["template"]["spec"]["containers"][0]) == ("1", "1")
    assert _gpus(templates["train-result"]["container"]) == ("0", "0")  # reads the result only

    sys.path.insert(0, str(Path(__file__).parents[1] / "airflow"))
    import airflow_env

    airflow_env.configure()  # a throwaway AIRFLOW_HOME, as tests/airflow has
    from mlkube.airflow import TrainOperator

    op = TrainOperator(task_id="train", dataset="/d", nodes=3, gpus=2)
    (job_obj,) = [o for o in op.job_objects("run-1") if o.kind == "Job"]
    assert _gpus(to_dict(job_obj)["spec"]["template"]["spec"]["containers"][0]) == ("2", "2")
    pod = to_dict(op.build_pod_request_obj(dry_run=True))
    (base,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    assert _gpus(base) == ("0", "0")
