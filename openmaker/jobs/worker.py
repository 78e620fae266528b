"""The process that runs one job: its hosts, its outputs, its state in the database.

Started detached by the local executor (through `openmaker.jobs.worker_process`), which sends
it the job on its standard input. SIGTERM asks it to stop the job; the hosts then get SIGTERM,
the grace period and SIGKILL.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from openmaker.api import job_access
from openmaker.host.artifacts import upload_artifacts
from openmaker.host.checkpoints import save_checkpoints
from openmaker.host.container import sandbox_unavailable_reason
from openmaker.host.disk import disk_full_reason
from openmaker.host.events import Emit, StatusChanged
from openmaker.host.execute import StopControl
from openmaker.host.jobtree import let_go
from openmaker.host.limits import oom_killed, release
from openmaker.host.network import JobNetwork
from openmaker.host.network import create as create_network
from openmaker.host.network import remove as remove_network
from openmaker.host.network import shared as shared_network
from openmaker.host.run import HostFailed, HostResult, execute, prepare
from openmaker.host.spec import HostResources, HostSpec
from openmaker.host.system_metrics import sampling
from openmaker.host.volume import VolumeError, unmount_under
from openmaker.host.volume import attach as attach_volume
from openmaker.host.volume import detach as detach_volume
from openmaker.host.volume import full_reason as volume_full_reason
from openmaker.jobs import capacity, state
from openmaker.jobs.executor import process_start_time
from openmaker.jobs.retry import restart_or_fail
from openmaker.jobs.training import STOPPED_BY, SecondaryStatus
from openmaker.settings import Settings, from_json

if TYPE_CHECKING:
    from openmaker.jobs.db import TrainingJob
from openmaker.jobs.recorder import JobRecorder
from openmaker.store import StoreError
from openmaker.store.location import EMBEDDED_ENDPOINT_LISTING_SECONDS


def host_specs(
    settings: Settings, arn: str, request: dict[str, Any], placement: dict[str, Any] | None = None
) -> list[HostSpec]:
    name = request["TrainingJobName"]
    count = int(request["ResourceConfig"].get("InstanceCount", 1))
    hosts = [f"algo-{i}" for i in range(1, count + 1)]
    job_dir = settings.jobs_dir / name
    isolated = bool(request.get("EnableNetworkIsolation"))
    # No network: no endpoint to offer, no key to mint.
    code_env = (
        {} if isolated else job_access.code_environment(settings.home, request, settings.store)
    )
    shares = _host_resources(settings, placement, count)
    network = _job_network(settings, name, hosts, code_env, isolated)
    return [
        HostSpec(
            job_name=name,
            job_arn=arn,
            request=request,
            host_name=host,
            hosts=hosts,
            region=settings.region,
            settings=settings,
            work_dir=job_dir / host,
            hidden_paths=[settings.home],
            code_env=code_env,
            resources=share,
            network=network,
        )
        for host, share in zip(hosts, shares, strict=True)
    ]


def _job_network(
    settings: Settings, name: str, hosts: list[str], code_env: dict[str, str], isolated: bool
) -> JobNetwork:
    """The job's bridge (host/network.py); none for an isolated job (its hosts have loopback
    alone) or where the sandbox will not run (its hosts share the machine's network)."""
    if isolated:
        return shared_network(hosts, "network isolation")
    if (reason := sandbox_unavailable_reason(settings)) is not None:
        return shared_network(hosts, reason)
    return create_network(settings, name, hosts, code_env)


def _host_resources(
    settings: Settings, placement: dict[str, Any] | None, count: int
) -> list[HostResources | None]:
    """Each host's share of the machine, from the placement the queue gave the job."""
    if placement is None:
        return [None] * count
    machine = capacity.machine(settings)
    return [
        HostResources(
            cpus=tuple(machine.cpu_of(slot) for slot in host["cpus"]),
            memory=host["memory"],
            gpus=tuple(host["gpus"]),
        )
        for host in placement["hosts"]
    ]


def run_job(
    settings: Settings,
    arn: str,
    request: dict[str, Any],
    stop_before_start: threading.Event,
    placement: dict[str, Any] | None = None,
    attempt: int = 1,
) -> None:
    job_name = request["TrainingJobName"]
    # What an earlier attempt left (its worker killed) must not leak into this one.
    _remove_host_folders(settings, job_name, keep_allowed=False)
    recorder = JobRecorder(settings, job_name)
    stop = StopControl()
    signal.signal(signal.SIGTERM, lambda *_: stop.request(SecondaryStatus.STOPPED))
    if stop_before_start.is_set():
        stop.request(SecondaryStatus.STOPPED)
    specs = host_specs(settings, arn, request, placement)
    mine = _Attempt(attempt, stop)
    try:
        end = _run(settings, request, specs, recorder, stop, mine)
    except Exception:  # the job must end in a state that says what happened
        detail = traceback.format_exc()
        print(detail, file=sys.stderr)
        reason = "InternalServerError: " + detail.strip().splitlines()[-1]

        def end(job: TrainingJob) -> None:
            state.finish(job, SecondaryStatus.FAILED, reason)

    # The job's leftovers go before its end is recorded: whoever sees the job ended (or the
    # next job given its share of the machine) finds them gone.
    try:
        job_access.revoke_job(settings.home, job_name)  # its code's key dies with it
        for spec in specs:
            release(spec)
            let_go(spec)
            detach_volume(spec)
        remove_network(settings.home, job_name)
        _remove_host_folders(settings, job_name)
        recorder.update(mine.only(end))
    finally:
        recorder.close()
        _start_waiting_jobs(settings)  # this job's share of the machine is free now


class _Attempt:
    """This worker's attempt at the job: it changes the job only while the job is still at
    that attempt (a worker thought lost, whose job was restarted or ended, changes nothing)."""

    def __init__(self, number: int, stop: StopControl) -> None:
        self.number, self.stop = number, stop

    def current(self, job: TrainingJob) -> bool:
        return (job.attempts or 1) == self.number and job.status not in state.TERMINAL

    def only(self, change: Callable[[TrainingJob], object]) -> Callable[[TrainingJob], None]:
        def guarded(job: TrainingJob) -> None:
            if self.current(job):
                change(job)

        return guarded

    def claim(self, job: TrainingJob) -> None:
        if not self.current(job):
            self.stop.request(SecondaryStatus.STOPPED)
            return
        pid = os.getpid()
        # SIGTERM is handled from here on.
        job.worker_pid, job.worker_started, job.worker_ready = pid, process_start_time(pid), True
        if job.stop_requested:
            self.stop.request(job.stop_requested)


def _remove_host_folders(settings: Settings, job_name: str, keep_allowed: bool = True) -> None:
    """Like a SageMaker instance's disk, a host's folder (input data included) goes away with
    the job; OPENMAKER_KEEP_JOB_FILES=1 keeps it for a post-mortem."""
    unmount_under(settings.jobs_dir / job_name)  # volumes an earlier attempt left mounted
    remove_network(settings.home, job_name)  # and its bridge
    if keep_allowed and settings.keep_job_files:
        return
    for folder in (settings.jobs_dir / job_name).glob("algo-*"):
        shutil.rmtree(folder, ignore_errors=True)


def _start_waiting_jobs(settings: Settings) -> None:
    try:
        from openmaker.jobs.executor import LocalExecutor
        from openmaker.jobs.queue import start_ready

        start_ready(settings, LocalExecutor(settings))
    except Exception:  # never a reason for this job to end otherwise; the next sweep retries
        traceback.print_exc()


def _run(
    settings: Settings,
    request: dict[str, Any],
    specs: list[HostSpec],
    recorder: JobRecorder,
    stop: StopControl,
    mine: _Attempt,
) -> Callable[[TrainingJob], object]:
    """Run the attempt; returns how the job ends (recorded once its leftovers are gone)."""
    # The hosts start preparing at once; the claim waits for the database layer to load.
    claimer = threading.Thread(target=recorder.update, args=(mine.claim,))
    claimer.start()
    emit = recorder.emit
    try:
        with ThreadPoolExecutor(len(specs)) as pool:
            list(pool.map(lambda s: _prepare(s, emit, stop), specs))
    except HostFailed as exc:
        reason = exc.reason
        claimer.join()
        return lambda j: state.finish(j, SecondaryStatus.FAILED, reason)
    if stop.requested:
        claimer.join()
        return lambda j: state.finish(j, stop.reason or SecondaryStatus.STOPPED, None)

    results = _execute_all(specs, emit, stop, settings.stop_grace_seconds)
    # A stop asked for from outside wins; a host's failure (which stops the other hosts) fails.
    stopped = stop.reason if stop.reason in STOPPED_BY else None
    failure, outside = _failures(specs, results)

    claimer.join()  # long done by now; the job's end must not come before its claim
    if not stopped and failure is None and outside is not None:
        return _after_infrastructure_failure(specs, recorder, outside)
    emit(StatusChanged(SecondaryStatus.UPLOADING))
    # The archives are built on the first host's volume, as on a SageMaker instance: never on
    # the disk that holds openmaker's database.
    staging = specs[0].work_dir / "artifacts"
    try:
        for spec in specs:
            save_checkpoints(spec, emit)
        artifacts = upload_artifacts(specs, staging, emit)
    except (OSError, StoreError, ValueError) as exc:
        # A local OSError is the job's volume (the archives are built there), not the store's.
        volume = specs[0].work_dir
        full = not isinstance(exc, StoreError) and disk_full_reason(exc, "packing outputs", volume)
        print(f"outputs not uploaded: {exc}", file=sys.stderr)
        # The code's own failure (a full volume, say) is what the job ended with, not its echo.
        reason = failure or full or f"InternalServerError: could not upload outputs: {exc}"
        return lambda j: state.finish(j, SecondaryStatus.FAILED, reason)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if specs[0].code_env and specs[0].store.endpoint is None:
        # Written straight into the embedded store's folder: the job ends once the server's
        # S3 endpoint lists its artifacts too, so that a client that sees it end finds them.
        time.sleep(EMBEDDED_ENDPOINT_LISTING_SECONDS)

    def finish(j: TrainingJob) -> None:
        j.model_artifacts = artifacts.model_uri
        # A stop that came while the outputs were uploaded still ends the job Stopped.
        late = stop.reason if stop.reason in STOPPED_BY else None
        if stopped or late:
            state.finish(j, stopped or late or SecondaryStatus.STOPPED, None)
        elif failure:
            state.finish(j, SecondaryStatus.FAILED, failure)
        else:
            state.finish(j, SecondaryStatus.COMPLETED, None)

    return finish


def _prepare(spec: HostSpec, emit: Emit, stop: StopControl) -> None:
    """The host's volume first: everything prepare writes goes on it. A host that cannot be
    prepared stops the others' downloads: the job fails anyway."""
    try:
        attach_volume(spec)
        prepare(spec, emit, stop)
    except VolumeError as exc:
        stop.request(SecondaryStatus.FAILED)
        raise HostFailed(exc.reason) from None
    except HostFailed:
        stop.request(SecondaryStatus.FAILED)
        raise


def _failures(specs: list[HostSpec], results: list[HostResult]) -> tuple[str | None, str | None]:
    """(the FailureReason of the code's own failure, what killed a host from outside)."""
    failure = outside = None
    for spec, result in zip(specs, results, strict=True):
        if result.failure is None:
            continue
        if oom_killed(spec):
            failure = failure or _out_of_memory(spec)
        elif full := volume_full_reason(spec):
            failure = failure or full
        elif result.stopped is None and result.exit_code in KILLED_EXIT_CODES:
            outside = outside or (
                f"the training program of host {spec.host_name} was killed (SIGKILL) from "
                "outside the job, as when an instance fails"
            )
        else:
            failure = failure or result.failure
    return failure, outside


# SIGKILL as a plain process reports it, and as the sandbox (bwrap) reports its code's. The
# code cannot get it from inside its sandbox, where it is PID 1: it came from outside. (bwrap
# reports a code that exits with status 137 by itself the same way: taken for a kill too.)
KILLED_EXIT_CODES = (-signal.SIGKILL, 128 + signal.SIGKILL)


def _out_of_memory(spec: HostSpec) -> str:
    limit = spec.resources.memory if spec.resources and spec.resources.memory else 0
    return (
        f"AlgorithmError: the training program of host {spec.host_name} ran out of memory: it "
        f"was killed at its limit of {limit / 1024**3:.3g} GiB ({spec.instance_type}; a larger "
        "instance type gives it more)"
    )


def _after_infrastructure_failure(
    specs: list[HostSpec], recorder: JobRecorder, what: str
) -> Callable[[TrainingJob], object]:
    """Keep the checkpoints, then restart the job under its RetryStrategy, or fail it."""
    for spec in specs:
        try:
            save_checkpoints(spec, recorder.emit)
        except (OSError, StoreError) as exc:
            print(f"checkpoints of {spec.host_name} not saved: {exc}", file=sys.stderr)
    return lambda j: restart_or_fail(j, what)


def _execute_all(
    specs: list[HostSpec], emit: Emit, stop: StopControl, grace: float
) -> list[HostResult]:

    def one(spec: HostSpec) -> HostResult:
        try:
            with sampling(spec, emit):
                result = execute(spec, emit, stop, grace)
        except HostFailed as exc:
            result = HostResult(-1, None, exc.reason)
        if result.failure:
            stop.request(SecondaryStatus.FAILED)  # the other hosts of a failed job are stopped
        return result

    with ThreadPoolExecutor(len(specs)) as pool:
        return list(pool.map(one, specs))


def main(stop_before_start: threading.Event) -> None:
    """Wait for the job on standard input (see the local executor), then run it."""
    # The database layer loads meanwhile: a spare worker has it ready when its job comes.
    threading.Thread(target=importlib.import_module, args=("openmaker.jobs.db",)).start()
    data = sys.stdin.read()
    if not data:
        return  # a spare nobody needed
    order = json.loads(data)
    settings = from_json(order["settings"])
    # The worker's own messages (not the job's logs) go to a file, for post-mortems.
    log = os.open(
        settings.jobs_dir / order["job"] / "worker.log",
        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
        0o600,
    )
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    run_job(
        settings,
        order["arn"],
        order["request"],
        stop_before_start,
        order.get("placement"),
        order.get("attempt", 1),
    )
