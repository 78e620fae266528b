"""The nftables tables of the jobs' networks (network.py) as typed rules: the few matches they
use, written both as `nft` text (what a person reads, and what tests compare with) and as the
nfnetlink requests that make them (nftables.py sends them in one batch), each rule with the
expressions `nft` itself compiles that text to (`nft --debug=netlink` shows them).

Names are openmaker's own (bridges, tables), never a job's; each is checked against the
kernel's limits all the same, so that a name that would not fit fails here, not half-made.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Literal

from openmaker.runtime.nftables import (
    FAMILIES,
    NF_ACCEPT,
    NF_DROP,
    Message,
    attribute,
    string,
    u32,
)

IFNAMSIZ = 16  # an interface name and its NUL
_TABLE_NAME_MAX = 256
_NFT_MSG_NEWTABLE, _NFT_MSG_NEWCHAIN, _NFT_MSG_NEWRULE = 0, 3, 6
_NLM_F_CREATE, _NLM_F_APPEND = 0x400, 0x800
_NLA_F_NESTED = 0x8000
_NFTA_TABLE_NAME = 1
_NFTA_CHAIN_TABLE, _NFTA_CHAIN_NAME, _NFTA_CHAIN_HOOK = 1, 3, 4
_NFTA_CHAIN_POLICY, _NFTA_CHAIN_TYPE = 5, 7
_NFTA_HOOK_HOOKNUM, _NFTA_HOOK_PRIORITY = 1, 2
_NFTA_RULE_TABLE, _NFTA_RULE_CHAIN, _NFTA_RULE_EXPRESSIONS = 1, 2, 4
_NFTA_LIST_ELEM = 1
_NFTA_EXPR_NAME, _NFTA_EXPR_DATA = 1, 2
_NFTA_DATA_VALUE, _NFTA_DATA_VERDICT = 1, 2
_NFTA_VERDICT_CODE = 1
# Each expression's attributes: (register out or in, key / op / base, ...), numbered from 1.
_NFTA_META_DREG, _NFTA_META_KEY = 1, 2
_NFTA_CMP_SREG, _NFTA_CMP_OP, _NFTA_CMP_DATA = 1, 2, 3
_NFTA_PAYLOAD_DREG, _NFTA_PAYLOAD_BASE, _NFTA_PAYLOAD_OFFSET, _NFTA_PAYLOAD_LEN = 1, 2, 3, 4
_NFTA_BITWISE_SREG, _NFTA_BITWISE_DREG, _NFTA_BITWISE_LEN = 1, 2, 3
_NFTA_BITWISE_MASK, _NFTA_BITWISE_XOR = 4, 5
_NFTA_CT_DREG, _NFTA_CT_KEY = 1, 2
_NFTA_IMMEDIATE_DREG, _NFTA_IMMEDIATE_DATA = 1, 2
_NFT_REG_VERDICT, _NFT_REG_1 = 0, 1
_NFT_CMP_EQ, _NFT_CMP_NEQ, _NFT_CMP_LTE, _NFT_CMP_GTE = 0, 1, 3, 5
_NFT_META_IIFNAME, _NFT_META_OIFNAME, _NFT_META_NFPROTO, _NFT_META_L4PROTO = 6, 7, 15, 16
_NFT_PAYLOAD_NETWORK_HEADER, _NFT_PAYLOAD_TRANSPORT_HEADER = 1, 2
_NFT_CT_STATE = 0
_NFPROTO_IPV4 = 2
# NF_CT_STATE_BIT of IP_CT_ESTABLISHED (0) and IP_CT_RELATED (1).
_CT_ESTABLISHED_RELATED = (1 << 1) | (1 << 2)
_HOOKS = {"input": 1, "forward": 2, "postrouting": 4}  # NF_INET_*
_PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_VERDICTS = {"accept": NF_ACCEPT, "drop": NF_DROP}
# Offsets in the IPv4 header, and of the destination port in TCP's and UDP's.
_ADDRESS_OFFSETS = {"saddr": 12, "daddr": 16}
_DPORT_OFFSET = 2


@dataclass(frozen=True)
class Interface:
    """`iifname "NAME"` (`side` "iif") or `oifname`; a NAME ending in `*` matches its prefix."""

    side: Literal["iif", "oif"]
    name: str
    negate: bool = False

    def __post_init__(self) -> None:
        if not 0 < len(self.name.removesuffix("*").encode()) < IFNAMSIZ or '"' in self.name:
            raise ValueError(f"not an interface name: {self.name!r}")


@dataclass(frozen=True)
class Address:
    """`ip saddr NETWORK` (`side` "saddr") or `ip daddr`."""

    side: Literal["saddr", "daddr"]
    network: ipaddress.IPv4Network

    def __post_init__(self) -> None:
        if self.network.prefixlen == 0:
            raise ValueError("an address match of every address")


Protocol = Literal["tcp", "udp"]


@dataclass(frozen=True)
class Port:
    """`tcp dport LOW` (or `LOW-HIGH`), or udp's."""

    protocol: Protocol
    low: int
    high: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.low <= (self.high or self.low) <= 0xFFFF:
            raise ValueError(f"not a port range: {self.low}-{self.high}")


