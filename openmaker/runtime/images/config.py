"""What an image's config says to run, and how a caller's overrides change it, as Docker and
SageMaker do: the ENTRYPOINT with `train` (or `serve`) replacing CMD; an entrypoint override
drops the image's CMD and appends nothing; arguments replace what follows the entrypoint; the
image's ENV below the caller's; WORKDIR; USER (resolved in users.py).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from typing import Any

# What Docker gives a container whose image sets no PATH.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = ""
    stop_signal: str = ""

    @classmethod
    def from_json(cls, config: dict[str, Any]) -> ImageConfig:
        """From an OCI (or Docker) image config blob."""
        run = config.get("config") or {}
        env = {}
        for item in run.get("Env") or []:
            name, _, value = str(item).partition("=")
            env[name] = value
        return cls(
            entrypoint=tuple(map(str, run.get("Entrypoint") or ())),
            cmd=tuple(map(str, run.get("Cmd") or ())),
            env=env,
            workdir=str(run.get("WorkingDir") or "/"),
            user=str(run.get("User") or ""),
            stop_signal=str(run.get("StopSignal") or ""),
        )


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]
    workdir: str


def command(
    config: ImageConfig,
    mode: str | None,
    env: dict[str, str],
    entrypoint: list[str] | None = None,
    arguments: list[str] | None = None,
) -> Command:
    """What runs: `mode` ("train", "serve") replaces CMD (None: CMD stays); `entrypoint`
    replaces the image's
    (and its CMD, as `docker run --entrypoint` does, so nothing is appended); `arguments`
    replace what would follow the entrypoint. `env` goes on top of the image's."""
    if entrypoint:
        argv = [*entrypoint, *(arguments or [])]
    else:
        default = list(config.cmd) if mode is None else [mode]
        argv = [*config.entrypoint, *(arguments if arguments is not None else default)]
    merged = {"PATH": DEFAULT_PATH, **config.env, **env}
    workdir = config.workdir if config.workdir.startswith("/") else f"/{config.workdir}"
    return Command(argv, merged, workdir)


def stop_signal(text: str) -> int:
    """The signal an image's StopSignal names (`SIGQUIT`, `QUIT`, `3`, `SIGRTMIN+3`), SIGTERM
    when it names none; ValueError for anything else (Docker refuses such an image too)."""
    name = text.strip().upper()
    if not name:
        return signal.SIGTERM
    if name.isdigit():
        number = int(name)
    elif found := re.fullmatch(r"(?:SIG)?RTM(IN|AX)([+-][0-9]+)?", name):
        base = signal.SIGRTMIN if found[1] == "IN" else signal.SIGRTMAX
        number = int(base) + int(found[2] or 0)
    else:
        number = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", 0)
    if not 0 < int(number) < signal.NSIG or name in ("SIG_DFL", "SIG_IGN"):
        raise ValueError(f"its StopSignal {text!r} is not a signal")
    return int(number)
