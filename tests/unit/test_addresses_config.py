"""Pool parsing and config validation (pure)."""

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import assume, example, given, settings, strategies as st

from one_ipfloater.addresses import (MAX_POOL_SIZE, AddressError, _first_never_floating, check_private_target,
                                    collapse, never_floating, parse_ipv4, parse_networks, parse_pool)
from one_ipfloater.config import ConfigError, _lowest_inside, parse_config_text

A = IPv4Address


def test_pool_accepts_single_cidr_and_range():
    pool = parse_pool("198.51.100.7, 203.0.113.0/30 ,198.51.100.10-198.51.100.12")
    assert pool == (A("198.51.100.7"), A("198.51.100.10"), A("198.51.100.11"), A("198.51.100.12"),
                    A("203.0.113.1"), A("203.0.113.2"))


def test_cidr_excludes_network_and_broadcast_but_32_is_kept():
    assert parse_pool("203.0.113.8/29")[0] == A("203.0.113.9")
    assert parse_pool("203.0.113.8/29")[-1] == A("203.0.113.14")
    assert parse_pool("203.0.113.8/32") == (A("203.0.113.8"),)


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("198.51.100.1,,198.51.100.2", "empty item"),
    ("198.51.100.300", "not an IPv4"),
    ("198.51.100.0/33", "CIDR"),
    ("198.51.100.1/24", "CIDR"),  # host bits set
    ("198.51.100.9-198.51.100.1", "ends before"),
    ("198.51.100.1, 198.51.100.0/30", "appears twice"),
    ("127.0.0.1", "cannot be a floating"),
    ("224.0.0.1", "cannot be a floating"),
    ("0.0.0.0", "cannot be a floating"),
    ("0.1.2.3", "cannot be a floating"),  # 'this network' (0.0.0.0/8), as the front-end says
    ("2001:db8::1", "not an IPv4"),
    ("198.51.100.1; rm -rf /", "not a valid CIDR"),
    ("198.51.100.1;reboot", "not an IPv4"),
    ("10.0.0.0-10.2.0.0", "larger than"),
])
def test_bad_pools_name_the_key_and_value(text, fragment):
    with pytest.raises(AddressError) as err:
        parse_pool(text)
    assert str(err.value).startswith("IP_POOL:")
    assert fragment in str(err.value)


def test_private_target_checks():
    ranges = parse_networks("10.77.0.0/24, 10.88.0.0/16", "PRIVATE_IP_RANGES")
    check_private_target(A("10.77.0.5"), ranges)
    for bad, fragment in (("10.77.0.0", "network or broadcast"), ("10.77.0.255", "network or broadcast"),
                          ("10.99.0.1", "outside PRIVATE_IP_RANGES")):
        with pytest.raises(AddressError, match=fragment):
            check_private_target(A(bad), ranges)
    with pytest.raises(AddressError, match="overlaps"):
        parse_networks("10.0.0.0/8, 10.77.0.0/24", "PRIVATE_IP_RANGES")


@given(st.sets(st.integers(min_value=int(A("198.51.100.0")), max_value=int(A("198.51.100.255"))), min_size=1))
def test_collapse_covers_exactly(ints):
    addrs = [A(i) for i in ints]
    nets = collapse(addrs)
    covered = {a for n in nets for a in n}
    assert covered == set(addrs)


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 15)), min_size=1, max_size=20))
def test_pool_parse_roundtrip_or_clear_error(blocks):
    items = [f"203.0.113.{start}-203.0.113.{min(255, start + length)}" for start, length in blocks]
    try:
        pool = parse_pool(",".join(items))
    except AddressError as exc:
        assert str(exc).startswith("IP_POOL:") and "\n" not in str(exc)
        return
    assert list(pool) == sorted(set(pool))
    assert all(str(a).startswith("203.0.113.") for a in pool)


@pytest.mark.parametrize("text, message", [
    ("198.51.100.1, 198.51.100.0/30", "198.51.100.1 appears twice ('198.51.100.1' and '198.51.100.0/30')"),
    ("198.51.100.10-198.51.100.20, 198.51.100.15",
     "198.51.100.15 appears twice ('198.51.100.10-198.51.100.20' and '198.51.100.15')"),
    ("198.51.100.9, 198.51.100.5, 198.51.100.0-198.51.100.10",
     "198.51.100.5 appears twice ('198.51.100.5' and '198.51.100.0-198.51.100.10')"),
    ("198.51.100.7, 198.51.100.7", "198.51.100.7 appears twice ('198.51.100.7' and '198.51.100.7')"),
    ("126.255.255.250-127.0.0.3", "127.0.0.0 cannot be a floating address"),
    ("169.253.255.255-169.254.0.1", "169.254.0.0 cannot be a floating address"),
    ("223.255.255.250, 223.255.255.248-224.0.0.1",
     "223.255.255.250 appears twice ('223.255.255.250' and '223.255.255.248-224.0.0.1')"),
    ("198.51.100.1, 198.51.100.1/32, 127.0.0.1", "198.51.100.1 appears twice ('198.51.100.1' and '198.51.100.1/32')"),
    ("255.255.255.255", "255.255.255.255 cannot be a floating address"),
    ("100.0.0.0/8", f"more than {MAX_POOL_SIZE} addresses"),  # at once, not after 16M addresses
    ("198.51.0.0-198.51.255.255, 198.52.0.0/31", f"more than {MAX_POOL_SIZE} addresses"),
])
def test_errors_name_the_lowest_offender_and_the_items(text, message):
    with pytest.raises(AddressError) as err:
        parse_pool(text)
    assert str(err.value) == f"IP_POOL: {message}"


