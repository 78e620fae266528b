"""The process that runs one processing job: its hosts (the training host's door, given a
processing plan: threads of this process, or sessions on the Ray cluster's nodes under
OPENMAKER_EXECUTOR=ray, training/runners.py), its row in the database. Each host fetches its
inputs and uploads its output folders where it runs.

The runner of the ProcessingJob kind (openmaker/jobs/worker_process.py hands it its order).
SIGTERM asks it to stop the job; the hosts then get SIGTERM, the grace period and SIGKILL.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from openmaker.connection import with_current_gate
from openmaker.jobs import gate_keys
from openmaker.jobs.attempt import Attempt
from openmaker.jobs.executor import Order, WorkerRef, this_process
from openmaker.jobs.gate_keys import Place
from openmaker.processing import status
from openmaker.processing.kind import PROCESSING, key
from openmaker.processing.plan import ProcessingPlan, plan_processing
from openmaker.processing.recorder import ProcessingRecorder
from openmaker.processing.status import ProcessingJobStatus
from openmaker.settings import Settings
from openmaker.training.host.events import StatusChanged
from openmaker.training.host.spec import HostSpec
from openmaker.training.host.stop import StopReason
from openmaker.training.host.training_host import HostFailed, HostResult, OutputsFailed, StopControl
from openmaker.training.runners import HostRunner, host_runners, warm
from openmaker.training.worker import job_host_specs

if TYPE_CHECKING:
    from openmaker.jobs.db import ProcessingJobRecord

End = Callable[["ProcessingJobRecord"], None]


def places(request: dict[str, Any]) -> list[Place]:
    """What the code may reach with its own key: its inputs (read), its outputs (read-write)."""
    found = [
        Place(item["S3Input"]["S3Uri"], is_folder=False, write=False)
        for item in request.get("ProcessingInputs") or []
        if item.get("S3Input")
    ]
    for output in (request.get("ProcessingOutputConfig") or {}).get("Outputs") or []:
        if output.get("S3Output"):
            found.append(Place(output["S3Output"]["S3Uri"], is_folder=True, write=True))
    return found


def host_specs(
    settings: Settings,
    request: dict[str, Any],
    job: ProcessingPlan,
    placement: dict[str, Any] | None,
) -> list[HostSpec]:
    code_env = {}
    if not job.plan.network_isolation:  # no network: no endpoint to offer, no key to mint
        code_env = gate_keys.code_environment(
            settings.home, key(job.name), places(request), settings.store
        )
    return job_host_specs(settings, job, job.arn, code_env, key(job.name), placement)


def run_job(
    settings: Settings,
    arn: str,
    request: dict[str, Any],
    stop_before_start: threading.Event,
    placement: dict[str, Any] | None = None,
    attempt: int = 1,
    worker: WorkerRef | None = None,
) -> None:
    name = request["ProcessingJobName"]
    settings = with_current_gate(settings)  # hosts on a Ray cluster reach the store there
    warm(settings)
    # What an earlier worker left (killed) must not leak into this one.
    PROCESSING.leftovers.remove_lost(dataclasses.replace(settings, keep_job_files=False), name)
    recorder = ProcessingRecorder(settings, name)
    stop = StopControl()
    signal.signal(signal.SIGTERM, lambda *_: stop.request(StopReason.STOPPED))
    if stop_before_start.is_set():
        stop.request(StopReason.STOPPED)
    mine: Attempt[ProcessingJobRecord] = Attempt(
        attempt, stop, worker or this_process(), status.ENDED, StopReason.STOPPED
    )
    hosts: list[HostRunner] = []
    try:
        job = plan_processing(request, arn)
        specs = host_specs(settings, request, job, placement)
        hosts = host_runners(settings, specs, recorder.emit)
        end = _run(job, hosts, recorder, stop, mine)
    except Exception:  # the job must end in a state that says what happened
        detail = traceback.format_exc()
        print(detail, file=sys.stderr)
        reason = "InternalServerError: " + detail.strip().splitlines()[-1]

        def end(j: ProcessingJobRecord) -> None:
            status.finish(j, ProcessingJobStatus.FAILED, reason)

    try:
        gate_keys.revoke_job(settings.home, key(name))  # its code's key dies with it
        for host in hosts:
            host.close()
        PROCESSING.leftovers.remove_lost(settings, name)
        recorder.update(mine.only(end))
    finally:
        recorder.close()
        _start_waiting_jobs(settings)


def _run(
    job: ProcessingPlan,
    hosts: list[HostRunner],
    recorder: ProcessingRecorder,
    stop: StopControl,
    mine: Attempt[ProcessingJobRecord],
) -> End:
    claimer = threading.Thread(target=recorder.update, args=(mine.claim,))
    claimer.start()
    try:
        with ThreadPoolExecutor(len(hosts)) as pool:
            list(pool.map(lambda host: host.prepare(stop), hosts))
    except HostFailed as exc:
        claimer.join()
        return _ended(ProcessingJobStatus.FAILED, exc.reason)
    if stop.requested:
        claimer.join()
        return _ended(ProcessingJobStatus.STOPPED, _stop_reason(job, stop))
    with ThreadPoolExecutor(len(hosts)) as pool:
        results = list(pool.map(lambda host: host.run(stop), hosts))
    claimer.join()
    failure = _failure(results)
    # The first 1 KB of /opt/ml/output/message, of the first host that wrote one.
    message = next((r.message for r in results if r.message), None)
    recorder.emit(StatusChanged("Uploading"))
    for host in hosts:  # each host's output folders, uploaded from where it ran
        try:
            host.finish()
        except OutputsFailed as exc:
            failure = failure or exc.reason
    stopped = stop.stopped

    def finish(j: ProcessingJobRecord) -> None:
        j.exit_message = message
        if stopped or stop.stopped:
            status.finish(j, ProcessingJobStatus.STOPPED, _stop_reason(job, stop))
        elif failure:
            status.finish(j, ProcessingJobStatus.FAILED, failure)
        else:
            status.finish(j, ProcessingJobStatus.COMPLETED)

    return finish


def _ended(end: ProcessingJobStatus, reason: str | None) -> End:
    return lambda j: status.finish(j, end, reason)


def _stop_reason(job: ProcessingPlan, stop: StopControl) -> str | None:
    if stop.stopped == StopReason.MAX_RUNTIME_EXCEEDED:
        limit = job.plan.limits.max_runtime_seconds
        return (
            "The processing job was stopped at its time limit "
            f"(StoppingCondition.MaxRuntimeInSeconds {limit})"
        )
    return None


def _failure(results: list[HostResult]) -> str | None:
    """The FailureReason: the code's own failure first, else what killed a host from outside
    (processing jobs are not restarted)."""
    failure = next((r.failure for r in results if r.failure), None)
    outside = next((r.outside for r in results if r.outside), None)
    return failure or (outside and f"InternalServerError: {outside}")


def _start_waiting_jobs(settings: Settings) -> None:
    try:
        from openmaker.jobs.executor import executor_for
        from openmaker.jobs.queue import start_ready
        from openmaker.resources import KINDS

        start_ready(settings, executor_for(settings), KINDS)
    except Exception:  # never a reason for this job to end otherwise; the next sweep retries
        traceback.print_exc()


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
