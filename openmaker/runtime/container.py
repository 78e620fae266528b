"""One running container: start it, signal it, stop it with a grace period, wait for its end;
its output (stdout and stderr together) delivered as lines.

Made from a `ContainerSpec`, a container's cgroups are made at once (what could not be applied
is in `note`); `start()` prepares its layers and starts it. It may run to completion or serve
until stopped. Unsandboxed, its processes carry a mark (`spec.tag`) in their environment by
which those it left behind are ended with it, as a PID namespace would end them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time

from openmaker.runtime.limits import confine
from openmaker.runtime.logs import OnLines, pump
from openmaker.runtime.sandbox import sandbox_command
from openmaker.runtime.spec import ContainerSpec

# Marks every process of an unsandboxed container.
TAG_VARIABLE = "OPENMAKER_PROCESS_TAG"


class Container:
    def __init__(self, spec: ContainerSpec) -> None:
        self.spec = spec
        self._confinement = confine(spec.limits)
        self._popen: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        # The code's PID 1 (as seen from here) when sandboxed.
        self.pid: int | None = None

    @property
    def note(self) -> str:
        """The limits as applied (and those that could not be), for a person."""
        return self._confinement.note

    def start(self, on_lines: OnLines) -> None:
        """Start the container; `on_lines` receives its output from a thread of its own."""
        spec, confinement = self.spec, self._confinement
        env = {**spec.env, **confinement.env}
        pass_fds: list[int] = []
        info: tuple[int, int] | None = None
        if spec.sandboxed:
            info = os.pipe()
            argv = sandbox_command(spec, info[1])
            pass_fds.append(info[1])
            if spec.netns_fd is not None:
                pass_fds.append(spec.netns_fd)
            cwd = "/"
        else:
            if spec.tag:
                env[TAG_VARIABLE] = spec.tag
            executable = shutil.which(spec.argv[0], path=env.get("PATH")) or spec.argv[0]
            argv = [executable, *spec.argv[1:]]
            cwd = spec.workdir
        try:
            popen = subprocess.Popen(
                [*confinement.prefix, *argv],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        except BaseException:
            if info is not None:
                os.close(info[0])
            raise
        finally:
            if info is not None:
                os.close(info[1])
        self._popen = popen
        if info is not None:
            self.pid = _read_child_pid(info[0])
        assert popen.stdout is not None
        self._reader = threading.Thread(
            target=pump, args=(popen.stdout.fileno(), on_lines), daemon=True
        )
        self._reader.start()

    def poll(self) -> int | None:
        """The exit status once the container's first process has ended, else None."""
        return self._started().poll()

    def end_fd(self) -> int:
        """A descriptor (pidfd) that turns readable when the first process ends; the caller
        closes it. Call before the end is collected by poll or wait."""
        try:
            return os.pidfd_open(self._started().pid)
        except ProcessLookupError:  # already collected: a descriptor readable at once
            read, write = os.pipe()
            os.close(write)
            return read

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the end (None when `timeout` passes first); at the end, what an unsandboxed
        container left behind is ended and its output read to the last line."""
        popen = self._started()
        try:
            code = popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if not self.spec.sandboxed and self.spec.tag:
            # Sandboxed, the kernel ends the PID namespace with its first process; here, the
            # rest are ended before waiting for the end of the output they may hold open.
            kill_tagged(self.spec.tag)
        if self._reader is not None:
            self._reader.join()
        return code

    def signal(self, signum: int) -> None:
        """Deliver to the container's PID 1, or to the plain process group."""
        popen = self._started()
        with contextlib.suppress(ProcessLookupError):
            if self.pid is not None:
                os.kill(self.pid, signum)
            else:
                os.killpg(popen.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.pid is not None:
            # bwrap itself is in the process group of the start.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._started().pid, signal.SIGKILL)

    def stop(self, grace: float) -> int:
        """The spec's stop signal (SIGTERM unless an image says otherwise), then SIGKILL once
        `grace` seconds pass without an end; the exit status."""
        if self.poll() is None:
            self.signal(self.spec.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._started().wait(grace)
            if self.poll() is None:
                self.kill()
        code = self.wait()
        assert code is not None
        return code

    def _started(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError("the container was not started")
        return self._popen


def kill_tagged(tag: str) -> None:
    """SIGKILL every process that carries `tag`, again until none is left (they may fork)."""
    marker = f"{TAG_VARIABLE}={tag}".encode()
    for _ in range(100):
        found = [pid for pid in _pids() if marker in _environment(pid)]
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _pids() -> list[int]:
    own = os.getpid()
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != own]


def _environment(pid: int) -> list[bytes]:
    """The variables a process started with (empty for a zombie, or one not ours to read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return environ.read().split(b"\0")
    except OSError:
        return []


def _read_child_pid(read_fd: int) -> int | None:
    with os.fdopen(read_fd, "rb") as info:
        data = info.read()
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError):
        return None  # bwrap failed before starting the code; its exit status says why
