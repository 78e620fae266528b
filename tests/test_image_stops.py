"""Stopping around images: a stop during a pull that would never end (a registry front that
holds every layer download, tests/images_kit.py) kills skopeo's process group and leaves the
layout as it was, so the next pull works; StopTrainingJob does it for a job; an image's
STOPSIGNAL is what a stopped container gets first, as under Docker."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from openmaker.runtime import Container, ContainerSpec, unavailable_reason
from openmaker.runtime.images import (
    ImageStore,
    PullStopped,
    RegistryAccess,
    image_container,
    parse_reference,
)
from openmaker.training.service import TrainingJobs
from tests.helpers import request, stop_and_wait, unique_name, wait_for
from tests.images_kit import (
    PASSWORD,
    USER,
    Registry,
    StallingProxy,
    busybox_image,
    missing_tools,
    push,
    running_registry,
    write_auth_file,
)
from tests.process_helpers import wait_until, worker_pid

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"needs {missing_tools()}")
sandboxed = pytest.mark.skipif(unavailable_reason() is not None, reason="needs the sandbox")

# Says when it is ready; a SIGUSR1 (the image's STOPSIGNAL) ends it with 7, a SIGTERM with 9.
PROGRAM = (
    "trap 'echo got-usr1; exit 7' USR1; trap 'echo got-term; exit 9' TERM; echo ready; "
    "while :; do sleep 0.1; done"
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    folder = tmp_path_factory.mktemp("registry")
    with running_registry(folder / "registry") as running:
        entrypoint = [f"--config.entrypoint={part}" for part in ("/bin/sh", "-c", PROGRAM, "ep")]
        busybox_image(
            folder / "layout", "base", config=(*entrypoint, "--config.stopsignal=SIGUSR1")
        )
        push(folder / "layout", "base", running, "team/algo:1")
        yield running


@pytest.fixture
def proxy(registry: Registry) -> Iterator[StallingProxy]:
    front = StallingProxy(registry.host)
    try:
        yield front
    finally:
        front.close()


def _access(tmp_path: Path, registry: Registry, proxy: StallingProxy) -> RegistryAccess:
    auth = tmp_path / "auth.json"
    write_auth_file(auth, proxy.host, USER, PASSWORD)
    data = json.loads(auth.read_text())
    data["auths"].update(json.loads(registry.auth_file.read_text())["auths"])
    auth.write_text(json.dumps(data))
    return RegistryAccess(auth, (registry.host, proxy.host))


def skopeo_processes(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"skopeo" in argv and text.encode() in argv:
                found.append(int(entry.name))
    return found


def test_a_stop_interrupts_a_pull_and_leaves_no_half_written_image(
    tmp_path: Path, registry: Registry, proxy: StallingProxy
) -> None:
    store = ImageStore(tmp_path / "images", _access(tmp_path, registry, proxy))
    stop = threading.Event()
    outcome: list[BaseException] = []

    def pull() -> None:
        try:
            store.prepare(parse_reference(f"{proxy.host}/team/algo:1"), lambda _: None, True,
                          stop.is_set)  # fmt: skip
        except BaseException as exc:
            outcome.append(exc)

    puller = threading.Thread(target=pull)
    puller.start()
    try:
        assert proxy.stalled.wait(60), "the pull never asked for a layer"
        assert skopeo_processes(proxy.host)  # skopeo copy, waiting for the layer
    finally:
        stop.set()
        puller.join(120)
    assert not puller.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], PullStopped), outcome
    assert not skopeo_processes(proxy.host)  # killed with its process group
    layout = tmp_path / "images" / "oci"
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    assert index.get("manifests", []) == []  # no entry for the image
    for path in layout.rglob("*"):  # nothing half-written: whole blobs only
        if path.is_file() and path.parent.name == "sha256":
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
        else:
            assert path.is_dir() or path.name in ("index.json", "oci-layout"), path
    # The next pull (straight from the registry) works.
    direct = ImageStore(tmp_path / "images", RegistryAccess(registry.auth_file, (registry.host,)))
    image = direct.prepare(parse_reference(f"{registry.host}/team/algo:1"), lambda _: None)
    assert image.rootfs.joinpath("bin/busybox").is_file()


@sandboxed
def test_stop_training_job_during_a_pull_stops_it(
    home: Path,
    tmp_path: Path,
    registry: Registry,
    proxy: StallingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    access = _access(tmp_path, registry, proxy)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(access.auth_file))
    monkeypatch.setenv("OPENMAKER_INSECURE_REGISTRIES", ",".join(access.insecure))
    jobs = TrainingJobs()
    name = unique_name("pullstop")
    try:
        jobs.create(request(name, f"{proxy.host}/team/algo:1", "s3://out/jobs"))
        assert proxy.stalled.wait(120), jobs.describe(name)
        jobs.stop(name)
        description = wait_for(jobs, name, timeout=120)
    finally:
        stop_and_wait(jobs, [name])
    assert description["TrainingJobStatus"] == "Stopped", description.get("FailureReason")
    assert not skopeo_processes(proxy.host)


@sandboxed
def test_a_pull_dies_with_its_worker_killed_with_sigkill(
    home: Path,
    tmp_path: Path,
    registry: Registry,
    proxy: StallingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """skopeo runs in a process group of its own: no signal to the worker's group reaches it,
    yet it must not pull on for a worker that is gone."""
    access = _access(tmp_path, registry, proxy)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(access.auth_file))
    monkeypatch.setenv("OPENMAKER_INSECURE_REGISTRIES", ",".join(access.insecure))
    jobs = TrainingJobs()
    name = unique_name("pullkill")
    try:
        jobs.create(request(name, f"{proxy.host}/team/algo:1", "s3://out/jobs"))
        assert proxy.stalled.wait(120), jobs.describe(name)
        assert skopeo_processes(proxy.host)
        pid = worker_pid(jobs, name)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not skopeo_processes(proxy.host), "skopeo to die with its worker")
        # Recovery finds the worker lost: at once, or at the next look when another thread
        # was sweeping (a describe never waits for a sweep).
        wait_until(
            lambda: jobs.describe(name)["TrainingJobStatus"] == "Failed", "the job to be Failed"
        )
        assert "ended without finishing it" in jobs.describe(name)["FailureReason"]
    finally:
        stop_and_wait(jobs, [name])


@sandboxed
def test_the_image_stop_signal_is_sent_first(tmp_path: Path, registry: Registry) -> None:
    store = ImageStore(tmp_path / "images", RegistryAccess(registry.auth_file, (registry.host,)))
    image = store.prepare(parse_reference(f"{registry.host}/team/algo:1"), lambda _: None)
    run = image_container(image, "train", {})
    assert run.stop_signal == signal.SIGUSR1
    spec = ContainerSpec(
        argv=run.argv,
        env=run.env,
        state_dir=tmp_path / "state",
        layers=(run.rootfs,),
        workdir=run.workdir,
        user=run.user,
        stop_signal=run.stop_signal,
    )
    lines: list[str] = []
    ready = threading.Event()

    def receive(when: int, new: list[str], size: int) -> None:
        lines.extend(new)
        if "ready" in new:
            ready.set()

    container = Container(spec)
    container.start(receive)
    try:
        assert ready.wait(60), lines
        assert container.stop(60) == 7
    finally:
        if container.poll() is None:
            container.kill()
    assert "got-usr1" in lines and "got-term" not in lines
