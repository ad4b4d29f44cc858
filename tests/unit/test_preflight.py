"""preflight's judgements are pure: config + host facts in, refusals and warnings out."""

from ipaddress import IPv4Address

import pytest

from one_ipfloater.config import parse_config_text
from one_ipfloater.model import FipError
from one_ipfloater.preflight import HostFacts, host_problems, host_warnings, read_sysctl, require
from tests.fakes import FakeHost

A = IPv4Address


def config(**extra):
    text = "[IPFLOATER]\nIP_POOL = 198.51.100.10-198.51.100.12\nPRIVATE_IP_RANGES = 10.77.0.0/24\n"
    return parse_config_text(text + "".join(f"{k} = {v}\n" for k, v in extra.items()))


FINE = HostFacts(True, frozenset({A("10.77.0.1"), A("198.51.100.1"), A("198.51.100.10")}),
                 frozenset({A("198.51.100.10")}), 1, 0)


def test_a_host_that_fits_has_no_problem_and_no_warning():
    cfg = config(PUBLIC_INTERFACE="pub0")
    assert host_problems(cfg, FINE) == [] and host_warnings(cfg, FINE) == []


def test_problems_each_in_one_line():
    cfg = config(PUBLIC_INTERFACE="pub0", REST_IP="192.0.2.7")
    facts = FINE._replace(interface_exists=False, iface_addresses=frozenset(),
                          router_addresses=FINE.router_addresses | {A("198.51.100.11")})
    assert host_problems(cfg, facts) == [
        "PUBLIC_INTERFACE: 'pub0' does not exist",
        "IP_POOL: 198.51.100.10 is an address of the router itself (and 1 more)",
        "REST_IP: 192.0.2.7 is not an address of this host (the API could not listen on it)"]
    # a floating address of ours on PUBLIC_INTERFACE is no clash; ip_nonlocal_bind allows any REST_IP
    assert host_problems(cfg, FINE._replace(nonlocal_bind=1)) == []


@pytest.mark.parametrize("rest_ip", ["0.0.0.0", "127.0.0.2", "::1", "10.77.0.1"])
def test_rest_ip_that_can_be_listened_on(rest_ip):
    assert host_problems(config(REST_IP=rest_ip), FINE) == []


def test_warnings():
    assert host_warnings(config(), FINE._replace(ip_forward=None)) == []  # unreadable: no guess
    forward = host_warnings(config(), FINE._replace(ip_forward=0))
    assert len(forward) == 1 and forward[0].startswith("net.ipv4.ip_forward = 0")
    for rest_ip in ("0.0.0.0", "10.77.0.1", "::"):
        exposed = host_warnings(config(REST_IP=rest_ip), FINE)
        assert len(exposed) == 1 and exposed[0].startswith(f"REST_IP: {rest_ip} is not a loopback address")
    assert host_warnings(config(REST_IP="::1"), FINE) == []


def test_require_raises_the_first_problem_as_the_start_did():
    with pytest.raises(FipError) as err:
        require(config(PUBLIC_INTERFACE="nosuch0"), FakeHost(), frozenset())
    assert (err.value.code, err.value.status, err.value.message) == (
        "bad_config", 500, "PUBLIC_INTERFACE: 'nosuch0' does not exist")
    cfg = config(PUBLIC_INTERFACE="pub0", REST_IP="0.0.0.0")
    warnings, router = require(cfg, FakeHost(), frozenset(cfg.pool))
    assert warnings[-1].startswith("REST_IP: 0.0.0.0") and router == {A("10.77.0.1"), A("198.51.100.1")}


def test_read_sysctl(tmp_path):
    (tmp_path / "ip_forward").write_text("1\n")
    (tmp_path / "odd").write_text("x\n")
    assert read_sysctl("ip_forward", str(tmp_path)) == 1
    assert read_sysctl("odd", str(tmp_path)) is None and read_sysctl("missing", str(tmp_path)) is None
