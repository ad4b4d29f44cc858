"""What the daemon checks before it touches anything, shared by `run` and `check`.

`check` must say what `run` will do, so both call the same functions here: the paths
(safefs rules, nothing created), the host (PUBLIC_INTERFACE, pool addresses that are the
router's own, REST_IP), and the warnings about what silently breaks floating IPs or
exposes the API. The judgements are pure functions of the config and the host facts;
gathering the facts is the only I/O, and it writes nothing.
"""

from __future__ import annotations

import logging
from collections import namedtuple
from ipaddress import IPv4Address, ip_address

from . import safefs
from .model import FipError

log = logging.getLogger(__name__)

# A named tuple, not a dataclass: this is on the start's path (see nat.ruleset.Rule).
HostFacts = namedtuple("HostFacts", "interface_exists router_addresses iface_addresses ip_forward nonlocal_bind")
HostFacts.__doc__ = """What preflight needs to know about the host (network namespace):
whether PUBLIC_INTERFACE exists, every IPv4 address of the host, the /32s on
PUBLIC_INTERFACE, and net.ipv4.ip_forward / ip_nonlocal_bind (None when unreadable)."""


def read_sysctl(name: str, root: str = "/proc/sys/net/ipv4") -> int | None:
    """An integer sysctl of this network namespace, None when it cannot be read."""
    try:
        with open(f"{root}/{name}", "rb") as value:  # (binary: no text layer on the start's path)
            return int(value.read())
    except (OSError, ValueError):
        return None


def host_facts(config, host) -> HostFacts:
    """Read the host facts (netlink and /proc; nothing is written)."""
    iface = config.public_interface
    exists = bool(iface) and host.interface_exists(iface)
    return HostFacts(exists, frozenset(host.all_local_addresses()),
                     frozenset(host.host_addresses(iface)) if exists else frozenset(),
                     read_sysctl("ip_forward"), read_sysctl("ip_nonlocal_bind"))


def host_problems(config, facts: HostFacts, pool: frozenset | None = None) -> list[str]:
    """What makes `run` refuse to start on this host; one line each (pure). `pool`: the
    config's pool as a set, when the caller has one (sets of addresses combine on their
    stored hashes; IPv4Address.__hash__ is Python code, paid per address otherwise)."""
    if pool is None:
        pool = frozenset(config.pool)
    problems = []
    iface = config.public_interface
    if iface and not facts.interface_exists:
        problems.append(f"PUBLIC_INTERFACE: {iface!r} does not exist")
    # our own floating addresses on PUBLIC_INTERFACE are not a clash: they are ours
    clash = sorted((facts.router_addresses - facts.iface_addresses) & pool)
    if clash:
        more = f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""
        problems.append(f"IP_POOL: {clash[0]} is an address of the router itself{more}")
    rest = ip_address(config.rest_ip)
    if (isinstance(rest, IPv4Address) and not rest.is_unspecified and not rest.is_loopback
            and rest not in facts.router_addresses and facts.nonlocal_bind != 1):
        problems.append(f"REST_IP: {rest} is not an address of this host (the API could not listen on it)")
    metrics = ip_address(config.metrics_address[0]) if getattr(config, "metrics_address", None) else None
    if (isinstance(metrics, IPv4Address) and not metrics.is_unspecified and not metrics.is_loopback
            and metrics not in facts.router_addresses and facts.nonlocal_bind != 1):
        problems.append(f"METRICS_ADDRESS: {metrics} is not an address of this host "
                        "(the metrics could not listen on it)")
    return problems


def host_warnings(config, facts: HostFacts) -> list[str]:
    """What does not stop the start but silently breaks floating IPs or exposes the API (pure)."""
    warnings = []
    if facts.ip_forward == 0:
        warnings.append("net.ipv4.ip_forward = 0 in this network namespace: the router does not forward, "
                        "so no floating IP reaches its VM (sysctl -w net.ipv4.ip_forward=1)")
    if not ip_address(config.rest_ip).is_loopback:
        warnings.append(f"REST_IP: {config.rest_ip} is not a loopback address: the API speaks plain HTTP, "
                        "its bearer tokens cross the network in clear unless TLS is in front "
                        "(this daemon cannot tell; see the README)")
    return warnings


def require(config, host, pool: frozenset) -> tuple[list[str], frozenset]:
    """The host checks of the start: FipError(bad_config) on the first problem; the
    warnings, logged once; and the router's own addresses outside `pool` (the NAT
    targets the registry refuses)."""
    facts = host_facts(config, host)
    problems = host_problems(config, facts, pool)
    if problems:
        raise FipError("bad_config", problems[0], 500)
    warnings = host_warnings(config, facts)
    for line in warnings:
        log.warning("%s", line)
    return warnings, facts.router_addresses - pool


def paths(config) -> list[tuple[str, str, bool]]:
    """(config key, path, secret) of every file the daemon opens."""
    db = config.db_path
    return [("DB", db, False), ("DB", db + "-wal", False), ("DB", db + "-shm", False),
            ("DB", db + ".lock", False), ("TOKEN_FILE", config.token_file, True),
            ("XTABLES_LOCK", config.xtables_lock, False)]


def path_problems(config) -> list[str]:
    """Every path refused by the safefs rules, one line each; creates nothing."""
    problems: list[str] = []
    for key, path, secret in paths(config):
        try:
            safefs.check_file(key, path, secret)
        except safefs.UnsafePath as exc:
            problem = str(exc)
        except OSError as exc:
            problem = f"{key}: {path}: {exc.strerror}"
        else:
            continue
        if problem not in problems:  # DB's four files share one directory
            problems.append(problem)
    return problems


def backend_problem(config) -> tuple[str, str | None]:
    """The NAT backend `run` would use, and why it could not (None: it can); touches
    no rule."""
    from .nat import choose_backend, iptables_variant, legacy_usable
    from .nat.base import NatError
    name = config.nat_backend
    if name == "auto":
        name = choose_backend(name, iptables_variant(), legacy_usable())
    try:
        if name == "nftables":
            from .nat.nftables import open_runner
            open_runner().close()
        elif not legacy_usable():
            return name, "NAT_BACKEND: iptables needs python-iptables, which is not installed"
        else:
            from .nat.iptables import IptablesBackend
            backend = IptablesBackend(lock_path=config.xtables_lock)
            for tool in ("save", "restore"):
                backend._tool(tool)
    except NatError as exc:
        return name, f"NAT_BACKEND: {exc}"
    return name, None


def report(config, host) -> dict:
    """`ipfloaterd check`: every problem `run` would refuse, and the warnings it would log."""
    errors = path_problems(config)
    try:
        facts = host_facts(config, host)
    except (OSError, RuntimeError) as exc:  # netlink refused: HostNetError, NetlinkError
        errors.append(f"host: cannot read interfaces and addresses: {exc}")
        warnings = []
    else:
        errors += host_problems(config, facts)
        warnings = host_warnings(config, facts)
    backend, problem = backend_problem(config)
    if problem:
        errors.append(problem)
    return {"backend": backend, "errors": errors, "warnings": warnings}
