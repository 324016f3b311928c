"""Checks on what users pass for pods, with errors that name the input and what to do."""

from __future__ import annotations

import re

from mlkube.errors import MlkubeError

# Kubernetes' resource.Quantity grammar: a signed decimal with an optional suffix.
_QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
# A container image reference: [registry[:port]/]path[:tag][@digest], lowercase path.
_IMAGE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL = re.compile(rf"^{_LABEL}$")
_DNS1123_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


def quantity(value: object, what: str) -> str:
    """A resource quantity such as ``500m``, ``2``, ``16Gi``."""
    text = str(value)
    if isinstance(value, bool) or not _QUANTITY.match(text):
        raise MlkubeError(
            f"{what} is {value!r}, not a Kubernetes quantity; write e.g. '500m', '2', '16Gi'"
        )
    return text


def image(value: str, what: str) -> str:
    """A container image reference."""
    if not isinstance(value, str) or not _IMAGE.match(value):
        raise MlkubeError(
            f"{what} is {value!r}, not a valid image reference; write e.g. "
            "'registry.example.com/team/trainer:1.2'"
        )
    return value


def gpus(value: object, what: str) -> int:
    """A positive whole number of GPUs (0 = none)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MlkubeError(f"{what} is {value!r}; give a whole number of GPUs (0 for none)")
    return value


def dns1123_label(value: str, what: str) -> str:
    """A name Kubernetes accepts as a label: lowercase alphanumerics and '-', ≤63 chars."""
    if not isinstance(value, str) or len(value) > 63 or not _DNS1123_LABEL.match(value):
        raise MlkubeError(
            f"{what} is {value!r}, not a DNS-1123 label: use at most 63 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit"
        )
    return value


def dns1123_subdomain(value: str, what: str, max_length: int = 253, example: str = "team-a") -> str:
    """A name Kubernetes accepts for most objects: DNS-1123 labels joined by '.'."""
    if not isinstance(value, str) or len(value) > max_length or not _DNS1123_SUBDOMAIN.match(value):
        raise MlkubeError(
            f"{what} is {value!r}, not a DNS-1123 subdomain: use at most {max_length} lowercase "
            f"letters, digits, '-' and '.', starting and ending with a letter or digit, e.g. "
            f"{example!r}"
        )
    return value


def queue_name(value: str, what: str) -> str:
    """A Kueue LocalQueue name: an object name that is also a label value (at most 63 chars).

    Kueue's webhook checks the ``kueue.x-k8s.io/queue-name`` label as a DNS-1123 subdomain.
    """
    return dns1123_subdomain(value, what, max_length=63, example="team-a")


def priority_class_name(value: str, what: str) -> str:
    """A PriorityClass name (the API server checks a pod's ``priorityClassName`` so)."""
    return dns1123_subdomain(value, what, example="batch-high")


def seconds(value: object, what: str) -> int:
    """A whole number of seconds, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MlkubeError(f"{what} is {value!r}; give a whole number of seconds (0 or more)")
    return value
