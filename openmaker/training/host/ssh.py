"""ssh between the hosts of one job, for mpirun: a key pair and a host key made for the job.

SageMaker's MPI containers run sshd on every host and let mpirun on the first host log in to
the others. Where each host has a network of its own (network.py), its sshd listens on
port 22 of its own address, as there. Where the job's hosts share this machine's network (each
with a loopback address of its own), each sshd listens on its own address only, on a port
picked for the job (free on every host address when picked; not 22, which the machine's own
sshd may hold, and not one port for every job: two jobs' `algo-1` share an address). The
client key is authorized by this job's hosts only, and each client trusts only this job's host
key: the key lets the job's code into its own hosts and nowhere else.

Everything lands in the host's folder (`ssh/`), shown read-only at SSH_FOLDER in the sandbox;
launcher.py starts sshd and points the ssh client at it there. SDK v3's MPI
driver instead runs `/usr/sbin/sshd -D` and `ssh`/paramiko with their defaults, as in
SageMaker's containers: the sandbox also shows the folder as root's `~/.ssh` (key, known_hosts,
client config) and its sshd_config as /etc/ssh/sshd_config, over the machine's (which the
sandbox never shows: its host keys are hidden), so those defaults find the job's keys.
"""

from __future__ import annotations

import fcntl
import shutil
import socket
import subprocess
from pathlib import Path

from openmaker.runtime import Bind
from openmaker.training.host.jobtree import HostTree, read_text_head
from openmaker.training.host.spec import HostSpec

# Inside the sandbox.
SSH_FOLDER = "/etc/openmaker/ssh"
_HOST_ADDRESS_BASE = "127.0.1."  # as network.py gives each host
_CLIENT_KEY = "id_ed25519"
_HOST_KEY = "ssh_host_ed25519_key"
_SHADOW = "shadow"  # in the host's folder, beside `ssh/`: the code may change it
_PRIVSEP = "sshd-privsep"  # in the host's folder: an empty folder
# SDK v3's `ModelTrainer` starts its `sm_drivers` channel's script, which names the driver.
_SDK3_TRAIN_SCRIPT = "input/data/sm_drivers/sm_train.sh"
_SDK3_MPI_DRIVER = "distributed_drivers/mpi_driver.py"


class SshError(RuntimeError):
    """ssh could not be set up; the message says why, for a person."""


def host_address(spec: HostSpec, host: str) -> str:
    if spec.network is not None:
        return spec.network.addresses[host]
    return f"{_HOST_ADDRESS_BASE}{spec.hosts.index(host) + 1}"


def _own_namespaces(spec: HostSpec) -> bool:
    """Whether each host has a network of its own (network.py): then sshd listens on port
    22 of its own address, as in SageMaker's containers."""
    return spec.network is not None and spec.network.bridge is not None


def runs_sdk3_mpi_driver(tree: HostTree) -> bool:
    """Whether the job is SDK v3's `ModelTrainer` with `distributed=MPI()` (read from its
    `sm_drivers` channel, downloaded by now)."""
    script = read_text_head(tree.ml, _SDK3_TRAIN_SCRIPT, 64 * 1024)
    return script is not None and _SDK3_MPI_DRIVER in script


def require_port_22(spec: HostSpec) -> None:
    """SDK v3's MPI driver reaches the other hosts on port 22 whatever ssh's configuration says:
    that needs each host's network of its own."""
    if not _own_namespaces(spec):
        reason = spec.network.note if spec.network is not None else "the machine's network"
        raise SshError(
            "SDK v3's MPI driver reaches the job's other hosts on port 22, which needs each "
            f"host to have a network of its own, and this job's hosts share one ({reason})"
        )


def ssh_binds(spec: HostSpec) -> list[Bind]:
    """What shows the host's ssh folder in the sandbox (nothing without one)."""
    folder = spec.work_dir / "ssh"
    if not folder.is_dir():
        return []
    return [
        Bind(str(folder), SSH_FOLDER),
        Bind(str(folder), "/root/.ssh"),
        Bind(str(folder / "sshd_config"), "/etc/ssh/sshd_config"),
        Bind(str(spec.work_dir / _PRIVSEP), "/run/sshd"),  # empty, root's: sshd's privsep
        # sshd refuses an account it finds locked, and the sandbox hides the machine's
        # /etc/shadow: the host's own, with root (the job's code) let in by key only.
        Bind(str(spec.work_dir / _SHADOW), "/etc/shadow", read_only=False),
    ]


