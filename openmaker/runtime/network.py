"""Each host's own network: a network namespace with an address on a bridge of its job's own.

Per job (made by its worker before its hosts start; removed when it ends, or by the recovery
sweep after a killed worker): a Linux bridge `omn<id>` with a /24 of `OPENMAKER_NETWORK_RANGE`
that no route of the machine's overlaps, and an nftables table `inet omn<id>`, which
- drops whatever the job's hosts send to the machine itself (its services, whatever address
  they listen on; the host's loopback is out of reach anyway) and to other jobs' bridges;
- lets nobody outside open a connection to them (the machine itself may: it is not forwarded);
- drops link-local destinations (a cloud's instance metadata, with the machine's credentials);
- masquerades the rest, so the code reaches the internet where the machine does.
Jobs are thus isolated from one another on bridges of their own, which needs no rule per host
and goes away whole with the job. IPv4 forwarding is switched on for the bridge, and for the
machine's uplinks only when it was off there; then a table `inet omnguard` drops any forwarding
that is not a job's, and both are undone when the last job's bridge goes. Where another table's
forward chain drops by default (iptables' FORWARD on any machine with Docker), a packet dropped
there is dropped whatever this table says: that chain gets a rule accepting the bridge's
traffic (named for the bridge, removed with it), as Docker does for its own; this table still
decides what passes. IPv6 is off on the bridge and on the hosts' `eth0`: the table's rules are
written for IPv4, and no IPv6 path (link-local ones included) leads anywhere.

The hosts' resolver: the sandbox shows `OPENMAKER_RESOLV_CONF` (the machine's /etc/resolv.conf)
at /etc/resolv.conf. A nameserver on the machine's loopback (systemd-resolved's 127.0.0.53,
dnsmasq's 127.0.0.1) is relayed into each host's namespace at the same address, port 53 over
UDP and TCP, so the file holds as it is; one on another address of the machine's gets its
port 53 let through. No other port of the machine opens to the job.

Per host: a thread unshares a network namespace of its own and configures it from inside (the
`eth0` end of a veth pair whose other end joins the bridge, loopback, a default route through
the bridge), makes the relay's listeners there (the embedded S3 endpoint keeps its loopback
URL, see relay.py; the loopback resolvers), and leaves a descriptor that the sandbox enters
(runtime/enter.py) before anything else. Nothing names the namespace: it ends with the code
and the worker's descriptor. The code, root without CAP_NET_ADMIN or CAP_NET_RAW in a user
namespace below the one that owns the namespace, cannot change its address, sniff, forge
packets, or turn IPv6 back on.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from openmaker.runtime import Bind, legacy_forward, netlink, nft_rules, nftables
from openmaker.runtime.nft_rules import (
    Address,
    Chain,
    Established,
    Interface,
    Port,
    Protocol,
    Rule,
    Table,
)
from openmaker.runtime.relay import Relay
from openmaker.settings import Settings

# Names of every link and table openmaker makes: `omn<id>` (a job's bridge, table),
# `omn<id>v<n>` (the machine's end of host n's veth pair). Fits IFNAMSIZ (15) for 999 hosts.
PREFIX = "omn"
GUARD_TABLE = "omnguard"
# The loopback address base of hosts that share the machine's namespace.
SHARED_ADDRESS_BASE = "127.0.1."
# Variables of the code's environment whose endpoint, when it is on this machine, the code
# reaches through the network namespace (never the request's own Environment: a job could name
# the API's port there).
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
DNS_PORT = 53
_STATE = Path("/run/openmaker-network")
_SYS_NET = Path("/sys/class/net")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetworkError(OSError):
    pass


@dataclass(frozen=True)
class JobNetwork:
    """How a job's hosts reach one another, as plain data: on its bridge (`bridge` set), or
    sharing the machine's namespace on loopback addresses (`reason` says why)."""

    addresses: dict[str, str]
    bridge: str | None = None
    gateway: str | None = None
    # Endpoints the code reaches on the machine's loopback: (port, address outside).
    relays: list[tuple[int, str]] = field(default_factory=list)
    reason: str | None = None
    # What the hosts see as /etc/resolv.conf (None: the root filesystem's), and its nameservers
    # on the machine's loopback, relayed into each host's namespace.
    resolv_conf: str | None = None
    resolvers: list[str] = field(default_factory=list)
    # Hosts on several nodes (a Ray cluster): the job's VXLAN segment (overlay.py). Then
    # `addresses` are the hosts' overlay addresses (what algo-N resolves to), `bridge` is the
    # node's bridge of this host alone and `outside` its address there.
    overlay_vni: int | None = None
    # Each host's node (its address the other nodes reach), in the order of the hosts.
    overlay_nodes: list[str] = field(default_factory=list)
    overlay_port: int = 0
    # The range the node takes its bridge's /24 from (the server's OPENMAKER_NETWORK_RANGE).
    overlay_range: str | None = None
    outside: str | None = None
    # Every node's address in the cluster's node table when the host started: out of the
    # code's reach (their Ray services), but for the store's endpoint (overlay.py).
    overlay_cluster: list[str] = field(default_factory=list)

    @property
    def note(self) -> str:
        if self.overlay_vni is not None:
            return f"network of its own across the job's nodes (VXLAN {self.overlay_vni})"
        if self.bridge is not None:
            return f"network {self.gateway}/24 of its own"
        return f"hosts share the machine's network ({self.reason})"


