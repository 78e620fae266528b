"""A host's volume (runtime/volume.py, runtime/loop.py) on its own: mounted, unmounted, and
nothing left of it — no mount, no loop device — however its owner ends."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from openmaker.runtime import loop, volume
from tests.process_helpers import wait_until

pytestmark = pytest.mark.skipif(
    volume.unavailable_reason() is not None, reason=str(volume.unavailable_reason())
)


def _looped(under: Path) -> list[str]:
    listed = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "BACK-FILE"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in listed.splitlines() if str(under) in line]


def _gone(under: Path) -> bool:
    return not volume.mount_points_under(under) and not _looped(under)


def test_a_detached_volume_leaves_no_mount_nor_loop_device(tmp_path: Path) -> None:
    folder = tmp_path / "job" / "algo-1"
    folder.mkdir(parents=True)
    mounted = volume.mount(folder, 1, tmp_path)
    assert mounted.mounted, mounted.note
    assert volume.mount_points_under(tmp_path) == [folder]
    for index in range(200):  # many small files, as a user's code writes them
        (folder / f"part-{index}.txt").write_text("x" * index)
    volume.detach(mounted)
    # Out of the folder at once; the image's loop device goes once the kernel is done.
    assert not volume.mount_points_under(tmp_path)
    assert not (folder / "part-1.txt").exists()
    shutil.rmtree(folder)
    wait_until(lambda: _gone(tmp_path), "the volume's loop device to be released")


def test_a_killed_owners_volume_goes(tmp_path: Path) -> None:
    folder = tmp_path / "job" / "algo-1"
    folder.mkdir(parents=True)
    owner = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from openmaker.runtime import volume\n"
        "mounted = volume.mount(Path(sys.argv[1]), 1, Path(sys.argv[2]))\n"
        "assert mounted.mounted, mounted.note\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", owner, str(folder), str(tmp_path)], check=False)
    assert done.returncode == -9
    # Its guard unmounts the volume; the loop device clears itself once unmounted.
    wait_until(lambda: _gone(tmp_path), "the killed owner's volume to go")


def test_an_image_that_will_not_mount_leaves_no_loop_device(tmp_path: Path) -> None:
    image = tmp_path / "volume.img"
    with open(image, "wb") as written:
        written.truncate(16 * 1024**2)  # no filesystem in it
    point = tmp_path / "point"
    point.mkdir()
    with pytest.raises(OSError):
        loop.mount_image(image, point, "ext4", "noinit_itable")
    assert not volume.mount_points_under(tmp_path)
    wait_until(lambda: not _looped(tmp_path), "the loop device to clear itself")


def test_an_image_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.img"
    target.write_bytes(b"")
    image = tmp_path / "volume.img"
    image.symlink_to(target)
    point = tmp_path / "point"
    point.mkdir()
    with pytest.raises(OSError) as raised:
        loop.mount_image(image, point, "ext4", "noinit_itable")
    assert raised.value.errno == errno.ELOOP
    assert not _looped(tmp_path) and not os.path.ismount(point)


def test_a_kernel_without_loop_configure_gets_its_volume_in_two_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before Linux 5.8 there is no LOOP_CONFIGURE: an ioctl this kernel does not know stands
    in for it, and LOOP_SET_FD + LOOP_SET_STATUS64 mount the volume, which clears itself."""
    monkeypatch.setattr(loop, "_LOOP_CONFIGURE", 0x4CFF)
    folder = tmp_path / "job" / "algo-1"
    folder.mkdir(parents=True)
    mounted = volume.mount(folder, 1, tmp_path)
    assert mounted.mounted, mounted.note
    assert volume.mount_points_under(tmp_path) == [folder]
    (folder / "written.txt").write_text("on the volume")
    volume.detach(mounted)
    assert not volume.mount_points_under(tmp_path)
    shutil.rmtree(folder)
    wait_until(lambda: _gone(tmp_path), "the volume's loop device to be released")


def test_mount_points_under_a_folder_whose_name_the_table_escapes(tmp_path: Path) -> None:
    # /proc/self/mountinfo writes a space, a tab, a newline and a backslash as octal escapes;
    # a folder that merely starts with the same name is not under it.
    folder = tmp_path / "job a\\b\tc\nd"
    inside, beside = folder / "algo-1", tmp_path / "job a\\b\tc\nd-other"
    for point in (inside, beside):
        point.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(point)], check=True)
    try:
        assert volume.mount_points_under(folder) == [inside]
        assert volume.mount_points_under(inside) == [inside]
    finally:
        for point in (inside, beside):
            loop.unmount(point)
    assert not volume.mount_points_under(tmp_path)