@dataclass(frozen=True)
class Raw:
    """`@th,OFFSET,LENGTH VALUE`: bits of the transport header (its start, UDP's or TCP's),
    whole bytes only."""

    offset: int
    length: int
    value: int

    def __post_init__(self) -> None:
        if self.offset % 8 or self.length % 8 or not 0 < self.length <= 128:
            raise ValueError(f"not whole bytes: @th,{self.offset},{self.length}")
        if not 0 <= self.value < 1 << self.length:
            raise ValueError(f"{self.value} does not fit {self.length} bits")


@dataclass(frozen=True)
class Established:
    """`ct state established,related`."""


Match = Interface | Address | Port | Raw | Established


@dataclass(frozen=True)
class Rule:
    matches: tuple[Match, ...]
    verdict: Literal["accept", "drop", "masquerade"]


@dataclass(frozen=True)
class Chain:
    """A base chain of policy accept: `filter` chains at priority filter (0), `nat` ones at
    srcnat (100)."""

    name: str
    type: Literal["filter", "nat"]
    hook: Literal["input", "forward", "postrouting"]
    rules: tuple[Rule, ...]

    @property
    def priority(self) -> int:
        return 100 if self.type == "nat" else 0


@dataclass(frozen=True)
class Table:
    """A table of the inet family."""

    name: str
    chains: tuple[Chain, ...]

    def __post_init__(self) -> None:
        names = [self.name, *(chain.name for chain in self.chains)]
        if any(not 0 < len(name.encode()) < _TABLE_NAME_MAX or '"' in name for name in names):
            raise ValueError(f"not an nftables name among {names!r}")


def text(table: Table) -> str:
    """`table` as `nft -f` reads it."""
    lines = [f"table inet {table.name} {{"]
    for chain in table.chains:
        lines += [
            f"  chain {chain.name} {{",
            f"    type {chain.type} hook {chain.hook} priority {chain.priority}; policy accept;",
        ]
        lines += [f"    {_rule_text(rule)}" for rule in chain.rules]
        lines.append("  }")
    return "\n".join([*lines, "}", ""])


def messages(table: Table) -> list[Message]:
    """The requests that make `table` (with its chains and rules; added to one that exists)."""
    family = FAMILIES["inet"]
    name = attribute(_NFTA_TABLE_NAME, string(table.name))
    made = [Message(_NFT_MSG_NEWTABLE, family, name, _NLM_F_CREATE)]
    for chain in table.chains:
        hook = _nest(
            _NFTA_CHAIN_HOOK,
            attribute(_NFTA_HOOK_HOOKNUM, u32(_HOOKS[chain.hook]))
            + attribute(_NFTA_HOOK_PRIORITY, u32(chain.priority)),
        )
        body = (
            attribute(_NFTA_CHAIN_TABLE, string(table.name))
            + attribute(_NFTA_CHAIN_NAME, string(chain.name))
            + hook
            + attribute(_NFTA_CHAIN_POLICY, u32(NF_ACCEPT))
            + attribute(_NFTA_CHAIN_TYPE, string(chain.type))
        )
        made.append(Message(_NFT_MSG_NEWCHAIN, family, body, _NLM_F_CREATE))
        for rule in chain.rules:
            expressions = b"".join(_nest(_NFTA_LIST_ELEM, e) for e in _expressions(rule))
            body = (
                attribute(_NFTA_RULE_TABLE, string(table.name))
                + attribute(_NFTA_RULE_CHAIN, string(chain.name))
                + _nest(_NFTA_RULE_EXPRESSIONS, expressions)
            )
            made.append(Message(_NFT_MSG_NEWRULE, family, body, _NLM_F_CREATE | _NLM_F_APPEND))
    return made


def _rule_text(rule: Rule) -> str:
    words = []
    for match in rule.matches:
        if isinstance(match, Interface):
            words.append(f'{match.side}name {"!= " if match.negate else ""}"{match.name}"')
        elif isinstance(match, Address):
            network = match.network
            shown = network.network_address if network.prefixlen == 32 else network
            words.append(f"ip {match.side} {shown}")
        elif isinstance(match, Port):
            ports = f"{match.low}-{match.high}" if match.high is not None else str(match.low)
            words.append(f"{match.protocol} dport {ports}")
        elif isinstance(match, Raw):
            words.append(f"@th,{match.offset},{match.length} {match.value}")
        else:
            words.append("ct state established,related")
    return " ".join([*words, rule.verdict])