def job_id(home: Path, job_name: str) -> str:
    return hashlib.sha256(f"{home}\0{job_name}".encode()).hexdigest()[:8]


def _home_key(home: Path) -> str:
    return hashlib.sha256(str(home).encode()).hexdigest()[:12]


def shared(hosts: list[str], reason: str, resolv_conf: str | None = None) -> JobNetwork:
    addresses = {name: f"{SHARED_ADDRESS_BASE}{i + 1}" for i, name in enumerate(hosts)}
    return JobNetwork(addresses, reason=reason, resolv_conf=resolv_conf)


def resolv_conf_binds(network: JobNetwork | None, work_dir: Path) -> list[Bind]:
    """What shows the hosts' resolver configuration at /etc/resolv.conf (nothing without one)."""
    if network is None or network.resolv_conf is None:
        return []
    path = work_dir / "resolv.conf"
    path.write_text(network.resolv_conf)
    return [Bind(str(path), "/etc/resolv.conf")]


def unavailable_reason(settings: Settings, hosts: list[str]) -> str | None:
    if settings.shared_network:
        return "OPENMAKER_NETWORK=shared"
    if os.geteuid() != 0:
        return "openmaker is not root"
    # The bridge, links, addresses and routes go over netlink: no `ip` needed. `nft` is for
    # other tables' forward chains that drop (network._pass_dropping_forward_chains).
    if shutil.which("nft") is None:
        return "nft (nftables) is not installed"
    if len(hosts) > 253:
        return "more than 253 hosts"
    return None


def create(
    settings: Settings, job_name: str, hosts: list[str], code_env: Mapping[str, str]
) -> JobNetwork:
    """The job's bridge and rules; where they cannot be made, the shared network, saying why."""
    conf = _read(settings.resolv_conf)
    if reason := unavailable_reason(settings, hosts):
        return shared(hosts, reason, conf)
    home = settings.home
    whole = ipaddress.IPv4Network(settings.network_range)
    alias = f"openmaker:{_home_key(home)}:{job_name}"
    return _create(PREFIX + job_id(home, job_name), alias, whole, hosts, code_env, conf)


