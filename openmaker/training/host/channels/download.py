"""Input channels in File mode: every object of the channel on local disk before the code starts.

A channel of this machine's own files is shown as a copy-on-write view of them, not copied
(channels/local_view.py), where a view can hold exactly what a copy would.

Pipe channels are streamed (channels/pipe.py) and FastFile channels mounted (channels/fastfile.py)
instead; channels/inputs.py starts and stops those.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Callable, Coroutine
from pathlib import Path, PurePosixPath
from typing import Any

from openmaker.store import Download, StoreError, download_all, safe_destination
from openmaker.store.transfer import OBJECTS_IN_FLIGHT
from openmaker.training.host.channels.local_view import local_source, show_view
from openmaker.training.host.channels.objects import (
    ChannelError,
    ChannelObject,
    for_host,
    list_channel,
)
from openmaker.training.host.events import Emit
from openmaker.training.host.plan import ChannelPlan, DataType, InputMode
from openmaker.training.host.progress import ProgressMeter
from openmaker.training.host.spec import HostSpec

__all__ = [
    "ChannelError",
    "DownloadStopped",
    "download_channels",
    "file_channels",
    "plan_channel",
]


async def plan_channel(spec: HostSpec, channel: ChannelPlan) -> list[ChannelObject]:
    """The objects this host gets for `channel`, each with its path inside the folder."""
    name = channel.name
    if channel.data_type not in (DataType.PREFIX, DataType.MANIFEST):
        raise ChannelError(
            f"channel {name!r}: S3DataType {channel.data_type} is not supported in File mode"
        )
    return for_host(spec, channel, await list_channel(spec, channel))


def _downloads(root: Path, objects: list[ChannelObject]) -> list[Download]:
    return [Download(o.store, o.key, o.size, safe_destination(root, o.relative)) for o in objects]


def file_channels(spec: HostSpec) -> list[ChannelPlan]:
    return spec.plan.channels_in(InputMode.FILE)


class DownloadStopped(Exception):
    """The job was stopped while its channels downloaded; what was fetched stays unused."""


# How often a download looks whether the job was stopped.
STOP_POLL_SECONDS = 0.1


def download_channels(
    spec: HostSpec, emit: Emit, stopped: Callable[[], bool] = lambda: False
) -> int:
    """Download every File channel; returns the number of bytes. Raises DownloadStopped as
    soon as `stopped()` says so: a stop must not wait for gigabytes to arrive."""
    if not file_channels(spec):
        # Its progress alone, without an event loop (a millisecond of every job's CPU).
        ProgressMeter("Downloading", 0, emit).finish()
        return 0
    return asyncio.run(_until_stopped(_download_channels(spec, emit), stopped))


async def _until_stopped(work: Coroutine[Any, Any, int], stopped: Callable[[], bool]) -> int:
    task = asyncio.ensure_future(work)
    while not task.done():
        await asyncio.wait({task}, timeout=STOP_POLL_SECONDS)
        if not task.done() and stopped():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise DownloadStopped
    return task.result()


async def _download_channels(spec: HostSpec, emit: Emit) -> int:
    channels = file_channels(spec)
    for channel in channels:
        (spec.ml_dir / channel.folder).mkdir(parents=True, exist_ok=True)
    plans = await asyncio.gather(*(plan_channel(spec, c) for c in channels))
    total = sum(o.size for plan in plans for o in plan)
    meter = ProgressMeter("Downloading", total, emit)
    in_flight = max(8, OBJECTS_IN_FLIGHT // max(1, len(channels)))

    # What a view shows takes no room on the volume; SageMaker would have downloaded it, and a
    # job whose data cannot fit fails here as it would there.
    room = [_free_bytes(spec.ml_dir)]
    # A view mounted over a folder would hide another channel's inside it (a processing job's
    # inputs may nest): such a channel is copied.
    holders = {
        c.name
        for c in channels
        for other in channels
        if other is not c and PurePosixPath(other.folder).is_relative_to(c.folder)
    }

    async def fetch(channel: ChannelPlan, plan: list[ChannelObject]) -> None:
        viewable = bool(plan) and channel.name not in holders
        shown = viewable and await asyncio.to_thread(_local_view, spec, channel, plan)
        if shown:
            size = sum(o.size for o in plan)
            room[0] -= size
            if room[0] < 0:
                full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                raise ChannelError(f"channel {channel.name!r} does not fit the volume") from full
            meter.add(size)
            return
        try:
            downloads = _downloads(spec.ml_dir / channel.folder, plan)
            await download_all(downloads, meter.add, in_flight)
        except StoreError as exc:
            raise ChannelError(f"channel {channel.name!r}: {exc}") from None

    await asyncio.gather(*(fetch(c, p) for c, p in zip(channels, plans, strict=True)))
    meter.finish()
    return total


def _free_bytes(folder: Path) -> int:
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize


def _local_view(spec: HostSpec, channel: ChannelPlan, plan: list[ChannelObject]) -> bool:
    """Show the channel's objects as a view of their folder on this machine, where it can."""
    source = local_source(plan)
    if source is None:
        return False
    folder, wanted = source
    root = spec.ml_dir / channel.folder
    return show_view(folder, wanted, root, spec.work_dir / "channel-views" / channel.name)
