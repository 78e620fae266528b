"""Registry images, against the tools run by hand in the same run, from a Docker registry on
loopback (Debian's docker-registry, htpasswd auth) holding an image built here with umoci:
busybox-static and three layers of random bytes, ~300 MB (~30 MB with --quick).

- Cold start: openmaker's pull (the tag resolved to its digest, `skopeo copy` into its layout),
  unpack and start of the image's container up to its program's first line, against
  `skopeo copy` + `umoci unpack` alone (no start). Ratio (by hand / openmaker) >= 1.0.
- Warm start of the image now cached: prepare (the tag resolved again: one manifest request)
  and start up to the program's first line, against a local-folder image (its `train` on the
  machine's root, copy-on-write) started the same way. Under 0.5 s, within 0.1 s of the folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from functools import partial
from pathlib import Path

from bench.stats import MB, Timings, timed
from openmaker.runtime import Bind, Container, ContainerSpec, unavailable_reason
from openmaker.runtime.images import ImageStore, RegistryAccess, image_container, parse_reference
from tests.images_kit import Registry, busybox_image, missing_tools, push, running_registry, umoci

COLD_TARGET = 1.0
WARM_LIMIT = 0.5
WARM_WITHIN = 0.1
LAYERS = 3
PROGRAM = "echo running"


def run(quick: bool, scratch: Path) -> list[str]:
    if missing := missing_tools():
        return [f"images: skipped ({', '.join(missing)} missing)"]
    if reason := unavailable_reason():
        return [f"images: skipped (no sandbox: {reason})"]
    layer_bytes = (10 if quick else 100) * MB
    runs = 1 if quick else 3
    folder = scratch / "images-bench"
    print(f"images: building a {LAYERS} x {layer_bytes // MB} MB image with umoci", flush=True)
    layout = folder / "layout"
    _build(layout, layer_bytes)
    with running_registry(folder / "registry") as registry:
        push(layout, "big", registry, "bench/big:1")
        reference = f"{registry.host}/bench/big:1"
        access = RegistryAccess(registry.auth_file, (registry.host,))
        size = _size(layout)
        print(f"images: cold start of {size / MB:.0f} MB ({runs} runs)", flush=True)
        cold = _cold(folder, registry, reference, access, runs)
        print(f"images: warm start ({5 * runs} runs)", flush=True)
        warm = _warm(folder, reference, access, 5 * runs)
    shutil.rmtree(folder, ignore_errors=True)
    return _lines(size, cold, warm)


def _build(layout: Path, layer_bytes: int) -> None:
    entrypoint = [f"--config.entrypoint={part}" for part in ("/bin/sh", "-c", PROGRAM, "sh")]
    busybox_image(layout, "big", config=tuple(entrypoint))
    for index in range(LAYERS):
        bundle = layout.parent / "bundle"
        umoci("unpack", "--image", f"{layout}:big", str(bundle))
        data = bundle / "rootfs" / "data"
        data.mkdir(exist_ok=True)
        with open(data / f"random-{index}", "wb") as out:
            for _ in range(layer_bytes // MB):
                out.write(os.urandom(MB))
        umoci("repack", "--image", f"{layout}:big", str(bundle))
        shutil.rmtree(bundle)
    umoci("gc", "--layout", str(layout))


def _size(layout: Path) -> int:
    return sum(path.stat().st_size for path in (layout / "blobs").rglob("*") if path.is_file())


def _cold(
    folder: Path, registry: Registry, reference: str, access: RegistryAccess, runs: int
) -> dict[str, Timings]:
    seconds: dict[str, list[float]] = {"openmaker": [], "by hand": []}
    for index in range(runs):
        for who in ("by hand", "openmaker") if index % 2 == 0 else ("openmaker", "by hand"):
            work = folder / f"cold-{who.replace(' ', '-')}-{index}"
            os.sync()
            if who == "by hand":
                _, took = timed(partial(_by_hand, work, registry, reference))
            else:
                store = ImageStore(work / "images", access)
                _, took = timed(partial(_start_image, store, reference, work))
            seconds[who].append(took)
            shutil.rmtree(work, ignore_errors=True)
        print(
            f"  run {index + 1}/{runs}: openmaker {seconds['openmaker'][-1]:.2f} s, "
            f"by hand {seconds['by hand'][-1]:.2f} s",
            flush=True,
        )
    return {who: Timings(values) for who, values in seconds.items()}


def _by_hand(work: Path, registry: Registry, reference: str) -> None:
    work.mkdir(parents=True)
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"--src-authfile={registry.auth_file}",
         f"docker://{reference}", f"oci:{work}/layout:big"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["umoci", "--log", "error", "unpack", "--image", f"{work}/layout:big", str(work / "b")],
        check=True,
        capture_output=True,
    )


def _warm(folder: Path, reference: str, access: RegistryAccess, runs: int) -> dict[str, Timings]:
    store = ImageStore(folder / "warm" / "images", access)
    _start_image(store, reference, folder / "warm")  # cached from here on
    program = folder / "program"
    program.mkdir()
    (program / "train").write_text(f"#!/bin/sh\n{PROGRAM}\n")
    (program / "train").chmod(0o755)
    seconds: dict[str, list[float]] = {"image": [], "local folder": []}
    for index in range(runs):
        work = folder / f"warm-{index}"
        _, took = timed(partial(_start_image, store, reference, work))
        seconds["image"].append(took)
        _, took = timed(partial(_start_folder, program, work))
        seconds["local folder"].append(took)
        shutil.rmtree(work, ignore_errors=True)
    return {who: Timings(values) for who, values in seconds.items()}


def _start_image(store: ImageStore, reference: str, work: Path) -> None:
    """Request to code running: the image prepared (pulled and unpacked when missing), its
    container started, its program's first line read."""
    image = store.prepare(parse_reference(reference), lambda line: None)
    run = image_container(image, "train", {})
    spec = ContainerSpec(
        argv=run.argv,
        env=run.env,
        state_dir=work / "state",
        layers=(run.rootfs,),
        workdir=run.workdir,
        user=run.user,
    )
    _until_running(spec)