def _create(
    bridge: str,
    alias: str,
    whole: ipaddress.IPv4Network,
    hosts: list[str],
    code_env: Mapping[str, str],
    conf: str | None,
    avoid: ipaddress.IPv4Network | None = None,
    extra_forward: tuple[Rule, ...] = (),
) -> JobNetwork:
    relays, allowed = _endpoints(code_env)
    resolvers, local_resolvers = _nameservers(conf or "")
    allowed += [(address, proto, DNS_PORT) for address in local_resolvers for proto in _BOTH]
    # Held only while the subnet is picked and taken (the bridge's route): two jobs conflict
    # there alone. The rest is the bridge's own, and no host is on it before this returns.
    with _lock():
        routes = _routes()
        subnet = _free_subnet(routes, whole, avoid)
        if subnet is None:
            return shared(hosts, f"no /24 of {whole} is free of the machine's routes", conf)
        gateway = str(subnet.network_address + 1)
        try:
            netlink.add_bridge(bridge, alias, gateway, 24)
        except OSError as exc:
            _remove(bridge)
            return shared(hosts, f"its bridge could not be made: {exc}", conf)
    try:
        # Not settable over netlink (IFLA_INET6_CONF is read-only); forwarding was set with
        # the bridge (netlink.add_bridge).
        _write(f"/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6", "1")
        # One batch: the rules (the guard's too, where an uplink must start forwarding), over
        # netlink: `nft` would read the whole ruleset first (~0.5 ms a table). Then what the
        # chains are now (for other tables' forward).
        uplinks = _uplinks_not_forwarding(routes)
        tables = [_table(bridge, subnet, allowed, extra_forward), *([GUARD] if uplinks else [])]
        nftables.apply([m for table in tables for m in nft_rules.messages(table)], bridge)
        _forward_from_uplinks(uplinks)
        _pass_dropping_forward_chains(bridge, nftables.chains())
    except (OSError, NetworkError, ValueError) as exc:
        _remove_rules(bridge)
        with _lock():
            _remove(bridge, rules=False)
        return shared(hosts, f"its bridge could not be made: {exc}", conf)
    addresses = {name: str(subnet.network_address + 2 + i) for i, name in enumerate(hosts)}
    return JobNetwork(addresses, bridge, gateway, relays, None, conf, resolvers)


def remove(home: Path, job_name: str) -> None:
    """Everything of the job's network that is left (its hosts' veth pairs, table, bridge)."""
    bridge = PREFIX + job_id(home, job_name)
    if (_SYS_NET / bridge).exists():
        _remove_rules(bridge)  # the bridge's own: no other job's business
        with _lock():
            _remove(bridge, rules=False)


def jobs_with_networks(home: Path) -> list[str]:
    """The jobs (of the openmaker home `home`) that have a bridge here."""
    mark = f"openmaker:{_home_key(home)}:"
    names = []
    for link in _SYS_NET.glob(PREFIX + "*"):
        with contextlib.suppress(OSError):
            alias = (link / "ifalias").read_text().strip()
            if alias.startswith(mark):
                names.append(alias.removeprefix(mark))
    return sorted(names)


def remove_orphan_tables() -> None:
    """Delete openmaker's tables (of any home) whose bridge is gone: left by a bridge deleted
    without them (by hand, a node's machine lost, an earlier version's rules), such a table
    would still masquerade its subnet, which a later job may be given. A job's table is made
    after its bridge and deleted before it, so one without its bridge is nobody's."""
    try:
        listed = nftables.chains()
    except OSError:
        return  # not root, or no nf_tables: nothing of ours there either
    tables = {
        chain.table
        for chain in listed
        if chain.family == "inet" and chain.table.startswith(PREFIX) and chain.table != GUARD_TABLE
    }
    for table in sorted(tables):
        # Under the lock that bridges are made under: a bridge of that name made after this
        # look would be another job's, whose table comes after it.
        with _lock():
            if not (_SYS_NET / table).exists():
                _remove_rules(table)


def _remove(bridge: str, rules: bool = True) -> None:
    """The bridge and its veth pairs (and its rules unless `rules` is False: removed before);
    under the lock, which the last bridge's end (the uplinks restored) needs."""
    if rules:
        _remove_rules(bridge)
    veths = [link.name for link in _SYS_NET.glob(bridge + "v*")]
    for name in [*veths, bridge]:  # each on its own: one that fails leaves the others going
        with contextlib.suppress(OSError):
            netlink.delete_links([name])
    if not any(_SYS_NET.glob(PREFIX + "*")):
        _restore_uplinks()


def _remove_rules(bridge: str) -> None:
    with contextlib.suppress(OSError):  # gone already, or never made
        nftables.delete_table("inet", bridge)  # `nft` would read the whole ruleset first
    _unpass_dropping_forward_chains(bridge)


class HostNamespace:
    """One host's network namespace, held open until the host ends."""

    def __init__(self, fd: int, veth: str, relay: Relay) -> None:
        self.fd, self.veth, self.relay = fd, veth, relay

    def close(self) -> None:
        self.relay.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        # Now, not when the kernel gets to the namespace.
        with contextlib.suppress(OSError):
            netlink.delete_links([self.veth])


