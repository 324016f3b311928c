"""Why a pod does not serve, in the container's own words, one short line each.

Read from a pod's status as the API returns it (a plain mapping): its containers' waiting
reasons (CrashLoopBackOff, ImagePullBackOff...), exit codes and last termination messages, a
running container not ready yet, and the scheduler's condition when no container exists. The
cluster serving targets (:mod:`mlkube.targets.cluster`) build their failure lines from these.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Container waiting reasons that do not heal by waiting: the rollout fails at once.
FATAL_WAITING = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
    "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})
# Waiting reasons that only mean "starting".
_STARTING = frozenset({"ContainerCreating", "PodInitializing"})
# Events that repeat what the container status says (its waiting reason).
REDUNDANT_EVENTS = frozenset({"BackOff"})
_MAX_TEXT = 300


def last_line(text: str, limit: int = _MAX_TEXT) -> str:
    """The last non-empty line of ``text`` (a log tail ends with the error), shortened."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= limit else last[: limit - 3] + "..."


def pod_problems(pod: dict[str, Any]) -> list[str]:
    """What a pod's status says keeps it from serving, in the container's own words."""
    return [f"pod {name} {problem}" for name, problem in problems_of(pod)]


def problems_of(pod: dict[str, Any]) -> list[tuple[str, str]]:
    """Each problem of :func:`pod_problems` as (pod name, problem)."""
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    found: list[tuple[str, str]] = []
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    for container in statuses:
        parts = []
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        reason = waiting.get("reason")
        if reason and reason not in _STARTING:
            message = waiting.get("message") if reason != "CrashLoopBackOff" else None
            parts.append(f"{reason}" + (f" ({last_line(message)})" if message else ""))
        terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated")
        if terminated and terminated.get("exitCode", 0) != 0:
            text = f"exited with code {terminated.get('exitCode')}"
            if terminated.get("reason"):
                text += f" ({terminated['reason']})"
            if terminated.get("message"):
                text += f": {last_line(terminated['message'])}"
            parts.append(text)
        if not parts and state.get("running") and not container.get("ready"):
            parts.append(f"running, not ready yet (restarts: {container.get('restartCount', 0)})")
        if parts:
            found.append((name, f"container {container.get('name')}: {', '.join(parts)}"))
    if not statuses:
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                found.append((name, f"is not scheduled ({condition.get('reason')}): "
                                    f"{last_line(condition.get('message', ''))}"))
    return found


def fatal_problems(pods: Iterable[dict[str, Any]]) -> list[str]:
    """The problems of pods whose containers wait for a reason that does not heal."""
    fatal = []
    for pod in pods:
        status = pod.get("status") or {}
        statuses = [*(status.get("initContainerStatuses") or []),
                    *(status.get("containerStatuses") or [])]
        if any(((c.get("state") or {}).get("waiting") or {}).get("reason") in FATAL_WAITING
               for c in statuses):
            fatal += pod_problems(pod)
    return fatal