NEVER_FLOATING_EDGES = [int(A(a)) for a in ("0.0.0.0", "1.0.0.0", "127.0.0.0", "128.0.0.0", "169.254.0.0", "169.255.0.0",
                                             "224.0.0.0", "240.0.0.0", "255.255.255.255")]


def old_check_public(addr: IPv4Address) -> bool:
    """The per-address check parse_pool made before it worked on spans, with 0.0.0.0/8
    whole (the front-end's and PRIVATE_IP_RANGES' policy: one policy for both sides)."""
    return not (addr in IPv4Network("0.0.0.0/8") or addr.is_loopback or addr.is_multicast or addr.is_link_local
                or addr == IPv4Address("255.255.255.255") or addr.is_reserved)


near_edges = st.builds(lambda edge, offset: min(max(edge + offset, 0), 2**32 - 1),
                       st.sampled_from(NEVER_FLOATING_EDGES), st.integers(-40, 40))
anywhere = st.integers(0, 2**32 - 1)


@settings(max_examples=500)
@given(st.one_of(near_edges, anywhere), st.integers(0, 80))
def test_never_floating_spans_agree_with_the_address_predicates(first, length):
    last = min(first + length, 2**32 - 1)
    refused = [i for i in range(first, last + 1) if not old_check_public(A(i))]
    assert _first_never_floating(first, last) == (refused[0] if refused else None)


def old_parse_pool(text: str, field: str = "IP_POOL") -> tuple:
    """parse_pool as it was: address by address (the reference for the span version)."""
    items = [part.strip() for part in text.split(",")]
    if not any(items):
        raise AddressError(f"{field}: the pool is empty")
    seen: dict = {}
    for item in items:
        if not item:
            raise AddressError(f"{field}: empty item in {text!r}")
        if "/" in item:
            try:
                net = IPv4Network(item, strict=True)
            except ValueError as exc:
                raise AddressError(f"{field}: {item!r} is not a valid CIDR block ({exc})") from None
            block = list(net) if net.prefixlen >= 31 else list(net.hosts())
        elif "-" in item:
            first_s, _, last_s = item.partition("-")
            first, last = parse_ipv4(first_s.strip(), field), parse_ipv4(last_s.strip(), field)
            if int(last) < int(first):
                raise AddressError(f"{field}: range {item!r} ends before it starts")
            if int(last) - int(first) + 1 > MAX_POOL_SIZE:
                raise AddressError(f"{field}: range {item!r} is larger than {MAX_POOL_SIZE} addresses")
            block = [A(i) for i in range(int(first), int(last) + 1)]
        else:
            block = [parse_ipv4(item, field)]
        for addr in block:
            if not old_check_public(addr):
                raise AddressError(f"{field}: {addr} cannot be a floating address")
            if addr in seen:
                raise AddressError(f"{field}: {addr} appears twice ({seen[addr]!r} and {item!r})")
            seen[addr] = item
        if len(seen) > MAX_POOL_SIZE:
            raise AddressError(f"{field}: more than {MAX_POOL_SIZE} addresses")
    return tuple(sorted(seen))


def _item(base: int, kind: str, a: int, b: int, prefix: int) -> str:
    if kind == "single":
        return str(A(base + a))
    if kind == "range":
        return f"{A(base + a)}-{A(base + b)}"
    size = 2 ** (32 - prefix)
    return f"{A((base + a) // size * size)}/{prefix}"


pool_items = st.builds(_item, st.sampled_from([int(A(a)) for a in (
                           "0.0.0.0", "126.255.255.200", "169.253.255.200", "198.51.100.0", "223.255.255.200")]),
                       st.sampled_from(["single", "range", "cidr"]), st.integers(0, 100), st.integers(0, 100),
                       st.integers(25, 32))


@settings(max_examples=500)
@example(["198.51.100.10-198.51.100.20", "198.51.100.15"])
@example(["198.51.100.0/30", "198.51.100.3", "198.51.100.1-198.51.100.2"])
@given(st.lists(pool_items, min_size=1, max_size=6))
def test_pool_spans_agree_with_the_address_by_address_parser(items):
    """Same pool, or the same error (same address, same items named) as the old parser."""
    text = ", ".join(items)
    try:
        expected = old_parse_pool(text)
    except AddressError as exc:
        with pytest.raises(AddressError) as err:
            parse_pool(text)
        assert str(err.value) == str(exc)
    else:
        assert parse_pool(text) == expected


