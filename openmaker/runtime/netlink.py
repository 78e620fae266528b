"""The few rtnetlink requests the jobs' networks make (network.py): on the machine's side a
bridge (with IPv4 forwarding on), a veth end put on it, links deleted, the IPv4 routes listed;
inside a host's namespace its veth pair, addresses and default route; and a host's VXLAN device
with the local bypass off (overlay.py), which iproute2 6.1 cannot ask for, with its neighbours
and forwarding entries. Each is what an `ip` (or `bridge`) command does, without starting a
process for it (a process costs a job tens of milliseconds on a busy machine). Every request is
acknowledged before the next one goes: an error raises NetlinkError with the kernel's errno.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

_RTM_NEWLINK, _RTM_DELLINK = 16, 17
_RTM_NEWADDR = 20
_RTM_NEWROUTE, _RTM_GETROUTE, _RTM_NEWNEIGH = 24, 26, 28
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_MULTI, _NLM_F_ACK = 0x1, 0x2, 0x4
_NLM_F_DUMP, _NLM_F_EXCL, _NLM_F_CREATE = 0x300, 0x200, 0x400
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_MASTER = 1, 3, 4, 10
_IFLA_LINKINFO, _IFLA_NET_NS_PID, _IFLA_IFALIAS = 18, 19, 20
_IFLA_AF_SPEC, _IFLA_NET_NS_FD = 26, 28
_VETH_INFO_PEER = 1
# IFLA_AF_SPEC's AF_INET: IFLA_INET_CONF, entries (id, value) of IPV4_DEVCONF_* (linux/ip.h).
_IFLA_INET_CONF, _IPV4_DEVCONF_FORWARDING = 1, 1
_IFLA_INFO_KIND, _IFLA_INFO_DATA = 1, 2
_NLA_F_NESTED = 0x8000
_VXLAN_ID, _VXLAN_LOCAL, _VXLAN_LEARNING, _VXLAN_PORT, _VXLAN_LOCALBYPASS = 1, 4, 7, 15, 31
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_TABLE = 1, 4, 5, 15
_RTPROT_BOOT, _RT_SCOPE_UNIVERSE, _RTN_UNICAST = 3, 0, 1
_NDA_DST, _NDA_LLADDR, _NDA_PORT = 1, 2, 6
_NUD_PERMANENT, _NTF_SELF = 0x80, 0x02
_IFF_UP = 0x1
_RT_TABLE_MAIN = 254
_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg
_NDMSG = struct.Struct("=BxxxiHBB")  # ndmsg


class NetlinkError(OSError):
    pass


def add_bridge(name: str, alias: str, address: str, prefix: int) -> None:
    """`ip link add NAME type bridge; link set NAME alias ALIAS; addr add ADDRESS/PREFIX dev
    NAME; link set NAME up`, with IPv4 forwarding on (net.ipv4.conf.NAME.forwarding=1: over
    netlink the kernel waits for its lock, where a write to /proc/sys spins on it)."""
    kind = _attribute(_IFLA_INFO_KIND, b"bridge")
    with _socket() as rtnl:
        rtnl.ask(
            _RTM_NEWLINK,
            _NLM_F_CREATE | _NLM_F_EXCL,
            _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
            + _attribute(_IFLA_IFNAME, _name(name))
            + _attribute(_IFLA_LINKINFO, kind),
        )
        index = socket.if_nametoindex(name)
        rtnl.ask(
            _RTM_NEWLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0)
            + _attribute(_IFLA_IFALIAS, alias.encode())
            + _ipv4_forwarding(),
        )  # fmt: skip
        _address_and_up(rtnl, name, index, address, prefix)


def add_host_link(veth: str, pid: int, address: str, prefix: int, gateway: str) -> None:
    """From inside a host's new namespace (the calling thread's): `ip link add eth0 type veth
    peer name VETH netns PID; link set lo up; addr add ADDRESS/PREFIX dev eth0; link set eth0
    up; route add default via GATEWAY`. NetlinkError names the step that failed."""
    peer = (
        _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        + _attribute(_IFLA_IFNAME, _name(veth))
        + _attribute(_IFLA_NET_NS_PID, struct.pack("=I", pid))
    )
    info = _attribute(_IFLA_INFO_KIND, b"veth") + _attribute(
        _IFLA_INFO_DATA | _NLA_F_NESTED, _attribute(_VETH_INFO_PEER | _NLA_F_NESTED, peer)
    )
    with _socket() as rtnl:
        with _step(f"the veth pair eth0/{veth}"):
            rtnl.ask(
                _RTM_NEWLINK,
                _NLM_F_CREATE | _NLM_F_EXCL,
                _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                + _attribute(_IFLA_IFNAME, _name("eth0"))
                + _attribute(_IFLA_LINKINFO | _NLA_F_NESTED, info),
            )
        loopback, eth0 = socket.if_nametoindex("lo"), socket.if_nametoindex("eth0")
        with _step("loopback up"):
            rtnl.ask(_RTM_NEWLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, loopback, _IFF_UP, _IFF_UP))
        _address_and_up(rtnl, "eth0", eth0, address, prefix)
        with _step(f"the default route via {gateway}"):
            rtnl.ask(
                _RTM_NEWROUTE,
                _NLM_F_CREATE | _NLM_F_EXCL,
                _RTMSG.pack(socket.AF_INET, 0, 0, 0, _RT_TABLE_MAIN, _RTPROT_BOOT,
                            _RT_SCOPE_UNIVERSE, _RTN_UNICAST, 0)
                + _attribute(_RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed),
            )  # fmt: skip


def _address_and_up(rtnl: _Rtnl, device: str, index: int, address: str, prefix: int) -> None:
    """`ip addr add ADDRESS/PREFIX dev DEVICE; ip link set DEVICE up` (`index` its index)."""
    packed = ipaddress.IPv4Address(address).packed
    with _step(f"{device}'s address {address}/{prefix}"):
        rtnl.ask(
            _RTM_NEWADDR,
            _NLM_F_CREATE | _NLM_F_EXCL,
            _IFADDR.pack(socket.AF_INET, prefix, 0, 0, index)
            + _attribute(_IFA_LOCAL, packed)
            + _attribute(_IFA_ADDRESS, packed),
        )
    with _step(f"{device} up"):
        rtnl.ask(_RTM_NEWLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, index, _IFF_UP, _IFF_UP))


def configure_overlay(
    device: str,
    address: str,
    prefix: int,
    neighbours: list[tuple[str, str]],
    forwarding: list[tuple[str, str, int]],
) -> None:
    """From inside a host's namespace, its end of the job's VXLAN segment (overlay.py): `ip
    addr add ADDRESS/PREFIX dev DEVICE; link set DEVICE up`, for each (address, MAC) of
    `neighbours` `ip neigh add ADDRESS lladdr MAC dev DEVICE nud permanent`, for each (MAC,
    node, port) of `forwarding` `bridge fdb add MAC dev DEVICE dst NODE port PORT self
    permanent`. NetlinkError names the step that failed."""
    with _socket() as rtnl:
        index = socket.if_nametoindex(device)
        _address_and_up(rtnl, device, index, address, prefix)
        for neighbour, mac in neighbours:
            with _step(f"the neighbour {neighbour} ({mac})"):
                rtnl.ask(
                    _RTM_NEWNEIGH,
                    _NLM_F_CREATE | _NLM_F_EXCL,
                    _NDMSG.pack(socket.AF_INET, index, _NUD_PERMANENT, 0, 0)
                    + _attribute(_NDA_DST, ipaddress.IPv4Address(neighbour).packed)
                    + _attribute(_NDA_LLADDR, _mac(mac)),
                )
        for mac, node, port in forwarding:
            with _step(f"the forwarding entry {mac} to {node}:{port}"):
                rtnl.ask(
                    _RTM_NEWNEIGH,
                    _NLM_F_CREATE | _NLM_F_EXCL,
                    _NDMSG.pack(socket.AF_BRIDGE, index, _NUD_PERMANENT, _NTF_SELF, 0)
                    + _attribute(_NDA_LLADDR, _mac(mac))
                    + _attribute(_NDA_DST, ipaddress.IPv4Address(node).packed)
                    + _attribute(_NDA_PORT, struct.pack("!H", port)),
                )


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


@contextmanager
def _step(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise NetlinkError(code, f"{what}: {exc.strerror or exc}") from None


def _ipv4_forwarding() -> bytes:
    """IFLA_AF_SPEC { AF_INET { IFLA_INET_CONF { FORWARDING: 1 } } }."""
    conf = _attribute(_IPV4_DEVCONF_FORWARDING, struct.pack("=I", 1))
    inet = _attribute(_IFLA_INET_CONF | _NLA_F_NESTED, conf)
    return _attribute(
        _IFLA_AF_SPEC | _NLA_F_NESTED, _attribute(socket.AF_INET | _NLA_F_NESTED, inet)
    )


def enslave(name: str, master: str) -> None:
    """`ip link set NAME master MASTER; ip link set NAME up`."""
    with _socket() as rtnl:
        index, bridge = socket.if_nametoindex(name), socket.if_nametoindex(master)
        rtnl.ask(
            _RTM_NEWLINK,
            0,
            _IFINFO.pack(socket.AF_UNSPEC, 0, index, _IFF_UP, _IFF_UP)
            + _attribute(_IFLA_MASTER, struct.pack("=I", bridge)),
        )


def delete_links(names: Iterable[str]) -> None:
    """`ip link del NAME` for each that exists (one that is gone already is no error)."""
    with _socket() as rtnl:
        for name in names:
            try:
                rtnl.ask(
                    _RTM_DELLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                    + _attribute(_IFLA_IFNAME, _name(name)),
                )  # fmt: skip
            except NetlinkError as exc:
                if exc.errno != errno.ENODEV:
                    raise


def route_socket() -> socket.socket:
    """An rtnetlink socket of the calling thread's network namespace: it stays there after the
    thread moves to another (a VXLAN device's UDP socket is made in the socket's)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    sock.bind((0, 0))
    return sock


