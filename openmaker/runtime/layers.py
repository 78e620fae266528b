"""A container's copy-on-write root: overlay layers over folders of the machine, prepared so
that what it must not see shows empty or not at all.

The overlays themselves are mounted by enter.py, in the container's own mount namespace; here
their upper layers are made ready: an opaque folder or an empty file over each hidden path, a
whiteout over each removed one.
"""

from __future__ import annotations

import glob
import os
import stat
from pathlib import Path

# An overlay's mark of a folder that hides the one below it.
_OPAQUE = "trusted.overlay.opaque"


def hidden_paths(patterns: tuple[str, ...]) -> list[Path]:
    """What a container is to be shown empty: the paths the glob patterns match (symbolic
    links resolved)."""
    found = {Path(os.path.realpath(match)) for p in patterns for match in glob.glob(p)}
    return sorted(found)


def unseen_by_root(folders: list[str], covered: list[Path]) -> list[str]:
    """Those of `folders` that a root layer over "/" would not show: on another filesystem
    than `/`, or under a folder the sandbox covers (`covered`). Each becomes a copy-on-write
    layer of its own."""
    root_device = os.stat("/").st_dev
    unseen = []
    for prefix in sorted({os.path.realpath(folder) for folder in folders}):
        path = Path(prefix)
        if os.stat(path).st_dev != root_device or any(path.is_relative_to(c) for c in covered):
            unseen.append(prefix)
    return unseen


def cover(upper: Path, lower: str, hidden: list[Path], gone: list[Path]) -> list[Path]:
    """Prepare the upper layer over `lower` so that the overlay shows each of `hidden` empty
    (a folder that hides the one below, an empty file) and none of `gone`. Returns the folders
    it could not cover that way (to cover with a tmpfs)."""
    device = os.stat(lower).st_dev
    whiteouts = {Path(os.path.realpath(path)) for path in gone}
    left = []
    for path in [*hidden, *whiteouts]:
        if not path.is_relative_to(lower) or path == Path(lower) or path.is_relative_to("/tmp"):
            continue
        try:
            below = os.lstat(path)
        except OSError:
            continue
        if below.st_dev != device:
            continue  # another filesystem: the overlay does not show it
        target = upper / path.relative_to(lower)
        _copy_parents(upper, Path(lower), target.parent)
        if target.exists() or target.is_symlink():
            continue  # a folder above it is covered already
        if path in whiteouts:
            os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0))  # an overlay whiteout
        elif stat.S_ISDIR(below.st_mode):
            target.mkdir()
            try:
                os.setxattr(target, _OPAQUE, b"y")
            except OSError:
                left.append(path)
        else:
            target.touch()
        if path not in whiteouts:
            _copy_attributes(below, target)
    return left


def _copy_parents(upper: Path, lower: Path, folder: Path) -> None:
    """Create `folder` (in the upper layer) and its parents as the overlay would, with the
    owner and mode of the folders below: the merged view shows the upper ones."""
    relative = folder.relative_to(upper)
    for depth in range(1, len(relative.parts) + 1):
        part = Path(*relative.parts[:depth])
        target = upper / part
        if not target.exists():
            target.mkdir()
            _copy_attributes(os.lstat(lower / part), target)


def _copy_attributes(below: os.stat_result, target: Path) -> None:
    os.chown(target, below.st_uid, below.st_gid, follow_symlinks=False)
    os.chmod(target, stat.S_IMODE(below.st_mode))
    os.utime(target, ns=(below.st_atime_ns, below.st_mtime_ns), follow_symlinks=False)


def layer_folder(state_dir: Path, index: int) -> Path:
    """The folder of one copy-on-write layer: its upper, work and merged folders."""
    base = state_dir / "root" / str(index)
    for name in ("upper", "work", "merged"):
        (base / name).mkdir(parents=True, exist_ok=True)
    return base


def make_mount_points(upper: Path, lower: str, paths: list[str]) -> None:
    """Create in the upper layer over an image's root the folders of `paths` (mount points,
    the working folder) that its root lacks, as Docker does: root's, mode 0755 (bwrap would
    make them 0700, which only root could enter)."""
    for path in paths:
        parts = Path(path).relative_to("/").parts
        for depth in range(1, len(parts) + 1):
            relative = Path(*parts[:depth])
            if os.path.lexists(Path(lower) / relative):
                if not (Path(lower) / relative).is_dir() or (Path(lower) / relative).is_symlink():
                    break  # a file or a link of the image: bwrap follows it as the code would
                continue
            target = upper / relative
            if not target.exists():
                target.mkdir(mode=0o755)
                os.chmod(target, 0o755)