def enter_host(network: JobNetwork, host: str, index: int) -> HostNamespace:
    """Make and configure the host's namespace; see the module's description (and
    overlay.py for hosts on several nodes)."""
    from openmaker.runtime import overlay  # it builds on this module

    assert network.bridge is not None and network.gateway is not None
    veth, gateway = f"{network.bridge}v{index + 1}", network.gateway
    relay = Relay()
    made: dict[str, int] = {}
    failure: list[BaseException] = []
    outside = network.outside or network.addresses[host]

    def inside() -> None:
        try:
            # Opened in the node's namespace: the overlay's UDP socket is made there.
            made["rtnl"] = (
                netlink.route_socket().detach() if network.overlay_vni is not None else -1
            )
            if _libc.unshare(CLONE_NEWNET) != 0:
                raise NetworkError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
            made["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            # No IPv6 but loopback's: eth0, made after this, takes it from the default and
            # never gets even a link-local address. (The default alone takes no lock: cheap.)
            _write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
            netlink.add_host_link(veth, os.getpid(), outside, 24, gateway)
            if made["rtnl"] >= 0:
                with socket.socket(fileno=made.pop("rtnl")) as rtnl:
                    overlay.join(rtnl, network, index, made["fd"])
            # As in a container: any port may be bound, and ping needs no raw socket.
            _write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")
            _write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
            # At the address the code is given (a loopback address, not always 127.0.0.1).
            for port, target in network.relays:
                relay.listen((target, port), (target, port))
            for resolver in network.resolvers:  # at the same address: resolv.conf holds
                relay.listen((resolver, DNS_PORT), (resolver, DNS_PORT))
                relay.listen_datagrams((resolver, DNS_PORT), (resolver, DNS_PORT))
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=inside)  # its namespace ends with it
    thread.start()
    thread.join()
    if made.get("rtnl", -1) >= 0:  # not used: the namespace could not be made
        os.close(made["rtnl"])
    namespace = HostNamespace(made.get("fd", -1), veth, relay)
    try:
        if failure:
            raise failure[0]
        netlink.enslave(veth, network.bridge)
        # Made in this namespace's default (IPv6 on); netlink cannot set it (see _create).
        _write(f"/proc/sys/net/ipv6/conf/{veth}/disable_ipv6", "1")
    except (OSError, NetworkError) as exc:
        namespace.close()
        raise NetworkError(f"the network of host {host} could not be made: {exc}") from None
    relay.start()
    return namespace


def _endpoints(
    code_env: Mapping[str, str],
) -> tuple[list[tuple[int, str]], list[tuple[str, Protocol, int]]]:
    """(the loopback endpoints to relay, the machine's other addresses to let through) among
    the endpoints openmaker gives the code."""
    relays: list[tuple[int, str]] = []
    allowed: list[tuple[str, Protocol, int]] = []
    for name in ENDPOINT_VARIABLES:
        if not (url := code_env.get(name)):
            continue
        parsed = urlparse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            address = ipaddress.ip_address(socket.gethostbyname(parsed.hostname or ""))
        except (OSError, ValueError):
            continue
        if address.is_loopback:
            relays.append((port, str(address)))
        elif _is_local(str(address)):
            allowed.append((str(address), "tcp", port))
    return list(dict.fromkeys(relays)), list(dict.fromkeys(allowed))


_BOTH: tuple[Protocol, ...] = ("udp", "tcp")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _nameservers(conf: str) -> tuple[list[str], list[str]]:
    """(the nameservers on the machine's loopback, those on another of its addresses)."""
    loopback, local = [], []
    for line in conf.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            address = ipaddress.ip_address(fields[1])
        except ValueError:
            continue  # with a zone (fe80::1%eth0): not the machine's own
        if address.is_loopback:
            loopback.append(str(address))
        elif address.version == 4 and _is_local(str(address)):
            local.append(str(address))
    return list(dict.fromkeys(loopback)), list(dict.fromkeys(local))


