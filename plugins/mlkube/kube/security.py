"""Security contexts meeting the Pod Security Standards' "restricted" profile."""

from __future__ import annotations

from kubernetes.client import (
    V1Capabilities,
    V1PodSecurityContext,
    V1SeccompProfile,
    V1SecurityContext,
)

RUN_AS_USER = 1000  # the images' unprivileged user (docker/)


def pod_security_context() -> V1PodSecurityContext:
    """Non-root, RuntimeDefault seccomp; volumes writable by the images' group."""
    return V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=RUN_AS_USER,
        run_as_group=RUN_AS_USER,
        fs_group=RUN_AS_USER,
        seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
    )


def container_security_context() -> V1SecurityContext:
    """No privilege escalation, every capability dropped."""
    return V1SecurityContext(
        allow_privilege_escalation=False,
        run_as_non_root=True,
        capabilities=V1Capabilities(drop=["ALL"]),
        seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
    )
