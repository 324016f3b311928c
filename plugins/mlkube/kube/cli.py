"""``mlkube preflight``: would the cluster in the current kubeconfig ever run this pod?

    mlkube preflight --step train --gpus 4 --namespace ml     # a step's pod, as the adapters build it
    mlkube preflight --pod pod.yaml                          # any pod manifest

It prints the verdict (the nodes that fit, what was skipped) and exits 0, or prints why the
pod can never be admitted or scheduled, one line per the scheduler's style, and exits 1.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def step_pod_object(step: str, args: argparse.Namespace, namespace: str) -> Any:
    """The pod the adapters would submit for ``step`` (placeholders for per-run values)."""
    from mlkube import spec
    from mlkube.kube.pod import Placement, step_pod

    description = spec.get(step)
    values = {o.dest: f"<{o.dest}>" for o in description.options if o.required}
    placement = Placement(image=args.image, cpu=args.cpu, cpu_limit=args.cpu_limit,
                          memory=args.memory, gpus=args.gpus, gpu_product=args.gpu_product,
                          artifact_pvc=args.artifact_pvc, queue_name=args.queue_name,
                          priority_class_name=args.priority_class_name)
    pieces = step_pod(description, values, placement, what=f"step {step}")
    pod = pieces.pod(f"mlkube-{step}-preflight", namespace)
    if getattr(args, "nodes", None) is not None:
        from mlkube.kube.multinode import NODES_ANNOTATION, check_nodes

        pod.metadata.annotations = {NODES_ANNOTATION: str(check_nodes(args.nodes, "--nodes"))}
    return pod


def pods_from_file(path: str, namespace: str | None) -> list[Any]:
    """The ``V1Pod`` objects of a YAML (one or more documents) or JSON manifest."""
    import yaml
    from kubernetes.client import ApiClient

    from mlkube.errors import MlkubeError
    from mlkube.kube.api import own_namespace

    try:
        documents = [d for d in yaml.safe_load_all(open(path).read()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise MlkubeError(f"pod manifest {path} cannot be read: {exc}".splitlines()[0]) from None
    if not documents or any(not isinstance(d, dict) or d.get("kind") != "Pod" for d in documents):
        raise MlkubeError(f"{path} is not a Pod manifest (kind: Pod); for a step use --step")

    class _Response:
        def __init__(self, body: Any) -> None:
            self.data = json.dumps(body)

    pods = [ApiClient().deserialize(_Response(d), "V1Pod") for d in documents]
    for pod in pods:
        if namespace or not pod.metadata.namespace:
            pod.metadata.namespace = namespace or own_namespace()
    return pods


def judge(pods: list[Any], views: dict[str, dict[str, Any]]) -> list[tuple[bool, str]]:
    """Each pod's verdict line: ``(True, "may run: ...")`` or ``(False, "never: ...")``.

    ``views`` holds, per namespace, what :func:`mlkube.kube.preflight.read_cluster` listed.
    """
    from mlkube.errors import MlkubeError
    from mlkube.kube import multinode

    lines = []
    for pod in pods:
        namespace = pod.metadata.namespace
        found = views[namespace]
        try:
            result = multinode.verdict(pod, found)
        except MlkubeError as exc:
            lines.append((False, f"never: {exc}"))
            continue
        where = (f"fits {len(result.nodes)} of {len(found['nodes'])} nodes: "
                 f"{', '.join(result.nodes[:10])}" if found["nodes"] is not None
                 else "nodes not read")
        lines.append((True, f"may run: pod {namespace}/{pod.metadata.name} asks {result.asks}; "
                            f"{where}" + (f"; skipped: {', '.join(result.skipped)}"
                                          if result.skipped else "")))
    return lines


def _preflight(args: argparse.Namespace) -> int:
    from kubernetes.client import CoreV1Api

    from mlkube.errors import MlkubeError
    from mlkube.kube import api, preflight

    client = api.api_client()
    if args.pod:
        pods = pods_from_file(args.pod, args.namespace)
    elif args.step:
        pods = [step_pod_object(args.step, args, args.namespace or api.own_namespace())]
    else:
        raise MlkubeError("give --step STEP (a step's pod) or --pod FILE (a pod manifest)")
    core = CoreV1Api(client)
    views = {ns: preflight.read_cluster(core, ns, print)
             for ns in dict.fromkeys(p.metadata.namespace for p in pods)}
    lines = judge(pods, views)
    never = [line for ok, line in lines if not ok]
    if len(lines) == 1 and never:  # the error line says it, once
        raise MlkubeError(never[0])
    for _, line in lines:
        print(line)
    if never:
        raise MlkubeError(f"{len(never)} of {len(lines)} pods can never run (the 'never' lines "
                          "above)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``preflight``."""
    parser = sub.add_parser("preflight", help="check that the cluster (current kubeconfig) can "
                                              "ever run a step's pod, or any pod manifest")
    parser.add_argument("--step", help="a step name: its pod as the adapters build it")
    parser.add_argument("--pod", help="a pod manifest (YAML or JSON) instead")
    parser.add_argument("--namespace", help="the namespace it would run in (default: default)")
    for flag, text in (("--image", "image"), ("--cpu", "CPU request"),
                       ("--cpu-limit", "CPU limit"), ("--memory", "memory request and limit"),
                       ("--gpu-product", "nvidia.com/gpu.product to select nodes by"),
                       ("--artifact-pvc", "the shared claim the step mounts"),
                       ("--queue-name", "Kueue LocalQueue (label kueue.x-k8s.io/queue-name)"),
                       ("--priority-class-name", "the pod's PriorityClass (quota scopes "
                                                 "match it)")):
        parser.add_argument(flag, help=f"with --step: {text}")
    parser.add_argument("--gpus", type=int, help="with --step: whole GPUs")
    parser.add_argument("--nodes", type=int, help="with --step train: nodes it trains on at once "
                                                  "(each needs a node of its own)")
    parser.set_defaults(handler=_preflight)
