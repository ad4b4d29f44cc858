"""Parsing and checking of IPv4 addresses, pools and ranges (pure, no I/O).

The original ipfloater took IP_POOL as a comma list of single addresses; operators also
write CIDR blocks and `a-b` ranges, so all three forms are accepted here, in one place,
with one-line errors that name the config key and the offending item.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
import socket
import struct
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network
from itertools import chain

MAX_POOL_SIZE = 65536

#: The pool of IP_POOL, and of every request that names none (both sides).
DEFAULT_POOL = "default"
#: What a pool may be called: `[POOL <name>]`, `FLOATING_IP_POOL`, the API's `pool`.
POOL_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class AddressError(ValueError):
    """A value that is not an acceptable address; the message names field and value."""


_UNPACK_U32 = struct.Struct("!I").unpack


def ipv4_from_text(text: str) -> IPv4Address:
    """A dotted quad as strictly as IPv4Address(text) reads it (no spaces, no leading
    zeros, no IPv6), ValueError otherwise, and faster: glibc's inet_pton accepts exactly
    those (tests/unit/test_store.py holds the two to each other), and the start parses
    two stored addresses per association."""
    try:
        return IPv4Address(_UNPACK_U32(socket.inet_pton(socket.AF_INET, text))[0])
    except (OSError, TypeError, ValueError) as exc:  # ValueError: an embedded NUL
        raise ValueError(f"{text!r} is not an IPv4 address") from exc


def parse_ipv4(value: object, field: str) -> IPv4Address:
    """Strict dotted-quad IPv4 (no spaces, no leading zeros, no IPv6)."""
    if not isinstance(value, str):
        raise AddressError(f"{field}: {value!r} is not a string")
    try:
        return ipv4_from_text(value)
    except ValueError:
        raise AddressError(f"{field}: {value!r} is not an IPv4 address") from None


def _span(net: IPv4Network) -> tuple[int, int]:
    return int(net.network_address), int(net.broadcast_address)


# The one policy of both sides on addresses that can never be floating addresses nor a
# VM's private address, each block with what it is: the daemon refuses them in IP_POOL and
# PRIVATE_IP_RANGES, the front-end in a VM's FLOATING_IP before it asks the daemon.
# (255.255.255.255 lies in 240.0.0.0/4.) Sorted and disjoint.
NEVER_FLOATING: tuple[tuple[IPv4Network, str], ...] = tuple((IPv4Network(net), kind) for net, kind in (
    ("0.0.0.0/8", "'this network'"), ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved or broadcast")))

# The same as (first, last) integer spans: pool items are checked as spans, not address by
# address (per address, the ipaddress predicates were two orders of magnitude slower).
_NEVER_FLOATING = tuple(_span(net) for net, _ in NEVER_FLOATING)


def never_floating(addr: IPv4Address) -> tuple[IPv4Network, str] | None:
    """The NEVER_FLOATING block (and what it is) that `addr` lies in, or None."""
    value = int(addr)
    for (low, high), entry in zip(_NEVER_FLOATING, NEVER_FLOATING):
        if low <= value <= high:
            return entry
    return None


def never_floating_overlap(net: IPv4Network) -> tuple[IPv4Network, str] | None:
    """The first NEVER_FLOATING block (and what it is) that `net` overlaps, or None."""
    first, last = _span(net)
    for (low, high), entry in zip(_NEVER_FLOATING, NEVER_FLOATING):
        if low <= last and first <= high:
            return entry
    return None


def _pool_block(item: str, field: str) -> tuple[int, int]:
    """One pool item as the (first, last) integers of the addresses it lists."""
    if "/" in item:
        try:
            net = IPv4Network(item, strict=True)
        except ValueError as exc:
            raise AddressError(f"{field}: {item!r} is not a valid CIDR block ({exc})") from None
        first, last = _span(net)
        if net.prefixlen >= 31:
            return first, last
        return first + 1, last - 1  # network and broadcast addresses never float
    if "-" in item:
        first_s, _, last_s = item.partition("-")
        first = int(parse_ipv4(first_s.strip(), field))
        last = int(parse_ipv4(last_s.strip(), field))
        if last < first:
            raise AddressError(f"{field}: range {item!r} ends before it starts")
        if last - first + 1 > MAX_POOL_SIZE:
            raise AddressError(f"{field}: range {item!r} is larger than {MAX_POOL_SIZE} addresses")
        return first, last
    addr = int(parse_ipv4(item, field))
    return addr, addr


def _first_never_floating(first: int, last: int) -> int | None:
    """The lowest address of first..last that cannot be a floating address, or None."""
    for low, high in _NEVER_FLOATING:
        if low <= last and first <= high:
            return max(first, low)
    return None


def parse_pool(text: str, field: str = "IP_POOL") -> tuple[IPv4Address, ...]:
    """Parse `a, b/28, c-d` into a sorted tuple of distinct addresses.

    Duplicates (an address listed twice, or blocks that overlap) are refused: they are
    almost always a typo, and silently merging them hides it. Each item is checked as one
    span of integers; an error names the lowest offending address of the first bad item.
    """
    items = [part.strip() for part in text.split(",")]
    if not any(items):
        raise AddressError(f"{field}: the pool is empty")
    starts: list[int] = []                   # first address of each accepted item, sorted
    blocks: list[tuple[int, int, str]] = []  # (first, last, item), in the same order
    size = 0
    for item in items:
        if not item:
            raise AddressError(f"{field}: empty item in {text!r}")
        first, last = _pool_block(item, field)
        bad = _first_never_floating(first, last)
        i = bisect.bisect_right(starts, first)
        twice = None  # (lowest address already listed, the item that listed it)
        if i and blocks[i - 1][1] >= first:
            twice = first, blocks[i - 1][2]
        elif i < len(blocks) and blocks[i][0] <= last:
            twice = blocks[i][0], blocks[i][2]
        if bad is not None and (twice is None or bad < twice[0]):
            raise AddressError(f"{field}: {IPv4Address(bad)} cannot be a floating address")
        if twice is not None:
            raise AddressError(f"{field}: {IPv4Address(twice[0])} appears twice ({twice[1]!r} and {item!r})")
        starts.insert(i, first)
        blocks.insert(i, (first, last, item))
        size += last - first + 1
        if size > MAX_POOL_SIZE:
            raise AddressError(f"{field}: more than {MAX_POOL_SIZE} addresses")
    return tuple(map(IPv4Address, chain.from_iterable(range(low, high + 1) for low, high, _ in blocks)))


def parse_networks(text: str, field: str) -> tuple[IPv4Network, ...]:
    """Parse a comma list of CIDR blocks (a bare address means /32); overlaps are refused."""
    nets: list[IPv4Network] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            net = IPv4Network(item, strict=True)
        except ValueError as exc:
            raise AddressError(f"{field}: {item!r} is not a valid CIDR block ({exc})") from None
        for other in nets:
            if net.overlaps(other):
                raise AddressError(f"{field}: {net} overlaps {other}")
        nets.append(net)
    if not nets:
        raise AddressError(f"{field}: no network given")
    return tuple(nets)


def collapse(addresses: Iterable[IPv4Address]) -> list[IPv4Network]:
    """The fewest CIDR blocks covering exactly these addresses (for compact filter rules).

    Runs of consecutive addresses are found on integers and each run summarized once:
    ipaddress.collapse_addresses builds a network object per address, over a second at a
    /16, and every reconcile computes this."""
    ints = sorted({int(a) for a in addresses})
    blocks: list[IPv4Network] = []
    i = 0
    while i < len(ints):
        j = i
        while j + 1 < len(ints) and ints[j + 1] == ints[j] + 1:
            j += 1
        blocks += ipaddress.summarize_address_range(IPv4Address(ints[i]), IPv4Address(ints[j]))
        i = j + 1
    return blocks


def check_private_target(addr: IPv4Address, ranges: Sequence[IPv4Network], field: str = "private_ip") -> None:
    """A NAT target must be a usable host address inside one of PRIVATE_IP_RANGES."""
    for net in ranges:
        if addr in net:
            if net.prefixlen < 31 and addr in (net.network_address, net.broadcast_address):
                raise AddressError(f"{field}: {addr} is the network or broadcast address of {net}")
            return
    allowed = ", ".join(str(n) for n in ranges)
    raise AddressError(f"{field}: {addr} is outside PRIVATE_IP_RANGES ({allowed})")
