"""Several named pools: the config, the registry per pool, the API and the CLI (no root)."""

import json
from ipaddress import IPv4Address as A

import pytest
import requests

from one_ipfloater import cli, daemon as daemon_mod
from one_ipfloater.api import ApiApp
from one_ipfloater.auth import Authenticator
from one_ipfloater.config import ConfigError, config_pools, parse_config_text
from one_ipfloater.httpserver import serve_in_thread
from one_ipfloater.model import FipError, Registry
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.fakes import FakeBackend, FakeHost, fake_config

TOKEN = "p" * 32
BASE = "[IPFLOATER]\nPRIVATE_IP_RANGES = 10.77.0.0/24\n"
CAMPUS = "\n[POOL campus]\nIP_POOL = 203.0.113.20-203.0.113.21\n"
DC2 = "\n[POOL dc-2]\nIP_POOL = 203.0.113.30\n"


# -- config --------------------------------------------------------------------------

def test_named_pools_load_in_order_with_default_first():
    cfg = parse_config_text(BASE + "IP_POOL = 198.51.100.10-198.51.100.11\n" + DC2 + CAMPUS)
    assert [(n, [str(a) for a in addrs]) for n, addrs in config_pools(cfg)] == [
        ("default", ["198.51.100.10", "198.51.100.11"]), ("dc-2", ["203.0.113.30"]),
        ("campus", ["203.0.113.20", "203.0.113.21"])]
    assert len(cfg.pool) == 5 and list(cfg.pool) == sorted(cfg.pool)


def test_ip_pool_alone_is_the_default_pool_as_before():
    cfg = parse_config_text(BASE + "IP_POOL = 198.51.100.10\n")
    assert cfg.pools is None and config_pools(cfg) == (("default", (A("198.51.100.10"),)),)


def test_ip_pool_may_be_left_out_when_named_pools_exist():
    cfg = parse_config_text(BASE + CAMPUS)
    assert [n for n, _ in config_pools(cfg)] == ["campus"]


@pytest.mark.parametrize("text, message", [
    (BASE, "IP_POOL: missing (required unless [POOL <name>] sections exist)"),
    (BASE + "IP_POOL = 198.51.100.10-198.51.100.20\n[POOL campus]\nIP_POOL = 198.51.100.15/32\n",
     "[POOL campus] IP_POOL: 198.51.100.15 is also in pool 'default' (pools must not overlap)"),
    (BASE + CAMPUS + "[POOL b]\nIP_POOL = 203.0.113.21\n",
     "[POOL b] IP_POOL: 203.0.113.21 is also in pool 'campus' (pools must not overlap)"),
    (BASE + "[POOL Campus]\nIP_POOL = 203.0.113.1\n", "[POOL Campus]: pool name 'Campus' must be"),
    (BASE + "[POOL 2nd]\nIP_POOL = 203.0.113.1\n", "[POOL 2nd]: pool name '2nd' must be"),
    (BASE + "[POOL " + "a" * 33 + "]\nIP_POOL = 203.0.113.1\n", f"[POOL {'a' * 33}]: pool name"),
    (BASE + "[POOL default]\nIP_POOL = 203.0.113.1\n", "[POOL default]: the pool 'default' is IP_POOL"),
    (BASE + "[pool campus]\nIP_POOL = 203.0.113.1\n", "[pool campus]: not a pool section"),
    (BASE + "[POOL campus]\nREST_PORT = 1\n", "[POOL campus] REST_PORT: unknown key (known: IP_POOL, ROUTER_GROUP)"),
    (BASE + "[POOL campus]\nIP_POOL =\n", "[POOL campus] IP_POOL: missing (required)"),
    (BASE + "[POOL campus]\nIP_POOL = 10.77.0.5\n",
     "[POOL campus] IP_POOL: 10.77.0.5 lies inside PRIVATE_IP_RANGES 10.77.0.0/24"),
    (BASE + "[POOL campus]\nIP_POOL = 203.0.113.1, nonsense\n", "[POOL campus] IP_POOL: "),
])
def test_bad_pool_config_is_one_line_naming_section_key_and_value(text, message):
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "t.conf")
    assert str(info.value).startswith("t.conf: " + message) and "\n" not in str(info.value)


def test_check_lists_the_pools(monkeypatch, capsys):
    cfg = parse_config_text(BASE + "IP_POOL = 198.51.100.10\n" + CAMPUS)
    monkeypatch.setattr(daemon_mod.preflight, "report",
                        lambda config, host: {"backend": "x", "errors": [], "warnings": []})
    assert daemon_mod.check(cfg, "t.conf") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pools"] == {"default": 1, "campus": 2} and out["pool_size"] == 3


# -- registry ------------------------------------------------------------------------

