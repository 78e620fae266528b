"""A job's hosts on several machines (a Ray cluster): one network of the job's own across them.

On one machine the job's hosts share a bridge (network.py). Across nodes there is no bridge to
share, so each host gets two interfaces in its namespace:
- `eth0` on a bridge of its own on its node, made by the node (`node_network`): the way out to
  the internet and the store, with the same table as a local job's (nothing of the node's own
  reachable, no other job's bridge), plus a drop of the overlay's UDP ports, so that no job's
  code sends packets into another job's overlay;
- `eth1`, the job's VXLAN segment: a VXLAN device whose UDP socket lives in the node's namespace
  at the node's address and whose end is in the host's. Every host of the job has a fixed MAC
  and address on it (from its index), and static neighbour and forwarding entries to each other
  host's node, so nothing is learnt and nothing floods. `algo-N` resolves to host N's address
  there, on every host, and the hosts connect on any port (TCP or UDP) as on a local bridge.

Two jobs sharing a node never meet: each job's segment has its own VNI (from its name), and a
device takes only frames of its VNI. Host i of a job listens on UDP `OVERLAY_PORT + i` of its
node (distinct ports let the hosts of one job share a kernel, as the test cluster's nodes do;
the nodes' firewalls must let this range through between them). Each host's node keeps a table
of the host's own (`inet omvx<id>`, made and removed with its bridge) that drops the frames of
its VNI at its port from any address but its job's other nodes: no other machine, and no node
of another job only, puts a frame on the segment. VXLAN is neither encrypted nor authenticated:
an address can still be forged on the nodes' network, which must be trusted as Ray's own is.

The code on a node reaches the internet and the store, never the cluster's own services: the
host's bridge drops what it sends to any node's address of the cluster (Ray's node table when
the host starts), but the store's endpoint.

The kernel's "local bypass" (a VXLAN destination on this machine is handed over without
encapsulation) is switched off: iproute2 6.1 cannot, so the device is made over rtnetlink here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import socket
import struct
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from openmaker.runtime import network
from openmaker.runtime.network import PREFIX, JobNetwork, NetworkError

# Host i of a job: UDP OVERLAY_PORT + i on its node.
OVERLAY_PORT = 47890
OVERLAY_DEVICE = "eth1"
# Below the usual 1500 of the nodes' links, for VXLAN's 50 bytes.
OVERLAY_MTU = 1450
MAX_HOSTS = 253
_NODE_MARK = "openmaker-node"
# A host's table on its node: who may send to its end of the segment (see above).
GUARD_PREFIX = "omvx"


def overlay(
    home: Path, job_name: str, hosts: list[str], nodes: list[str], whole: str
) -> JobNetwork:
    """The job's network across `nodes` (each host's, in order), as its hosts are given it.
    Every job's segment uses the last /24 of `whole`: it exists only in its hosts' namespaces
    (no node routes it), and the nodes' bridges for the hosts avoid it."""
    subnet = _overlay_subnet(whole)
    vni = int(network.job_id(home, job_name)[:6], 16) or 1
    addresses = {name: str(subnet.network_address + 2 + i) for i, name in enumerate(hosts)}
    return JobNetwork(
        addresses,
        overlay_vni=vni,
        overlay_nodes=list(nodes),
        overlay_port=OVERLAY_PORT,
        overlay_range=whole,
    )


def node_network(
    given: JobNetwork, home: Path, job_name: str, host: str, code_env: dict[str, str]
) -> JobNetwork:
    """On the host's node: its bridge (the way out) added to the job's overlay (NetworkError)."""
    assert given.overlay_range is not None
    # What an earlier attempt's host left here (its actor lost with the node, which came back):
    # this host is the only one of the job's of this name now.
    remove_node_network(home, job_name, host)
    bridge, alias = _node_bridge(home, job_name, host)
    made = network._create(
        bridge,
        alias,
        ipaddress.IPv4Network(given.overlay_range),
        [host],
        code_env,
        given.resolv_conf,
        avoid=_overlay_subnet(given.overlay_range),
        extra_forward=_bridge_rules(bridge, given, code_env),
    )
    if made.bridge is None:
        raise NetworkError(f"the network of host {host} could not be made: {made.reason}")
    try:
        network._nft(_guard_rules(_guard_table(home, job_name, host), given, host))
    except NetworkError as exc:
        remove_node_network(home, job_name, host)
        raise NetworkError(f"the network of host {host} could not be made: {exc}") from None
    return dataclasses.replace(
        given,
        bridge=made.bridge,
        gateway=made.gateway,
        relays=made.relays,
        resolvers=made.resolvers,
        outside=made.addresses[host],
    )