def prepare_ssh(spec: HostSpec) -> Path:
    """The host's ssh folder: the job's keys (made by whichever host comes first), its port, and
    the client and server configuration of this host."""
    for program in ("ssh-keygen", "sshd", "ssh"):
        if shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            raise SshError(
                f"{program} is not installed here (Debian packages openssh-client and "
                "openssh-server), and mpirun needs it to reach the job's other hosts"
            )
    shared = spec.work_dir.parent / "ssh"
    port = _job_keys(shared, spec)
    folder = spec.work_dir / "ssh"
    folder.mkdir(mode=0o700, exist_ok=True)
    for name in (_CLIENT_KEY, f"{_CLIENT_KEY}.pub", _HOST_KEY):
        shutil.copyfile(shared / name, folder / name)
        (folder / name).chmod(0o600 if not name.endswith(".pub") else 0o644)
    client_public = (shared / f"{_CLIENT_KEY}.pub").read_text().strip()
    host_public = " ".join((shared / f"{_HOST_KEY}.pub").read_text().split()[:2])
    names = " ".join(spec.hosts)
    (folder / "authorized_keys").write_text(client_public + "\n")
    (folder / "known_hosts").write_text(
        "".join(
            f"{_known_name(host, port)},{_known_name(host_address(spec, host), port)} "
            f"{host_public}\n"
            for host in spec.hosts
        )
    )
    (folder / "port").write_text(f"{port}\n")
    (spec.work_dir / _PRIVSEP).mkdir(mode=0o755, exist_ok=True)
    shadow = spec.work_dir / _SHADOW
    shadow.write_text("root:*:0:0:99999:7:::\n")
    shadow.chmod(0o600)
    client_config = (
        f"Host {names}\n"
        f"    Port {port}\n"
        "    User root\n"
        f"    IdentityFile {SSH_FOLDER}/{_CLIENT_KEY}\n"
        "    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {SSH_FOLDER}/known_hosts\n"
        "    StrictHostKeyChecking yes\n"
        "    BatchMode yes\n"
    )
    # ~/.ssh/config is root's own (the folder is ~/.ssh too); ssh_config is Included.
    (folder / "ssh_config").write_text(client_config)
    (folder / "config").write_text(client_config)
    # What a session sees of the host's environment, as pam_env gives it on SageMaker: SDK v3's
    # driver writes its variables to /etc/environment for the ranks mpirun starts over ssh.
    (folder / "environment").unlink(missing_ok=True)
    (folder / "environment").symlink_to("/etc/environment")
    (folder / "sshd_config").write_text(
        f"ListenAddress {host_address(spec, spec.host_name)}:{port}\n"
        f"HostKey {SSH_FOLDER}/{_HOST_KEY}\n"
        f"AuthorizedKeysFile {SSH_FOLDER}/authorized_keys\n"
        "PermitRootLogin prohibit-password\n"
        "AllowUsers root\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        # The keys are root's, in a read-only folder that sshd's checks do not expect.
        "StrictModes no\n"
        "PidFile none\n"
        # Only the job's own sessions: no tunnels into or out of its hosts.
        "AllowTcpForwarding no\n"
        "AllowStreamLocalForwarding no\n"
        "AllowAgentForwarding no\n"
        "PermitTunnel no\n"
        "X11Forwarding no\n"
        # ~/.ssh/environment, the host's /etc/environment (above): no more than root has.
        "PermitUserEnvironment yes\n"
        "LogLevel ERROR\n"
    )
    return folder


def _known_name(name: str, port: int) -> str:
    """A known_hosts name: ssh looks a host on port 22 up by its bare name."""
    return name if port == 22 else f"[{name}]:{port}"


def _job_keys(shared: Path, spec: HostSpec) -> int:
    """Make the job's keys and port once, whichever host asks first; returns the port."""
    shared.mkdir(mode=0o700, exist_ok=True)
    with (shared / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        port_file = shared / "port"
        if port_file.exists():
            return int(port_file.read_text())
        for name, comment in ((_CLIENT_KEY, "client"), (_HOST_KEY, "host")):
            (shared / name).unlink(missing_ok=True)
            (shared / f"{name}.pub").unlink(missing_ok=True)
            _keygen(shared / name, f"{spec.job_name} {comment}")
        if _own_namespaces(spec):
            port = 22
        else:
            port = _free_port([host_address(spec, host) for host in spec.hosts])
        port_file.write_text(f"{port}\n")
        return port


def _keygen(path: Path, comment: str) -> None:
    result = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SshError(f"ssh-keygen failed: {result.stderr.strip()}")


def _free_port(addresses: list[str]) -> int:
    """A port the kernel hands out for the first address, free on every other one too."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        if all(_bindable(address, port) for address in addresses):
            return port
    raise SshError("no port is free on every host address of the job")


def _bindable(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True