def add_vxlan(
    sock: socket.socket,
    name: str,
    vni: int,
    local: str,
    port: int,
    address: str,
    mtu: int,
    netns: int,
) -> None:
    """`ip link add NAME address ADDRESS mtu MTU netns NETNS type vxlan id VNI local LOCAL
    dstport PORT nolearning`, with the kernel's local bypass off (frames for another host on
    this node go out through UDP too, where the node's firewall sees them), over `sock`."""
    data = (
        _attribute(_VXLAN_ID, struct.pack("=I", vni))
        + _attribute(_VXLAN_LOCAL, socket.inet_aton(local))
        + _attribute(_VXLAN_PORT, struct.pack("!H", port))
        + _attribute(_VXLAN_LEARNING, b"\0")
        + _attribute(_VXLAN_LOCALBYPASS, b"\0")
    )
    info = _attribute(_IFLA_INFO_KIND, b"vxlan\0")
    info += _attribute(_IFLA_INFO_DATA | _NLA_F_NESTED, data)
    _Rtnl(sock).ask(
        _RTM_NEWLINK,
        _NLM_F_CREATE | _NLM_F_EXCL,
        _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        + _attribute(_IFLA_IFNAME, _name(name))
        + _attribute(_IFLA_ADDRESS, _mac(address))
        + _attribute(_IFLA_MTU, struct.pack("=I", mtu))
        + _attribute(_IFLA_NET_NS_FD, struct.pack("=I", netns))
        + _attribute(_IFLA_LINKINFO | _NLA_F_NESTED, info),
    )


