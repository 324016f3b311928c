"""GPU scheduling: the device resource, the NVIDIA taint toleration, node selection, /dev/shm."""

from __future__ import annotations

from kubernetes.client import (
    V1EmptyDirVolumeSource,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

GPU_RESOURCE = "nvidia.com/gpu"
# The label NVIDIA's GPU feature discovery puts on nodes, e.g. "NVIDIA-H100-80GB-HBM3".
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
SHM_VOLUME = "dshm"


def tolerations() -> list[V1Toleration]:
    """Tolerate the taint GPU node pools carry so that only GPU pods land there."""
    return [V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")]


def node_selector(product: str | None) -> dict[str, str]:
    """Select nodes by GPU product, when one is asked for."""
    return {GPU_PRODUCT_LABEL: product} if product else {}


def shm_volume(size: str) -> tuple[V1Volume, V1VolumeMount]:
    """A memory-backed /dev/shm (the container default is 64 MiB, too small for data loaders)."""
    volume = V1Volume(name=SHM_VOLUME, empty_dir=V1EmptyDirVolumeSource(medium="Memory", size_limit=size))
    return volume, V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm")
