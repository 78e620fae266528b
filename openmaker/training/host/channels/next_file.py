"""Fetching ahead across the files of a FastFile mount, for code that reads them in key order.

rclone reads ahead within a file, never into the next one: code that reads file after file waits
at the start of each for its first range to arrive. When the code opens the file that follows
the one it opened before (in key order, the order File mode downloads in), this opens the file
after that and reads one byte of it. rclone then fetches that file into its disk cache while the
code reads the current one. The byte is read with read-ahead off, so only rclone's transfer is
started: no data is copied out through FUSE.

Code that reads one file, or files in any other order, starts nothing. The code's opens are
seen through inotify, which reports opens through every mount of the folder, the sandbox's too.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter, OrderedDict
from pathlib import Path

from inotify_simple import INotify, flags

# Files held open ahead of the code: each keeps rclone fetching that file.
AHEAD = 1
_POLL_MILLISECONDS = 200
# A read through the mount can wait on an unreachable server for as long as rclone retries:
# the host's end waits this long at most, and the thread lets go of its file by itself.
_STOP_WAIT_SECONDS = 5.0


class NextFilePrefetch:
    """Watches one mounted folder and keeps the next file in key order being fetched."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"prefetch {root}", daemon=True)
        self._held: OrderedDict[str, int] = OrderedDict()
        # Opens this object made and has not yet seen come back as events.
        self._own = Counter[str]()
        self._previous: int | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and let go of every file held open (before the folder is unmounted)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(_STOP_WAIT_SECONDS)
        while self._held:
            os.close(self._held.popitem()[1])

    def _run(self) -> None:
        # A broken mount or a folder that cannot be watched only loses the prefetching.
        with contextlib.suppress(OSError), INotify() as inotify:
            folders = {inotify.add_watch(self.root, flags.OPEN): ""}
            files: list[str] = []
            for folder, names, found in os.walk(self.root):
                if self._stop.is_set():
                    return
                relative = os.path.relpath(folder, self.root)
                for name in names:
                    path = os.path.join(folder, name)
                    key = os.path.normpath(os.path.join(relative, name))
                    folders[inotify.add_watch(path, flags.OPEN)] = key
                files += [os.path.normpath(os.path.join(relative, name)) for name in found]
            files.sort()
            order = {key: index for index, key in enumerate(files)}
            while not self._stop.is_set():
                for event in inotify.read(timeout=_POLL_MILLISECONDS):
                    if event.mask & flags.ISDIR or event.wd not in folders:
                        continue
                    key = os.path.normpath(os.path.join(folders[event.wd], event.name))
                    if key in order:
                        self._opened(key, order[key], files)

    def _opened(self, key: str, index: int, files: list[str]) -> None:
        if self._own[key]:
            self._own[key] -= 1
            return
        sequential = self._previous is not None and index == self._previous + 1
        self._previous = index
        if sequential:
            for ahead in files[index + 1 : index + 1 + AHEAD]:
                self._fetch(ahead)

    def _fetch(self, key: str) -> None:
        if key in self._held:
            return
        self._own[key] += 1
        try:
            fd = os.open(self.root / key, os.O_RDONLY)
        except OSError:
            self._own[key] -= 1
            return
        try:
            # One page, with the kernel's read-ahead off: rclone fetches the rest by itself.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            os.pread(fd, 1, 0)
        except OSError:
            os.close(fd)
            return
        if self._stop.is_set():
            os.close(fd)
            return
        self._held[key] = fd
        # The file the code reads stays held too: letting go of it while rclone still fetches
        # it would stop that transfer, and rclone would fetch the same ranges again.
        while len(self._held) > AHEAD + 1:
            _, oldest = self._held.popitem(last=False)
            os.close(oldest)
