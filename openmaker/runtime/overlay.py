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
encapsulation) is switched off: iproute2 6.1 cannot, so the device is made over rtnetlink
(netlink.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from openmaker.runtime import netlink, network, nft_rules, nftables
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
        guard = _guard_rules(_guard_table(home, job_name, host), given, host)
        nftables.apply(nft_rules.messages(guard), guard.name)  # `nft` would read the ruleset
    except (OSError, ValueError) as exc:
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
    with contextlib.suppress(OSError):  # none where the bridge could not be made
        nftables.delete_table("inet", _guard_table(home, job_name, host))


def _bridge_rules(
    bridge: str, given: JobNetwork, code_env: Mapping[str, str]
) -> tuple[nft_rules.Rule, ...]:
    """The host's bridge's forward rules beyond a local job's: nothing into an overlay, nothing
    to the cluster's nodes but the store's endpoint."""
    into = nft_rules.Interface("iif", bridge)
    last = given.overlay_port + MAX_HOSTS - 1
    rules = [nft_rules.Rule((into, nft_rules.Port("udp", given.overlay_port, last)), "drop")]
    if given.overlay_cluster:
        nodes = set(given.overlay_cluster)
        for address, port in _endpoints(code_env):
            if address in nodes:
                to = nft_rules.Address("daddr", ipaddress.IPv4Network(address))
                rules.append(nft_rules.Rule((into, to, nft_rules.Port("tcp", port)), "accept"))
        rules += [  # one rule a node: as a set would, without one
            nft_rules.Rule((into, nft_rules.Address("daddr", ipaddress.IPv4Network(node))), "drop")
            for node in sorted(nodes)
        ]
    return tuple(rules)


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


def _guard_rules(table: str, given: JobNetwork, host: str) -> nft_rules.Table:
    """The host's end of the segment takes frames of its VNI from its job's other nodes
    alone. (Frames of another VNI are another device's, or nobody's: the kernel drops them.)
    One accept a peer node, then the drop: what `ip saddr != { peers } drop` does, without a
    set (the chain's policy accepts; an accept ends this chain alone)."""
    assert given.overlay_vni is not None
    index = list(given.addresses).index(host)
    mine = given.overlay_nodes[index]
    peers = sorted({n for i, n in enumerate(given.overlay_nodes) if i != index} - {mine})
    # The VNI: bits 32-55 of the VXLAN header, after UDP's 8 bytes.
    frame = (
        nft_rules.Port("udp", given.overlay_port + index),
        nft_rules.Raw(96, 24, given.overlay_vni),
    )
    rules = [
        nft_rules.Rule((*frame, nft_rules.Address("saddr", ipaddress.IPv4Network(peer))), "accept")
        for peer in peers
    ]
    rules.append(nft_rules.Rule(frame, "drop"))
    return nft_rules.Table(table, (nft_rules.Chain("input", "filter", "input", tuple(rules)),))


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


def join(rtnl: socket.socket, given: JobNetwork, index: int, netns: int) -> None:
    """Host `index`'s end of the segment, in the namespace `netns` (run inside it; `rtnl` was
    opened in the node's namespace, where the device's socket goes)."""
    assert given.overlay_vni is not None
    vni, nodes = given.overlay_vni, given.overlay_nodes
    local, port = nodes[index], given.overlay_port + index
    try:
        netlink.add_vxlan(
            rtnl, OVERLAY_DEVICE, vni, local, port, mac(vni, index), OVERLAY_MTU, netns
        )
    except netlink.NetlinkError as exc:
        raise NetworkError(
            exc.errno, f"the job's overlay (VXLAN {vni}, UDP {local}:{port}): {exc.strerror}"
        ) from None
    hosts = list(given.addresses.values())
    peers = [peer for peer in range(len(nodes)) if peer != index]
    try:
        netlink.configure_overlay(
            OVERLAY_DEVICE,
            hosts[index],
            24,
            [(hosts[peer], mac(vni, peer)) for peer in peers],
            [(mac(vni, peer), nodes[peer], given.overlay_port + peer) for peer in peers],
        )
    except netlink.NetlinkError as exc:
        raise NetworkError(exc.errno, f"the job's overlay (VXLAN {vni}): {exc.strerror}") from None
