"""Each host's disk: a volume of `ResourceConfig.VolumeSizeInGB`, as on a SageMaker instance
(runtime/volume.py), mounted on the host's folder before anything is written there. Without
root or loop devices the host writes to openmaker's disk, as it did before volumes, and the
job's status message says so.
"""

from __future__ import annotations

from openmaker.runtime.volume import (
    FULL_BELOW_BYTES,
    GIB,
    IMAGE_NAME,
    RESERVE_BYTES,
    Volume,
    VolumeError,
    detach,
    mount,
    mount_points_under,
    observe,
    unmount_under,
)
from openmaker.training.host.spec import HostSpec

__all__ = [
    "FULL_BELOW_BYTES",
    "GIB",
    "IMAGE_NAME",
    "RESERVE_BYTES",
    "Volume",
    "VolumeError",
    "attach",
    "detach",
    "full_reason",
    "mount_points_under",
    "no_space_reason",
    "observe",
    "unmount_under",
]


def attach(spec: HostSpec) -> Volume:
    """Make the host's folder its volume (or say why it cannot be one); the caller (the host)
    keeps it and detaches it when it ends."""
    folder = spec.work_dir
    folder.mkdir(parents=True, exist_ok=True)
    return mount(folder, spec.plan.limits.volume_size_gb, spec.settings.jobs_dir)


def full_reason(volume: Volume) -> str | None:
    """The FailureReason of a host whose code filled its volume, else None."""
    observe(volume)
    if not volume.was_full:
        return None
    return no_space_reason(volume.size_gb)


def no_space_reason(size_gb: int) -> str:
    return f"ClientError: no space left on the job's volume ({size_gb} GB)"
