"""One host of one job, start to end: prepare the tree and inputs, run the code, report.

Each phase reports through `emit`; the caller (an executor) turns the events into job state.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

from openmaker.host.channels import ChannelError, DownloadStopped, download_channels
from openmaker.host.checkpoint_sync import CheckpointSync
from openmaker.host.checkpoints import restore_checkpoints
from openmaker.host.container import plan_launch, sandbox_unavailable_reason
from openmaker.host.disk import disk_full_reason
from openmaker.host.environment import container_environment
from openmaker.host.events import Emit, LogLines, StatusChanged
from openmaker.host.execute import (
    DEFAULT_GRACE_SECONDS,
    FAILURE_REASON_LIMIT,
    StopControl,
    run_process,
)
from openmaker.host.images import TRAIN, Image, ImageError, resolve_image
from openmaker.host.inputs import on_input_failure, start_inputs, stop_inputs
from openmaker.host.jobtree import hold, read_text_head, tree_of
from openmaker.host.layout import create_tree
from openmaker.host.metrics import metric_emitter
from openmaker.host.network import NetworkError
from openmaker.host.notes import opening_lines
from openmaker.host.script_error import ErrorCapture
from openmaker.host.source import SourceError, install_source
from openmaker.host.spec import HostSpec
from openmaker.host.ssh import SshError, prepare_ssh
from openmaker.spec.distribution import MPIRUN, strategy_of
from openmaker.store import StoreError, UnsafeKeyError


class HostFailed(Exception):
    """The host could not run the code; `reason` is the job's FailureReason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class HostResult:
    exit_code: int
    stopped: str | None
    # FailureReason when the code failed, from the failure file or the exit status.
    failure: str | None


def prepare(spec: HostSpec, emit: Emit, stop: StopControl | None = None) -> None:
    """Make the host's tree and fetch its inputs; returns early (inputs not started) once
    `stop` is requested, which the caller then sees."""
    create_tree(spec)
    hold(spec)  # handles on the tree, taken before the code can change it; let go by the caller
    emit(StatusChanged("Downloading"))
    try:
        install_source(spec)
        restore_checkpoints(spec, emit)
        download_channels(spec, emit, lambda: stop is not None and stop.requested)
        start_inputs(spec, emit)  # Pipe streamers and FastFile mounts, stopped by execute
    except DownloadStopped:
        return
    except (ChannelError, SourceError, StoreError, UnsafeKeyError) as exc:
        full = disk_full_reason(exc, "downloading input data", spec.work_dir)
        raise HostFailed(full or f"ClientError: {exc}") from None


def execute(
    spec: HostSpec, emit: Emit, stop: StopControl, grace: float = DEFAULT_GRACE_SECONDS
) -> HostResult:
    algorithm = spec.request["AlgorithmSpecification"]
    try:
        image = resolve_image(
            algorithm["TrainingImage"], algorithm, spec.request.get("HyperParameters")
        )
    except ImageError as exc:
        stop_inputs(spec)
        raise HostFailed(f"ClientError: {exc}") from None
    try:
        _prepare_distribution(spec, image)
    except SshError as exc:
        stop_inputs(spec)
        raise HostFailed(f"ClientError: {exc}") from None
    env = container_environment(spec, image)
    try:
        launch = plan_launch(spec, image, image.command(TRAIN, algorithm), env)
    except NetworkError as exc:
        stop_inputs(spec)
        raise HostFailed(f"InternalServerError: {exc}") from None
    emit(StatusChanged("Training", f"{image.description}; {launch.note}"))
    if notes := opening_lines(spec, image):
        emit(LogLines(spec.host_name, int(time.time() * 1000), notes, sum(map(len, notes))))
    stopping = spec.request.get("StoppingCondition") or {}
    max_runtime = stopping.get("MaxRuntimeInSeconds")
    on_input_failure(spec, lambda _: stop.request("Failed"))
    logs = metric_emitter(algorithm.get("MetricDefinitions"), emit)
    script_error = ErrorCapture(logs)
    if image.program_dir is None:  # script mode: the toolkit's failure file, to fill in
        logs = script_error
    sync = CheckpointSync.start_for(spec, emit)
    try:
        result = run_process(launch, spec.host_name, logs, stop, max_runtime, grace)
    finally:
        if launch.namespace is not None:
            launch.namespace.close()
        input_failure = stop_inputs(spec)  # Pipe streamers stopped, FastFile unmounted
        if sync is not None:
            sync.stop()  # the last checkpoints, those of a SIGTERM handler included
        _remove_root_changes(spec)
    failure = f"ClientError: {input_failure}" if input_failure else None
    if failure is None and result.code != 0 and result.stopped is None:
        failure = script_error.fill(failure_reason(spec, result.code), FAILURE_REASON_LIMIT)
    return HostResult(result.code, result.stopped, failure)


def _prepare_distribution(spec: HostSpec, image: Image) -> None:
    """What the launcher of the request's `distribution` needs from outside: mpirun reaches
    the job's other hosts over ssh (see openmaker/host/launcher.py)."""
    if image.program_dir is not None or len(spec.hosts) == 1:
        return
    if strategy_of(spec.request.get("HyperParameters")).launcher != MPIRUN:
        return
    reason = sandbox_unavailable_reason(spec.settings)
    if reason is not None:
        raise SshError(f"mpirun over several hosts needs openmaker's sandbox ({reason})")
    prepare_ssh(spec)


def failure_reason(spec: HostSpec, code: int) -> str:
    # Through the tree's handle: a link the code left there (to a secret, say) is never read.
    text = read_text_head(tree_of(spec).ml, "output/failure", FAILURE_REASON_LIMIT)
    if text and text.strip():
        return "AlgorithmError: " + text
    return f"AlgorithmError: the training program exited with status {_describe_exit(code)}"


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"{code} (killed by signal {-code})"
    if code > 128:
        return f"{code} (killed by signal {code - 128})"
    return str(code)


def _remove_root_changes(spec: HostSpec) -> None:
    """The sandbox's writes to the root filesystem go away with the host."""
    shutil.rmtree(spec.work_dir / "root", ignore_errors=True)
