"""The container of one training host, in the runtime's terms (openmaker/runtime/).

Sandboxed, it shows the host's tree at /opt/ml, the checkpoint folder where the request puts it,
FastFile channels read-only under /opt/ml/input/data, the job's ssh keys when mpirun needs them,
a bring-your-own image's folder at /opt/program, a private /tmp (on the host's volume), its own
hostname and /etc/hosts naming every host of the job, and the copy-on-write root of the
machine — or, for a pulled image, the image's own root (copy-on-write too), run as its USER in
its WORKDIR, with the host's GPUs passed through. What the machine keeps private (`/root`,
`/home`, `/etc/shadow`, ssh host keys…; `OPENMAKER_SANDBOX_HIDE`) shows empty, and openmaker's
own folder not at all.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import openmaker
from openmaker.runtime import Bind, Container, ContainerSpec, unavailable_reason
from openmaker.runtime.images.gpus import GpuPlan, plan_gpus
from openmaker.runtime.layers import hidden_paths, unseen_by_root
from openmaker.runtime.network import HostNamespace, enter_host, resolv_conf_binds, shared
from openmaker.settings import Settings
from openmaker.training.host.channels.fastfile import sandbox_binds
from openmaker.training.host.checkpoints.transfer import checkpoint_dir, checkpoint_plan
from openmaker.training.host.images import PROGRAM_MOUNT, Image
from openmaker.training.host.layout import CONTAINER_ROOT
from openmaker.training.host.limits import host_limits
from openmaker.training.host.spec import HostSettings, HostSpec
from openmaker.training.host.ssh import ssh_binds
from openmaker.training.host.volume import Volume


class LaunchError(RuntimeError):
    """The host's container cannot be planned on this machine; the message says why."""


@dataclass(frozen=True)
class Launch:
    # Not started yet.
    container: Container
    note: str
    # The host's volume, looked at when the code ends.
    volume: Volume | None
    # The host's network namespace, entered by the sandbox; closed by the caller once it ends.
    namespace: HostNamespace | None = None

    @property
    def sandboxed(self) -> bool:
        return self.container.spec.sandboxed


def sandbox_unavailable_reason(settings: Settings | HostSettings) -> str | None:
    """Why the bubblewrap sandbox cannot be used here, or None when it can."""
    if not settings.sandbox:
        return "OPENMAKER_SANDBOX=none"
    return unavailable_reason()


def hosts_file(spec: HostSpec) -> str:
    network = spec.network or shared(spec.hosts, "")
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{network.addresses[name]}\t{name}" for name in spec.hosts]
    return "\n".join(lines) + "\n"


def plan_launch(
    spec: HostSpec,
    image: Image,
    command: list[str],
    env: dict[str, str],
    volume: Volume | None = None,
) -> Launch:
    """How to start the host's code: sandboxed, held to its share of the machine (and to
    `volume`, the host's disk, when it has one). Its cgroups are made now: the note says what
    could be applied."""
    reason = sandbox_unavailable_reason(spec.settings)
    if reason is None:
        container_spec, note, namespace = _sandboxed(spec, image, command, env, volume)
    else:
        container_spec, namespace = _plain(spec, image, command, env), None
        note = _plain_note(spec, reason)
    container = Container(container_spec)
    volume_note = volume.note if volume is not None else ""
    note = "; ".join(part for part in (note, container.note, volume_note) if part)
    return Launch(container, note, volume, namespace)