def ipv4_routes() -> list[dict[str, Any]]:
    """The machine's IPv4 routes of every table, as `ip -j -4 route show table all` gives
    them: `dst` ("default" or an address/length), `table` ("main" or its number), `dev`."""
    routes = []
    with _socket() as rtnl:
        request = _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        for payload in rtnl.dump(_RTM_GETROUTE, request):
            family, dst_len, _, _, table, _, _, _, _ = _RTMSG.unpack_from(payload)
            if family != socket.AF_INET:
                continue
            attributes = dict(_attributes(payload[_RTMSG.size :]))
            if _RTA_TABLE in attributes:
                table = struct.unpack("=I", attributes[_RTA_TABLE][:4])[0]
            route: dict[str, Any] = {"table": "main" if table == _RT_TABLE_MAIN else str(table)}
            if dst_len == 0:
                route["dst"] = "default"
            else:
                destination = ipaddress.IPv4Address(attributes.get(_RTA_DST, bytes(4))[:4])
                route["dst"] = f"{destination}/{dst_len}"
            if _RTA_OIF in attributes:
                index = struct.unpack("=I", attributes[_RTA_OIF][:4])[0]
                with contextlib.suppress(OSError):  # gone since
                    route["dev"] = socket.if_indextoname(index)
            routes.append(route)
    return routes


class _Rtnl:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.sequence = sock, 0

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self.sequence += 1
        header = _HEADER.pack(_HEADER.size + len(body), kind, _NLM_F_REQUEST | flags,
                              self.sequence, 0)  # fmt: skip
        self.sock.sendto(header + body, (0, 0))
        return self.sequence

    def ask(self, kind: int, flags: int, body: bytes) -> None:
        """Send a request; wait for its acknowledgement (NetlinkError on an error)."""
        sequence = self._send(kind, flags | _NLM_F_ACK, body)
        for message_kind, payload in self._messages(sequence):
            if message_kind == _NLMSG_ERROR:
                code = -struct.unpack_from("=i", payload)[0]
                if code:
                    raise NetlinkError(code, os.strerror(code))
                return

    def dump(self, kind: int, body: bytes) -> Iterator[bytes]:
        sequence = self._send(kind, _NLM_F_DUMP, body)
        for message_kind, payload in self._messages(sequence):
            if message_kind == _NLMSG_DONE:
                return
            if message_kind == _NLMSG_ERROR:
                code = -struct.unpack_from("=i", payload)[0]
                raise NetlinkError(code, os.strerror(code))
            yield payload

    def _messages(self, sequence: int) -> Iterator[tuple[int, bytes]]:
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, number, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise NetlinkError(errno.EPROTO, "a malformed netlink answer")
                if number == sequence:
                    yield kind, data[offset + _HEADER.size : offset + length]
                offset += (length + 3) & ~3


@contextmanager
def _socket() -> Iterator[_Rtnl]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0) as sock:
        sock.bind((0, 0))
        yield _Rtnl(sock)


def _name(name: str) -> bytes:
    return name.encode() + b"\0"


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield kind & 0x3FFF, data[offset + 4 : offset + length]  # without the nested flags
        offset += (length + 3) & ~3