def _expressions(rule: Rule) -> list[bytes]:
    """Each of the rule's expressions (name and data), in nft's order: a match on an IPv4
    field is preceded by one on the packet's family (an inet chain sees IPv6 too), a port's by
    one on the transport protocol."""
    found: list[bytes] = []
    ipv4_checked = False
    for match in rule.matches:
        if isinstance(match, Interface):
            key = _NFT_META_IIFNAME if match.side == "iif" else _NFT_META_OIFNAME
            name = match.name.encode()
            # A wildcard compares its prefix alone; a name, all IFNAMSIZ bytes (NUL-padded).
            value = name[:-1] if name.endswith(b"*") else name.ljust(IFNAMSIZ, b"\0")
            found += [_meta(key), _cmp(_NFT_CMP_NEQ if match.negate else _NFT_CMP_EQ, value)]
        elif isinstance(match, Address):
            if not ipv4_checked:
                found += [_meta(_NFT_META_NFPROTO), _cmp(_NFT_CMP_EQ, bytes([_NFPROTO_IPV4]))]
                ipv4_checked = True
            found += _address(match)
        elif isinstance(match, Port):
            found += [
                _meta(_NFT_META_L4PROTO),
                _cmp(_NFT_CMP_EQ, bytes([_PROTOCOLS[match.protocol]])),
                _payload(_NFT_PAYLOAD_TRANSPORT_HEADER, _DPORT_OFFSET, 2),
            ]
            if match.high is None:
                found.append(_cmp(_NFT_CMP_EQ, struct.pack("!H", match.low)))
            else:
                found.append(_cmp(_NFT_CMP_GTE, struct.pack("!H", match.low)))
                found.append(_cmp(_NFT_CMP_LTE, struct.pack("!H", match.high)))
        elif isinstance(match, Raw):
            size = match.length // 8
            found += [
                _payload(_NFT_PAYLOAD_TRANSPORT_HEADER, match.offset // 8, size),
                _cmp(_NFT_CMP_EQ, match.value.to_bytes(size, "big")),
            ]
        else:
            zero = struct.pack("=I", 0)
            mask = struct.pack("=I", _CT_ESTABLISHED_RELATED)  # the kernel's own byte order
            found += [
                _expression(
                    "ct",
                    attribute(_NFTA_CT_DREG, u32(_NFT_REG_1))
                    + attribute(_NFTA_CT_KEY, u32(_NFT_CT_STATE)),
                ),
                _bitwise(mask, zero),
                _cmp(_NFT_CMP_NEQ, zero),
            ]
    if rule.verdict == "masquerade":
        found.append(_expression("masq", b""))
    else:
        verdict = _nest(
            _NFTA_DATA_VERDICT, attribute(_NFTA_VERDICT_CODE, u32(_VERDICTS[rule.verdict]))
        )
        found.append(
            _expression(
                "immediate",
                attribute(_NFTA_IMMEDIATE_DREG, u32(_NFT_REG_VERDICT))
                + _nest(_NFTA_IMMEDIATE_DATA, verdict),
            )
        )
    return found


def _address(match: Address) -> list[bytes]:
    """As nft does: the prefix's whole bytes alone where it ends on a byte, else all four
    masked."""
    network, offset = match.network, _ADDRESS_OFFSETS[match.side]
    packed = network.network_address.packed
    if network.prefixlen % 8 == 0:
        size = network.prefixlen // 8
        return [
            _payload(_NFT_PAYLOAD_NETWORK_HEADER, offset, size),
            _cmp(_NFT_CMP_EQ, packed[:size]),
        ]
    return [
        _payload(_NFT_PAYLOAD_NETWORK_HEADER, offset, 4),
        _bitwise(network.netmask.packed, bytes(4)),
        _cmp(_NFT_CMP_EQ, packed),
    ]


def _meta(key: int) -> bytes:
    body = attribute(_NFTA_META_DREG, u32(_NFT_REG_1)) + attribute(_NFTA_META_KEY, u32(key))
    return _expression("meta", body)


def _cmp(op: int, value: bytes) -> bytes:
    return _expression(
        "cmp",
        attribute(_NFTA_CMP_SREG, u32(_NFT_REG_1))
        + attribute(_NFTA_CMP_OP, u32(op))
        + _nest(_NFTA_CMP_DATA, attribute(_NFTA_DATA_VALUE, value)),
    )


def _payload(base: int, offset: int, size: int) -> bytes:
    return _expression(
        "payload",
        attribute(_NFTA_PAYLOAD_DREG, u32(_NFT_REG_1))
        + attribute(_NFTA_PAYLOAD_BASE, u32(base))
        + attribute(_NFTA_PAYLOAD_OFFSET, u32(offset))
        + attribute(_NFTA_PAYLOAD_LEN, u32(size)),
    )


def _bitwise(mask: bytes, xor: bytes) -> bytes:
    return _expression(
        "bitwise",
        attribute(_NFTA_BITWISE_SREG, u32(_NFT_REG_1))
        + attribute(_NFTA_BITWISE_DREG, u32(_NFT_REG_1))
        + attribute(_NFTA_BITWISE_LEN, u32(len(mask)))
        + _nest(_NFTA_BITWISE_MASK, attribute(_NFTA_DATA_VALUE, mask))
        + _nest(_NFTA_BITWISE_XOR, attribute(_NFTA_DATA_VALUE, xor)),
    )


def _expression(name: str, data: bytes) -> bytes:
    named = attribute(_NFTA_EXPR_NAME, string(name))
    return named + (_nest(_NFTA_EXPR_DATA, data) if data else b"")


def _nest(kind: int, payload: bytes) -> bytes:
    return attribute(kind | _NLA_F_NESTED, payload)
