"""A job's nftables tables made over nfnetlink (runtime/nft_rules.py, nftables.py) are the
tables `nft -f` makes of their text: the same chains and rules as `nft -j` lists them, and the
same expressions as the kernel hands them back; the chains are listed as `nft` lists them; and
a job's network is made without the `nft` binary, or not at all."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from openmaker.runtime import network, nft_rules, nftables, overlay
from openmaker.runtime.network import PREFIX, JobNetwork

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="nftables tables need root and nft"
)
SUBNET = ipaddress.IPv4Network("10.213.7.0/24")


def _old_rules(
    bridge: str, subnet: ipaddress.IPv4Network, allowed: Sequence[tuple[str, str, int]]
) -> str:
    """The text network.py gave `nft -f` for a job's table before it spoke netlink: the
    reference the typed tables must match."""
    through = "".join(
        f'    iifname "{bridge}" ip daddr {address} {proto} dport {port} accept\n'
        for address, proto, port in allowed
    )
    return (
        f"table inet {bridge} {{\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f"{through}"
        f'    iifname "{bridge}" ct state established,related accept\n'
        f'    iifname "{bridge}" drop\n'
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    iifname "{bridge}" oifname "{bridge}" accept\n'
        f'    iifname "{bridge}" oifname "{PREFIX}*" drop\n'
        f'    iifname "{bridge}" ip daddr 169.254.0.0/16 drop\n'
        f'    oifname "{bridge}" ct state established,related accept\n'
        f'    oifname "{bridge}" drop\n'
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    iifname "{bridge}" ip saddr {subnet} oifname != "{bridge}" masquerade\n'
        "  }\n"
        "}\n"
    )


def _old_guard(name: str) -> str:
    return (
        f"table inet {name} {{\n  chain forward {{\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    iifname != "{PREFIX}*" oifname != "{PREFIX}*" drop\n  }}\n}}\n'
    )


@pytest.fixture
def name() -> Iterator[str]:
    """A table's name (deleted after the test); not openmaker's prefix, whose tables without
    a bridge any command's sweep deletes."""
    made = f"omtt{secrets.token_hex(4)}"
    try:
        yield made
    finally:
        nftables.delete_table("inet", made)


def _listed(name: str) -> tuple[object, str]:
    """(`nft -j`'s chains and rules of the table, the kernel's expressions of each rule),
    handles and positions left out."""
    run = ["nft", "-j", "list", "table", "inet", name]
    items = json.loads(subprocess.run(run, capture_output=True, text=True, check=True).stdout)
    found = [
        {kind: {k: v for k, v in value.items() if k != "handle"}}
        for item in items["nftables"]
        for kind, value in item.items()
        if kind in ("chain", "rule")
    ]
    run = ["nft", "--debug=netlink", "list", "table", "inet", name]
    dumped = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    return found, re.sub(r"^(inet \S+ \S+)( \d+)*$", r"\1", dumped, flags=re.M)


def _made_alike(table: nft_rules.Table, reference: str) -> None:
    """`table`, made over netlink, is what `nft -f` makes of `reference` (the same table's
    text), one after the other under the same name."""
    nftables.apply(nft_rules.messages(table), table.name)
    mine = _listed(table.name)
    assert nftables.delete_table("inet", table.name)
    subprocess.run(["nft", "-f", "-"], input=reference, text=True, check=True)
    theirs = _listed(table.name)
    assert mine[0] and "[ immediate reg 0 drop ]" in mine[1]  # something to compare
    assert mine == theirs


@pytest.mark.parametrize(
    "allowed",
    [[], [("10.9.8.7", "tcp", 8080), ("10.9.8.6", "udp", 53), ("10.9.8.6", "tcp", 53)]],
)
def test_a_jobs_table_over_netlink_is_the_one_nft_made_of_the_old_text(
    name: str, allowed: list[tuple[str, nft_rules.Protocol, int]]
) -> None:
    _made_alike(network._table(name, SUBNET, allowed), _old_rules(name, SUBNET, allowed))


def test_the_guard_over_netlink_is_the_one_nft_made_of_the_old_text(
    name: str,
) -> None:
    _made_alike(nft_rules.Table(name, network.GUARD.chains), _old_guard(name))


