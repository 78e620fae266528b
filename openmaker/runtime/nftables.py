"""The nfnetlink requests the jobs' networks make of nftables, as `nft` would, without its
process: before any command, `nft` reads the machine's whole ruleset, which costs it ~0.5 ms of
kernel time per table there is — with fifty jobs' tables, a job spent ~20-40 ms in it at its
start and again at its end. Here: a table deleted, tables made (nft_rules.py encodes them) in
one batch, and the chains listed.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_NFTABLES = 10
_NFT_MSG_DELTABLE, _NFT_MSG_GETCHAIN = 2, 4
_NFNL_MSG_BATCH_BEGIN, _NFNL_MSG_BATCH_END = 0x10, 0x11
_NFTA_TABLE_NAME = 1
_NFTA_CHAIN_TABLE, _NFTA_CHAIN_NAME, _NFTA_CHAIN_HOOK, _NFTA_CHAIN_POLICY = 1, 3, 4, 5
_NFTA_HOOK_HOOKNUM = 1
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP_INTR, _NLM_F_DUMP = 0x1, 0x4, 0x10, 0x300
_NLA_TYPE_MASK = 0x3FFF  # without the nested and byte-order flags
_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, resource id (big-endian)
FAMILIES = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}
_FAMILY_NAMES = {number: name for name, number in FAMILIES.items()}
# Hook numbers: the same for the forward hook of every family that has one (not netdev).
FORWARD_HOOK = 2
NF_DROP, NF_ACCEPT = 0, 1
_BEGIN = 1  # the batch's first sequence number
# A kernel that never answers fails the job's network, not hangs its start.
_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Message:
    """One nftables request of a batch: NFT_MSG_* `kind` for `family` with attributes `body`."""

    kind: int
    family: int
    body: bytes
    flags: int = 0


@dataclass(frozen=True)
class ChainInfo:
    """A chain as the kernel lists it (`hook` and `policy` None for a regular chain)."""

    family: str
    table: str
    name: str
    hook: int | None
    policy: int | None


def delete_table(family: str, name: str) -> bool:
    """Delete table `name` of `family` ("inet"); False when there was none. OSError (with the
    kernel's errno) when it cannot be deleted."""
    body = attribute(_NFTA_TABLE_NAME, string(name))
    code = _send_batch([Message(_NFT_MSG_DELTABLE, FAMILIES[family], body)])
    if code == errno.ENOENT:
        return False
    if code:
        raise OSError(code, f"deleting the nftables table {name}: {os.strerror(code)}")
    return True


def apply(messages: list[Message], what: str) -> None:
    """Every request of `messages` in one batch, which the kernel applies whole or not at all.
    OSError (with the kernel's errno) naming `what` when it refuses one."""
    if code := _send_batch(messages):
        raise OSError(code, f"making {what}: {os.strerror(code)}")


def chains() -> list[ChainInfo]:
    """Every chain of every table and family (`nft list chains`)."""
    for _ in range(10):  # a dump the ruleset changed under is said so: asked again
        try:
            return _dump_chains()
        except InterruptedError:
            continue
    raise OSError(errno.EINTR, "listing the nftables chains: the ruleset kept changing")


def attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def string(value: str) -> bytes:
    return value.encode() + b"\0"


def u32(value: int) -> bytes:
    """nf_tables' integer attributes are big-endian."""
    return struct.pack("!I", value & 0xFFFFFFFF)


def _message(kind: int, sequence: int, body: bytes, flags: int = 0) -> bytes:
    return _HEADER.pack(_HEADER.size + len(body), kind, _NLM_F_REQUEST | flags, sequence, 0) + body


def _socket() -> socket.socket:
    kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
    sock = socket.socket(socket.AF_NETLINK, kind, _NETLINK_NETFILTER)
    sock.settimeout(_TIMEOUT_SECONDS)
    sock.bind((0, 0))
    return sock


def _send_batch(messages: list[Message]) -> int:
    """The first errno the kernel answered a request of the batch with (0: all done). Every
    request asks for an answer: one that fails makes the kernel abort the batch, whose other
    requests may still be answered 0."""
    # The batch's ends name the subsystem (big-endian) where requests have their resource id.
    edge = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", _NFNL_SUBSYS_NFTABLES)
    batch = _message(_NFNL_MSG_BATCH_BEGIN, _BEGIN, edge)
    for sequence, message in enumerate(messages, start=_BEGIN + 1):
        head = _NFGEN.pack(message.family, 0, 0)
        kind = (_NFNL_SUBSYS_NFTABLES << 8) | message.kind
        batch += _message(kind, sequence, head + message.body, _NLM_F_ACK | message.flags)
    end = _BEGIN + len(messages) + 1
    batch += _message(_NFNL_MSG_BATCH_END, end, edge)
    with _socket() as sock:
        sock.sendto(batch, (0, 0))
        return _answers(sock, set(range(_BEGIN + 1, end)))


def _answers(sock: socket.socket, waiting: set[int]) -> int:
    failed = 0
    while waiting:
        data = sock.recv(1 << 16)
        for kind, number, _, payload in _messages(data):
            if kind != _NLMSG_ERROR:
                continue
            code = -int(struct.unpack_from("=i", payload)[0])
            if number == _BEGIN and code:  # the batch itself refused: nothing else is answered
                return code
            if number in waiting:
                waiting.discard(number)
                failed = failed or code
    return failed


def _messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, sequence, flags, payload) of each netlink message in `data`."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, flags, number, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            raise OSError(errno.EPROTO, "a malformed netlink answer")
        yield kind, number, flags, data[offset + _HEADER.size : offset + length]
        offset += (length + 3) & ~3


def _attributes(data: bytes) -> dict[int, bytes]:
    found = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & _NLA_TYPE_MASK] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


def _dump_chains() -> list[ChainInfo]:
    kind = (_NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_GETCHAIN
    request = _message(kind, 1, _NFGEN.pack(socket.AF_UNSPEC, 0, 0), _NLM_F_DUMP)
    found: list[ChainInfo] = []
    with _socket() as sock:
        sock.sendto(request, (0, 0))
        while True:
            for answer, _, flags, payload in _messages(sock.recv(1 << 16)):
                if answer == _NLMSG_DONE:
                    return found
                if flags & _NLM_F_DUMP_INTR:
                    raise InterruptedError
                if answer == _NLMSG_ERROR:
                    code = -int(struct.unpack_from("=i", payload)[0])
                    raise OSError(code, f"listing the nftables chains: {os.strerror(code)}")
                found.append(_chain(payload))


def _chain(payload: bytes) -> ChainInfo:
    family = payload[0]
    fields = _attributes(payload[_NFGEN.size :])
    hook = policy = None
    if _NFTA_CHAIN_HOOK in fields:
        hooks = _attributes(fields[_NFTA_CHAIN_HOOK])
        if _NFTA_HOOK_HOOKNUM in hooks:
            hook = struct.unpack("!I", hooks[_NFTA_HOOK_HOOKNUM])[0]
    if _NFTA_CHAIN_POLICY in fields:
        policy = struct.unpack("!I", fields[_NFTA_CHAIN_POLICY])[0]
    return ChainInfo(
        _FAMILY_NAMES.get(family, str(family)),
        fields.get(_NFTA_CHAIN_TABLE, b"").rstrip(b"\0").decode(errors="replace"),
        fields.get(_NFTA_CHAIN_NAME, b"").rstrip(b"\0").decode(errors="replace"),
        hook,
        policy,
    )
