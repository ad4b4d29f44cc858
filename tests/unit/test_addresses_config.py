"""Pool parsing and config validation (pure)."""

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, strategies as st

from one_ipfloater.addresses import AddressError, check_private_target, collapse, parse_networks, parse_pool
from one_ipfloater.config import ConfigError, parse_config_text

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
    ("[IPFLOATER]\nIP_POOL = 198.51.100.1\nIP_POOL = 198.51.100.2\nPRIVATE_IP_RANGES = 10.0.0.0/8\n", "IP_POOL"),
    ("not an ini file", "test.conf"),
])
def test_config_structure_errors(text, fragment):
    with pytest.raises(ConfigError) as err:
        parse_config_text(text, "test.conf")
    assert fragment in str(err.value)
