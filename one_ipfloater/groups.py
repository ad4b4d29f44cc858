"""Router groups on one shared state: which pools this router applies, and the guard
that tells an operator when the routers' configs drifted apart.

Several groups (one per public segment or data centre) share one etcd prefix. Every
router plans changes on the whole shared state (any daemon accepts a change for any
pool, quotas count everything), but its kernel holds only the pools of its own group:
their NAT rules, their BLOCK_PUBLIC_IPS drops, their on-link /32s and their conntrack
flushes. Without ROUTER_GROUP a router serves every pool, as before.

The guard: each daemon on etcd publishes what it serves under `<prefix>/routers/<name>`
and reads the others'. Two routers whose pool sections differ would disagree about
which pool an address is in (and so about who applies it); a pool that no live router
serves has floating IPs that reach nobody. Both are warnings (/v1/health, the log), not
refusals: the routers keep forwarding what they have.

Pure functions; the daemon does the I/O (daemon.guard_loop).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address

REFRESH_INTERVAL = 2.0  # seconds between a daemon's keep-alives and readings
LEASE_TTL = 10  # seconds without a keep-alive after which etcd drops a router's registration


def served_pools(config) -> tuple[str, ...] | None:
    """The pools this router applies; None: every pool (no ROUTER_GROUP)."""
    if config.router_group is None:
        return None
    return tuple(pool for pool, group in config.pool_groups if group == config.router_group)


def pool_group(config, pool: str) -> str | None:
    """The group that serves `pool`; None without router groups."""
    return dict(config.pool_groups or ()).get(pool)


def served_addresses(pools: Iterable[tuple[str, Sequence[IPv4Address]]],
                     served: Iterable[str] | None) -> frozenset[IPv4Address] | None:
    """Every address of the served pools; None (no filter) when every pool is served."""
    if served is None:
        return None
    names = set(served)
    return frozenset(addr for name, addrs in pools if name in names for addr in addrs)


def only_served(pairs: Iterable[tuple[IPv4Address, IPv4Address]],
                served: frozenset[IPv4Address] | None) -> list:
    """The (public, private) pairs whose public address this router applies."""
    if served is None:
        return pairs if isinstance(pairs, list) else list(pairs)
    return [pair for pair in pairs if pair[0] in served]


def served_change(change, served: frozenset[IPv4Address] | None):
    """The part of a Change this router's kernel follows (the store takes all of it)."""
    if served is None:
        return change
    return type(change)(before=tuple(a for a in change.before if a.public_ip in served),
                        after=tuple(a for a in change.after if a.public_ip in served))


# -- the guard --------------------------------------------------------------------------

def layout(pools: Iterable[tuple[str, Sequence[IPv4Address]]], pool_groups) -> dict[str, dict]:
    """Each pool's group and a digest of its addresses: what every router must agree on."""
    groups = dict(pool_groups or ())
    out = {}
    for name, addrs in pools:
        digest = hashlib.sha256(",".join(str(int(a)) for a in sorted(addrs)).encode()).hexdigest()[:16]
        out[name] = {"group": groups.get(name), "addresses": digest}
    return out


def fingerprint(pool_layout: dict[str, dict]) -> str:
    return hashlib.sha256(json.dumps(pool_layout, sort_keys=True).encode()).hexdigest()[:16]


def registration(pool_layout: dict[str, dict], group: str | None, served: Iterable[str],
                 ha_state: str, now: float) -> dict:
    """What a daemon publishes under <prefix>/routers/<name> (`time`: when it did)."""
    return {"group": group, "fingerprint": fingerprint(pool_layout), "pools": pool_layout,
            "served": list(served), "ha_state": ha_state, "time": now}


def _difference(pool: str, mine: dict | None, theirs: dict | None) -> str:
    if theirs is None:
        return "has no such pool"
    if mine is None:
        return f"has it (group {theirs.get('group')!r}), this router has not"
    if mine.get("group") is None:
        return f"says its group is {theirs.get('group')!r}; this router has no ROUTER_GROUP"
    if theirs.get("group") is None:
        return f"has no ROUTER_GROUP; here its group is {mine.get('group')!r}"
    if mine.get("group") != theirs.get("group"):
        return f"says its group is {theirs.get('group')!r}, not {mine.get('group')!r}"
    return "has other addresses in it"


def judge(me: str, pool_layout: dict[str, dict], routers: dict[str, dict]) -> list[str]:
    """One warning line per drift: a live router (`routers`: name -> its registration,
    this one included) whose pool layout differs, naming the pool, and a pool that no
    live router serves."""
    warnings = []
    mine = fingerprint(pool_layout)
    for name in sorted(routers):
        record = routers[name]
        if name == me or record.get("fingerprint") == mine:
            continue
        theirs = record.get("pools") or {}
        for pool in sorted(set(pool_layout) | set(theirs)):
            if pool_layout.get(pool) != theirs.get(pool):
                warnings.append(f"pool {pool!r}: router {name!r} (group {record.get('group')!r}) "
                                f"{_difference(pool, pool_layout.get(pool), theirs.get(pool))}; every router "
                                "must carry the same pool sections")
    served = {pool for record in routers.values() for pool in record.get("served") or ()}
    for pool in pool_layout:
        if pool not in served:
            group = pool_layout[pool].get("group")
            warnings.append(f"pool {pool!r}: no live router of group {group!r} serves it: its floating "
                            "IPs are applied nowhere")
    return warnings

