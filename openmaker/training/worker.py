"""The process that runs one job: its hosts, its outputs, its state in the database.

The runner of the TrainingJob kind: a worker process (`openmaker.jobs.worker_process`, started
detached by the local executor) hands it its order. SIGTERM asks it to stop the job; the hosts
then get SIGTERM, the grace period and SIGKILL.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from openmaker.connection import with_current_gate
from openmaker.jobs import capacity, gate_keys
from openmaker.jobs.attempt import Attempt
from openmaker.jobs.executor import Order, WorkerRef, this_process
from openmaker.runtime.network import remove as remove_network
from openmaker.settings import Settings
from openmaker.store.location import EMBEDDED_ENDPOINT_LISTING_SECONDS
from openmaker.training import access, runners, state
from openmaker.training.host.events import StatusChanged
from openmaker.training.host.site import clear_job, job_network
from openmaker.training.host.spec import HostResources, HostSettings, HostSpec
from openmaker.training.host.training_host import (
    HostFailed,
    HostResult,
    OutputsFailed,
    StopControl,
)
from openmaker.training.plan import plan_job
from openmaker.training.recorder import TrainingRecorder
from openmaker.training.retry import restart_or_fail
from openmaker.training.runners import HostRunner, host_runners, upload_outputs, warm
from openmaker.training.status import SecondaryStatus

if TYPE_CHECKING:
    from openmaker.jobs.db import TrainingJob
    from openmaker.training.plan import TrainingPlan


def host_specs(
    settings: Settings, arn: str, request: dict[str, Any], placement: dict[str, Any] | None = None
) -> list[HostSpec]:
    job = plan_job(request)
    isolated = job.plan.network_isolation
    # No network: no endpoint to offer, no key to mint.
    code_env = {} if isolated else access.code_environment(settings.home, request, settings.store)
    return job_host_specs(settings, job, arn, code_env, job.name, placement)


class HostsPlan(Protocol):
    """A job's plan for its hosts (a training or a processing job's)."""

    @property
    def name(self) -> str: ...

    @property
    def hosts(self) -> tuple[str, ...]: ...

    @property
    def plan(self) -> TrainingPlan: ...

    def host_plan(self, host: str) -> TrainingPlan: ...


def job_host_specs(
    settings: Settings,
    job: HostsPlan,
    arn: str,
    code_env: dict[str, str],
    key: str,
    placement: dict[str, Any] | None,
) -> list[HostSpec]:
    """What each of the job's hosts is given: its plan, its share of the machine, the job's
    network and the environment `code_env` its code gets. `key` is the job's on this machine
    (its kind's: its folder, cgroups and bridge)."""
    hosts = list(job.hosts)
    shares = host_resources(settings, placement, len(hosts))
    network = job_network(settings, key, hosts, code_env, job.plan.network_isolation)
    host_settings = HostSettings.of(settings)  # what crosses to a host: no database, no keys
    return [
        HostSpec(
            job_name=job.name,
            job_arn=arn,
            plan=job.host_plan(host),
            host_name=host,
            hosts=hosts,
            region=settings.region,
            settings=host_settings,
            work_dir=settings.jobs_dir / key / host,
            job_key=key,
            hidden_paths=list(settings.private_paths),
            code_env=code_env,
            resources=share,
            network=network,
        )
        for host, share in zip(hosts, shares, strict=True)
    ]


def host_resources(
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
    worker: WorkerRef | None = None,
) -> None:
    job_name = request["TrainingJobName"]
    settings = with_current_gate(settings)  # this attempt's hosts reach the store there
    warm(settings)
    # What an earlier attempt left (its worker killed) must not leak into this one.
    clear_job(settings, job_name)
    recorder = TrainingRecorder(settings, job_name)
    stop = StopControl()
    signal.signal(signal.SIGTERM, lambda *_: stop.request(SecondaryStatus.STOPPED))
    if stop_before_start.is_set():
        stop.request(SecondaryStatus.STOPPED)
    specs = host_specs(settings, arn, request, placement)
    hosts = host_runners(settings, specs, recorder.emit)
    mine: Attempt[TrainingJob] = Attempt(
        attempt, stop, worker or this_process(), state.TERMINAL, SecondaryStatus.STOPPED
    )
    visible_at = 0.0
    try:
        end, visible_at = _run(hosts, recorder, stop, mine)
    except Exception:  # the job must end in a state that says what happened
        detail = traceback.format_exc()
        print(detail, file=sys.stderr)
        reason = "InternalServerError: " + detail.strip().splitlines()[-1]

        def end(job: TrainingJob) -> None:
            state.finish(job, SecondaryStatus.FAILED, reason)

    # The job's leftovers go before its end is recorded: whoever sees the job ended (or the
    # next job given its share of the machine) finds them gone.
    try:
        gate_keys.revoke_job(settings.home, job_name)  # its code's key dies with it
        # The job's bridge goes meanwhile (mostly the kernel's wait for its links to go).
        network_gone = threading.Thread(target=remove_network, args=(settings.home, job_name))
        network_gone.start()
        try:
            for host in hosts:
                host.close()
        finally:
            network_gone.join()
        clear_job(settings, job_name, settings.keep_job_files)
        # The artifacts' listing window runs out meanwhile: mostly no wait is left by now.
        time.sleep(max(0.0, visible_at - time.monotonic()))
        recorder.update(mine.only(end))
    finally:
        recorder.close()
        _start_waiting_jobs(settings)  # this job's share of the machine is free now


def _start_waiting_jobs(settings: Settings) -> None:
    try:
        from openmaker.jobs.executor import executor_for
        from openmaker.jobs.queue import start_ready
        from openmaker.resources import KINDS

        # Only jobs that waited: new ones are their creators' to start (queue.start_ready).
        start_ready(settings, executor_for(settings), KINDS, new=False)
    except Exception:  # never a reason for this job to end otherwise; the next sweep retries
        traceback.print_exc()


def _run(
    hosts: list[HostRunner],
    recorder: TrainingRecorder,
    stop: StopControl,
    mine: Attempt[TrainingJob],
) -> tuple[Callable[[TrainingJob], object], float]:
    """Run the attempt; returns how the job ends (recorded once its leftovers are gone), and
    the `time.monotonic()` before which its end must not be recorded."""
    # The hosts start preparing at once; the claim is written with the first events
    # (Downloading, Training) when they come soon, and always before the job's end (the
    # recorder writes in order).
    recorder.later(mine.claim)
    emit = recorder.emit
    try:
        with ThreadPoolExecutor(len(hosts)) as pool:
            list(pool.map(lambda host: host.prepare(stop), hosts))
    except HostFailed as exc:
        reason = exc.reason
        return lambda j: state.finish(j, SecondaryStatus.FAILED, reason), 0.0
    if stop.requested:
        return lambda j: state.finish(j, stop.reason or SecondaryStatus.STOPPED, None), 0.0

    with ThreadPoolExecutor(len(hosts)) as pool:
        results = list(pool.map(lambda host: host.run(stop), hosts))
    # A stop asked for from outside wins; a host's failure (which stops the other hosts) fails.
    stopped = stop.stopped
    failure, outside = _failures(results)

    if not stopped and failure is None and outside is not None:
        return _after_infrastructure_failure(hosts, outside), 0.0
    emit(StatusChanged(SecondaryStatus.UPLOADING))
    try:
        for host in hosts:
            host.finish()
        # One archive of all the hosts' outputs: the job's, as SageMaker makes it.
        artifacts = upload_outputs(hosts, emit)
    except OutputsFailed as exc:
        print(f"outputs not uploaded: {exc.__cause__ or exc}", file=sys.stderr)
        # The code's own failure (a full volume, say) is what the job ended with, not its echo.
        reason = failure or exc.reason
        return lambda j: state.finish(j, SecondaryStatus.FAILED, reason), 0.0
    spec = hosts[0].spec
    visible_at = 0.0
    if spec.code_env and spec.store.endpoint is None:
        # Written straight into the embedded store's folder: the job ends once the server's
        # S3 endpoint lists its artifacts too (a listing it read before they were there is
        # kept this long), so that a client that sees it end finds them. The hosts' leftovers
        # go meanwhile.
        visible_at = time.monotonic() + EMBEDDED_ENDPOINT_LISTING_SECONDS

    def finish(j: TrainingJob) -> None:
        j.model_artifacts = artifacts.model_uri
        # A stop that came while the outputs were uploaded still ends the job Stopped.
        late = stop.stopped
        if stopped or late:
            state.finish(j, stopped or late or SecondaryStatus.STOPPED, None)
        elif failure:
            state.finish(j, SecondaryStatus.FAILED, failure)
        else:
            state.finish(j, SecondaryStatus.COMPLETED, None)

    return finish, visible_at


def _failures(results: list[HostResult]) -> tuple[str | None, str | None]:
    """(the FailureReason of the code's own failure, what killed a host from outside)."""
    failure = next((r.failure for r in results if r.failure), None)
    outside = next((r.outside for r in results if r.outside), None)
    return failure, outside


def _after_infrastructure_failure(
    hosts: list[HostRunner], what: str
) -> Callable[[TrainingJob], object]:
    """Keep the checkpoints, then restart the job under its RetryStrategy, or fail it."""
    for host in hosts:
        try:
            host.finish()
        except OutputsFailed as exc:
            print(f"checkpoints of {host.name} not saved: {exc.__cause__ or exc}", file=sys.stderr)
    return lambda j: restart_or_fail(j, what)


def preload(executor: str) -> None:
    """What the hosts need under `executor` (OPENMAKER_EXECUTOR), loaded ahead: by a spare
    worker while it waits for its order (jobs/worker_process.py), by the fork server before it
    forks workers (jobs/forkserver.py; so it starts no thread and opens no file)."""
    runners.load(executor)


def run(order: Order, settings: Settings, stop_before_start: threading.Event) -> None:
    """Run a worker's order (openmaker/jobs/worker_process.py)."""
    run_job(
        settings,
        order.arn,
        order.request,
        stop_before_start,
        order.placement,
        order.attempt,
        order.worker,
    )
