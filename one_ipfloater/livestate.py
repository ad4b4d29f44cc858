"""What the kernel holds of ours, and what a start or `adopt` may do about it.

A start converges the kernel to the state file, removing whatever the file does not
hold. That is right for a file that has been the state of record, and wrong for one that
is missing, empty or new (a wrong DB path, a restored disk): it would wipe every live
floating IP. `start_refusal` decides that case, `plan_adopt` rebuilds a state from the
live associations instead; both are pure. `read_live` is the thin shell that reads them.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network

from .model import Allocation

Pair = tuple[IPv4Address, IPv4Address]


class LiveState(namedtuple("LiveState", "pairs addresses interface", defaults=(None,))):
    """Our associations in the kernel: (public, private) pairs from the NAT backend
    (frozenset), the pool addresses on PUBLIC_INTERFACE (frozenset) and its name. A named
    tuple, not typing.NamedTuple: `typing` is not imported before the rules are in place."""

    __slots__ = ()

    def publics(self) -> set[IPv4Address]:
        """Every public address the kernel serves for us: one live association each."""
        return {pub for pub, _priv in self.pairs} | set(self.addresses)

    def empty(self) -> bool:
        return not self.pairs and not self.addresses


class AdoptError(ValueError):
    """The live rules cannot be taken over as they are; one line naming the address."""


def read_live(pairs_reader, host, iface: str | None, pool: Iterable[IPv4Address]) -> LiveState:
    """Read our pairs (`pairs_reader()`: a backend's `live_pairs`, or both backends') and
    our pool addresses on `iface` (a missing interface holds none; the start reports it
    later); changes nothing."""
    pairs = frozenset(pairs_reader())
    addresses: frozenset = frozenset()
    if iface and host.interface_exists(iface):
        addresses = frozenset(host.host_addresses(iface) & set(pool))
    return LiveState(pairs, addresses, iface)


def describe(live: LiveState) -> str:
    """"3 live associations (3 NAT pairs, 2 pool addresses on pub0)"."""
    where = f" on {live.interface}" if live.interface else ""
    count = len(live.publics())
    return (f"{count} live association{'s' if count != 1 else ''} of ours "
            f"({len(live.pairs)} NAT pairs, {len(live.addresses)} pool addresses{where})")


def start_refusal(live: LiveState, stored: int, has_history: bool, db_path: str,
                  config_path: str) -> str | None:
    """The one-line reason to refuse a start, or None when it may go on.

    Refused: the state file holds nothing and never did (missing, empty or new) while the
    kernel holds associations of ours. A file emptied by releases (`has_history`) is the
    truth and may start; so may any file when the kernel holds nothing of ours."""
    if stored or has_history or live.empty():
        return None
    return (f"DB: {db_path} is new or empty but the kernel holds {describe(live)}; "
            f"not starting, so as not to remove them: run `ipfloaterd --config {config_path} adopt` "
            f"to take them into the state file, or `ipfloaterd --config {config_path} flush` to drop them")


def _in_ranges(addr: IPv4Address, ranges: Sequence[IPv4Network]) -> bool:
    return any(addr in net for net in ranges)


def plan_adopt(live: LiveState, pool: Iterable[IPv4Address], private_ranges: Sequence[IPv4Network],
               stored: Iterable[Allocation]) -> list[Allocation]:
    """The allocations to add so that the state holds every live pair (operator-owned:
    owner and ref unknown, so None). AdoptError on the first conflict: a public or private
    address in two pairs, a public outside IP_POOL, a private outside PRIVATE_IP_RANGES, or
    a stored allocation that disagrees with a live pair. Pairs already stored are skipped."""
    pool = set(pool)
    pairs = sorted(live.pairs, key=lambda pair: (int(pair[0]), int(pair[1])))
    for side, name in ((0, "public"), (1, "private")):
        seen: dict[IPv4Address, Pair] = {}
        for pair in pairs:
            if pair[side] in seen:
                other = seen[pair[side]]
                raise AdoptError(f"{name} address {pair[side]} is in two live associations "
                                 f"({other[0]} -> {other[1]} and {pair[0]} -> {pair[1]}); fix the rules "
                                 f"by hand or flush them")
            seen[pair[side]] = pair
    for pub, priv in pairs:
        if pub not in pool:
            raise AdoptError(f"IP_POOL: live association {pub} -> {priv}: {pub} is not in the pool")
        if not _in_ranges(priv, private_ranges):
            raise AdoptError(f"PRIVATE_IP_RANGES: live association {pub} -> {priv}: {priv} is not "
                             f"in the private ranges")
    by_public = {a.public_ip: a for a in stored}
    by_private = {a.private_ip: a for a in by_public.values() if a.private_ip is not None}
    adopted = []
    for pub, priv in pairs:
        have = by_public.get(pub)
        if have is not None and have.private_ip == priv:
            continue
        if have is not None:
            raise AdoptError(f"DB: {pub} is stored as {'associated with ' + str(have.private_ip) if have.private_ip else 'not associated'} "
                             f"but the kernel maps it to {priv}; the state file disagrees with the live rules")
        if priv in by_private:
            raise AdoptError(f"DB: {priv} is stored behind {by_private[priv].public_ip} but the kernel maps "
                             f"{pub} to it; the state file disagrees with the live rules")
        adopted.append(Allocation(pub, None, None, priv))
    return adopted
