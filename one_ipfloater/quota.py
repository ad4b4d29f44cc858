"""Allocation quotas, enforced by the daemon (pure: no I/O).

The limits live where operators keep them (OpenNebula's user and group templates, read
by the front-end); the daemon only counts. It counts under the service lock, in the same
critical section that picks the address, so that racing requests of one tenant can never
take more than the limit between "count" and "take" (a check in the front-end could not
promise that: twenty hooks would all see the same count).

A quota is (scope, limit, pool): the allocations whose owner or owner_group is `scope`
(in `pool`, or in any pool when pool is None) may number at most `limit`. Only new
allocations are refused: a ref that already holds its address is never counted against,
and a lowered limit takes nothing away.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable
from typing import Any

from .addresses import POOL_NAME_RE
from .model import TEXT_FIELD_RE, Allocation, FipError, Registry, bad_request

MAX_QUOTAS = 16
MAX_LIMIT = 1_000_000


class Quota(namedtuple("Quota", "scope limit pool")):
    """At most `limit` allocations for `scope` (an owner or owner_group) in `pool`
    (None: all pools together)."""

    __slots__ = ()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_quotas(value: Any, field: str = "quota") -> tuple[Quota, ...]:
    """The request's `quota` list, validated; every problem is a 400 naming the entry,
    the field and the value. A limit of -1 means unlimited (the entry is dropped)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad_request(f"{field}: {_show(value)} is not a list of quota objects")
    if len(value) > MAX_QUOTAS:
        raise bad_request(f"{field}: {len(value)} entries is over the limit of {MAX_QUOTAS}")
    out = []
    for i, entry in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(entry, dict):
            raise bad_request(f"{where}: {_show(entry)} is not an object")
        unknown = sorted(set(entry) - {"scope", "limit", "pool"})
        if unknown:
            raise bad_request(f"{where}.{unknown[0][:40]}: unknown field (allowed: limit, pool, scope)")
        scope, limit, pool = entry.get("scope"), entry.get("limit"), entry.get("pool")
        if not isinstance(scope, str) or not TEXT_FIELD_RE.fullmatch(scope):
            raise bad_request(f"{where}.scope: {_show(scope)} must be 1-128 characters of "
                              "letters, digits and _.:@/+-")
        if isinstance(limit, bool) or not isinstance(limit, int) or not -1 <= limit <= MAX_LIMIT:
            raise bad_request(f"{where}.limit: {_show(limit)} is not an integer from -1 "
                              f"(unlimited) to {MAX_LIMIT}")
        if pool is not None and (not isinstance(pool, str) or not POOL_NAME_RE.fullmatch(pool)):
            raise bad_request(f"{where}.pool: {_show(pool)} is not a pool name")
        if limit >= 0:
            out.append(Quota(scope, limit, pool))
    return tuple(out)


def held(registry: Registry, scope: str, pool: str | None = None) -> int:
    """How many allocations `scope` holds (as owner or owner_group), in `pool` or in all."""
    mine = registry.held_by(scope)
    if pool is None:
        return len(mine)
    return sum(1 for ip in mine if registry.pool_of(ip) == pool)


def check_quotas(registry: Registry, new: Allocation, quotas: Iterable[Quota]) -> None:
    """Refuse `new` (not yet in the registry) when it would take a scope over a limit.

    A quota must name the request's owner or owner_group: one that names someone else
    would count a tenant the request is not for (a 400, not a silent no-op)."""
    new_pool = None
    for i, q in enumerate(quotas):
        if q.scope not in (new.owner, new.owner_group):
            raise bad_request(f"quota[{i}].scope: {q.scope!r} is neither the owner "
                              f"({new.owner!r}) nor the owner_group ({new.owner_group!r}) of the request")
        if q.pool is not None:
            if new_pool is None:
                new_pool = registry.pool_of(new.public_ip)
            if new_pool != q.pool:
                continue
        count = held(registry, q.scope, q.pool)
        if count >= q.limit:
            where = f"in pool {q.pool!r}" if q.pool is not None else "in all pools"
            raise FipError("quota_exceeded",
                           f"quota: {q.scope} already holds {count} floating IP(s) {where}; "
                           f"its limit is {q.limit}", 409)
