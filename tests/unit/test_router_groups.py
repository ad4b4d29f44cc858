"""Router groups on one etcd (groups.py): the config, the filter of what a router's kernel
holds, the API's fields and the drift guard (no root: fake kernel, fake etcd)."""

import io
import json
import threading
from ipaddress import IPv4Address

import pytest

from one_ipfloater import daemon as daemon_mod, groups
from one_ipfloater.api import ApiApp
from one_ipfloater.auth import Principal
from one_ipfloater.config import ConfigError, parse_config_text
from one_ipfloater.etcdstore import EtcdStore
from one_ipfloater.model import Allocation, Change
from one_ipfloater.service import FloatingIPService
from tests.fakes import FakeBackend, FakeHost
from tests.fakes_etcd import FakeEtcd

A = IPv4Address
ETCD = "STATE_STORE = etcd\nETCD_ENDPOINTS = http://10.79.0.11:2379\n"
POOL_A, POOL_B = "203.0.113.10-203.0.113.12", "198.51.100.20-198.51.100.22"
FIP_A, FIP_B = A("203.0.113.10"), A("198.51.100.20")


def text(group="a", default_group="a", b_group="b", store=ETCD, extra=""):
    """Two pools: `default` (IP_POOL) and `pb`, each naming its group (None: key left out)."""
    out = f"[IPFLOATER]\nIP_POOL = {POOL_A}\nPRIVATE_IP_RANGES = 10.77.0.0/24\n{store}{extra}"
    if group is not None:
        out += f"ROUTER_GROUP = {group}\n"
    if default_group is not None:
        out += f"IP_POOL_ROUTER_GROUP = {default_group}\n"
    out += f"[POOL pb]\nIP_POOL = {POOL_B}\n"
    if b_group is not None:
        out += f"ROUTER_GROUP = {b_group}\n"
    return out


# -- config --------------------------------------------------------------------------

def test_groups_load_and_say_what_this_router_serves():
    a, b = parse_config_text(text("a")), parse_config_text(text("b"))
    assert a.router_group == "a" and a.pool_groups == (("default", "a"), ("pb", "b"))
    assert groups.served_pools(a) == ("default",) and groups.served_pools(b) == ("pb",)
    both = parse_config_text(text("a", b_group="a"))
    assert groups.served_pools(both) == ("default", "pb")


def test_without_groups_a_router_serves_every_pool_as_before():
    for store in (ETCD, ""):
        cfg = parse_config_text(text(None, None, None, store=store))
        assert cfg.router_group is None and cfg.pool_groups is None and groups.served_pools(cfg) is None


@pytest.mark.parametrize("config, message", [
    (text("a", default_group=None), "IP_POOL_ROUTER_GROUP: missing (once router groups are used, every pool"),
    (text("a", b_group=None), "[POOL pb] ROUTER_GROUP: missing (once router groups are used"),
    (text(None), "ROUTER_GROUP: missing (once router groups are used"),
    (text(None, default_group=None), "IP_POOL_ROUTER_GROUP: missing"),
    (text("A!"), "ROUTER_GROUP: 'A!' is not a group name (a lower-case letter, then up to 31 of a-z 0-9 _ -)"),
    (text("a", b_group="dc 2"), "[POOL pb] ROUTER_GROUP: 'dc 2' is not a group name"),
    (text("a", store=""), "ROUTER_GROUP: 'a' needs STATE_STORE = etcd (with sqlite no other router sees the changes)"),
    (text("c"), "ROUTER_GROUP: 'c' serves no pool (the pools' groups: a, b)"),
    (text("a").replace(f"IP_POOL = {POOL_A}\n", "", 1),
     "IP_POOL_ROUTER_GROUP: 'a' names the group of IP_POOL, which is not set"),
    (text("a", extra="ROUTER_NAME = -r1\n"), "ROUTER_NAME: '-r1' must be 1-64 characters"),
])
def test_group_mistakes_are_one_line_naming_the_key_and_value(config, message):
    with pytest.raises(ConfigError) as err:
        parse_config_text(config, "g.conf")
    assert str(err.value).startswith("g.conf: " + message), str(err.value)
    assert "\n" not in str(err.value)


# -- the pure filter -------------------------------------------------------------------

