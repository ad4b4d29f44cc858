"""Parsing and checking of IPv4 addresses, pools and ranges (pure, no I/O).

The original ipfloater took IP_POOL as a comma list of single addresses; operators also
write CIDR blocks and `a-b` ranges, so all three forms are accepted here, in one place,
with one-line errors that name the config key and the offending item.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable, Sequence

MAX_POOL_SIZE = 65536


class AddressError(ValueError):
    """A value that is not an acceptable address; the message names field and value."""


def parse_ipv4(value: object, field: str) -> IPv4Address:
    """Strict dotted-quad IPv4 (no spaces, no leading zeros, no IPv6)."""
    if not isinstance(value, str):
        raise AddressError(f"{field}: {value!r} is not a string")
    try:
        return IPv4Address(value)
    except (ipaddress.AddressValueError, ValueError):
        raise AddressError(f"{field}: {value!r} is not an IPv4 address") from None


def _pool_block(item: str, field: str) -> list[IPv4Address]:
    if "/" in item:
        try:
            net = IPv4Network(item, strict=True)
        except ValueError as exc:
            raise AddressError(f"{field}: {item!r} is not a valid CIDR block ({exc})") from None
        if net.prefixlen >= 31:
            return list(net)
        return list(net.hosts())  # network and broadcast addresses never float
    if "-" in item:
        first_s, _, last_s = item.partition("-")
        first = parse_ipv4(first_s.strip(), field)
        last = parse_ipv4(last_s.strip(), field)
        if int(last) < int(first):
            raise AddressError(f"{field}: range {item!r} ends before it starts")
        if int(last) - int(first) + 1 > MAX_POOL_SIZE:
            raise AddressError(f"{field}: range {item!r} is larger than {MAX_POOL_SIZE} addresses")
        return [IPv4Address(i) for i in range(int(first), int(last) + 1)]
    return [parse_ipv4(item, field)]


def _check_public(addr: IPv4Address, field: str) -> None:
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast or addr.is_link_local \
            or addr == IPv4Address("255.255.255.255") or addr.is_reserved:
        raise AddressError(f"{field}: {addr} cannot be a floating address")


def parse_pool(text: str, field: str = "IP_POOL") -> tuple[IPv4Address, ...]:
    """Parse `a, b/28, c-d` into a sorted tuple of distinct addresses.

    Duplicates (an address listed twice, or blocks that overlap) are refused: they are
    almost always a typo, and silently merging them hides it.
    """
    items = [part.strip() for part in text.split(",")]
    if not any(items):
        raise AddressError(f"{field}: the pool is empty")
    seen: dict[IPv4Address, str] = {}
    for item in items:
        if not item:
            raise AddressError(f"{field}: empty item in {text!r}")
        for addr in _pool_block(item, field):
            _check_public(addr, field)
            if addr in seen:
                raise AddressError(f"{field}: {addr} appears twice ({seen[addr]!r} and {item!r})")
            seen[addr] = item
        if len(seen) > MAX_POOL_SIZE:
            raise AddressError(f"{field}: more than {MAX_POOL_SIZE} addresses")
    return tuple(sorted(seen))


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
    """The fewest CIDR blocks covering exactly these addresses (for compact filter rules)."""
    return list(ipaddress.collapse_addresses(IPv4Network(a) for a in addresses))


def check_private_target(addr: IPv4Address, ranges: Sequence[IPv4Network], field: str = "private_ip") -> None:
    """A NAT target must be a usable host address inside one of PRIVATE_IP_RANGES."""
    for net in ranges:
        if addr in net:
            if net.prefixlen < 31 and addr in (net.network_address, net.broadcast_address):
                raise AddressError(f"{field}: {addr} is the network or broadcast address of {net}")
            return
    allowed = ", ".join(str(n) for n in ranges)
    raise AddressError(f"{field}: {addr} is outside PRIVATE_IP_RANGES ({allowed})")
