"""Deleting an nftables table with one nfnetlink request, as `nft delete table` does, without its
process: before any command, `nft` reads the machine's whole ruleset, which costs it ~0.5 ms of
kernel time per table there is — with fifty jobs' tables, a job's end spent ~25-40 ms in it.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_NFTABLES = 10
_NFT_MSG_DELTABLE = 2
_NFNL_MSG_BATCH_BEGIN, _NFNL_MSG_BATCH_END = 0x10, 0x11
_NFTA_TABLE_NAME = 1
_NLMSG_ERROR = 2
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_HEADER = struct.Struct("=IHHII")  # nlmsghdr
FAMILIES = {"inet": 1, "ip": 2, "ip6": 10, "bridge": 7}


def delete_table(family: str, name: str) -> bool:
    """Delete table `name` of `family` ("inet"); False when there was none. OSError (with the
    kernel's errno) when it cannot be deleted."""
    resource = struct.pack("!H", _NFNL_SUBSYS_NFTABLES)
    begin = _message(_NFNL_MSG_BATCH_BEGIN, 1, struct.pack("=BB", socket.AF_UNSPEC, 0) + resource)
    body = struct.pack("=BBH", FAMILIES[family], 0, 0) + _attribute(
        _NFTA_TABLE_NAME, name.encode() + b"\0"
    )
    delete = _message((_NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_DELTABLE, 2, body, _NLM_F_ACK)
    end = _message(_NFNL_MSG_BATCH_END, 3, struct.pack("=BB", socket.AF_UNSPEC, 0) + resource)
    kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
    with socket.socket(socket.AF_NETLINK, kind, _NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        sock.sendto(begin + delete + end, (0, 0))
        code = _answer(sock, 2)
    if code == errno.ENOENT:
        return False
    if code:
        raise OSError(code, f"deleting the nftables table {name}: {os.strerror(code)}")
    return True


def _message(kind: int, sequence: int, body: bytes, flags: int = 0) -> bytes:
    return _HEADER.pack(_HEADER.size + len(body), kind, _NLM_F_REQUEST | flags, sequence, 0) + body


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _answer(sock: socket.socket, sequence: int) -> int:
    """The errno the kernel acknowledged message `sequence` with (0: done)."""
    while True:
        data = sock.recv(1 << 16)
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind, _, number, _ = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size:
                raise OSError(errno.EPROTO, "a malformed netlink answer")
            if kind == _NLMSG_ERROR and number == sequence:
                return -int(struct.unpack_from("=i", data, offset + _HEADER.size)[0])
            offset += (length + 3) & ~3