def test_only_served_pairs_and_changes():
    served = groups.served_addresses((("default", [FIP_A]), ("pb", [FIP_B])), ["pb"])
    assert served == {FIP_B}
    pairs = [(FIP_A, A("10.77.0.11")), (FIP_B, A("10.77.0.12"))]
    assert groups.only_served(pairs, served) == [pairs[1]]
    assert groups.only_served(pairs, None) == pairs  # no groups: everything
    change = Change(before=(Allocation(FIP_A, private_ip=A("10.77.0.11")),),
                    after=(Allocation(FIP_B, private_ip=A("10.77.0.12")),))
    assert groups.served_change(change, served) == Change(after=change.after)
    assert groups.served_change(change, None) is change


def test_judge_names_the_drifted_pool_and_the_unserved_one():
    pools = (("default", [FIP_A]), ("pb", [FIP_B]))
    mine = groups.layout(pools, (("default", "a"), ("pb", "b")))
    other_group = groups.layout(pools, (("default", "a"), ("pb", "c")))
    other_addrs = groups.layout((("default", [FIP_A]), ("pb", [FIP_B, A("198.51.100.21")])),
                                (("default", "a"), ("pb", "b")))
    me = groups.registration(mine, "a", ["default"], "master", 0)
    same_b = groups.registration(mine, "b", ["pb"], "master", 0)
    assert groups.judge("r1", mine, {"r1": me, "r2": same_b}) == []
    assert groups.judge("r1", mine, {"r1": me}) == [
        "pool 'pb': no live router of group 'b' serves it: its floating IPs are applied nowhere"]
    drift = groups.judge("r1", mine, {"r1": me, "r2": groups.registration(other_group, "c", ["pb"], "backup", 0)})
    assert drift == ["pool 'pb': router 'r2' (group 'c') says its group is 'c', not 'b'; every router must "
                     "carry the same pool sections"]
    drift = groups.judge("r1", mine, {"r1": me, "r2": groups.registration(other_addrs, "b", ["pb"], "master", 0)})
    assert drift == ["pool 'pb': router 'r2' (group 'b') has other addresses in it; every router must carry "
                     "the same pool sections"]


# -- two daemons of two groups on one (fake) etcd ------------------------------------

@pytest.fixture
def etcd():
    return FakeEtcd()


@pytest.fixture
def router(tmp_path, etcd):
    """router(group, extra=...) -> (service, backend, host) on the shared fake etcd;
    group None: the same pools without any group key (every pool served)."""
    def factory(group, extra="PUBLIC_INTERFACE = pub0\n", name=None):
        name = name or group or "nogroup"
        db = tmp_path / name / "state.db"
        db.parent.mkdir(exist_ok=True)
        config = parse_config_text(text(group, *(("a", "b") if group else (None, None)),
                                        extra=f"DB = {db}\n{extra}"))
        backend, host = FakeBackend(), FakeHost()
        svc = FloatingIPService(config, EtcdStore(["http://fake:2379"], "/fip", gateway=etcd), backend, host)
        svc.start()
        return svc, backend, host
    return factory


def test_a_change_through_group_a_is_applied_by_group_b_only(router):
    (a, kernel_a, host_a), (b, kernel_b, host_b) = router("a"), router("b")
    alloc, _ = a.allocate(private_ip=A("10.77.0.12"), pool="pb", ref="vm2")  # pool B through A's API
    assert alloc.public_ip == FIP_B
    assert kernel_a.live_pairs() == set() and host_a.addresses == set()  # A applies none of it
    assert b.follow()
    assert kernel_b.live_pairs() == {(FIP_B, A("10.77.0.12"))} and host_b.addresses == {FIP_B}
    # a new association cuts nothing (its FORWARD drop left no entry without NAT)
    assert host_b.flushed == []
    alloc, _ = b.allocate(private_ip=A("10.77.0.11"), ref="vm1")  # and the reverse
    assert a.follow()
    assert kernel_a.live_pairs() == {(alloc.public_ip, A("10.77.0.11"))} == {(FIP_A, A("10.77.0.11"))}
    assert kernel_b.live_pairs() == {(FIP_B, A("10.77.0.12"))}
    assert host_a.flushed == [] and host_b.flushed == []
    # a move of pool B's address: B flushes its flows, A (which never had them) does not
    a.associate(FIP_B, A("10.77.0.13"), allow_move=True)
    assert host_a.flushed == []
    b.follow()
    assert host_b.flushed == [FIP_B] and kernel_b.live_pairs() == {(FIP_B, A("10.77.0.13"))}


