"""The inputs that live while the code runs: Pipe streamers and FastFile mounts of one host.

`start_inputs` (end of prepare) lists the channels, mounts and creates the first FIFOs before
the code starts; `HostInputs.stop` (after the code has ended, in a `finally`) stops the
streamers and unmounts. The host (training_host.py) holds them in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from openmaker.runtime.spec import User
from openmaker.training.host.channels import fastfile
from openmaker.training.host.channels.pipe import PipePlan, PipeStreamer, pipe_channels, plan_pipe
from openmaker.training.host.container import sandbox_unavailable_reason
from openmaker.training.host.events import Emit
from openmaker.training.host.jobtree import HostTree
from openmaker.training.host.plan import ChannelPlan
from openmaker.training.host.spec import HostSpec


@dataclass
class HostInputs:
    work_dir: Path
    streamers: list[PipeStreamer] = field(default_factory=list)
    mounts: list[fastfile.Mount] = field(default_factory=list)

    def on_failure(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` when a Pipe channel fails while the code runs."""
        for streamer in self.streamers:
            streamer.on_error = callback
            if streamer.error:
                callback(streamer.error)

    def give_to(self, user: User) -> None:
        """The Pipe channels' FIFOs to the image's non-root USER."""
        for streamer in self.streamers:
            streamer.give_to(user)

    def stop(self) -> str | None:
        """Stop streaming, unmount; the first Pipe failure's reason, if a channel failed."""
        for streamer in self.streamers:
            streamer.stop()
        for mount in self.mounts:
            # This runs in the host's `finally`: one mount that fails to end must not keep the
            # others (or the checkpoints' last upload) from happening; the sweep catches it.
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                mount.unmount()
        error = next((s.error for s in self.streamers if s.error), None)
        self.streamers, self.mounts = [], []  # stopped once
        fastfile.sweep_stale_mounts(self.work_dir)
        return error


def start_inputs(spec: HostSpec, tree: HostTree, emit: Emit) -> HostInputs:
    """Mount the FastFile channels and start streaming the Pipe channels of this host."""
    fastfile.sweep_stale_mounts(spec.work_dir)
    inputs = HostInputs(spec.work_dir)
    try:
        sandboxed = sandbox_unavailable_reason(spec.settings) is None
        inputs.mounts.extend(fastfile.mount_channels(spec, sandboxed))
        channels = pipe_channels(spec)
        # No event loop without a Pipe channel: making one is a millisecond of every job's CPU.
        plans = asyncio.run(_plan_all(spec, channels)) if channels else []
        for plan in plans:
            streamer = PipeStreamer(spec, plan, emit, tree)
            streamer.start()
            inputs.streamers.append(streamer)
    except BaseException:
        inputs.stop()
        raise
    return inputs


async def _plan_all(spec: HostSpec, channels: list[ChannelPlan]) -> list[PipePlan]:
    return list(await asyncio.gather(*(plan_pipe(spec, c) for c in channels)))
