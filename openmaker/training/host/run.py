"""One host of one job: fetch its inputs (`prepare_inputs`), run the code (`run_code`), report.

The host's own state (its tree's handles, its volume, its live inputs) is given by its owner,
training_host.py. Each phase reports through `emit`; the job turns the events into state.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

from openmaker.runtime.images import PullStopped
from openmaker.runtime.network import NetworkError
from openmaker.shapes.distribution import MPIRUN
from openmaker.store import StoreError, UnsafeKeyError
from openmaker.training.host.channels.download import (
    ChannelError,
    DownloadStopped,
    download_channels,
)
from openmaker.training.host.channels.inputs import HostInputs, start_inputs
from openmaker.training.host.checkpoints.sync import CheckpointSync
from openmaker.training.host.checkpoints.transfer import restore_checkpoints
from openmaker.training.host.container import (
    LaunchError,
    plan_launch,
    sandbox_unavailable_reason,
)
from openmaker.training.host.disk import disk_full_reason
from openmaker.training.host.environment import container_environment
from openmaker.training.host.events import Emit, LogLines, StatusChanged
from openmaker.training.host.images import (
    TRAIN,
    Image,
    ImageError,
    framework_to_pull,
    pull_image,
    resolve_image,
    stood_in,
)
from openmaker.training.host.jobtree import HostTree, give_writable, read_text_head
from openmaker.training.host.metrics import metric_emitter
from openmaker.training.host.notes import opening_lines
from openmaker.training.host.script_error import ErrorCapture
from openmaker.training.host.source_code import SourceError, install_source
from openmaker.training.host.spec import HostSpec
from openmaker.training.host.ssh import SshError, prepare_ssh, require_port_22, runs_sdk3_mpi_driver
from openmaker.training.host.stop import StopControl, StopReason
from openmaker.training.host.supervise import DEFAULT_GRACE_SECONDS, FAILURE_REASON_LIMIT, supervise
from openmaker.training.host.volume import Volume


class HostFailed(Exception):
    """The host could not run the code; `reason` is the job's FailureReason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class HostResult:
    exit_code: int
    stopped: StopReason | None
    # FailureReason when the code failed, from the failure file or the exit status.
    failure: str | None
    # What killed the host from outside the job, as when an instance fails (then no failure:
    # the job may be restarted).
    outside: str | None = None
    # The head of the failure file as the code left it, whatever its exit (a processing job's
    # ExitMessage).
    message: str | None = None


def prepare_inputs(
    spec: HostSpec, tree: HostTree, volume: Volume, emit: Emit, stop: StopControl | None = None
) -> HostInputs | None:
    """Fetch the host's inputs into its tree; the live ones (Pipe streamers, FastFile mounts)
    are returned, to be stopped once the code ends. Returns early (None) once `stop` is
    requested, which the caller then sees."""
    emit(StatusChanged("Downloading"))
    try:
        install_source(spec)
        restore_checkpoints(spec, emit)
        download_channels(spec, emit, lambda: stop is not None and stop.requested)
        return start_inputs(spec, tree, emit)
    except DownloadStopped:
        return None
    except (ChannelError, SourceError, StoreError, UnsafeKeyError) as exc:
        full = disk_full_reason(exc, "downloading input data", volume)
        raise HostFailed(full or f"ClientError: {exc}") from None


