"""The inputs that live while the code runs: Pipe streamers and FastFile mounts of one host.

`start_inputs` (end of prepare) lists the channels, mounts and creates the first FIFOs before
the code starts; `stop_inputs` (after the code has ended, in a `finally`) stops the streamers
and unmounts. Between the two the host's inputs are kept here, by host folder, since prepare
and execute are separate calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openmaker.host import fastfile
from openmaker.host.container import sandbox_unavailable_reason
from openmaker.host.events import Emit
from openmaker.host.pipe import PipePlan, PipeStreamer, pipe_channels, plan_pipe
from openmaker.host.spec import HostSpec


@dataclass
class HostInputs:
    streamers: list[PipeStreamer] = field(default_factory=list)
    mounts: list[fastfile.Mount] = field(default_factory=list)


_active: dict[Path, HostInputs] = {}
_lock = threading.Lock()


def start_inputs(spec: HostSpec, emit: Emit) -> None:
    """Mount the FastFile channels and start streaming the Pipe channels of this host."""
    fastfile.sweep_stale_mounts(spec.work_dir)
    inputs = HostInputs()
    with _lock:
        _active[spec.work_dir] = inputs
    try:
        sandboxed = sandbox_unavailable_reason(spec.settings) is None
        inputs.mounts.extend(fastfile.mount_channels(spec, sandboxed))
        channels = pipe_channels(spec)
        plans = asyncio.run(_plan_all(spec, channels))
        for plan in plans:
            streamer = PipeStreamer(spec, plan, emit)
            streamer.start()
            inputs.streamers.append(streamer)
    except BaseException:
        stop_inputs(spec)
        raise


async def _plan_all(spec: HostSpec, channels: list[dict[str, Any]]) -> list[PipePlan]:
    return list(await asyncio.gather(*(plan_pipe(spec, c) for c in channels)))


def on_input_failure(spec: HostSpec, callback: Callable[[str], None]) -> None:
    """Call `callback(reason)` when a Pipe channel fails while the code runs."""
    with _lock:
        inputs = _active.get(spec.work_dir)
    for streamer in inputs.streamers if inputs else []:
        streamer.on_error = callback
        if streamer.error:
            callback(streamer.error)


def stop_inputs(spec: HostSpec) -> str | None:
    """Stop streaming, unmount; the first Pipe failure's reason, if a channel failed."""
    with _lock:
        inputs = _active.pop(spec.work_dir, None)
    if inputs is None:
        fastfile.sweep_stale_mounts(spec.work_dir)
        return None
    for streamer in inputs.streamers:
        streamer.stop()
    for mount in inputs.mounts:
        # This runs in the host's `finally`: one mount that fails to end must not keep the
        # others (or the checkpoints' last upload) from happening; the sweep catches it.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            mount.unmount()
    fastfile.sweep_stale_mounts(spec.work_dir)
    return next((s.error for s in inputs.streamers if s.error), None)
