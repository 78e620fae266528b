"""The process that runs one job: its hosts, its outputs, its state in the database.

Started detached by the local executor (`python -m openmaker.jobs.worker NAME`). SIGTERM asks it
to stop the job; the hosts then get SIGTERM, the grace period and SIGKILL.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from openmaker.config import Settings, load_settings
from openmaker.host.artifacts import upload_artifacts
from openmaker.host.checkpoints import save_checkpoints
from openmaker.host.events import Event, LogLine, StatusChanged, TransferProgress
from openmaker.host.execute import DEFAULT_GRACE_SECONDS, StopControl
from openmaker.host.run import HostFailed, HostResult, execute, prepare
from openmaker.host.spec import HostSpec
from openmaker.jobs import state
from openmaker.jobs.db import LogEvent, LogStream, TrainingJob, sessions
from openmaker.jobs.logs import LOG_GROUP, stream_name
from openmaker.store import StoreError, s3_endpoint

STORE_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def store_environment() -> dict[str, str]:
    """What the code (and the host's transfers) need to reach the object store in use."""
    endpoint = s3_endpoint()
    if endpoint is None:
        return {}
    env = {"AWS_ENDPOINT_URL_S3": endpoint.url}
    env.update({k: os.environ[k] for k in STORE_VARIABLES if os.environ.get(k)})
    return env


class JobRecorder:
    """Turns host events into database rows; one writer thread, commits in small batches."""

    def __init__(self, settings: Settings, job_name: str) -> None:
        self.sessions = sessions(settings)
        self.job_name = job_name
        self.queue: queue.Queue[Event | None] = queue.Queue()
        self.streams: dict[str, str] = {}
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def emit(self, event: Event) -> None:
        self.queue.put(event)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def update(self, change: Any) -> None:
        """Apply `change(job)` to the job row now, after the queued events."""
        self.flush()
        with self.sessions() as session:
            job = session.get(TrainingJob, self.job_name)
            change(job)
            session.commit()

    def flush(self) -> None:
        done = threading.Event()
        self.queue.put(_Flush(done))  # type: ignore[arg-type]
        done.wait()

    def _write(self) -> None:
        while True:
            batch = [self.queue.get()]
            while not self.queue.empty() and len(batch) < 500:
                batch.append(self.queue.get_nowait())
            with self.sessions() as session:
                job = session.get(TrainingJob, self.job_name)
                for event in batch:
                    if event is None or isinstance(event, _Flush):
                        continue
                    self._apply(session, job, event)
                session.commit()
            for event in batch:
                if isinstance(event, _Flush):
                    event.done.set()
            if batch[-1] is None or None in batch:
                return

    def _apply(self, session: Any, job: TrainingJob, event: Event) -> None:
        if isinstance(event, LogLine):
            name = self.streams.get(event.host)
            if name is None:
                name = stream_name(self.job_name, event.host, event.timestamp_ms // 1000)
                self.streams[event.host] = name
                session.add(
                    LogStream(
                        name=name,
                        group=LOG_GROUP,
                        job_name=self.job_name,
                        creation_time=event.timestamp_ms,
                    )
                )
                session.flush()
            session.add(
                LogEvent(
                    stream=name,
                    timestamp=event.timestamp_ms,
                    ingestion_time=event.timestamp_ms,
                    message=event.message,
                )
            )
        elif isinstance(event, StatusChanged):
            if job.status == state.IN_PROGRESS:
                state.enter(job, event.status, event.message)
                if event.status == "Training" and job.training_start_time is None:
                    job.training_start_time = state.now()
        elif isinstance(event, TransferProgress):
            job.progress = {"phase": event.phase, "done": event.done, "total": event.total}


class _Flush:
    def __init__(self, done: threading.Event) -> None:
        self.done = done


def host_specs(settings: Settings, job: TrainingJob) -> list[HostSpec]:
    count = int(job.request["ResourceConfig"].get("InstanceCount", 1))
    hosts = [f"algo-{i}" for i in range(1, count + 1)]
    job_dir = settings.jobs_dir / job.name
    return [
        HostSpec(
            job_name=job.name,
            job_arn=job.arn,
            request=job.request,
            host_name=host,
            hosts=hosts,
            region=settings.region,
            settings=settings,
            work_dir=job_dir / host,
            hidden_paths=[settings.home],
            store_env=store_environment(),
        )
        for host in hosts
    ]


def grace_seconds() -> float:
    """SageMaker's 120 s; `OPENMAKER_STOP_GRACE_SECONDS` shortens it (tests, impatient users)."""
    return float(os.environ.get("OPENMAKER_STOP_GRACE_SECONDS", DEFAULT_GRACE_SECONDS))


def run_job(settings: Settings, job_name: str) -> None:
    recorder = JobRecorder(settings, job_name)
    stop = StopControl()
    signal.signal(signal.SIGTERM, lambda *_: stop.request("Stopped"))
    try:
        _run(settings, job_name, recorder, stop)
    except Exception:  # the job must end in a state that says what happened
        detail = traceback.format_exc()
        print(detail, file=sys.stderr)
        reason = "InternalServerError: " + detail.strip().splitlines()[-1]
        recorder.update(lambda job: _finish(job, "Failed", reason))
    finally:
        recorder.close()
        _remove_host_folders(settings, job_name)


def _remove_host_folders(settings: Settings, job_name: str) -> None:
    """Like a SageMaker instance's disk, a host's folder (input data included) goes away with
    the job; OPENMAKER_KEEP_JOB_FILES=1 keeps it for a post-mortem."""
    if os.environ.get("OPENMAKER_KEEP_JOB_FILES") == "1":
        return
    for folder in (settings.jobs_dir / job_name).glob("algo-*"):
        shutil.rmtree(folder, ignore_errors=True)


def _run(settings: Settings, job_name: str, recorder: JobRecorder, stop: StopControl) -> None:
    def claim(job: TrainingJob) -> None:
        job.worker_pid = os.getpid()
        if job.stop_requested:
            stop.request(job.stop_requested)

    recorder.update(claim)
    with recorder.sessions() as session:
        job = session.get(TrainingJob, job_name)
    specs = host_specs(settings, job)
    emit = recorder.emit
    try:
        with ThreadPoolExecutor(len(specs)) as pool:
            list(pool.map(lambda s: prepare(s, emit), specs))
    except HostFailed as exc:
        reason = exc.reason
        recorder.update(lambda j: _finish(j, "Failed", reason))
        return
    if stop.requested:
        recorder.update(lambda j: _finish(j, "Stopped", None))
        return

    results = _execute_all(specs, emit, stop)
    # A stop asked for from outside wins; a host's failure (which stops the other hosts) fails.
    stopped = stop.reason if stop.reason in ("Stopped", "MaxRuntimeExceeded") else None
    failure = next((r.failure for r in results if r.failure), None)

    emit(StatusChanged("Uploading", state.MESSAGES["Uploading"]))
    try:
        for spec in specs:
            save_checkpoints(spec, emit)
        artifacts = upload_artifacts(
            job.request,
            [s.ml_dir / "model" for s in specs],
            [s.ml_dir / "output" / "data" for s in specs],
            settings.jobs_dir / job_name / "artifacts",
            settings,
            specs[0].store_env,
            emit,
        )
    except (OSError, StoreError, ValueError) as exc:
        reason = f"InternalServerError: could not upload outputs: {exc}"
        recorder.update(lambda j: _finish(j, "Failed", reason))
        return
    finally:
        shutil.rmtree(settings.jobs_dir / job_name / "artifacts", ignore_errors=True)

    def finish(j: TrainingJob) -> None:
        j.model_artifacts = artifacts.model_uri
        if stopped:
            _finish(j, stopped, None)
        elif failure:
            _finish(j, "Failed", failure)
        else:
            _finish(j, "Completed", None)

    recorder.update(finish)


def _execute_all(specs: list[HostSpec], emit: Any, stop: StopControl) -> list[HostResult]:
    grace = grace_seconds()

    def one(spec: HostSpec) -> HostResult:
        try:
            result = execute(spec, emit, stop, grace)
        except HostFailed as exc:
            result = HostResult(-1, None, exc.reason)
        if result.failure:
            stop.request("Failed")  # the other hosts of a failed job are stopped
        return result

    with ThreadPoolExecutor(len(specs)) as pool:
        return list(pool.map(one, specs))


def _finish(job: TrainingJob, secondary: str, reason: str | None) -> None:
    if job.training_start_time is not None and job.training_end_time is None:
        job.training_end_time = state.now()
    job.failure_reason = reason
    job.progress = None
    job.worker_pid = None
    state.enter(job, secondary)


def main() -> None:
    run_job(load_settings(), sys.argv[1])


if __name__ == "__main__":
    main()
