"""A disk volume of its own for a training host's or a serving instance's folder, as a SageMaker
instance has (`VolumeSizeInGB`).

A sparse ext4 image (`volume.img`, in the folder) is loop-mounted on the folder before anything
is written there, so that everything written under it — /opt/ml, the sandbox's /tmp, the
container's copy-on-write root, model data, caches — is held to the volume: what fills it fails
alone, and the disk that holds openmaker's database and logs keeps its space. The image costs
only what is written. It gets the size asked for, less when the disk has not that much free
beyond a reserve for openmaker (the volumes mounted already count for all they may still grow).

The volume is mounted in the machine's mount namespace, where the worker and the sandbox see
it. A guard process holding a pipe that only the worker writes unmounts it lazily when the
worker ends, however it ends; `unmount_under` removes what a lost guard left. Without root or
loop devices the folder stays on openmaker's disk, and `Volume.note` says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from openmaker.runtime import loop
from openmaker.runtime.enter import unescape

GIB = 1024**3
IMAGE_NAME = "volume.img"
# Kept free on openmaker's disk for its database, logs and output archives.
RESERVE_BYTES = GIB
# A volume with less free than this when its code ends was filled by it.
FULL_BELOW_BYTES = 16 * 1024**2

# Waits for the end of its standard input (the worker's pipe), then unmounts lazily; the
# shell's own `read`: no other process to start.
_GUARD = 'while read -r _; do :; done; umount --lazy "$1" 2>/dev/null; exit 0'


class VolumeError(Exception):
    """No volume can be had; `reason` says why, for a person."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Volume:
    folder: Path
    size_gb: int
    # What the owner's status message says about it.
    note: str
    guard: subprocess.Popen[bytes] | None = None
    # The worker's end of the guard's standard input; closing it unmounts.
    control: int | None = None
    # Latched when the code ended with its volume (nearly) full.
    was_full: bool = False
    # A handle on the mounted folder: whoever drops the mount's last reference pays its end.
    hold: int | None = None

    @property
    def mounted(self) -> bool:
        return self.guard is not None


def detach(volume: Volume) -> None:
    """Unmount the volume; its image goes with the folder. The volume is out of the folder at
    once; the kernel's end of it (writing the filesystem back, releasing the loop device and,
    once the folder is removed, freeing the image's blocks) and the guard's end run in a thread
    of their own, which the process waits for before it exits. Killed meanwhile, its exit
    finishes them."""
    if not volume.mounted:
        return
    assert volume.guard is not None
    if _lazy_unmount(volume.folder):
        # The guard's own unmount (a process to start) is not needed, nor waited for.
        volume.guard.kill()
    if volume.control is not None:
        os.close(volume.control)
    ending = threading.Thread(
        target=_end, args=(volume.hold, volume.guard), name="volume-end", daemon=False
    )
    ending.start()
    volume.guard, volume.control, volume.hold = None, None, None


def _end(hold: int | None, guard: subprocess.Popen[bytes]) -> None:
    # Dropping the last handle on the unmounted volume: its teardown runs in this thread.
    if hold is not None:
        os.close(hold)
    guard.wait()


def observe(volume: Volume) -> None:
    """Latch whether the volume is full now (called as the code writing to it ends)."""
    if not volume.mounted:
        return
    with contextlib.suppress(OSError):
        stat = os.statvfs(volume.folder)
        if stat.f_bavail * stat.f_frsize < FULL_BELOW_BYTES:
            volume.was_full = True


# How obstore (Rust) words a full disk in its messages.
_RUST_WORDING = ("No space left on device", "os error 28")