def run_code(
    spec: HostSpec,
    tree: HostTree,
    volume: Volume,
    inputs: HostInputs,
    emit: Emit,
    stop: StopControl,
    grace: float = DEFAULT_GRACE_SECONDS,
) -> HostResult:
    command = spec.plan.command
    try:
        # Here, on the host's machine: a local image is a folder of this machine.
        image = resolve_image(command.image, bool(command.entrypoint), command.hyperparameters)
        image = _pull(spec, image, emit, stop)
    except ImageError as exc:
        inputs.stop()
        raise HostFailed(f"ClientError: {exc}") from None
    except PullStopped:  # stopped while the image was pulled: the code never ran
        inputs.stop()
        return HostResult(-1, stop.stopped, None)
    try:
        _prepare_distribution(spec, tree, image)
    except SshError as exc:
        inputs.stop()
        raise HostFailed(f"ClientError: {exc}") from None
    if image.container is not None and image.container.user.uid != 0:
        # /opt/ml's writable folders, to its USER.
        give_writable(tree, image.container.user, spec.plan.folders)
        inputs.give_to(image.container.user)
    env = container_environment(spec, image)
    try:
        argv = image.command(TRAIN, command.entrypoint, command.arguments)
        launch = plan_launch(spec, image, argv, env, volume)
    except (NetworkError, LaunchError) as exc:
        inputs.stop()
        raise HostFailed(f"InternalServerError: {exc}") from None
    emit(StatusChanged("Training", f"{image.description}; {launch.note}"))
    if notes := opening_lines(spec, image):
        emit(LogLines(spec.host_name, int(time.time() * 1000), notes, sum(map(len, notes))))
    max_runtime = spec.plan.limits.max_runtime_seconds
    inputs.on_failure(lambda _: stop.request(StopReason.FAILED))
    logs = metric_emitter(command.metric_definitions, emit)
    script_error = ErrorCapture(logs)
    if image.program_dir is None:  # script mode: the toolkit's failure file, to fill in
        logs = script_error
    sync = CheckpointSync.start_for(spec, tree, emit)
    try:
        result = supervise(launch, spec.host_name, logs, stop, max_runtime, grace)
    finally:
        if launch.namespace is not None:
            launch.namespace.close()
        input_failure = inputs.stop()  # Pipe streamers stopped, FastFile unmounted
        if sync is not None:
            sync.stop()  # the last checkpoints, those of a SIGTERM handler included
        _remove_root_changes(spec)
    failure = f"ClientError: {input_failure}" if input_failure else None
    if failure is None and result.code != 0 and result.stopped is None:
        failure = script_error.fill(
            failure_reason(tree, result.code, spec.plan.failure_file, spec.plan.program),
            FAILURE_REASON_LIMIT,
        )
    return HostResult(result.code, result.stopped, failure)


def _pull(spec: HostSpec, image: Image, emit: Emit, stop: StopControl) -> Image:
    """A registry image (or image file) pulled and unpacked, its progress in the status. A
    framework image is tried as it is; what cannot be pulled is stood in for (the status says
    which ran)."""
    stand_in, framework = image, framework_to_pull(image, spec.settings.framework_images)
    image = framework or image
    if image.pulled is None:
        return image
    if reason := sandbox_unavailable_reason(spec.settings):
        if framework is not None:
            return stood_in(stand_in, f"it runs only in openmaker's sandbox ({reason})")
        raise ImageError(f"image {image.pulled} runs only in openmaker's sandbox ({reason})")
    said = f"Downloading the training image {image.pulled}"
    emit(StatusChanged("Downloading", message=said))
    try:
        pulled = pull_image(
            image,
            spec.settings,
            spec.plan.command.entrypoint,
            spec.plan.command.arguments,
            lambda line: emit(StatusChanged("Downloading", message=f"{said}: {line}")),
            lambda: stop.requested,
            spec.plan.command.verb,
        )
    except ImageError as exc:
        if framework is None:
            raise
        fallback = stood_in(stand_in, str(exc))
        emit(StatusChanged("Downloading", message=f"{said}: not pulled; {fallback.description}"))
        return fallback
    emit(StatusChanged("Downloading", message=f"{said}: done ({pulled.digest})"))
    return pulled


def _prepare_distribution(spec: HostSpec, tree: HostTree, image: Image) -> None:
    """What the launcher of the request's `distribution` needs from outside: mpirun reaches
    the job's other hosts over ssh (see launcher.py)."""
    if image.program_dir is not None or len(spec.hosts) == 1:
        return
    if image.entrypoint:  # SDK v3: its MPI driver, from the `sm_drivers` channel
        if not runs_sdk3_mpi_driver(tree):
            return
        require_port_22(spec)
    elif spec.plan.command.distribution.launcher != MPIRUN:
        return
    reason = sandbox_unavailable_reason(spec.settings)
    if reason is not None:
        raise SshError(f"mpirun over several hosts needs openmaker's sandbox ({reason})")
    prepare_ssh(spec)


def failure_reason(
    tree: HostTree,
    code: int,
    failure_file: str = "output/failure",
    program: str = "training program",
) -> str:
    # Through the tree's handle: a link the code left there (to a secret, say) is never read.
    text = read_text_head(tree.ml, failure_file, FAILURE_REASON_LIMIT)
    if text and text.strip():
        return "AlgorithmError: " + text
    return f"AlgorithmError: the {program} exited with status {_describe_exit(code)}"


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"{code} (killed by signal {-code})"
    if code > 128:
        return f"{code} (killed by signal {code - 128})"
    return str(code)


def _remove_root_changes(spec: HostSpec) -> None:
    """The sandbox's writes to the root filesystem go away with the host."""
    shutil.rmtree(spec.work_dir / "root", ignore_errors=True)