@given(st.lists(pool_items, min_size=1, max_size=6),
       st.lists(st.sampled_from(["0.0.0.0/1", "126.0.0.0/7", "169.253.255.224/27", "198.51.100.0/26",
                                 "198.51.100.64/27", "223.255.255.128/25", "198.51.100.3/32"]), min_size=1, max_size=3))
def test_pool_inside_ranges_names_the_lowest_address_and_its_range(items, range_texts):
    try:
        pool = parse_pool(", ".join(items))
        ranges = parse_networks(", ".join(range_texts), "PRIVATE_IP_RANGES")
    except AddressError:
        return
    expected = next(((addr, net) for addr in pool for net in ranges if addr in net), None)
    assert _lowest_inside(pool, ranges) == expected


GOOD = """
[IPFLOATER]
IP_POOL = 198.51.100.10-198.51.100.20
PRIVATE_IP_RANGES = 10.77.0.0/24
"""


def test_config_defaults():
    cfg = parse_config_text(GOOD)
    assert cfg.rest_ip == "127.0.0.1" and cfg.rest_port == 7003
    assert cfg.db_path.startswith("/var/lib/ipfloater/")
    assert cfg.reconcile_interval == 30.0 and cfg.public_interface is None
    assert len(cfg.pool) == 11 and cfg.private_ranges == (IPv4Network("10.77.0.0/24"),)


def test_config_legacy_keys_still_load():
    cfg = parse_config_text(GOOD + "REST_IP = 0.0.0.0\nREST_PORT = 7004\nBLOCK_PUBLIC_IPS = True\nMAX_REDIRECTIONS = 5\n")
    assert cfg.rest_ip == "0.0.0.0" and cfg.rest_port == 7004 and cfg.block_public_ips


@pytest.mark.parametrize("extra, fragment", [
    ("REST_PORT = http\n", "REST_PORT: 'http' is not a number"),
    ("REST_PORT = 70000\n", "REST_PORT"),
    ("REST_IP = localhost\n", "REST_IP"),
    ("DB = relative.db\n", "DB: 'relative.db' must be an absolute path"),
    ("BLOCK_PUBLIC_IPS = maybe\n", "BLOCK_PUBLIC_IPS"),
    ("PUBLIC_INTERFACE = eth0;reboot\n", "PUBLIC_INTERFACE"),
    ("RECONCILE_INTERVAL = -1\n", "RECONCILE_INTERVAL"),
    ("NAT_BACKEND = pf\n", "NAT_BACKEND"),
    ("SURPRISE = 1\n", "SURPRISE: unknown key"),
    ("LOG_LEVEL = LOUD\n", "LOG_LEVEL"),
    ("DB_SYNC = off\n", "DB_SYNC: 'off' is not full or normal"),
])
def test_config_errors_name_key_and_value(extra, fragment):
    with pytest.raises(ConfigError) as err:
        parse_config_text(GOOD + extra, "test.conf")
    assert str(err.value).startswith("test.conf: ")
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, fragment", [
    ("", "missing section [IPFLOATER]"),
    ("[IPFLOATER]\nPRIVATE_IP_RANGES = 10.0.0.0/8\n", "IP_POOL: missing"),
    ("[IPFLOATER]\nIP_POOL = 198.51.100.1\n", "PRIVATE_IP_RANGES: missing"),
    ("[IPFLOATER]\nIP_POOL = 10.0.0.1\nPRIVATE_IP_RANGES = 10.0.0.0/8\n", "lies inside PRIVATE_IP_RANGES"),
    ("[IPFLOATER]\nIP_POOL = 10.1.0.5, 10.0.0.9-10.0.0.12\nPRIVATE_IP_RANGES = 10.1.0.0/16, 10.0.0.0/16\n",
     "test.conf: IP_POOL: 10.0.0.9 lies inside PRIVATE_IP_RANGES 10.0.0.0/16"),
    ("[IPFLOATER]\nIP_POOL = 198.51.100.1\nIP_POOL = 198.51.100.2\nPRIVATE_IP_RANGES = 10.0.0.0/8\n", "IP_POOL"),
    ("not an ini file", "test.conf"),
])
def test_config_structure_errors(text, fragment):
    with pytest.raises(ConfigError) as err:
        parse_config_text(text, "test.conf")
    assert fragment in str(err.value)


@settings(max_examples=500)
@given(st.one_of(near_edges, anywhere))
def test_both_sides_refuse_the_same_addresses(value):
    """The daemon's IP_POOL, its PRIVATE_IP_RANGES and the front-end's FLOATING_IP refuse
    the same addresses (addresses.NEVER_FLOATING): a VM never asks for one the daemon
    could not have. tests/reliability/test_address_policy.py tries every edge address."""
    from tests.reliability.test_address_policy import POOL, accepted_by_each_side
    addr = A(value)
    assume(addr != POOL and addr not in IPv4Network("10.77.0.0/24"))
    outcomes = accepted_by_each_side(addr)
    assert outcomes in ([True] * 3, [False] * 3), (addr, outcomes)
    assert outcomes[0] == (never_floating(addr) is None)
