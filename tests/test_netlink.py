"""The jobs' networks' rtnetlink requests (openmaker/runtime/netlink.py) against what `ip` sees
of the same machine: the routes it lists, the bridge it makes, the links it deletes."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openmaker.runtime import netlink

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="links of their own need root")


def _ip(*argv: str) -> Any:
    return json.loads(subprocess.run(["ip", "-j", *argv], capture_output=True, text=True,
                                     check=True).stdout or "[]")  # fmt: skip


def _route_key(route: dict[str, Any]) -> tuple[str, str, str | None]:
    destination = route["dst"]
    if destination != "default":
        destination = str(ipaddress.IPv4Network(destination, strict=False))
    table = {"local": "255"}.get(route.get("table", "main"), route.get("table", "main"))
    return destination, str(table), route.get("dev")


@pytest.fixture
def bridge() -> Iterator[str]:
    name = f"omntst{secrets.token_hex(3)}"
    try:
        yield name
    finally:
        netlink.delete_links([name])


def test_the_routes_are_those_ip_lists(bridge: str) -> None:
    # One route of a bridge of its own at least, besides the machine's.
    netlink.add_bridge(bridge, "openmaker:test", "10.251.7.1", 24)
    listed = _ip("-4", "route", "show", "table", "all")
    mine = netlink.ipv4_routes()

    def steady(routes: list[dict[str, Any]]) -> set[tuple[str, str, str | None]]:
        # Other jobs' bridges come and go meanwhile: theirs are left out.
        keys = {_route_key(route) for route in routes}
        return {k for k in keys if not (k[2] or "").startswith("omn") or k[2] == bridge}

    assert steady(mine) == steady(listed)
    assert ("10.251.7.0/24", "main", bridge) in steady(mine)


def test_a_bridge_is_made_up_with_its_alias_and_address_then_deleted(bridge: str) -> None:
    netlink.add_bridge(bridge, "openmaker:home:job", "10.251.8.1", 24)
    [link] = _ip("-d", "addr", "show", "dev", bridge)
    assert link["linkinfo"]["info_kind"] == "bridge"
    assert link["ifalias"] == "openmaker:home:job"
    assert "UP" in link["flags"]
    assert [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"] == [
        ("10.251.8.1", 24)
    ]
    with pytest.raises(OSError):  # one of that name exists: refused, not taken over
        netlink.add_bridge(bridge, "other", "10.251.9.1", 24)
    netlink.delete_links([bridge, bridge + "x"])  # one that is not there is no error
    assert not (Path("/sys/class/net") / bridge).exists()


def test_a_veth_end_joins_the_bridge_up(bridge: str) -> None:
    netlink.add_bridge(bridge, "openmaker:test", "10.251.10.1", 24)
    veth = bridge + "v1"
    subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", bridge + "p"],
                   check=True)  # fmt: skip
    try:
        netlink.enslave(veth, bridge)
        [link] = _ip("link", "show", "dev", veth)
        assert link["master"] == bridge
        assert "UP" in link["flags"]
    finally:
        netlink.delete_links([veth])
    assert not (Path("/sys/class/net") / (bridge + "p")).exists()  # its peer went with it