def _is_local(address: str) -> bool:
    """Whether `address` is one of the machine's own (only those can be bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def _table(
    bridge: str,
    subnet: ipaddress.IPv4Network,
    allowed: list[tuple[str, Protocol, int]],
    extra_forward: tuple[Rule, ...] = (),
) -> Table:
    """The bridge's table (nft_rules.text shows it as `nft` reads it)."""
    into, out_of = Interface("iif", bridge), Interface("oif", bridge)
    through = tuple(
        Rule((into, _host(address), Port(proto, port)), "accept")
        for address, proto, port in allowed
    )
    input_rules = (
        *through,
        # Answers to connections the machine opened (an endpoint's proxy to its instances).
        Rule((into, Established()), "accept"),
        Rule((into,), "drop"),
    )
    forward = (
        Rule((into, out_of), "accept"),
        *extra_forward,
        Rule((into, Interface("oif", f"{PREFIX}*")), "drop"),
        Rule((into, Address("daddr", ipaddress.IPv4Network("169.254.0.0/16"))), "drop"),
        Rule((out_of, Established()), "accept"),
        Rule((out_of,), "drop"),
    )
    # From this bridge alone: a table its bridge's removal left behind (by hand, or a node
    # lost) must not masquerade a later job's hosts to each other on the same subnet.
    masquerade = Rule(
        (into, Address("saddr", subnet), Interface("oif", bridge, negate=True)), "masquerade"
    )
    return Table(
        bridge,
        (
            Chain("input", "filter", "input", input_rules),
            Chain("forward", "filter", "forward", forward),
            Chain("postrouting", "nat", "postrouting", (masquerade,)),
        ),
    )


def _host(address: str) -> Address:
    """`ip daddr ADDRESS`."""
    return Address("daddr", ipaddress.IPv4Network(address))


def _routes() -> list[dict[str, Any]]:
    """The machine's IPv4 routes, of every table."""
    try:
        return netlink.ipv4_routes()
    except OSError as exc:
        raise NetworkError(f"listing the routes: {exc}") from None


def _free_subnet(
    routes: list[dict[str, Any]],
    whole: ipaddress.IPv4Network,
    avoid: ipaddress.IPv4Network | None = None,
) -> ipaddress.IPv4Network | None:
    """The first /24 of the range that overlaps none of `routes` (those of other jobs'
    bridges included), nor `avoid`."""
    taken = []
    for route in routes:
        destination = route.get("dst", "default")
        if destination != "default":
            with contextlib.suppress(ValueError):
                taken.append(ipaddress.IPv4Network(destination, strict=False))
    if avoid is not None:
        taken.append(avoid)
    if whole.prefixlen > 24:
        return None
    for subnet in whole.subnets(new_prefix=24):
        if not any(subnet.overlaps(route) for route in taken):
            return subnet
    return None


# Made (with a job's rules) when an uplink starts forwarding for the jobs: no other forwarding.
_ANY_JOB = f"{PREFIX}*"
GUARD = Table(
    GUARD_TABLE,
    (
        Chain(
            "forward",
            "filter",
            "forward",
            (Rule((Interface("iif", _ANY_JOB, True), Interface("oif", _ANY_JOB, True)), "drop"),),
        ),
    ),
)


def _uplinks_not_forwarding(routes: list[dict[str, Any]]) -> list[str]:
    """The uplinks (the devices of the main table's default routes among `routes`) that do not
    forward: replies come back in through them."""
    uplinks = {
        route["dev"]
        for route in routes
        if route.get("dst") == "default" and route.get("table", "main") == "main" and "dev" in route
    }
    return sorted(
        device
        for device in uplinks
        if Path(f"/proc/sys/net/ipv4/conf/{device}/forwarding").read_text().strip() != "1"
    )


def _forward_from_uplinks(uplinks: list[str]) -> None:
    """The uplinks that did not forward do from now on, for the jobs' traffic alone (the guard
    table, made before), until the last bridge goes."""
    for device in uplinks:
        _STATE.mkdir(mode=0o700, exist_ok=True)
        (_STATE / f"forwarding-{device}").touch()
        _write(f"/proc/sys/net/ipv4/conf/{device}/forwarding", "1")


