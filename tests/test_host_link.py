"""A host's namespace is configured over rtnetlink (network.enter_host, netlink.add_host_link):
the same state as the `ip -batch` it replaced, no `ip` process, and a refused request fails the
host's start saying which step."""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openmaker.runtime import netlink, network
from openmaker.runtime.network import PREFIX, JobNetwork, NetworkError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces of their own need root")

_libc = ctypes.CDLL(None, use_errno=True)
# Found before a test empties PATH.
NSENTER, IP = shutil.which("nsenter") or "nsenter", shutil.which("ip") or "ip"
# Read back in each namespace: what enter_host sets there.
INSIDE = (
    "net/ipv6/conf/default/disable_ipv6",
    "net/ipv6/conf/eth0/disable_ipv6",
    "net/ipv6/conf/lo/disable_ipv6",
    "net/ipv4/conf/eth0/forwarding",
    "net/ipv4/ip_unprivileged_port_start",
    "net/ipv4/ping_group_range",
)


@pytest.fixture
def bridge() -> Iterator[str]:
    name = f"{PREFIX}t{secrets.token_hex(3)}"
    try:
        netlink.add_bridge(name, "openmaker:test", "10.251.20.1", 24)
        yield name
    finally:
        netlink.delete_links([name])


def _job(bridge: str) -> JobNetwork:
    return JobNetwork({"algo-1": "10.251.20.2", "algo-2": "10.251.20.3"}, bridge, "10.251.20.1")


def _old_enter_host(net: JobNetwork, host: str, veth: str) -> int:
    """What enter_host did before netlink: an `ip -batch` from inside the new namespace."""
    made: dict[str, int] = {}

    def inside() -> None:
        assert _libc.unshare(network.CLONE_NEWNET) == 0
        made["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        Path("/proc/sys/net/ipv6/conf/default/disable_ipv6").write_text("1")
        subprocess.run(
            ["ip", "-batch", "-"],
            input=f"link add eth0 type veth peer name {veth} netns {os.getpid()}\n"
            "link set lo up\n"
            f"addr add {net.addresses[host]}/24 dev eth0\n"
            "link set eth0 up\n"
            f"route add default via {net.gateway}\n",
            text=True,
            check=True,
        )
        Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").write_text("0")
        Path("/proc/sys/net/ipv4/ping_group_range").write_text("0 2147483647")
        Path("/proc/sys/net/ipv6/conf/eth0/disable_ipv6").write_text("1")

    thread = threading.Thread(target=inside)
    thread.start()
    thread.join()
    assert net.bridge is not None
    netlink.enslave(veth, net.bridge)
    Path(f"/proc/sys/net/ipv6/conf/{veth}/disable_ipv6").write_text("1")
    return made["fd"]


def _in(fd: int, *argv: str) -> str:
    return subprocess.run(
        [NSENTER, f"--net=/proc/{os.getpid()}/fd/{fd}", *argv],
        capture_output=True,
        text=True,
        check=True,
        pass_fds=(fd,),
    ).stdout


def _state(fd: int, veth: str, address: str) -> Any:
    """The namespace's links, addresses and routes as `ip -j` shows them, without what differs
    between any two namespaces (indexes, MACs, the peer's name, the host's `address`); its
    sysctls; the outer end's."""
    links = []
    for link in json.loads(_in(fd, IP, "-j", "-d", "addr", "show")):
        addresses = [
            {k: v for k, v in a.items() if k not in ("valid_life_time", "preferred_life_time")}
            for a in link.get("addr_info", [])
        ]
        info = link.get("linkinfo", {}).get("info_kind")
        links.append((link["ifname"], sorted(link["flags"]), link["operstate"], info, addresses))
    routes = [
        {k: v for k, v in route.items() if k != "expires"}
        for family in ("-4", "-6")
        for route in json.loads(_in(fd, IP, "-j", family, "route", "show", "table", "all"))
    ]
    sysctls = {name: _in(fd, "cat", f"/proc/sys/{name}").strip() for name in INSIDE}
    outer = Path("/sys/class/net") / veth
    found = json.loads(
        json.dumps({"links": links, "routes": routes}).replace(f'"{address}"', '"HOST"')
    )
    return {
        "links": sorted(found["links"], key=str),
        "routes": sorted(found["routes"], key=str),
        "sysctls": sysctls,
        "outer": (
            Path(f"/proc/sys/net/ipv6/conf/{veth}/disable_ipv6").read_text().strip(),
            (outer / "master").resolve().name,
            (outer / "operstate").read_text().strip(),
        ),
    }


def test_a_hosts_namespace_is_what_the_ip_batch_made(bridge: str) -> None:
    net = _job(bridge)
    old_veth = f"{bridge}v2"
    old = _old_enter_host(net, "algo-2", old_veth)
    new = network.enter_host(net, "algo-1", 0)
    try:
        before = _state(old, old_veth, net.addresses["algo-2"])
        after = _state(new.fd, new.veth, net.addresses["algo-1"])
        assert after == before
        assert after["sysctls"]["net/ipv6/conf/eth0/disable_ipv6"] == "1"
        assert "inet6" not in _in(new.fd, IP, "addr", "show", "dev", "eth0")
    finally:
        new.close()
        os.close(old)
        netlink.delete_links([old_veth])


def test_a_host_starts_without_the_ip_binary(
    bridge: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no ip (nor anything else)
    namespace = network.enter_host(_job(bridge), "algo-1", 0)
    try:
        assert "10.251.20.2/24" in _in(namespace.fd, IP, "-4", "addr", "show", "eth0")
    finally:
        namespace.close()


def test_a_refused_request_fails_the_hosts_start_naming_the_step(bridge: str) -> None:
    taken = f"{bridge}v1"  # the name of host 1's outer end, taken
    netlink.add_bridge(taken, "openmaker:test", "10.251.21.1", 24)
    try:
        with pytest.raises(NetworkError) as failed:
            network.enter_host(_job(bridge), "algo-1", 0)
        message = str(failed.value)
        assert "the network of host algo-1 could not be made" in message
        assert f"the veth pair eth0/{taken}" in message and "exists" in message
    finally:
        netlink.delete_links([taken])


@pytest.mark.skipif(shutil.which("iptables-legacy") is None, reason="needs iptables-legacy")
@pytest.mark.parametrize("policy", ["ACCEPT", "DROP"])
def test_the_legacy_forward_policy_is_read_as_iptables_shows_it(policy: str) -> None:
    """In a network namespace of its own (the machine's policy stays as it is)."""
    script = (
        f"iptables-legacy -w -P FORWARD {policy} && iptables-legacy -w -S FORWARD && "
        f'{sys.executable} -c "from openmaker.runtime import legacy_forward; '
        'print(legacy_forward.forward_drops())"'
    )
    shown = subprocess.run(
        ["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert shown[0] == f"-P FORWARD {policy}"
    assert shown[-1] == str(policy == "DROP")