def test_a_cluster_hosts_rules_and_masked_prefixes_are_what_nft_makes_of_their_text(
    name: str,
) -> None:
    """Ports as a range, an endpoint let through, the nodes dropped one rule each (overlay.py),
    and a prefix that does not end on a byte."""
    given = JobNetwork(
        {"algo-1": "10.213.255.2"},
        overlay_vni=7,
        overlay_port=4800,
        overlay_cluster=["192.0.2.10", "192.0.2.11"],
    )
    code_env = {"AWS_ENDPOINT_URL_S3": "http://192.0.2.10:9000"}
    extra = overlay._bridge_rules(name, given, code_env)
    assert len(extra) == 4  # the ports, the endpoint, each node
    odd = nft_rules.Rule(
        (
            nft_rules.Interface("oif", name),
            nft_rules.Address("saddr", ipaddress.IPv4Network("10.128.0.0/9")),
        ),
        "drop",
    )
    table = network._table(name, SUBNET, [], (*extra, odd))
    _made_alike(table, nft_rules.text(table))


def test_a_hosts_overlay_guard_over_netlink_is_what_nft_makes_of_its_text(name: str) -> None:
    """The VNI matched in the VXLAN header (a raw transport-header match), one accept for each
    other node of the job (not the host's own, nor twice), then the drop."""
    given = JobNetwork(
        {"algo-1": "10.213.255.2", "algo-2": "10.213.255.3", "algo-3": "10.213.255.4"},
        overlay_vni=0x87D612,
        overlay_nodes=["192.0.2.10", "192.0.2.11", "192.0.2.10"],
        overlay_port=47890,
    )
    table = overlay._guard_rules(name, given, "algo-1")
    frame = "udp dport 47890 @th,96,24 8902162"
    assert nft_rules.text(table).splitlines()[3:5] == [
        f"    {frame} ip saddr 192.0.2.11 accept",
        f"    {frame} drop",
    ]
    _made_alike(table, nft_rules.text(table))


def test_chains_are_listed_as_nft_lists_them() -> None:
    """A forward chain that drops by default (another family's too) shows as one."""
    mine = f"omtt{secrets.token_hex(4)}"
    # Its one rule accepts everything: the machine's other traffic never meets the policy.
    rules = (
        f"table ip {mine} {{\n chain fw {{\n  type filter hook forward priority 0; "
        "policy drop;\n  accept\n }\n chain plain {\n }\n}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
    try:
        listed = nftables.chains()
        run = ["nft", "-j", "list", "chains"]
        items = json.loads(subprocess.run(run, capture_output=True, text=True, check=True).stdout)
    finally:
        nftables.delete_table("ip", mine)
    theirs = {
        (c["family"], c["table"], c["name"])
        for item in items["nftables"]
        if (c := item.get("chain"))
    }
    assert {(c.family, c.table, c.name) for c in listed} == theirs
    found = {c.name: c for c in listed if c.table == mine}
    assert (found["fw"].hook, found["fw"].policy) == (nftables.FORWARD_HOOK, nftables.NF_DROP)
    assert (found["plain"].hook, found["plain"].policy) == (None, None)


def _bridge() -> str:
    return f"{PREFIX}t{secrets.token_hex(3)}"


def test_a_jobs_network_is_made_without_nft(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no chain drops forwarding, a job's start runs no `nft` (it read the ruleset)."""
    if any(
        c.hook == nftables.FORWARD_HOOK and c.policy == nftables.NF_DROP for c in nftables.chains()
    ):
        pytest.skip("a forward chain drops here: passing it takes nft")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nft, no iptables
    bridge = _bridge()
    whole = ipaddress.IPv4Network("10.213.0.0/16")
    try:
        made = network._create(bridge, "openmaker:test", whole, ["algo-1"], {}, None)
        assert made.bridge == bridge, made.reason
        assert (
            "masquerade"
            in subprocess.run(
                ["/usr/sbin/nft", "list", "table", "inet", bridge], capture_output=True, text=True
            ).stdout
        )
    finally:
        network._remove_rules(bridge)
        with network._lock():
            network._remove(bridge, rules=False)


def test_a_refused_table_leaves_the_job_on_the_shared_network(name: str) -> None:
    """Fail closed: a batch the kernel refuses leaves no bridge and no rules half-made."""
    bridge = name  # deleted after the test whatever happens here
    # A chain of the job's table's name that is another type: the kernel refuses to change it.
    taken = (
        f"table inet {bridge} {{\n chain postrouting {{\n  type filter hook postrouting "
        "priority 0; policy accept;\n }\n}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=taken, text=True, check=True)
    whole = ipaddress.IPv4Network("10.213.0.0/16")
    made = network._create(bridge, "openmaker:test", whole, ["algo-1"], {}, None)
    if made.bridge is not None:
        network._remove_rules(bridge)
        with network._lock():
            network._remove(bridge, rules=False)
    assert made.bridge is None and "could not be made" in (made.reason or "")
    assert not Path(f"/sys/class/net/{bridge}").exists()
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"inet {bridge}" not in listed
