"""`openmaker images pull / list / remove / prune`, run as a user runs them, against a real
registry on loopback: progress while pulling, shared layers counted and kept, and an unpacked
root kept while another process (a job's) holds it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images_kit import Registry, busybox_image, missing_tools, push, running_registry

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"needs {missing_tools()}")
OPENMAKER = [sys.executable, "-m", "openmaker.cli.app"]
# A job's worker: prepares the image for a container, then lives until its stdin closes.
HOLDER = """
import sys
from openmaker.runtime.images import image_store, parse_reference
from openmaker.settings import load_settings
image_store(load_settings()).prepare(parse_reference(sys.argv[1]), lambda line: None)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    folder = tmp_path_factory.mktemp("registry")
    with running_registry(folder / "registry") as running:
        layout = folder / "layout"
        busybox_image(layout, "base")
        push(layout, "base", running, "team/base:1")
        busybox_image(layout, "child", base="base", files={"child.txt": "only here"})
        push(layout, "child", running, "team/child:1")
        yield running


def _env(tmp_path: Path, registry: Registry) -> dict[str, str]:
    return {
        **os.environ,
        "OPENMAKER_HOME": str(tmp_path / "home"),
        "REGISTRY_AUTH_FILE": str(registry.auth_file),
        "OPENMAKER_INSECURE_REGISTRIES": registry.host,
        "COLUMNS": "300",
    }


def _images(env: dict[str, str], *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*OPENMAKER, "images", *args], env=env, capture_output=True, text=True)
    assert done.returncode == code, done.stdout + done.stderr
    return done


def test_pull_list_remove_prune(tmp_path: Path, registry: Registry) -> None:
    env = _env(tmp_path, registry)
    base, child = f"{registry.host}/team/base:1", f"{registry.host}/team/child:1"
    pulled = _images(env, "pull", base)
    assert "layer 1 of 1: sha256:" in pulled.stderr and pulled.stdout.startswith(base)
    assert "layer 1 of 2" in _images(env, "pull", child).stderr
    listed = _images(env, "list").stdout
    assert base in listed and child in listed
    child_row = next(line for line in listed.splitlines() if child in line)
    assert "0 B" not in child_row  # its shared column counts busybox's layer
    roots = tmp_path / "home" / "images" / "rootfs"
    assert len([p for p in roots.iterdir() if p.is_dir()]) == 2

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, child],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        removed = _images(env, "remove", child).stdout
        assert f"removed {child}" in removed and "in use" in removed
        assert "0 unpacked roots" in removed and "deleted 0 blobs" not in removed
        assert len([p for p in roots.iterdir() if p.is_dir()]) == 2
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
    assert "deleted 0 blobs (0 B) and 1 unpacked roots" in _images(env, "prune").stdout
    assert len([p for p in roots.iterdir() if p.is_dir()]) == 1
    listed = _images(env, "list").stdout
    assert base in listed and child not in listed
    # The base image still runs from what is left: nothing it needs was deleted.
    again = _images(env, "pull", base)
    assert "pulling" not in again.stderr and "unpacking" not in again.stderr
    missing = _images(env, "remove", child, code=1)
    assert "no image on this machine" in missing.stderr