def remove_node_network(home: Path, job_name: str, host: str) -> None:
    bridge, _ = _node_bridge(home, job_name, host)
    if (Path("/sys/class/net") / bridge).exists():
        with network._lock():
            network._remove(bridge)
    with contextlib.suppress(NetworkError):  # none where the bridge could not be made
        network._nft(f"delete table inet {_guard_table(home, job_name, host)}\n")


def _bridge_rules(bridge: str, given: JobNetwork, code_env: Mapping[str, str]) -> str:
    """The host's bridge's forward rules beyond a local job's: nothing into an overlay, nothing
    to the cluster's nodes but the store's endpoint."""
    last = given.overlay_port + MAX_HOSTS - 1
    rules = f'    iifname "{bridge}" udp dport {given.overlay_port}-{last} drop\n'
    if given.overlay_cluster:
        nodes = set(given.overlay_cluster)
        for address, port in _endpoints(code_env):
            if address in nodes:
                rules += f'    iifname "{bridge}" ip daddr {address} tcp dport {port} accept\n'
        rules += f'    iifname "{bridge}" ip daddr {{ {", ".join(sorted(nodes))} }} drop\n'
    return rules


def _endpoints(code_env: Mapping[str, str]) -> list[tuple[str, int]]:
    """The (address, port) of each endpoint openmaker gives the code."""
    found = []
    for name in network.ENDPOINT_VARIABLES:
        if not (url := code_env.get(name)):
            continue
        parsed = urlparse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        with contextlib.suppress(OSError):
            found.append((socket.gethostbyname(parsed.hostname or ""), port))
    return found


def _guard_table(home: Path, job_name: str, host: str) -> str:
    return GUARD_PREFIX + network.job_id(home, f"{job_name}\0{host}")


def _guard_rules(table: str, given: JobNetwork, host: str) -> str:
    """The host's end of the segment takes frames of its VNI from its job's other nodes
    alone. (Frames of another VNI are another device's, or nobody's: the kernel drops them.)"""
    assert given.overlay_vni is not None
    index = list(given.addresses).index(host)
    mine = given.overlay_nodes[index]
    peers = sorted({n for i, n in enumerate(given.overlay_nodes) if i != index} - {mine})
    # The VNI: bits 32-55 of the VXLAN header, after UDP's 8 bytes.
    frame = f"udp dport {given.overlay_port + index} @th,96,24 {given.overlay_vni}"
    senders = f" ip saddr != {{ {', '.join(peers)} }}" if peers else ""
    return (
        # nft 1.0.6 has no `destroy`: made if missing, so that it can be deleted and remade.
        f"add table inet {table}\ndelete table inet {table}\n"
        f"table inet {table} {{\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f"    {frame}{senders} drop\n"
        "  }\n"
        "}\n"
    )


def node_networks(home: Path) -> list[tuple[str, str]]:
    """The (job, host) of every host's bridge of the openmaker home `home` on this node."""
    mark = f"{_NODE_MARK}:{network._home_key(home)}:"
    found = []
    for link in Path("/sys/class/net").glob(PREFIX + "*"):
        try:
            alias = (link / "ifalias").read_text().strip()
        except OSError:
            continue
        if alias.startswith(mark):
            job, _, host = alias.removeprefix(mark).rpartition(":")
            found.append((job, host))
    return sorted(found)


