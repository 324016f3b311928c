"""``mlkube preflight``: a step's pod, or any manifest, judged by the same verdict()."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient, V1Node, V1NodeSpec, V1NodeStatus, V1ObjectMeta

from mlkube.errors import MlkubeError
from mlkube.kube import cli, preflight

GPU_NODE = V1Node(metadata=V1ObjectMeta(name="gpu-1", labels={}), spec=V1NodeSpec(),
                  status=V1NodeStatus(allocatable={"cpu": "32", "memory": "256Gi",
                                                   "nvidia.com/gpu": "2", "pods": "110"}))


def _args(**given: object) -> argparse.Namespace:
    fields = ("image", "cpu", "cpu_limit", "memory", "gpus", "gpu_product", "artifact_pvc",
              "queue_name", "priority_class_name")
    return argparse.Namespace(**{f: given.get(f) for f in fields})


def test_a_steps_pod_is_the_one_the_adapters_build() -> None:
    pod = cli.step_pod_object("train", _args(gpus=2), "ml")
    assert pod.metadata.namespace == "ml"
    assert preflight.verdict(pod, nodes=[GPU_NODE]).nodes == ("gpu-1",)
    too_big = cli.step_pod_object("train", _args(gpus=4), "ml")
    with pytest.raises(MlkubeError, match=r"0/1 nodes are available: 1 node: Insufficient "
                                          r"nvidia\.com/gpu \(has 2, asks 4\)"):
        preflight.verdict(too_big, nodes=[GPU_NODE])


def test_a_steps_pod_carries_its_queue_and_priority_class() -> None:
    """A quota scoped to a PriorityClass is judged against the class the pod will have."""
    pod = cli.step_pod_object("train", _args(queue_name="team-a",
                                             priority_class_name="batch-high"), "ml")
    assert pod.metadata.labels == {"kueue.x-k8s.io/queue-name": "team-a"}
    assert pod.spec.priority_class_name == "batch-high"
    assert pod.spec.termination_grace_period_seconds == 120
    with pytest.raises(MlkubeError, match=r"^step train: priority_class_name is 'Batch', not a "
                                          r"DNS-1123 subdomain"):
        cli.step_pod_object("train", _args(priority_class_name="Batch"), "ml")


def test_any_pod_manifest(tmp_path: Path) -> None:
    manifest = ApiClient().sanitize_for_serialization(cli.step_pod_object("train", _args(), "x"))
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(manifest))
    (pod,) = cli.pods_from_file(str(path), "ml")
    assert pod.metadata.namespace == "ml" and pod.spec.containers[0].resources.limits
    assert preflight.verdict(pod, nodes=[GPU_NODE]).nodes == ("gpu-1",)
    path.write_text("kind: Deployment\n")
    with pytest.raises(MlkubeError, match="is not a Pod manifest"):
        cli.pods_from_file(str(path), None)


def test_without_a_cluster_it_says_so_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mlkube.cli", "preflight", "--step", "train"],
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               "KUBECONFIG": str(tmp_path / "none")})
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("mlkube preflight: error: no usable Kubernetes config")


def test_each_verdict_is_one_line_with_quantities_as_people_write_them() -> None:
    """'may run' wrote memory in bytes (17179869184) where 'never' wrote 16Gi."""
    fits = cli.step_pod_object("train", _args(gpus=2), "ml")
    too_big = cli.step_pod_object("train", _args(gpus=4), "ml")
    too_big.metadata.name = "too-big"
    views = {"ml": {"nodes": [GPU_NODE], "quotas": [], "limit_ranges": [], "claims": []}}
    (ok, may), (bad, never) = cli.judge([fits, too_big], views)
    assert ok and may == ("may run: pod ml/mlkube-train-preflight asks cpu=4, memory=16Gi, "
                          "nvidia.com/gpu=2; fits 1 of 1 nodes: gpu-1")
    assert not bad and never.startswith("never: pod ml/too-big asks cpu=4, memory=16Gi, "
                                        "nvidia.com/gpu=4: 0/1 nodes are available")
    assert "\n" not in may + never


def test_against_an_api_server_each_verdict_is_said_once(tmp_path: Path) -> None:
    """The real command on a cluster (the fake API server): 'never' printed once, as the error
    line (it was printed twice), and 'may run' with quantities as people write them."""
    from fake_apiserver import FakeApiServer

    with FakeApiServer() as api:
        api.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-1"}, "spec": {},
                 "status": {"allocatable": {"cpu": "32", "memory": "256Gi",
                                            "nvidia.com/gpu": "2", "pods": "110"}}})
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(api.kubeconfig()))

        def preflight_cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "mlkube.cli", "preflight", "--step",
                                   "train", "--namespace", "ml", *args], capture_output=True,
                                  text=True, timeout=120,
                                  env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                       "KUBECONFIG": str(kubeconfig)})

        never = preflight_cli("--gpus", "4")
        fits = preflight_cli("--gpus", "2")
    assert never.returncode == 1 and never.stdout == ""
    (line,) = never.stderr.strip().splitlines()
    assert line.startswith("mlkube preflight: error: never: pod ml/mlkube-train-preflight asks "
                           "cpu=4, memory=16Gi, nvidia.com/gpu=4: 0/1 nodes are available")
    assert fits.returncode == 0 and fits.stderr == ""
    assert fits.stdout.strip() == ("may run: pod ml/mlkube-train-preflight asks cpu=4, "
                                   "memory=16Gi, nvidia.com/gpu=2; fits 1 of 1 nodes: gpu-1")
