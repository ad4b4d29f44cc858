"""The floating-IP registry and its transitions (pure: no I/O, no clock).

Every operation first *plans* a change against the current registry (raising FipError
when the request is not allowed) and only then is the change applied, after it has been
persisted and the NAT rules follow it. That split is what makes a request either fully
applied or not at all. Semantics follow AWS Elastic IPs / Neutron floating IPs:
allocate takes an address out of the pool for an owner, associate points it at a private
address, disassociate un-points it, release gives it back.
"""

from __future__ import annotations

import bisect
import re
from collections import namedtuple
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network

from .addresses import DEFAULT_POOL, AddressError, check_private_target


# What an `owner` or a `ref` may be; always matched whole (fullmatch): no newline at the end.
TEXT_FIELD_RE = re.compile(r"[A-Za-z0-9_.:@/+-]{1,128}")


class FipError(Exception):
    """A refused request: a stable machine code, an HTTP status and one human line."""

    def __init__(self, code: str, message: str, status: int):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def bad_request(message: str) -> FipError:
    return FipError("bad_request", message, 400)


class Allocation(namedtuple("Allocation", "public_ip owner ref private_ip owner_group",
                            defaults=(None, None, None, None))):
    """One public address taken from the pool (public_ip), maybe pointed at a private
    address (private_ip), with who holds it (owner) and for what (ref). owner_group: the
    owner's group, counted by group quotas (quota.py). A named tuple: see nat.ruleset.Rule."""

    __slots__ = ()

    def as_dict(self, in_pool: bool = True, pool: str | None = DEFAULT_POOL) -> dict:
        return {
            "pool": pool if in_pool else None,
            "public_ip": str(self.public_ip),
            "private_ip": str(self.private_ip) if self.private_ip else None,
            "owner": self.owner,
            "owner_group": self.owner_group,
            "ref": self.ref,
            "status": "associated" if self.private_ip else "allocated",
            "in_pool": in_pool,
        }


class Change(namedtuple("Change", "before after", defaults=((), ()))):
    """What one request does: allocations removed (before) and added (after), tuples of
    Allocation keyed by public address."""

    __slots__ = ()

    @property
    def noop(self) -> bool:
        return self.before == self.after

    def inverse(self) -> "Change":
        return Change(before=self.after, after=self.before)

    def then(self, other: "Change") -> "Change":
        """This change followed by `other`, as one change."""
        replaced = {a.public_ip for a in other.before}
        before = self.before + tuple(a for a in other.before if a.public_ip not in
                                     {x.public_ip for x in self.after})
        after = tuple(a for a in self.after if a.public_ip not in replaced) + other.after
        return Change(before=before, after=after)

    def associations(self) -> tuple[list, list]:
        """(public, private) pairs before and after: what the NAT rules follow."""
        return ([(a.public_ip, a.private_ip) for a in self.before if a.private_ip],
                [(a.public_ip, a.private_ip) for a in self.after if a.private_ip])

    def moved_addresses(self) -> set[IPv4Address]:
        """Public addresses whose NAT target went away or changed (moved, released): their
        conntrack entries must go, or their flows keep the old binding. A newly associated
        address has no entry to cut: forwarded packets to it were dropped before conntrack
        confirmed them (ruleset.CHAIN_FWD), so none was recorded without NAT."""
        old = {a.public_ip: a.private_ip for a in self.before if a.private_ip}
        new = {a.public_ip: a.private_ip for a in self.after if a.private_ip}
        return {pub for pub, priv in old.items() if new.get(pub) != priv}


def _scopes(alloc: Allocation) -> set[str]:
    """What an allocation counts for: its owner and its owner_group."""
    return {alloc.owner, alloc.owner_group} - {None}


