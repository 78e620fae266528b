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
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from openmaker.config import Settings, load_settings
from openmaker.host.artifacts import upload_artifacts
from openmaker.host.checkpoints import save_checkpoints
from openmaker.host.events import STATUS_MESSAGES, Emit, StatusChanged
from openmaker.host.execute import DEFAULT_GRACE_SECONDS, StopControl
from openmaker.host.run import HostFailed, HostResult, execute, prepare
from openmaker.host.spec import HostSpec
from openmaker.jobs import state

if TYPE_CHECKING:
    from openmaker.jobs.db import TrainingJob
from openmaker.jobs.recorder import JobRecorder
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


def host_specs(settings: Settings, arn: str, request: dict[str, Any]) -> list[HostSpec]:
    name = request["TrainingJobName"]
    count = int(request["ResourceConfig"].get("InstanceCount", 1))
    hosts = [f"algo-{i}" for i in range(1, count + 1)]
    job_dir = settings.jobs_dir / name
    store_env = store_environment()
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
            store_env=store_env,
        )
        for host in hosts
    ]


def grace_seconds() -> float:
    """SageMaker's 120 s; `OPENMAKER_STOP_GRACE_SECONDS` shortens it (tests, impatient users)."""
    return float(os.environ.get("OPENMAKER_STOP_GRACE_SECONDS", DEFAULT_GRACE_SECONDS))


def run_job(
    settings: Settings, arn: str, request: dict[str, Any], stop_before_start: threading.Event
) -> None:
    job_name = request["TrainingJobName"]
    recorder = JobRecorder(settings, job_name)
    stop = StopControl()
    signal.signal(signal.SIGTERM, lambda *_: stop.request("Stopped"))
    if stop_before_start.is_set():
        stop.request("Stopped")
    try:
        _run(settings, arn, request, recorder, stop)
    except Exception:  # the job must end in a state that says what happened
        detail = traceback.format_exc()
        print(detail, file=sys.stderr)
        reason = "InternalServerError: " + detail.strip().splitlines()[-1]
        recorder.update(lambda job: state.finish(job, "Failed", reason))
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


def _run(
    settings: Settings,
    arn: str,
    request: dict[str, Any],
    recorder: JobRecorder,
    stop: StopControl,
) -> None:
    def claim(job: TrainingJob) -> None:
        job.worker_pid, job.worker_ready = os.getpid(), True  # SIGTERM is handled from here on
        if job.stop_requested:
            stop.request(job.stop_requested)

    # The hosts start preparing at once; the claim waits for the database layer to load.
    claimer = threading.Thread(target=recorder.update, args=(claim,))
    claimer.start()
    job_name = request["TrainingJobName"]
    specs = host_specs(settings, arn, request)
    emit = recorder.emit
    try:
        with ThreadPoolExecutor(len(specs)) as pool:
            list(pool.map(lambda s: prepare(s, emit), specs))
    except HostFailed as exc:
        reason = exc.reason
        recorder.update(lambda j: state.finish(j, "Failed", reason))
        return
    if stop.requested:
        recorder.update(lambda j: state.finish(j, "Stopped", None))
        return

    results = _execute_all(specs, emit, stop)
    # A stop asked for from outside wins; a host's failure (which stops the other hosts) fails.
    stopped = stop.reason if stop.reason in ("Stopped", "MaxRuntimeExceeded") else None
    failure = next((r.failure for r in results if r.failure), None)

    claimer.join()  # long done by now; the job's end must not come before its claim
    emit(StatusChanged("Uploading", STATUS_MESSAGES["Uploading"]))
    try:
        for spec in specs:
            save_checkpoints(spec, emit)
        artifacts = upload_artifacts(
            request,
            [s.ml_dir / "model" for s in specs],
            [s.ml_dir / "output" / "data" for s in specs],
            settings.jobs_dir / job_name / "artifacts",
            settings,
            specs[0].store_env,
            emit,
        )
    except (OSError, StoreError, ValueError) as exc:
        reason = f"InternalServerError: could not upload outputs: {exc}"
        recorder.update(lambda j: state.finish(j, "Failed", reason))
        return
    finally:
        shutil.rmtree(settings.jobs_dir / job_name / "artifacts", ignore_errors=True)

    def finish(j: TrainingJob) -> None:
        j.model_artifacts = artifacts.model_uri
        if stopped:
            state.finish(j, stopped, None)
        elif failure:
            state.finish(j, "Failed", failure)
        else:
            state.finish(j, "Completed", None)

    recorder.update(finish)


def _execute_all(specs: list[HostSpec], emit: Emit, stop: StopControl) -> list[HostResult]:
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


def main(stop_before_start: threading.Event) -> None:
    """Wait for the job on standard input (see the local executor), then run it."""
    # The database layer loads meanwhile: a spare worker has it ready when its job comes.
    threading.Thread(target=importlib.import_module, args=("openmaker.jobs.db",)).start()
    data = sys.stdin.read()
    if not data:
        return  # a spare nobody needed
    order = json.loads(data)
    os.environ.clear()
    os.environ.update(order["env"])
    os.environ["OPENMAKER_HOME"] = order["home"]
    settings = load_settings()
    # The worker's own messages (not the job's logs) go to a file, for post-mortems.
    log = os.open(
        settings.jobs_dir / order["job"] / "worker.log",
        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
        0o644,
    )
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    run_job(settings, order["arn"], order["request"], stop_before_start)