POOLS = [("default", [A("198.51.100.10"), A("198.51.100.11")]),
         ("campus", [A("203.0.113.20"), A("203.0.113.21")])]
ALL = [a for _, addrs in POOLS for a in addrs]


def test_each_pool_gives_its_lowest_free_address_and_exhausts_alone():
    reg = Registry(ALL, pools=POOLS)
    for expected, pool in (("203.0.113.20", "campus"), ("198.51.100.10", None),
                           ("203.0.113.21", "campus")):
        alloc, change = reg.plan_allocate(None, None, None, pool=pool)
        assert str(alloc.public_ip) == expected
        reg.apply(change)
    with pytest.raises(FipError) as info:
        reg.plan_allocate(None, None, None, pool="campus")
    assert (info.value.code, info.value.status) == ("pool_exhausted", 409)
    assert "pool 'campus'" in info.value.message
    assert reg.free_count("campus") == 0 and reg.free_count("default") == 1 and reg.free_count() == 1
    reg.apply(reg.plan_release(A("203.0.113.21"))[1])
    assert reg.free_count("campus") == 1 and reg.free_count("default") == 1


def test_pool_of_is_derived_from_the_address():
    reg = Registry(ALL, pools=POOLS)
    assert [reg.pool_of(a) for a in (A("198.51.100.11"), A("203.0.113.20"), A("192.0.2.1"))] == \
        ["default", "campus", None]
    assert Registry([A("198.51.100.10")]).pool_of(A("198.51.100.10")) == "default"


def test_unknown_pool_names_the_value_and_the_known_ones():
    reg = Registry(ALL, pools=POOLS)
    with pytest.raises(FipError) as info:
        reg.plan_allocate(None, None, None, pool="nope")
    assert (info.value.code, info.value.status) == ("unknown_pool", 422)
    assert info.value.message == "pool: 'nope' is not a configured pool (known: default, campus)"
    no_default = Registry(ALL[2:], pools=POOLS[1:])
    with pytest.raises(FipError) as info:  # no pool asked, no default pool
        no_default.plan_allocate(None, None, None)
    assert info.value.code == "unknown_pool"


def test_a_given_address_must_be_of_the_asked_pool_and_a_ref_keeps_its_pool():
    reg = Registry(ALL, pools=POOLS)
    with pytest.raises(FipError) as info:
        reg.plan_allocate(A("198.51.100.10"), None, None, pool="campus")
    assert info.value.code == "not_in_pool" and "is in pool 'default', not in pool 'campus'" in info.value.message
    alloc, change = reg.plan_allocate(A("203.0.113.21"), None, "r")  # no pool: the address's own
    reg.apply(change)
    assert reg.plan_allocate(None, None, "r", pool="campus")[0] == alloc  # idempotent
    with pytest.raises(FipError) as info:
        reg.plan_allocate(None, None, "r", pool="default")
    assert info.value.code == "ref_conflict" and "of pool 'campus', not of pool 'default'" in info.value.message


def test_free_lists_built_at_any_time_agree():
    allocs = [reg_alloc for reg_alloc in Registry(ALL, pools=POOLS)]  # empty
    reg = Registry(ALL, allocs, pools=POOLS)
    a1, c1 = reg.plan_allocate(None, None, None, pool="campus")
    reg.apply(c1)
    fresh = Registry(ALL, list(reg), pools=POOLS)
    assert fresh._free_by_pool == reg._free_by_pool == {
        "default": [int(A("198.51.100.10")), int(A("198.51.100.11"))], "campus": [int(A("203.0.113.21"))]}


# -- API and CLI -----------------------------------------------------------------------

@pytest.fixture
def daemon(tmp_path):
    config = fake_config(tmp_path / "state.db", pool="198.51.100.10-198.51.100.11", extra=CAMPUS)
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
    svc.start()
    _server, url, stop = serve_in_thread(ApiApp(svc, Authenticator(TOKEN)), max_body=4096, request_timeout=5)
    yield url, svc
    stop()


def call(url, method, path, body=None):
    resp = requests.request(method, url + path, json=body, timeout=5,
                            headers={"Authorization": f"Bearer {TOKEN}"})
    return resp.status_code, resp.json()


def test_api_allocates_from_the_asked_pool_and_reports_it(daemon):
    url, _svc = daemon
    status, body = call(url, "POST", "/v1/floatingips", {"private_ip": "10.77.0.11", "pool": "campus"})
    assert status == 201 and (body["public_ip"], body["pool"]) == ("203.0.113.20", "campus")
    status, body = call(url, "POST", "/v1/floatingips", {"private_ip": "10.77.0.12"})
    assert status == 201 and (body["public_ip"], body["pool"]) == ("198.51.100.10", "default")
    assert [a["public_ip"] for a in call(url, "GET", "/v1/floatingips?pool=campus")[1]["floatingips"]] == \
        ["203.0.113.20"]
    assert call(url, "GET", "/v1/floatingips/203.0.113.20")[1]["pool"] == "campus"
    assert call(url, "DELETE", "/v1/floatingips/203.0.113.20", {})[1]["pool"] == "campus"