def _node_bridge(home: Path, job_name: str, host: str) -> tuple[str, str]:
    # Not the job's own bridge name or alias: the server's recovery sweep (jobs_with_networks)
    # never takes a running host's bridge for a leftover, on a node that is the server's machine.
    bridge = PREFIX + network.job_id(home, f"{job_name}\0{host}")
    return bridge, f"{_NODE_MARK}:{network._home_key(home)}:{job_name}:{host}"


def _overlay_subnet(whole: str) -> ipaddress.IPv4Network:
    return list(ipaddress.IPv4Network(whole).subnets(new_prefix=24))[-1]


def mac(vni: int, index: int) -> str:
    """Host `index`'s MAC on the segment: locally administered, unique within the job."""
    return f"02:{vni >> 16 & 255:02x}:{vni >> 8 & 255:02x}:{vni & 255:02x}:00:{index + 1:02x}"


def rtnetlink() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)


def join(rtnl: socket.socket, given: JobNetwork, index: int, netns: int) -> None:
    """Host `index`'s end of the segment, in the namespace `netns` (run inside it; `rtnl` was
    opened in the node's namespace, where the device's socket goes)."""
    assert given.overlay_vni is not None
    vni, nodes = given.overlay_vni, given.overlay_nodes
    _add_vxlan(rtnl, vni, nodes[index], given.overlay_port + index, mac(vni, index), netns)
    hosts = list(given.addresses.values())
    commands = [f"addr add {hosts[index]}/24 dev {OVERLAY_DEVICE}", f"link set {OVERLAY_DEVICE} up"]
    forwarding = []
    for peer, node in enumerate(nodes):
        if peer == index:
            continue
        commands.append(
            f"neigh add {hosts[peer]} lladdr {mac(vni, peer)} dev {OVERLAY_DEVICE} nud permanent"
        )
        forwarding.append(
            f"fdb add {mac(vni, peer)} dev {OVERLAY_DEVICE} dst {node} "
            f"port {given.overlay_port + peer} self permanent"
        )
    network._ip("".join(f"{c}\n" for c in commands))
    if forwarding:
        network._run(["bridge", "-batch", "-"], "".join(f"{c}\n" for c in forwarding))


# rtnetlink's numbers (linux/rtnetlink.h, if_link.h).
_RTM_NEWLINK = 16
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
_NESTED = 0x8000
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_LINKINFO, _IFLA_NET_NS_FD = 1, 3, 4, 18, 28
_IFLA_INFO_KIND, _IFLA_INFO_DATA = 1, 2
_VXLAN_ID, _VXLAN_LOCAL, _VXLAN_LEARNING, _VXLAN_PORT, _VXLAN_LOCALBYPASS = 1, 4, 7, 15, 31


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _add_vxlan(
    rtnl: socket.socket, vni: int, local: str, port: int, address: str, netns: int
) -> None:
    data = (
        _attribute(_VXLAN_ID, struct.pack("=I", vni))
        + _attribute(_VXLAN_LOCAL, socket.inet_aton(local))
        + _attribute(_VXLAN_PORT, struct.pack("!H", port))
        + _attribute(_VXLAN_LEARNING, b"\0")
        + _attribute(_VXLAN_LOCALBYPASS, b"\0")
    )
    info = _attribute(_IFLA_INFO_KIND, b"vxlan\0") + _attribute(_IFLA_INFO_DATA | _NESTED, data)
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
    body += _attribute(_IFLA_IFNAME, OVERLAY_DEVICE.encode() + b"\0")
    body += _attribute(_IFLA_ADDRESS, bytes.fromhex(address.replace(":", "")))
    body += _attribute(_IFLA_MTU, struct.pack("=I", OVERLAY_MTU))
    body += _attribute(_IFLA_NET_NS_FD, struct.pack("=I", netns))
    body += _attribute(_IFLA_LINKINFO | _NESTED, info)
    flags = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL
    rtnl.sendto(struct.pack("=IHHII", 16 + len(body), _RTM_NEWLINK, flags, 1, 0) + body, (0, 0))
    reply = rtnl.recv(65536)
    error = -struct.unpack("=i", reply[16:20])[0]
    if error:
        raise NetworkError(
            error, f"the job's overlay (VXLAN {vni}, UDP {local}:{port}): {os.strerror(error)}"
        )