def no_space_left(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from, is a full disk (ENOSPC, EDQUOT)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(words in str(current) for words in _RUST_WORDING):
            return True
        current = current.__cause__ or current.__context__
    return False


def is_full(volume: Volume) -> bool:
    """Whether the volume has (nearly) no space left now."""
    observe(volume)
    return volume.was_full


def unmount_under(folder: Path) -> None:
    """Unmount whatever is mounted under `folder` (a job's or an endpoint's) and detach the
    loop devices of its images: what a lost worker's guard left, before the folder is removed.
    A volume's loop device clears itself once unmounted and unused: it is left to that."""
    for point in sorted(mount_points_under(folder), reverse=True):
        _lazy_unmount(point)
    for device, backing in _loop_devices():
        if backing.is_relative_to(folder):
            subprocess.run(["losetup", "--detach", device], capture_output=True, check=False)


def mount_points_under(folder: Path) -> list[Path]:
    found = []
    # A Path only for the points under it (compared as the table writes them): with many jobs
    # running, most of hundreds of lines are not, and a job reads the table several times.
    inside = _escaped(os.fsencode(folder)).rstrip(b"/") + b"/"
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            field = line.split(maxsplit=5)[4]
            if field.startswith(inside) or field + b"/" == inside:
                found.append(Path(unescape(field)))
    return found


def _escaped(path: bytes) -> bytes:
    """`path` as /proc/self/mountinfo writes it (see enter.unescape)."""
    for char in b"\\ \t\n":  # the backslash first: the others' escapes start with one
        path = path.replace(bytes([char]), b"\\%03o" % char)
    return path


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "a volume needs root privileges"
    for tool, package in (("mkfs.ext4", "e2fsprogs"), ("losetup", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} ({package}) is not installed"
    if not Path("/dev/loop-control").exists():
        return "this machine has no loop devices"
    return None


def unlimited_note(reason: str) -> str:
    return f"no volume of its own ({reason}): it writes to openmaker's disk, unlimited"


def mount(folder: Path, requested: int, disk_dir: Path) -> Volume:
    """Mount a volume of `requested` GB on `folder` (two levels under `disk_dir`, where the
    other volumes sized against the same disk are), or say why it cannot have one
    (`Volume.note`); VolumeError when the disk has no room at all."""
    reason = unavailable_reason()
    if reason is not None:
        return Volume(folder, requested, unlimited_note(reason))
    return _mount(folder, requested, disk_dir)


def _mount(folder: Path, requested: int, disk_dir: Path) -> Volume:
    image = folder / IMAGE_NAME
    # One at a time sizes and mounts its volume: each sees the others' volumes.
    with _disk_lock(disk_dir):
        size_gb, capped = _size_gb(requested, disk_dir)
        # A new file, never an earlier one's (kept files): that may still be ending elsewhere.
        image.unlink(missing_ok=True)
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, size_gb * GIB)
        finally:
            os.close(fd)
        guard, control = _start_guard(folder)
        try:
            _run("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", str(image))
            _loop_mount(image, folder)
            hold = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (OSError, subprocess.CalledProcessError) as exc:
            os.close(control)
            guard.wait()
            image.unlink(missing_ok=True)
            return Volume(folder, requested, unlimited_note(_why(exc)))
    note = f"a {size_gb} GB volume"
    if capped:
        note += f" ({requested} GB asked; openmaker's disk has no more free beyond its reserve)"
    return Volume(folder, size_gb, note, guard, control, hold=hold)


def _start_guard(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The guard of the volume about to be mounted on `folder`, and the worker's end of its
    pipe. It starts first: a worker killed right after mounting leaves no volume behind."""
    read_end, control = os.pipe()
    try:
        guard = subprocess.Popen(
            ["sh", "-c", _GUARD, "sh", str(folder)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: signals meant for the worker's group do not end it.
            start_new_session=True,
        )
    except OSError:
        os.close(control)
        raise
    finally:
        os.close(read_end)
    return guard, control


def _loop_mount(image: Path, folder: Path) -> None:
    # noinit_itable: no background zeroing of inode tables (it would fill the sparse image).
    loop.mount_image(image, folder, "ext4", "noinit_itable")
    os.chmod(folder, 0o755)


def _size_gb(requested: int, disk_dir: Path) -> tuple[int, bool]:
    """The volume's size: what was asked, or what openmaker's disk can give (then True)."""
    stat = os.statvfs(disk_dir)
    free = stat.f_bavail * stat.f_frsize
    # Each mounted volume may still grow by its own free space.
    for point in mount_points_under(disk_dir):
        if point.parent.parent == disk_dir:  # jobs/<job>/<host>, endpoints/<name>/<instance>
            with contextlib.suppress(OSError):
                other = os.statvfs(point)
                if other.f_fsid != stat.f_fsid:
                    free -= other.f_bfree * other.f_frsize
    available = (free - RESERVE_BYTES) // GIB
    if available >= requested:
        return requested, False
    if available < 1:
        raise VolumeError(
            f"CapacityError: openmaker's disk has no room for a {requested} GB volume: "
            f"{max(free, 0) / GIB:.1f} GB free, less a reserve of {RESERVE_BYTES // GIB} GB "
            "for openmaker itself"
        )
    return int(available), True


@contextlib.contextmanager
def _disk_lock(disk_dir: Path) -> Iterator[None]:
    fd = os.open(disk_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _loop_devices() -> list[tuple[str, Path]]:
    """(device, backing file) of every loop device in use that will not clear itself once
    unused (a volume's does: it may still be ending, in its worker's thread)."""
    found = []
    # Plain reads: each job's worker looks twice, with a device per running job.
    with os.scandir("/sys/block") as entries:
        names = [entry.name for entry in entries if entry.name.startswith("loop")]
    for name in names:
        with contextlib.suppress(OSError):
            if _read(f"/sys/block/{name}/loop/autoclear") == "1":
                continue
            backing = _read(f"/sys/block/{name}/loop/backing_file")
            found.append((f"/dev/{name}", Path(backing.removesuffix(" (deleted)"))))
    return found


def _read(path: str) -> str:
    with open(path) as file:
        return file.read().strip()


def _lazy_unmount(point: Path) -> bool:
    return loop.unmount(point)


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _why(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        lines = (exc.stderr or "").strip().splitlines()
        return f"{exc.cmd[0]} failed: {lines[-1] if lines else f'status {exc.returncode}'}"
    return str(exc)
