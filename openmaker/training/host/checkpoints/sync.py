"""Continuous checkpoint sync: while the code runs, the files it closes under the checkpoint
folder are uploaded within about a second, and the files it removes are deleted.

inotify says when a file written is closed (IN_CLOSE_WRITE) or moved in (IN_MOVED_TO), so a
file still open for writing is never uploaded as if whole, and every upload is made from bytes
that did not change while read (checkpoints/snapshot.py). Files inotify cannot vouch for (found
by a scan: in a folder made before its watch existed, after the event queue overflowed, or
everywhere when inotify is unavailable) are uploaded once they have stayed unchanged for
QUIET_SECONDS. The sync is a thread of the worker, outside the sandbox: the code never waits
for it. `stop()` flushes whatever is left once the code has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from inotify_simple import INotify, flags

from openmaker.store import Location, StoreError
from openmaker.store.location import retry_seconds
from openmaker.store.retry import Backoff
from openmaker.training.host import jobtree
from openmaker.training.host.checkpoints.snapshot import Signature, signature
from openmaker.training.host.checkpoints.transfer import (
    Changes,
    Ledger,
    checkpoint_dir,
    checkpoint_remote,
    current_signature,
    push_changes,
)
from openmaker.training.host.events import Emit
from openmaker.training.host.progress import ProgressMeter
from openmaker.training.host.spec import HostSpec

# The TransferProgress phase of checkpoint uploads during training.
PHASE = "Checkpointing"
# A file found by a scan is uploaded once unchanged this long.
QUIET_SECONDS = 1.0
# How often the folder is scanned when inotify is unavailable.
SCAN_SECONDS = 0.5
# Events that come together (a checkpoint of many files) go up together.
GATHER_SECONDS = 0.05
# Final uploads of files that changed while read, at most (the code has ended by then).
FLUSH_ROUNDS = 3
# After a failed transfer, the next try waits this long, doubling up to the maximum.
RETRY_SECONDS, RETRY_MAX_SECONDS = 1.0, 30.0

_FILE_EVENTS = flags.CLOSE_WRITE | flags.MOVED_TO | flags.MOVED_FROM | flags.DELETE
# Watches are added on a folder already opened (through /proc/self/fd), never by a path the
# code could redirect: no DONT_FOLLOW, the magic link must be followed.
_WATCH_MASK = _FILE_EVENTS | flags.CREATE | flags.MOVE_SELF | flags.ONLYDIR

# Opens the checkpoint folder without following links (jobtree.NotAFolder, OSError).
OpenRoot = Callable[[], int]


@contextlib.contextmanager
def opened_root(open_root: OpenRoot) -> Iterator[int | None]:
    """The checkpoint folder by handle, or None while it is missing or no folder at all."""
    try:
        fd = open_root()
    except (OSError, ValueError):
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


@dataclass
class Seen:
    """What a watcher saw: files to look at now, files to upload once quiet, a full rescan."""

    now: set[str] = field(default_factory=set)
    quiet: set[str] = field(default_factory=set)
    moved_away: set[str] = field(default_factory=set)  # folders: everything below them
    rescan: bool = False

    def merge(self, other: Seen) -> None:
        self.now |= other.now
        self.quiet |= other.quiet
        self.moved_away |= other.moved_away
        self.rescan |= other.rescan


class InotifyWatcher:
    """The folder and every folder below it, new ones included."""

    def __init__(self, open_root: OpenRoot) -> None:
        self.open_root = open_root
        self.inotify = INotify()
        os.set_inheritable(self.inotify.fileno(), False)  # never into the code's processes
        self.folders: dict[int, str] = {}
        self.root_lost = False
        try:
            with opened_root(open_root) as root:
                if root is None:
                    raise FileNotFoundError("the checkpoint folder is not there")
                self._watch_tree(root, "")
        except OSError:
            self.close()
            raise

    def _watch_tree(self, root: int, relative: str) -> set[str]:
        """Watch `relative` and the folders below it; the files already there."""
        try:
            top = jobtree.open_below(root, relative)
        except (OSError, ValueError):
            return set()  # removed, or swapped for a link, meanwhile
        files: set[str] = set()
        try:
            self._watch(top, relative)
            prefix = f"{relative}/" if relative else ""
            for entry in jobtree.walk(top, prefix):
                if entry.handle is not None:
                    self._watch(entry.handle, entry.path)
                else:
                    files.add(entry.path)
        finally:
            os.close(top)
        return files

    def _watch(self, folder: int, relative: str) -> None:
        self.folders[self.inotify.add_watch(f"/proc/self/fd/{folder}", _WATCH_MASK)] = relative

    def read(self, timeout: float) -> Seen:
        seen = Seen()
        for event in self.inotify.read(timeout=int(timeout * 1000)):
            if event.mask & flags.Q_OVERFLOW:
                seen.rescan = True
                continue
            if event.mask & (flags.IGNORED | flags.MOVE_SELF):
                # The checkpoint folder itself removed or moved away: watched again once a
                # folder is back at its name.
                if self.folders.get(event.wd) == "":
                    self._forget_all()
                elif event.mask & flags.IGNORED:
                    self.folders.pop(event.wd, None)
                continue
            base = self.folders.get(event.wd)
            if base is None or not event.name:
                continue
            name = f"{base}/{event.name}" if base else event.name
            if event.mask & flags.ISDIR:
                if event.mask & (flags.CREATE | flags.MOVED_TO):
                    # Files may have been written before the watch existed: no close was seen.
                    with opened_root(self.open_root) as root:
                        if root is not None:
                            seen.quiet |= self._watch_tree(root, name)
                if event.mask & flags.MOVED_FROM:
                    seen.moved_away.add(name)
            elif event.mask & _FILE_EVENTS:
                seen.now.add(name)
        if self.root_lost:
            with opened_root(self.open_root) as root:
                if root is not None:
                    self.root_lost = False
                    seen.quiet |= self._watch_tree(root, "")
                    seen.rescan = True
        return seen

    def _forget_all(self) -> None:
        """Drop every watch: what they see is no longer under the checkpoint folder's name."""
        for wd in list(self.folders):
            with contextlib.suppress(OSError):
                self.inotify.rm_watch(wd)
        self.folders.clear()
        self.root_lost = True

    def close(self) -> None:
        self.inotify.close()