def test_negative_control_without_groups_the_router_applies_every_pool(router):
    (a, _, _), (plain, kernel_plain, _) = router("a"), router(None)
    a.allocate(private_ip=A("10.77.0.12"), pool="pb")
    plain.follow()
    assert kernel_plain.live_pairs() == {(FIP_B, A("10.77.0.12"))}


def test_block_public_ips_and_the_ha_flush_cover_the_served_pools_only(router):
    from one_ipfloater import hastate
    from one_ipfloater.nat.ruleset import CHAIN_IN
    a, kernel_a, _ = router("a", extra="BLOCK_PUBLIC_IPS = yes\n")
    drops = {str(r.dst) for r in kernel_a.chains[CHAIN_IN]}
    assert drops == {"203.0.113.10/31", "203.0.113.12/32"}  # pool `default` only, not pb's 198.51.100.20-22
    assert hastate.served_addresses(a) == {A("203.0.113.10"), A("203.0.113.11"), A("203.0.113.12")}


def test_another_groups_address_left_on_the_interface_is_removed(router):
    a, _, host = router("a")
    host.addresses.add(FIP_B)  # e.g. from before the router joined group a
    a.allocate(private_ip=A("10.77.0.12"), pool="pb")
    assert any("removed 198.51.100.20/32" in r for r in a.reconcile()) and host.addresses == set()


def _get(app, path):
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.input": io.BytesIO(b""),
           "HTTP_AUTHORIZATION": "Bearer x"}
    out = {}

    def start_response(status, _headers):
        out["status"] = int(status.split()[0])
    body = b"".join(app(env, start_response))
    return out["status"], json.loads(body)


def test_health_and_pools_show_the_group(router):
    a, _, _ = router("a")
    a.group_warnings = ["pool 'pb': no live router of group 'b' serves it: its floating IPs are applied nowhere"]
    app = ApiApp(a, lambda _t: Principal("op", "operator"))
    status, health = _get(app, "/v1/health")
    assert status == 200 and health["router_group"] == {"name": "a", "pools": ["default"]}
    assert health["warnings"][-1:] == a.group_warnings  # after preflight's
    status, pools = _get(app, "/v1/pools")
    assert [(p["name"], p["router_group"]) for p in pools["pools"]] == [("default", "a"), ("pb", "b")]


def test_without_groups_the_answers_keep_their_shape(router):
    plain, _, _ = router(None)
    app = ApiApp(plain, lambda _t: Principal("op", "operator"))
    assert "router_group" not in _get(app, "/v1/health")[1]
    assert all("router_group" not in p for p in _get(app, "/v1/pools")[1]["pools"])


def test_the_guard_publishes_reads_warns_and_unregisters(router, etcd):
    class Ha:
        state = "master"
    (a, _, _), (b, _, _) = router("a"), router("b")
    stop = threading.Event()
    stop.set()  # one round, then the stop's unregistering
    daemon_mod.guard_loop(a.config._replace(router_name="r1"), a, a.store, Ha, stop)
    assert a.group_warnings == ["pool 'pb': no live router of group 'b' serves it: its floating IPs are "
                                "applied nowhere"]
    assert a.store.routers() == {}  # unregistered at the stop (its lease revoked)
    drifted = groups.layout(b.config.pools, (("default", "a"), ("pb", "c")))  # r2's pb says group c
    lease = b.store.grant_lease(10)
    b.store.put_router("r2", groups.registration(drifted, "c", ["pb"], "master", 0), lease)
    daemon_mod.guard_loop(a.config._replace(router_name="r1"), a, a.store, Ha, stop)
    assert a.group_warnings == ["pool 'pb': router 'r2' (group 'c') says its group is 'c', not 'b'; every "
                                "router must carry the same pool sections"]
    etcd.expire(lease)  # r2 stopped keeping it alive
    daemon_mod.guard_loop(a.config._replace(router_name="r1"), a, a.store, Ha, stop)
    assert a.group_warnings == ["pool 'pb': no live router of group 'b' serves it: its floating IPs are "
                                "applied nowhere"]