@pytest.mark.parametrize("body, code, status, words", [
    ({"pool": "nope"}, "unknown_pool", 422, "pool: 'nope' is not a configured pool (known: default, campus)"),
    ({"pool": "Nope!"}, "unknown_pool", 422, "pool: 'Nope!' is not a pool name"),
    ({"pool": 5}, "unknown_pool", 422, "pool: 5 is not a pool name"),
])
def test_api_refuses_a_bad_pool_and_changes_nothing(daemon, body, code, status, words):
    url, svc = daemon
    got_status, got = call(url, "POST", "/v1/floatingips", {"private_ip": "10.77.0.11", **body})
    assert (got_status, got["error"]["code"]) == (status, code) and got["error"]["message"].startswith(words)
    assert len(svc.registry) == 0
    status, got = call(url, "GET", "/v1/floatingips?pool=nope")
    assert status == 422 and got["error"]["code"] == "unknown_pool"


def test_api_exhausted_pool_is_named(daemon):
    url, _svc = daemon
    for private in ("10.77.0.11", "10.77.0.12"):
        assert call(url, "POST", "/v1/floatingips", {"private_ip": private, "pool": "campus"})[0] == 201
    status, body = call(url, "POST", "/v1/floatingips", {"private_ip": "10.77.0.13", "pool": "campus"})
    assert status == 409 and body["error"] == {
        "code": "pool_exhausted", "message": "pool: all 2 addresses of pool 'campus' are allocated"}
    assert call(url, "POST", "/v1/floatingips", {"private_ip": "10.77.0.13"})[0] == 201  # default still has


def test_pool_routes(daemon):
    url, _svc = daemon
    call(url, "POST", "/v1/floatingips", {"private_ip": "10.77.0.11", "pool": "campus"})
    call(url, "POST", "/v1/floatingips", {"pool": "campus"})
    status, old = call(url, "GET", "/v1/pool")  # the default pool as before, and every pool's figures
    assert status == 200 and (old["size"], old["free"]) == (2, 2)
    assert [a["public_ip"] for a in old["addresses"]] == ["198.51.100.10", "198.51.100.11"]
    assert old["pools"] == [
        {"name": "default", "size": 2, "free": 2, "allocated": 0, "associated": 0},
        {"name": "campus", "size": 2, "free": 0, "allocated": 1, "associated": 1}]
    status, one = call(url, "GET", "/v1/pools/campus")
    assert status == 200 and one["addresses"] == [{"public_ip": "203.0.113.20", "status": "associated"},
                                                  {"public_ip": "203.0.113.21", "status": "allocated"}]
    assert [p["name"] for p in call(url, "GET", "/v1/pools")[1]["pools"]] == ["default", "campus"]
    status, body = call(url, "GET", "/v1/pools/nope")
    assert status == 404 and body["error"]["code"] == "unknown_pool" and "'nope'" in body["error"]["message"]
    assert call(url, "POST", "/v1/pools")[0] == 405


def run_cli(url, *args, capsys):
    code = cli.main(["--url", url, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_ippool_and_getip_pool(daemon, capsys, tmp_path, monkeypatch):
    url, _svc = daemon
    monkeypatch.setenv("IPFLOATER_TOKEN", TOKEN)
    code, out, _ = run_cli(url, "getip", "10.77.0.11", "--pool", "campus", capsys=capsys)
    assert code == 0 and out.strip() == "203.0.113.20"
    code, out, _ = run_cli(url, "ippool", "campus", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["free"] == 1 and json.loads(out)["name"] == "campus"
    code, out, _ = run_cli(url, "ippool", capsys=capsys)
    rows = [line.split() for line in out.splitlines()]
    assert code == 0 and ["203.0.113.20", "campus", "associated"] in rows and \
        ["198.51.100.10", "default", "free"] in rows
    assert "campus: 1 of 2 free" in out and "default: 2 of 2 free" in out
    code, _, err = run_cli(url, "getip", "10.77.0.12", "--pool", "nope", capsys=capsys)
    assert code == 1 and err.strip() == "ipfloater: pool: 'nope' is not a configured pool (known: default, campus)"
    code, _, err = run_cli(url, "ippool", "nope", capsys=capsys)
    assert code == 1 and "'nope' is not a configured pool" in err


def test_bare_prefix_and_deep_pool_paths_are_404s(daemon):
    url, _svc = daemon
    for path in ("/v1", "/v1/", "/v1/pools/campus/x"):
        status, body = call(url, "GET", path)
        assert status == 404 and body["error"]["code"] == "not_found", (path, body)