def _start_folder(program: Path, work: Path) -> None:
    spec = ContainerSpec(
        argv=["train"],
        env={"PATH": f"/opt/program:{os.environ['PATH']}"},
        state_dir=work / "state-folder",
        binds=(Bind(str(program), "/opt/program"),),
        workdir="/opt/program",
    )
    _until_running(spec)


def _until_running(spec: ContainerSpec) -> None:
    running = threading.Event()

    def receive(when: int, new: list[str], size: int) -> None:
        if "running" in new:
            running.set()

    container = Container(spec)
    container.start(receive)
    try:
        if not running.wait(120):
            raise RuntimeError("the container's program never said it was running")
    finally:
        container.wait(60)
        if container.poll() is None:
            container.kill()


def _lines(size: int, cold: dict[str, Timings], warm: dict[str, Timings]) -> list[str]:
    ratio = cold["by hand"].median / cold["openmaker"].median
    verdict = "ok" if ratio >= COLD_TARGET else "MISSED"
    image, folder = warm["image"].median, warm["local folder"].median
    fast = image < WARM_LIMIT and image - folder <= WARM_WITHIN
    return [
        f"Image cold start, {size / MB:.0f} MB from a registry on loopback: openmaker "
        f"(pull + unpack + start) {cold['openmaker'].median:.2f} s, skopeo copy + umoci unpack "
        f"by hand {cold['by hand'].median:.2f} s, ratio {ratio:.2f} (target >= {COLD_TARGET}: "
        f"{verdict})",
        f"  openmaker {cold['openmaker'].describe()}",
        f"  by hand   {cold['by hand'].describe()}",
        f"Image warm start (request to code running): cached image {image:.3f} s, local folder "
        f"{folder:.3f} s, difference {image - folder:+.3f} s (target < {WARM_LIMIT} s and "
        f"within {WARM_WITHIN} s: {'ok' if fast else 'MISSED'})",
        f"  image        {warm['image'].describe()}",
        f"  local folder {warm['local folder'].describe()}",
    ]