class ScanningWatcher:
    """Without inotify: a scan of the whole folder every SCAN_SECONDS."""

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake

    def read(self, timeout: float) -> Seen:
        self.wake.wait(min(timeout, SCAN_SECONDS))
        return Seen(rescan=True)

    def close(self) -> None:
        pass


class CheckpointSync:
    """Keeps one host's checkpoint folder and its remote prefix in step while the code runs."""

    def __init__(
        self,
        folder: Path,
        remote: Location,
        ledger: Ledger,
        emit: Emit,
        open_root: OpenRoot | None = None,
    ) -> None:
        """`folder` names the checkpoint folder in messages; `open_root` opens it (by default
        by that path, which must then be openmaker's own)."""
        self.folder, self.remote, self.ledger, self.emit = folder, remote, ledger, emit
        self.open_root = open_root or (lambda: jobtree.open_folder(folder))
        self.stopping = threading.Event()
        self.watcher: InotifyWatcher | ScanningWatcher
        try:
            self.watcher = InotifyWatcher(self.open_root)
            self.mode = "inotify"
        except OSError as exc:  # no inotify here, or past the watch limit
            self._scan_instead(exc)
        self.due: set[str] = set()
        # Files waiting to stay unchanged: name → (signature, when it was last seen to change).
        self.quiet: dict[str, tuple[Signature | None, float]] = {}
        self.retry_at = 0.0
        self.retry_delay = RETRY_SECONDS
        self.flushed = False
        self.thread = threading.Thread(target=self._run, name="checkpoint-sync", daemon=True)

    @classmethod
    def start_for(cls, spec: HostSpec, tree: jobtree.HostTree, emit: Emit) -> CheckpointSync | None:
        """Watch the host's checkpoint folder (before the code starts); None without one."""
        folder = checkpoint_dir(spec)
        if folder is None:
            return None
        try:
            folder.mkdir(parents=True, exist_ok=True)  # before the code starts: openmaker's
            opener = tree.open_checkpoints
            sync = cls(folder, checkpoint_remote(spec), Ledger.of(spec), emit, opener)
        except (OSError, StoreError, ValueError) as exc:  # the end-of-job save still runs
            _say(f"checkpoint sync of {folder} not started: {exc}")
            return None
        sync.thread.start()
        return sync

    def stop(self) -> bool:
        """After the code has ended: upload what is left, then stop. True when all went up;
        otherwise the end-of-job save (checkpoints/transfer.py) tries the rest again."""
        self.stopping.set()
        self.thread.join()
        return self.flushed

    def _run(self) -> None:
        with asyncio.Runner() as runner:
            try:
                self._follow(runner)
            except Exception as exc:  # the end-of-job save still writes everything back
                _say(f"checkpoint sync of {self.folder} stopped: {exc!r}")
            finally:
                self.watcher.close()
            self.flushed = self._flush(runner)
            try:
                self.ledger.save()
            except OSError as exc:  # a full disk: the end-of-job save then redoes some work
                _say(f"cannot record the checkpoints uploaded: {exc}")

    def _follow(self, runner: asyncio.Runner) -> None:
        self._note(Seen(rescan=True))  # anything not restored from the remote, already there
        while not self.stopping.is_set():
            try:
                seen = self.watcher.read(self._wait())
            except OSError as exc:  # a new folder past the watch limit
                self.watcher.close()
                self._scan_instead(exc)
                seen = Seen(rescan=True)
            if self.mode == "inotify" and (seen.now or seen.quiet):
                # A checkpoint is often several files closed together: they go up together.
                time.sleep(GATHER_SECONDS)
                seen.merge(self.watcher.read(0))
            self._note(seen)
            names = self._ready()
            if names and time.monotonic() >= self.retry_at:
                self._push(runner, names)

    def _scan_instead(self, exc: OSError) -> None:
        _say(f"checkpoint sync: scanning {self.folder} ({exc})")
        self.watcher = ScanningWatcher(self.stopping)
        self.mode = "scan"

    def _wait(self) -> float:
        """How long to wait for events before quiet files or a retry fall due."""
        wait = 0.5
        if self.quiet:
            wait = min(wait, QUIET_SECONDS / 4)
        if self.due:
            wait = min(wait, max(0.0, self.retry_at - time.monotonic()))
        return wait

    def _note(self, seen: Seen) -> None:
        now = time.monotonic()
        for folder in seen.moved_away:
            self.due |= {n for n in self.ledger.files if n.startswith(folder + "/")}
        # No folder at its name now (removed, or a link): taken as empty.
        with opened_root(self.open_root) as root:
            if seen.rescan:
                local = {} if root is None else jobtree.regular_files(root)
                for name, status in local.items():
                    if self.ledger.files.get(name) != signature(status):
                        seen.quiet.add(name)
                self.due |= {n for n in self.ledger.files if n not in local}
            for name in seen.quiet - self.due:
                if name not in self.quiet:
                    self.quiet[name] = (_signature(root, name), now)
        for name in seen.now:
            self.due.add(name)
            self.quiet.pop(name, None)

    def _ready(self) -> set[str]:
        """The files due now: closed, gone, or unchanged for QUIET_SECONDS."""
        now = time.monotonic()
        with opened_root(self.open_root) as root:
            for name, (before, since) in list(self.quiet.items()):
                current = _signature(root, name)
                if current != before:
                    self.quiet[name] = (current, now)
                elif now - since >= QUIET_SECONDS:
                    del self.quiet[name]
                    self.due.add(name)
        return set(self.due)

    def _push(self, runner: asyncio.Runner, names: set[str]) -> None:
        with opened_root(self.open_root) as root:
            self._push_from(runner, root, names)

    def _push_from(self, runner: asyncio.Runner, root: int | None, names: set[str]) -> None:
        changes = Changes(root, self.ledger, names)
        self.due -= names
        if not changes:
            return
        meter = ProgressMeter(PHASE, changes.size, self.emit)
        try:
            changed = runner.run(push_changes(changes, self.remote, self.ledger, meter.add))
        except StoreError as exc:
            # Kept for the next try; S3's own retries have already been spent on it.
            self.due |= names
            self.retry_at = time.monotonic() + self.retry_delay
            _say(f"checkpoint upload failed, trying again in {self.retry_delay:.0f} s: {exc}")
            self.retry_delay = min(self.retry_delay * 2, RETRY_MAX_SECONDS)
            return
        self.retry_delay = RETRY_SECONDS
        meter.finish()
        # A file rewritten while read comes back by itself: with inotify its next close brings
        # it, without, the next scan.
        del changed

    def _flush(self, runner: asyncio.Runner) -> bool:
        """Everything that differs from the ledger: the code has ended, nothing is open. A
        server that is away is waited for as long as the store's retry time allows."""
        with opened_root(self.open_root) as root:
            return self._flush_from(runner, root)

    def _flush_from(self, runner: asyncio.Runner, root: int | None) -> bool:
        backoff = Backoff(retry_seconds(self.remote.store))
        rounds = 0
        while changes := Changes(root, self.ledger, None):
            if rounds == FLUSH_ROUNDS:  # still being rewritten: by nothing of the job's, surely
                return False
            meter = ProgressMeter(PHASE, changes.size, self.emit)
            try:
                runner.run(push_changes(changes, self.remote, self.ledger, meter.add))
            except StoreError as exc:
                wait = backoff.next_wait(exc.__cause__ or exc)
                if wait is None:
                    _say(f"final checkpoint upload failed: {exc}")
                    return False
                time.sleep(wait)
                continue
            meter.finish()
            rounds += 1
        return True


def _signature(root: int | None, name: str) -> Signature | None:
    return None if root is None else current_signature(root, name)


def _say(message: str) -> None:
    """A line in the worker's log, which may sit on a full disk: never an error of its own."""
    with contextlib.suppress(OSError):
        print(message, file=sys.stderr, flush=True)
