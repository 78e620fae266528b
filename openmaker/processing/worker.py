"""The process that runs one processing job: its hosts (one `TrainingHost` each, the training
host's door, given a processing plan), its output folders, its row in the database.

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

from openmaker.jobs import gate_keys
from openmaker.jobs.attempt import Attempt
from openmaker.jobs.executor import Order, WorkerRef, this_process
from openmaker.jobs.gate_keys import Place
from openmaker.processing import status
from openmaker.processing.kind import PROCESSING, key
from openmaker.processing.outputs import start_continuous, upload_outputs
from openmaker.processing.plan import MESSAGE_FILE, ProcessingPlan, plan_processing
from openmaker.processing.recorder import ProcessingRecorder
from openmaker.processing.status import ProcessingJobStatus
from openmaker.settings import Settings
from openmaker.store import StoreError
from openmaker.training.host.events import StatusChanged
from openmaker.training.host.jobtree import read_text_head
from openmaker.training.host.spec import HostSpec
from openmaker.training.host.stop import StopReason
from openmaker.training.host.training_host import HostFailed, HostResult, StopControl, TrainingHost
from openmaker.training.worker import job_host_specs

if TYPE_CHECKING:
    from openmaker.jobs.db import ProcessingJobRecord

EXIT_MESSAGE_LIMIT = 1024
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
    hosts: list[TrainingHost] = []
    try:
        job = plan_processing(request, arn)
        hosts = [
            TrainingHost(spec, recorder.emit)
            for spec in host_specs(settings, request, job, placement)
        ]
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
    hosts: list[TrainingHost],
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
    syncs = [
        sync
        for host in hosts
        if host.tree is not None
        for sync in start_continuous(host.spec, host.tree, job.outputs, recorder.emit)
    ]
    try:
        with ThreadPoolExecutor(len(hosts)) as pool:
            results = list(pool.map(lambda host: host.run(stop), hosts))
    finally:
        for sync in syncs:
            sync.stop()
    claimer.join()
    failure = _failure(results)
    message = _exit_message(hosts)
    recorder.emit(StatusChanged("Uploading"))
    try:
        for host in hosts:
            if host.tree is not None:
                upload_outputs(host.spec, host.tree, job.outputs, recorder.emit)
    except (OSError, StoreError, ValueError) as exc:
        failure = failure or f"InternalServerError: could not upload the outputs: {exc}"
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


def _exit_message(hosts: list[TrainingHost]) -> str | None:
    """The first 1 KB of /opt/ml/output/message, of the first host that wrote one."""
    for host in hosts:
        if host.tree is None:
            continue
        text = read_text_head(host.tree.ml, MESSAGE_FILE, EXIT_MESSAGE_LIMIT)
        if text:
            return text
    return None


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
