"""A file mounted through a loop device, by the kernel's own calls (ioctl, mount(2),
umount2(2)) rather than losetup/mount/umount: each of those is a process to start, which cost a
job's start and end tens of milliseconds each on a loaded machine.

The loop device is configured to clear itself (LO_FLAGS_AUTOCLEAR) once its last user lets go:
the mount, or this module's own handle when the mount fails. Nothing is left to detach."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
from pathlib import Path

# <linux/loop.h>
_LOOP_SET_FD = 0x4C00
_LOOP_CLR_FD = 0x4C01
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_CONFIGURE = 0x4C0A  # Linux 5.8 and later
_LOOP_CTL_GET_FREE = 0x4C82
_LO_FLAGS_AUTOCLEAR = 4
_LO_FLAGS_DIRECT_IO = 16
_LOOP_MAJOR = 7
# <sys/mount.h>
_MS_NOSUID = 2
_MS_NODEV = 4
_MNT_DETACH = 2
_UMOUNT_NOFOLLOW = 8

_libc = ctypes.CDLL(None, use_errno=True)


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_char * 64),
        ("lo_crypt_name", ctypes.c_char * 64),
        ("lo_encrypt_key", ctypes.c_char * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _LoopConfig(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", _LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


def mount_image(image: Path, folder: Path, fstype: str, options: str) -> None:
    """Mount the filesystem in `image` (opened without following a link) on `folder`,
    nosuid and nodev (OSError)."""
    backing = os.open(image, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        device, handle = _attach(backing, image)
    finally:
        os.close(backing)  # the loop device holds its own reference
    try:
        flags = _MS_NOSUID | _MS_NODEV
        done = _libc.mount(
            os.fsencode(device), os.fsencode(folder), fstype.encode(), flags, options.encode()
        )
        if done != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"mount of {device} on {folder}: {os.strerror(code)}")
    finally:
        # The mount holds the device now; without it, this was its last user and it clears.
        os.close(handle)


def unmount(point: Path) -> bool:
    """Unmount `point` lazily (gone from the tree now, freed once nothing uses it); whether
    it is not mounted now (it was not: fine)."""
    if _libc.umount2(os.fsencode(point), _MNT_DETACH | _UMOUNT_NOFOLLOW) == 0:
        return True
    return ctypes.get_errno() == errno.EINVAL


def _attach(backing: int, image: Path) -> tuple[str, int]:
    """A free loop device bound to `backing`: its path and an open handle on it."""
    control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        # Another process may take the free device first (EBUSY): then ask again.
        for _ in range(32):
            number = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
            device = f"/dev/loop{number}"
            handle = _open_device(device, number)
            try:
                _configure(handle, backing, image)
            except OSError as exc:
                os.close(handle)
                if exc.errno != errno.EBUSY:
                    raise
                continue
            return device, handle
    finally:
        os.close(control)
    raise OSError(errno.EBUSY, "no free loop device could be had")


def _open_device(device: str, number: int) -> int:
    try:
        return os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        # A /dev without the node the kernel just made (no devtmpfs, no udev): make it.
        os.mknod(device, 0o660 | stat.S_IFBLK, os.makedev(_LOOP_MAJOR, number))
        return os.open(device, os.O_RDWR | os.O_CLOEXEC)


def _configure(handle: int, backing: int, image: Path) -> None:
    config = _LoopConfig()
    config.fd = backing
    config.info.lo_file_name = os.fsencode(image)[:63]
    # Direct I/O: the image's pages are not cached twice; writes ran 15 times faster here.
    for flags in (_LO_FLAGS_AUTOCLEAR | _LO_FLAGS_DIRECT_IO, _LO_FLAGS_AUTOCLEAR):
        config.info.lo_flags = flags
        try:
            fcntl.ioctl(handle, _LOOP_CONFIGURE, config)
            return
        except OSError as exc:
            if exc.errno == errno.ENOTTY or (
                exc.errno == errno.EINVAL and not flags & _LO_FLAGS_DIRECT_IO
            ):
                break  # a kernel before 5.8 (no LOOP_CONFIGURE): the two older calls
            if exc.errno != errno.EINVAL:
                raise
    configure_in_two_steps(handle, backing, config.info)


def configure_in_two_steps(handle: int, backing: int, info: _LoopInfo64) -> None:
    """LOOP_SET_FD, then LOOP_SET_STATUS64 (autoclear, no direct I/O): what kernels before 5.8
    offer; the device is let go again when the second call fails."""
    fcntl.ioctl(handle, _LOOP_SET_FD, backing)
    info.lo_flags = _LO_FLAGS_AUTOCLEAR
    try:
        fcntl.ioctl(handle, _LOOP_SET_STATUS64, info)
    except OSError:
        fcntl.ioctl(handle, _LOOP_CLR_FD, 0)
        raise
