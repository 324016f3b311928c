"""Read a step's result from a finished pod: the base container's termination message.

A step writes its JSON result to ``/dev/termination-log`` (:mod:`mlkube.result`); the
kubelet copies it into the pod's status as ``state.terminated.message``. Reading it there
needs no XCom sidecar and works the same after a deferral or a worker restart.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client import V1ContainerStateTerminated, V1Pod

from mlkube.errors import MlkubeError


def _terminated(pod: V1Pod, container: str) -> V1ContainerStateTerminated:
    name = pod.metadata.name if pod.metadata else "?"
    statuses = (pod.status.container_statuses if pod.status else None) or []
    status = next((s for s in statuses if s.name == container), None)
    if status is None:
        raise MlkubeError(
            f"pod {name} has no status for container {container!r}: it never started, so there "
            "is no step result; look at the pod's events"
        )
    terminated = status.state.terminated if status.state else None
    if terminated is None:
        raise MlkubeError(
            f"pod {name}: container {container!r} has not terminated, so its result cannot be "
            "read yet"
        )
    return terminated


def exit_code(pod: V1Pod, container: str = "base") -> int | None:
    """The exit status of the step's container, once it has terminated."""
    try:
        return _terminated(pod, container).exit_code
    except MlkubeError:
        return None


def failure(pod: V1Pod, container: str = "base") -> str | None:
    """One line for a step whose container exited non-zero (its own last line); else ``None``."""
    try:
        terminated = _terminated(pod, container)
    except MlkubeError:
        return None
    if terminated.exit_code == 0:
        return None
    message = (terminated.message or "").strip()
    detail = message.splitlines()[-1] if message else terminated.reason or "no message"
    name = pod.metadata.name if pod.metadata else "?"
    return f"pod {name}: step exited with code {terminated.exit_code}: {detail}"


def result_from_pod(pod: V1Pod, container: str = "base") -> dict[str, Any]:
    """The JSON result the step in ``container`` left in its termination message.

    Args:
        pod: the pod as read from the API server after the container finished.
        container: the container that ran the step.

    Returns:
        The step's result document.

    Raises:
        MlkubeError: the container is not finished, failed, or left no valid result.
    """
    name = pod.metadata.name if pod.metadata else "?"
    terminated = _terminated(pod, container)
    message = (terminated.message or "").strip()
    failed = failure(pod, container)
    if failed:
        raise MlkubeError(failed)
    if not message:
        raise MlkubeError(
            f"pod {name}: container {container!r} exited 0 but left no termination message; the "
            "step must write its result to /dev/termination-log (mlkube.result.write_result) "
            "and the container's terminationMessagePath must be /dev/termination-log"
        )
    try:
        result = json.loads(message)
    except json.JSONDecodeError as exc:
        raise MlkubeError(
            f"pod {name}: termination message of {container!r} is not a JSON result ({exc.msg}): "
            f"{message[:200]!r}"
        ) from None
    if not isinstance(result, dict):
        raise MlkubeError(
            f"pod {name}: termination message of {container!r} holds {type(result).__name__}, "
            "not a JSON object"
        )
    return result
