"""Whether iptables-legacy's FORWARD chain drops by default, read from the kernel (the
IPT_SO_GET_INFO and IPT_SO_GET_ENTRIES socket options `iptables-legacy -S` reads too) rather
than by starting `iptables-legacy` for every job (network.py asks as each job's network is made).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

_IPT_SO_GET_INFO, _IPT_SO_GET_ENTRIES = 64, 65
_NF_INET_FORWARD = 2
_TABLE = b"filter"
# struct ipt_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size.
_INFO = struct.Struct("=32sI5I5III")
# struct ipt_get_entries: name[32], size, then the entries at 8-byte alignment.
_ENTRIES_HEADER = 40
# In struct ipt_entry: target_offset (after struct ipt_ip's 84 bytes and nfcache).
_TARGET_OFFSET_AT = 88
# struct xt_entry_target's header before a standard target's verdict.
_TARGET_HEADER = 32
_STANDARD_DROP = -1  # -NF_DROP - 1
_libc = ctypes.CDLL(None, use_errno=True)


def forward_drops() -> bool:
    """Whether the legacy filter table's FORWARD policy is DROP (OSError where it cannot be read:
    no such table, not root)."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        info = _get(sock, _IPT_SO_GET_INFO, _INFO.pack(_TABLE, *[0] * 13))
        fields = _INFO.unpack(info)
        valid_hooks, underflows, size = fields[1], fields[7:12], fields[13]
        if not valid_hooks & (1 << _NF_INET_FORWARD):
            return False
        request = struct.pack("=32sI", _TABLE, size).ljust(_ENTRIES_HEADER, b"\0")
        entries = _get(sock, _IPT_SO_GET_ENTRIES, request + bytes(size))[_ENTRIES_HEADER:]
    policy = underflows[_NF_INET_FORWARD]
    (target,) = struct.unpack_from("=H", entries, policy + _TARGET_OFFSET_AT)
    (verdict,) = struct.unpack_from("=i", entries, policy + target + _TARGET_HEADER)
    return bool(verdict == _STANDARD_DROP)


def _get(sock: socket.socket, option: int, given: bytes) -> bytes:
    """getsockopt with `given` as its input (the table's name): Python's passes none."""
    buffer = ctypes.create_string_buffer(given, len(given))
    length = ctypes.c_uint32(len(given))
    if _libc.getsockopt(sock.fileno(), socket.IPPROTO_IP, option, buffer, ctypes.byref(length)):
        code = ctypes.get_errno()
        raise OSError(code, f"reading iptables-legacy's {_TABLE.decode()}: {os.strerror(code)}")
    return buffer.raw[: length.value]