def _sandboxed(
    spec: HostSpec, image: Image, command: list[str], env: dict[str, str], volume: Volume | None
) -> tuple[ContainerSpec, str, HostNamespace | None]:
    hidden = hidden_paths(spec.settings.sandbox_hide)
    # The folders the sandbox would not show otherwise (the Python that runs script mode may
    # live under /tmp or on another disk) are copy-on-write layers of their own.
    layers = ("/", *_unseen_python_folders(spec, hidden))
    run = image.container
    if run is not None:
        layers = (run.rootfs,)  # the image's root alone: nothing of the machine's
    home = spec.settings.home
    binds = [Bind(str(spec.ml_dir), CONTAINER_ROOT, read_only=False)]
    binds += [
        # openmaker's own folders (FastFile over the embedded store) unnamed in mountinfo.
        Bind(source, target, unnamed=Path(source).is_relative_to(home))
        for source, target in sandbox_binds(spec)
    ]
    binds += ssh_binds(spec)  # the job's ssh keys and configuration, when mpirun needs them
    binds += resolv_conf_binds(spec.network, spec.work_dir)
    checkpoints = checkpoint_dir(spec)
    if checkpoints is not None and not checkpoints.is_relative_to(spec.ml_dir):
        binds.append(Bind(str(checkpoints), checkpoint_plan(spec).local_path, read_only=False))
    if image.program_dir is not None:
        binds.append(Bind(str(image.program_dir), PROGRAM_MOUNT))
    devices: tuple[str, ...] = ()
    limits = host_limits(spec)
    if (gpus := image_gpus(spec, image)) is not None:
        devices, env = gpus.devices, {**env, **gpus.env}
        binds += gpus.binds
        limits = dataclasses.replace(limits, visible_gpus=gpus.visible)
    workdir = PROGRAM_MOUNT if image.program_dir is not None else "/"
    isolated = spec.plan.network_isolation
    namespace = None
    if not isolated and spec.network and spec.network.bridge:
        namespace = enter_host(spec.network, spec.host_name, spec.host_index)
    container = ContainerSpec(
        argv=command,
        env=env,
        state_dir=spec.work_dir,
        layers=layers,
        binds=tuple(binds),
        tmp=_tmp_folder(spec, volume),
        shm_size=spec.resources.memory if spec.resources is not None else None,
        workdir=run.workdir if run is not None else workdir,
        hostname=spec.host_name,
        etc_hosts=hosts_file(spec),
        netns_fd=namespace.fd if namespace is not None else None,
        isolate_network=isolated,
        # An image's root holds nothing of the machine's to hide.
        hidden=tuple(hidden) if run is None else (),
        removed=tuple(spec.hidden_paths) if run is None else (),
        detach_mounts_under=spec.settings.jobs_dir,
        limits=limits,
        user=run.user if run is not None else None,
        devices=devices,
        stop_signal=run.stop_signal if run is not None else signal.SIGTERM,
    )
    note = f"sandboxed with bubblewrap as host {spec.host_name}"
    if isolated:
        note += ", network isolation (loopback only)"
    elif spec.network is not None:
        note += f", {spec.network.note}"
    return container, note, namespace


def image_gpus(spec: HostSpec, image: Image, dev: Path = Path("/dev")) -> GpuPlan | None:
    """What a pulled image is shown of the host's GPUs: their device nodes and the machine's
    driver libraries and tools (an image carries none: they must match the kernel's driver).
    Other images run on the machine's root, which has them. LaunchError: a GPU is missing."""
    if image.container is None or spec.resources is None or not spec.resources.gpus:
        return None
    try:
        return plan_gpus(spec.resources.gpus, dev)
    except RuntimeError as exc:
        raise LaunchError(str(exc)) from None


def _tmp_folder(spec: HostSpec, volume: Volume | None) -> Path | None:
    """/tmp: a folder of the host's volume (held to it), else a tmpfs as before volumes."""
    if volume is None or not volume.mounted:
        return None
    tmp = spec.work_dir / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    return tmp


def _unseen_python_folders(spec: HostSpec, hidden: list[Path]) -> list[str]:
    """openmaker's Python folders that the root layer would not show: on another filesystem
    than `/`, or under a folder the sandbox covers (/tmp, openmaker's home, hidden folders).
    openmaker's own package is one of them: the toolkit imports its launcher in the job, and an
    editable install keeps the package beside its source, outside the environment."""
    covered = [Path("/tmp"), *spec.hidden_paths, *hidden]
    package = str(Path(openmaker.__file__).parent)
    return unseen_by_root([sys.prefix, sys.base_prefix, package], covered)


def _plain(spec: HostSpec, image: Image, command: list[str], env: dict[str, str]) -> ContainerSpec:
    env = dict(env)
    env["SAGEMAKER_BASE_DIR"] = str(spec.ml_dir)
    # Without our /etc/hosts the host names do not resolve; the toolkit would wait for them.
    env["SM_STUDIO_LOCAL_MODE"] = "true"
    if image.program_dir is not None:
        env["PATH"] = env["PATH"].replace(PROGRAM_MOUNT, str(image.program_dir))
    return ContainerSpec(
        argv=command,
        env=env,
        state_dir=spec.work_dir,
        sandboxed=False,
        workdir=str(image.program_dir or spec.ml_dir),
        limits=host_limits(spec),
        # Known from the job alone, so that whoever cleans up after a worker that was killed
        # can end what the code left.
        tag=f"{spec.job_name}/{spec.host_name}",
    )


def _plain_note(spec: HostSpec, reason: str) -> str:
    note = f"running without a sandbox ({reason}); the code sees SAGEMAKER_BASE_DIR, not /opt/ml"
    if spec.network is not None and spec.network.bridge is None:
        note += f"; {spec.network.note}"
    return note