def _pass_dropping_forward_chains(bridge: str, listed: list[nftables.ChainInfo]) -> None:
    """In every other table's forward chain whose policy drops (iptables' FORWARD where Docker
    runs, a firewall's), a rule accepting what comes from or goes to the bridge. Both ends of a
    job's traffic are the bridge, so the two rules are all a job needs; they carry its name.
    `listed`: the machine's chains (nftables.chains)."""
    comment = f"openmaker {bridge}"
    chains = [
        (chain.family, chain.table, chain.name)
        for chain in listed
        if chain.family != "netdev"  # no forward hook: its 2 is another
        and chain.hook == nftables.FORWARD_HOOK
        and chain.policy == nftables.NF_DROP
        and not chain.table.startswith(PREFIX)
    ]
    tool = _legacy_iptables()
    legacy = tool is not None and _legacy_forward_drops(tool)
    # Written first: removing the bridge then looks at these chains alone, not the ruleset.
    _STATE.mkdir(mode=0o700, exist_ok=True)
    _passed(bridge).write_text(json.dumps({"chains": chains, "legacy": legacy}))
    for family, table, chain in chains:
        # A bridge family's chain sees the bridge's ports as interfaces.
        sides = ("ibrname", "obrname") if family == "bridge" else ("iifname", "oifname")
        _nft(
            "".join(
                f'insert rule {family} {table} {chain} {side} "{bridge}" accept '
                f'comment "{comment}"\n'
                for side in sides
            )
        )
    if tool is not None and legacy:
        for side in ("-i", "-o"):
            _run([tool, "-w", "-I", "FORWARD", side, bridge, "-j", "ACCEPT"])


def _passed(bridge: str) -> Path:
    """The record of which chains got the bridge's rules (see _pass_dropping_forward_chains)."""
    return _STATE / f"passed-{bridge}"


def _unpass_dropping_forward_chains(bridge: str) -> None:
    comment = f"openmaker {bridge}"
    try:
        passed = json.loads(_passed(bridge).read_text())
        chains, legacy = [tuple(chain) for chain in passed["chains"]], bool(passed["legacy"])
    except (OSError, ValueError, KeyError, TypeError):  # not recorded (made by an older version)
        chains, legacy = [], True
        listing = ["list ruleset"]
    else:
        listing = [f"list chain {family} {table} {chain}" for family, table, chain in chains]
    with contextlib.suppress(NetworkError, ValueError):
        for command in listing:
            listed = json.loads(_run(["nft", "-j", "-a", *command.split()]) or "{}")
            deletions = [
                f"delete rule {r['family']} {r['table']} {r['chain']} handle {r['handle']}\n"
                for item in listed.get("nftables", [])
                if (r := item.get("rule")) and r.get("comment") == comment
            ]
            if deletions:
                _nft("".join(deletions))
    if legacy and (tool := _legacy_iptables()) is not None:
        for side in ("-i", "-o"):
            rule = ["FORWARD", side, bridge, "-j", "ACCEPT"]
            while subprocess.run([tool, "-w", "-D", *rule], capture_output=True).returncode == 0:
                pass
    _passed(bridge).unlink(missing_ok=True)


def _legacy_forward_drops(tool: str) -> bool:
    """Read from the kernel: `tool -S FORWARD` is a process for every job (~2 ms, more forked
    from a big worker). The tool's answer where the kernel's cannot be read."""
    try:
        return legacy_forward.forward_drops()
    except OSError:
        return "-P FORWARD DROP" in _run([tool, "-w", "-S", "FORWARD"])


def _legacy_iptables() -> str | None:
    """iptables-legacy, where its filter table is in use (nftables does not see it)."""
    try:
        names = Path("/proc/net/ip_tables_names").read_text().split()
    except OSError:
        return None
    return shutil.which("iptables-legacy") if "filter" in names else None


def _restore_uplinks() -> None:
    marks = list(_STATE.glob("forwarding-*")) if _STATE.is_dir() else []
    for mark in marks:
        device = mark.name.removeprefix("forwarding-")
        with contextlib.suppress(OSError):
            _write(f"/proc/sys/net/ipv4/conf/{device}/forwarding", "0")
        mark.unlink()
    if marks:
        with contextlib.suppress(OSError):
            nftables.delete_table("inet", GUARD_TABLE)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One job at a time picks its subnet and makes its bridge, on the whole machine."""
    _STATE.mkdir(mode=0o700, exist_ok=True)
    with open(_STATE / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _nft(rules: str) -> None:
    _run(["nft", "-f", "-"], rules)


def _run(argv: list[str], given: str | None = None) -> str:
    try:
        done = subprocess.run(argv, input=given, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise NetworkError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        raise NetworkError(f"{argv[0]}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _write(path: str, value: str) -> None:
    """A sysctl: one open and one write, no Python file object."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
