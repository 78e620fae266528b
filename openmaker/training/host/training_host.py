"""The host's only door: one training host of one job, on the machine it runs on.

`TrainingHost(spec, emit)` owns everything of its host for its lifetime: its volume, the
handles on its tree, its live inputs (Pipe streamers, FastFile mounts), its cgroups and network
namespace (made as its code starts), its system metrics, its checkpoints and its folder. It
reports only through `emit` (events.py) and never touches the database, so that the same
object can run in a local worker's thread or, next, in an actor on another machine:

    host = TrainingHost(spec, emit)
    try:
        host.prepare(stop)         # volume, /opt/ml, source, checkpoints, channels
        result = host.run(stop)    # the code, to its end; the why of a failure
        host.finish()              # the last checkpoints, the upload folders
    finally:
        host.close()               # cgroups, handles, volume, folder

The job's outputs are one archive of every host's folders (CONTRACT.md §3): packing them is the
job's, done by `upload_outputs` over hosts of this machine.
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
from collections.abc import Sequence

from openmaker.store import StoreError
from openmaker.training.host.channels.inputs import HostInputs
from openmaker.training.host.checkpoints.transfer import save_checkpoints
from openmaker.training.host.disk import disk_full_reason
from openmaker.training.host.events import Emit
from openmaker.training.host.folder_uploads import start_continuous, upload_folders
from openmaker.training.host.jobtree import HostTree, read_text_head
from openmaker.training.host.layout import create_tree
from openmaker.training.host.limits import oom_killed, release
from openmaker.training.host.outputs import Artifacts, upload_artifacts
from openmaker.training.host.run import HostFailed, HostResult, prepare_inputs, run_code
from openmaker.training.host.spec import HostSpec
from openmaker.training.host.stop import StopControl, StopReason
from openmaker.training.host.system_metrics import sampling
from openmaker.training.host.volume import Volume, VolumeError, attach, detach, full_reason

__all__ = [
    "Artifacts",
    "HostFailed",
    "HostResult",
    "OutputsFailed",
    "StopControl",
    "StopReason",
    "TrainingHost",
    "upload_outputs",
]

# How much of the failure file a host reports whatever the code's exit (a processing job's
# ExitMessage).
MESSAGE_LIMIT = 1024
# SIGKILL as a plain process reports it, and as the sandbox (bwrap) reports its code's. The
# code cannot get it from inside its sandbox, where it is PID 1: it came from outside. (bwrap
# reports a code that exits with status 137 by itself the same way: taken for a kill too.)
KILLED_EXIT_CODES = (-signal.SIGKILL, 128 + signal.SIGKILL)


class OutputsFailed(Exception):
    """The job's outputs could not be packed or uploaded; `reason` is the FailureReason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TrainingHost:
    def __init__(self, spec: HostSpec, emit: Emit) -> None:
        self.spec, self.emit = spec, emit
        self.volume: Volume | None = None
        self.tree: HostTree | None = None
        self.inputs: HostInputs | None = None

    @property
    def name(self) -> str:
        return self.spec.host_name

    def prepare(self, stop: StopControl) -> None:
        """The host's volume first (everything prepare writes goes on it), then its tree and
        inputs. A host that cannot be prepared stops the others' downloads: the job fails
        anyway (HostFailed). Returns early once `stop` is requested."""
        try:
            self.volume = attach(self.spec)
            create_tree(self.spec)
            # Handles on the tree, taken before the code can change anything in it.
            self.tree = HostTree(self.spec)
            self.inputs = prepare_inputs(self.spec, self.tree, self.volume, self.emit, stop)
        except VolumeError as exc:
            stop.request(StopReason.FAILED)
            raise HostFailed(exc.reason) from None
        except HostFailed:
            stop.request(StopReason.FAILED)
            raise

    def run(self, stop: StopControl) -> HostResult:
        """Run the code to its end, sampling the host's utilization; a host that fails stops
        the others. The result says why it failed: the code's own failure (out of memory, a
        full volume included) or a kill from outside the job."""
        assert self.tree is not None and self.volume is not None and self.inputs is not None
        syncs = start_continuous(self.spec, self.tree, self.emit)
        try:
            with sampling(self.spec, self.emit):
                result = run_code(
                    self.spec,
                    self.tree,
                    self.volume,
                    self.inputs,
                    self.emit,
                    stop,
                    self.spec.settings.grace_seconds,
                )
        except HostFailed as exc:
            result = HostResult(-1, None, exc.reason)
        finally:
            for sync in syncs:
                sync.stop()
        if result.failure:
            stop.request(StopReason.FAILED)  # the other hosts of a failed job are stopped
        message = read_text_head(self.tree.ml, self.spec.plan.failure_file, MESSAGE_LIMIT)
        return dataclasses.replace(self._diagnosed(result), message=message or None)

    def finish(self) -> None:
        """Once the code has ended: write back the checkpoints and the upload folders' files
        the continuous syncs have not (OutputsFailed when it cannot)."""
        if self.tree is None:
            return
        try:
            save_checkpoints(self.spec, self.tree, self.emit)
            upload_folders(self.spec, self.tree, self.emit)
        except (OSError, StoreError, ValueError) as exc:
            raise OutputsFailed(_outputs_reason(self, exc)) from exc

    def close(self) -> None:
        """Give back everything of the host: cgroups (empty once its code has ended), the
        handles on its tree, its volume and, unless kept for a post-mortem, its folder."""
        release(self.spec)
        if self.inputs is not None:
            self.inputs.stop()  # a host prepared, never run (the job stopped meanwhile)
            self.inputs = None
        if self.tree is not None:
            self.tree.close()
            self.tree = None
        if self.volume is not None:
            detach(self.volume)
            self.volume = None
        if not self.spec.settings.keep_files:
            shutil.rmtree(self.spec.work_dir, ignore_errors=True)

    def _diagnosed(self, result: HostResult) -> HostResult:
        if result.failure is None:
            return result
        code, stopped = result.exit_code, result.stopped
        if oom_killed(self.spec):
            return HostResult(code, stopped, self._out_of_memory())
        if self.volume is not None and (full := full_reason(self.volume)):
            return HostResult(code, stopped, full)
        if stopped is None and code in KILLED_EXIT_CODES:
            outside = (
                f"the {self.spec.plan.program} of host {self.name} was killed (SIGKILL) from "
                "outside the job, as when an instance fails"
            )
            return HostResult(code, stopped, None, outside)
        return result

    def _out_of_memory(self) -> str:
        resources = self.spec.resources
        limit = resources.memory if resources and resources.memory else 0
        return (
            f"AlgorithmError: the {self.spec.plan.program} of host {self.name} ran out of "
            f"memory: it was killed at its limit of {limit / 1024**3:.3g} GiB "
            f"({self.spec.instance_type}; a larger instance type gives it more)"
        )


def upload_outputs(hosts: Sequence[TrainingHost], emit: Emit) -> Artifacts:
    """Pack `/opt/ml/model` and `/opt/ml/output/data` of all the job's hosts into one archive
    each and upload them (OutputsFailed). The archives are built on the first host's volume, as
    on a SageMaker instance: never on the disk that holds openmaker's database."""
    first = hosts[0]
    staging = first.spec.work_dir / "artifacts"
    parts = [(host.spec, host.tree) for host in hosts if host.tree is not None]
    try:
        return upload_artifacts(parts, staging, emit)
    except (OSError, StoreError, ValueError) as exc:
        raise OutputsFailed(_outputs_reason(first, exc)) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _outputs_reason(host: TrainingHost, exc: Exception) -> str:
    # A local OSError is the job's volume (the archives are built there), not the store's.
    local = not isinstance(exc, StoreError) and host.volume is not None
    if local and host.volume and (full := disk_full_reason(exc, "packing outputs", host.volume)):
        return full
    return f"InternalServerError: could not upload outputs: {exc}"