class Registry:
    """In-memory view of the allocations, indexed by public, private address and ref.

    `pool` is every configured address; `pools` splits it into named pools (name ->
    addresses; default: all of `pool` is the pool `default`). An allocation's pool is not
    stored: it follows from its address (`pool_of`), so moving a range between pools in
    the config moves its allocations with it."""

    def __init__(self, pool: Sequence[IPv4Address], allocations: Iterable[Allocation] = (),
                 router_addresses: Iterable[IPv4Address] = (),
                 pools: Iterable[tuple[str, Sequence[IPv4Address]]] | None = None):
        self.pool = frozenset(pool)
        self.pools: dict[str, Sequence[IPv4Address]] = dict(pools) if pools is not None \
            else {DEFAULT_POOL: pool}
        self.router_addresses = frozenset(router_addresses)
        self._by_public: dict[IPv4Address, Allocation] = {a.public_ip: a for a in allocations}

    # The other indexes are built from `_by_public` when first used: the start needs only
    # the associations to put the rules in place, and building these means hashing every
    # IPv4Address (Python code; benchmarks/ANALYSIS.md has the cost). One first built in the middle of `_add` or
    # `_remove` already reflects that change, so both are idempotent on these indexes.

    @cached_property
    def _by_private(self) -> dict[IPv4Address, IPv4Address]:
        return {a.private_ip: a.public_ip for a in self._by_public.values() if a.private_ip}

    @cached_property
    def _by_ref(self) -> dict[str, IPv4Address]:
        return {a.ref: a.public_ip for a in self._by_public.values() if a.ref}

    @cached_property
    def _by_scope(self) -> dict[str, set[IPv4Address]]:
        """Public addresses per owner and per owner_group: what quotas count (quota.py),
        without a walk over every allocation under the service lock."""
        index: dict[str, set[IPv4Address]] = {}
        for a in self._by_public.values():
            for scope in _scopes(a):
                index.setdefault(scope, set()).add(a.public_ip)
        return index

    @cached_property
    def _free_by_pool(self) -> dict[str, list[int]]:
        """Free addresses of each pool as sorted integers (allocate takes the lowest)."""
        taken = set(map(int, self._by_public))
        return {name: sorted(set(map(int, addrs)) - taken) for name, addrs in self.pools.items()}

    @property
    def _free(self) -> list[int]:
        """All free addresses, sorted (with one pool: that pool's list itself)."""
        lists = list(self._free_by_pool.values())
        return lists[0] if len(lists) == 1 else sorted(i for free in lists for i in free)

    @cached_property
    def _pool_ints(self) -> list[tuple[str, list[int]]]:
        """(name, sorted integers) per pool, for `pool_of` with several pools."""
        return [(name, sorted(map(int, addrs))) for name, addrs in self.pools.items()]

    # -- queries ---------------------------------------------------------------------

    def __iter__(self) -> Iterator[Allocation]:
        return iter(sorted(self._by_public.values(), key=lambda a: int(a.public_ip)))

    def __len__(self) -> int:
        return len(self._by_public)

    def held_by(self, scope: str) -> set[IPv4Address]:
        """The public addresses whose owner or owner_group is `scope` (do not modify)."""
        return self._by_scope.get(scope, set())

    def get(self, public_ip: IPv4Address) -> Allocation | None:
        return self._by_public.get(public_ip)

    def by_private(self, private_ip: IPv4Address) -> Allocation | None:
        pub = self._by_private.get(private_ip)
        return self._by_public[pub] if pub else None

    def by_ref(self, ref: str) -> Allocation | None:
        pub = self._by_ref.get(ref)
        return self._by_public[pub] if pub else None

    def associations(self) -> list[tuple[IPv4Address, IPv4Address]]:
        """(public, private) pairs: the input of the desired NAT rule set."""
        return sorted(((a.public_ip, a.private_ip) for a in self._by_public.values() if a.private_ip),
                      key=lambda pair: int(pair[0]))

    def association_count(self, pool: str | None = None) -> int:
        """Associated addresses (of one pool, or all)."""
        if pool is None:
            return sum(1 for a in self._by_public.values() if a.private_ip)
        return sum(1 for a in self._by_public.values() if a.private_ip and self.pool_of(a.public_ip) == pool)

    def free_count(self, pool: str | None = None) -> int:
        """Free addresses of one pool, or of all of them."""
        if pool is not None:
            return len(self._free_by_pool[pool])
        return sum(map(len, self._free_by_pool.values()))

    def pool_of(self, public_ip: IPv4Address) -> str | None:
        """The pool an address belongs to; None: outside every configured pool."""
        if public_ip not in self.pool:
            return None
        if len(self.pools) == 1:
            return next(iter(self.pools))
        value = int(public_ip)
        for name, ints in self._pool_ints:
            i = bisect.bisect_left(ints, value)
            if i < len(ints) and ints[i] == value:
                return name
        return None

    def require_pool(self, pool: str) -> str:
        """`pool` if it is configured, else the unknown_pool refusal (names the known ones)."""
        if pool not in self.pools:
            raise FipError("unknown_pool", f"pool: {pool!r} is not a configured pool "
                           f"(known: {', '.join(self.pools)})", 422)
        return pool

    def require(self, public_ip: IPv4Address) -> Allocation:
        alloc = self.get(public_ip)
        if alloc is None:
            if public_ip in self.pool:
                raise FipError("not_allocated", f"public_ip: {public_ip} is not allocated", 404)
            raise FipError("not_in_pool", f"public_ip: {public_ip} is not in the pool", 404)
        return alloc

    # -- mutation (only after a planned change has been persisted) ------------------

    def apply(self, change: Change) -> None:
        for alloc in change.before:
            self._remove(alloc.public_ip)
        for alloc in change.after:
            self._add(alloc)

    def _add(self, alloc: Allocation) -> None:
        self._by_public[alloc.public_ip] = alloc
        if alloc.private_ip:
            self._by_private[alloc.private_ip] = alloc.public_ip
        if alloc.ref:
            self._by_ref[alloc.ref] = alloc.public_ip
        for scope in _scopes(alloc):
            self._by_scope.setdefault(scope, set()).add(alloc.public_ip)
        pool = self.pool_of(alloc.public_ip)
        if pool is not None:
            free = self._free_by_pool[pool]
            i = bisect.bisect_left(free, int(alloc.public_ip))
            if i < len(free) and free[i] == int(alloc.public_ip):
                del free[i]

    def _remove(self, public_ip: IPv4Address) -> None:
        alloc = self._by_public.pop(public_ip)
        if alloc.private_ip:
            self._by_private.pop(alloc.private_ip, None)
        if alloc.ref:
            self._by_ref.pop(alloc.ref, None)
        for scope in _scopes(alloc):
            self._by_scope.get(scope, set()).discard(public_ip)
        pool = self.pool_of(public_ip)
        if pool is not None:  # (a free list first built just now already has it)
            free = self._free_by_pool[pool]
            i = bisect.bisect_left(free, int(public_ip))
            if i == len(free) or free[i] != int(public_ip):
                free.insert(i, int(public_ip))

    # -- planning --------------------------------------------------------------------

    def plan_allocate(self, public_ip: IPv4Address | None, owner: str | None,
                      ref: str | None, operator: bool = False,
                      unowned_ok: bool = True, pool: str | None = None) -> tuple[Allocation, Change]:
        """Take an address (a given one or the lowest free one of `pool`).

        `pool` None: the given address's own pool, or `default` when none is given.
        With a `ref` the call is idempotent: the same ref returns the address it already
        holds, so a hook that runs twice never takes two addresses; but only to the
        caller that may change that allocation (else the ref would hand it over).
        """
        if pool is not None or public_ip is None:
            pool = self.require_pool(pool if pool is not None else DEFAULT_POOL)
        if ref is not None:
            held = self.by_ref(ref)
            if held is not None:
                if public_ip is not None and held.public_ip != public_ip:
                    raise FipError("ref_conflict",
                                   f"ref: {ref!r} already holds {held.public_ip}, not {public_ip}", 409)
                held_pool = self.pool_of(held.public_ip)
                if pool is not None and held_pool != pool:
                    raise FipError("ref_conflict", f"ref: {ref!r} already holds {held.public_ip} of pool "
                                   f"{held_pool!r}, not of pool {pool!r}", 409)
                self.check_owner(held, owner, operator, unowned_ok)
                return held, Change()
        if public_ip is not None:
            if public_ip not in self.pool:
                raise FipError("not_in_pool", f"public_ip: {public_ip} is not in the pool", 422)
            if pool is not None and self.pool_of(public_ip) != pool:
                raise FipError("not_in_pool", f"public_ip: {public_ip} is in pool "
                               f"{self.pool_of(public_ip)!r}, not in pool {pool!r}", 422)
            if public_ip in self._by_public:
                raise FipError("address_in_use", f"public_ip: {public_ip} is already allocated", 409)
            chosen = public_ip
        else:
            free = self._free_by_pool[pool]
            if not free:
                raise FipError("pool_exhausted", f"pool: all {len(self.pools[pool])} addresses of pool "
                               f"{pool!r} are allocated", 409)
            chosen = IPv4Address(free[0])
        alloc = Allocation(public_ip=chosen, owner=owner, ref=ref)
        return alloc, Change(after=(alloc,))

    def plan_associate(self, public_ip: IPv4Address, private_ip: IPv4Address,
                       private_ranges: Sequence[IPv4Network], owner: str | None = None,
                       allow_move: bool = False, operator: bool = False,
                       unowned_ok: bool = True) -> tuple[Allocation, Change]:
        """Point an allocated address at a private address (idempotent).

        Moving an address that already points elsewhere needs `allow_move`; taking a
        private address that another floating IP serves needs it too (that one is then
        disassociated), and that other floating IP must be one the caller may change:
        `allow_move` never displaces another owner's association.
        """
        self.check_target(private_ip, private_ranges)
        alloc = self.require(public_ip)
        self.check_owner(alloc, owner, operator, unowned_ok)
        if alloc.private_ip == private_ip:
            return alloc, Change()
        if alloc.private_ip is not None and not allow_move:
            raise FipError("address_in_use",
                           f"public_ip: {public_ip} is associated with {alloc.private_ip}; "
                           f"moving it to {private_ip} must be explicit", 409)
        before = [alloc]
        after = [alloc._replace(private_ip=private_ip)]
        other = self.by_private(private_ip)
        if other is not None:
            if not allow_move:
                raise FipError("private_in_use",
                               f"private_ip: {private_ip} is already served by {other.public_ip}", 409)
            if not self.may_change(other, owner, operator, unowned_ok):
                raise FipError("private_in_use",
                               f"private_ip: {private_ip} is served by {other.public_ip} of another owner "
                               f"({other.owner!r}); only an explicit operator request may take it", 409)
            before.append(other)
            after.append(other._replace(private_ip=None))
        return after[0], Change(before=tuple(before), after=tuple(after))

    def plan_disassociate(self, public_ip: IPv4Address, owner: str | None = None,
                          operator: bool = False, unowned_ok: bool = True) -> tuple[Allocation, Change]:
        alloc = self.require(public_ip)
        self.check_owner(alloc, owner, operator, unowned_ok)
        if alloc.private_ip is None:
            return alloc, Change()
        new = alloc._replace(private_ip=None)
        return new, Change(before=(alloc,), after=(new,))

    def plan_release(self, public_ip: IPv4Address, owner: str | None = None,
                     operator: bool = False, unowned_ok: bool = True) -> tuple[Allocation, Change]:
        alloc = self.require(public_ip)
        self.check_owner(alloc, owner, operator, unowned_ok)
        return alloc, Change(before=(alloc,))

    def check_target(self, private_ip: IPv4Address, private_ranges: Sequence[IPv4Network]) -> None:
        """A NAT target must be in PRIVATE_IP_RANGES, a host address, and not the router."""
        try:
            check_private_target(private_ip, private_ranges)
        except AddressError as exc:
            raise FipError("private_not_allowed", str(exc), 422) from None
        if private_ip in self.router_addresses:
            raise FipError("private_not_allowed", f"private_ip: {private_ip} is an address of the router itself", 422)

    @staticmethod
    def may_change(alloc: Allocation, owner: str | None, operator: bool = False,
                   unowned_ok: bool = True) -> bool:
        """Ownership rule. An owned allocation: its own owner, or an explicit operator
        request; leaving `owner` out is no wildcard. An unowned one: callers trusted
        with unowned allocations (`unowned_ok`: operator tokens), or explicit operator."""
        if operator:
            return True
        if alloc.owner is None:
            return unowned_ok
        return owner == alloc.owner

    @classmethod
    def check_owner(cls, alloc: Allocation, owner: str | None, operator: bool = False,
                    unowned_ok: bool = True) -> None:
        if cls.may_change(alloc, owner, operator, unowned_ok):
            return
        if alloc.owner is None:
            raise FipError("owner_mismatch", f"owner: {alloc.public_ip} has no owner; only an operator may change it", 403)
        if owner is None:
            raise FipError("owner_mismatch", f"owner: {alloc.public_ip} belongs to {alloc.owner!r}; "
                           "name that owner or make an explicit operator request", 403)
        raise FipError("owner_mismatch",
                       f"owner: {alloc.public_ip} belongs to {alloc.owner!r}, not {owner!r}", 403)