def test_the_guard_keeps_its_lease_alive_and_takes_a_new_one_when_it_expired(router, etcd, monkeypatch):
    class Ha:
        state = "backup"
    a, _, _ = router("a")
    stop, rounds = threading.Event(), []

    def wait(_timeout):  # the loop's pause: three rounds, the lease lost after the first
        rounds.append(dict(a.store.routers()))
        if len(rounds) == 1:
            etcd.expire(next(iter(etcd.leased.values())))
        return len(rounds) == 3
    monkeypatch.setattr(stop, "wait", wait)
    puts = etcd.calls.get("/v3/kv/put", 0)
    daemon_mod.guard_loop(a.config._replace(router_name="r1"), a, a.store, Ha, stop)
    assert [list(r) for r in rounds] == [["r1"], ["r1"], ["r1"]]  # back at once under a new lease
    assert etcd.calls["/v3/kv/put"] - puts == 2 and etcd.calls["/v3/lease/grant"] == 2
    assert etcd.calls["/v3/lease/keepalive"] == 2  # (no put while nothing changed)
    assert rounds[0]["r1"]["ha_state"] == "backup" and a.store.routers() == {}


def test_status_names_the_group_and_the_warnings(router, capsys, monkeypatch):
    from one_ipfloater import cli
    from one_ipfloater.auth import Authenticator
    from one_ipfloater.httpserver import serve_in_thread
    a, _, _ = router("a")
    a.group_warnings = ["pool 'pb': no live router of group 'b' serves it: its floating IPs are applied nowhere"]
    token = "t" * 32
    _server, url, stop = serve_in_thread(ApiApp(a, Authenticator(token)), request_timeout=5)
    try:
        monkeypatch.setenv("IPFLOATER_TOKEN", token)
        host, port = url.replace("http://", "").split(":")
        assert cli.main(["-i", host, "-p", port, "status"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[1] == "router group: a (applies pools: default)"
        assert "warning: pool 'pb': no live router of group 'b' serves it: its floating IPs are applied nowhere" \
            in lines
        assert cli.main(["--url", f"{url},{url.replace('127.0.0.1', 'localhost')}", "status"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].split()[:3] == ["URL", "HEALTH", "ROUTER_GROUP"] and out[1].split()[2] == "a"
    finally:
        stop()


def test_ha_state_without_the_daemon_flushes_the_groups_pools_only(tmp_path, monkeypatch, capsys):
    import socket
    from one_ipfloater import hostnet
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there once closed
    conf = tmp_path / "ipfloaterd.conf"
    conf.write_text(text("b", extra=f"DB = {tmp_path / 'state.db'}\nTOKEN_FILE = {tmp_path / 'token'}\n"
                                    f"REST_PORT = {port}\n"))
    (tmp_path / "token").write_text("t" * 32)
    monkeypatch.delenv("IPFLOATER_TOKEN", raising=False)
    flushed = []
    monkeypatch.setattr(hostnet, "flush_conntrack", lambda addrs: flushed.extend(addrs) or {a: 1 for a in addrs})
    assert daemon_mod.main(["--config", str(conf), "ha-state", "master"]) == 0
    assert json.loads(capsys.readouterr().out)["conntrack_flushed"] == 3
    assert sorted(flushed) == [A("198.51.100.20"), A("198.51.100.21"), A("198.51.100.22")]  # pool pb's only


def test_check_shows_the_group_and_each_pools(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(daemon_mod.preflight, "report", lambda config, host: {"backend": "x", "errors": [],
                                                                             "warnings": []})
    cfg = parse_config_text(text("b", extra=f"DB = {tmp_path / 'state.db'}\n"))
    assert daemon_mod.check(cfg, "g.conf") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["router_group"] == {"name": "b", "pools": ["pb"]}
    assert out["pool_groups"] == {"default": "a", "pb": "b"}
    plain = parse_config_text(text(None, None, None, extra=f"DB = {tmp_path / 'state.db'}\n"))
    assert daemon_mod.check(plain, "g.conf") == 0
    assert "router_group" not in json.loads(capsys.readouterr().out)
