"""The etcd store with an in-memory gateway (tests/fakes_etcd.py): the txn a change makes,
the conflict/catch-up/re-plan path between daemons, quotas across daemons, the follower,
and fail static when etcd does not answer."""

import base64
from ipaddress import IPv4Address

import pytest

from one_ipfloater import etcdstore, service as service_mod
from one_ipfloater.api import ApiApp
from one_ipfloater.auth import Authenticator
from one_ipfloater.httpserver import serve_in_thread
from one_ipfloater.config import ConfigError, parse_config_text
from one_ipfloater.etcdstore import EtcdStore, Gateway, StoreUnavailable, plan_txn
from one_ipfloater.model import Allocation, Change, FipError
from one_ipfloater.quota import Quota
from one_ipfloater.service import FloatingIPService
from tests.fakes import FakeBackend, FakeHost, fake_config
from tests.fakes_etcd import FakeEtcd
from tests.unit.test_api import TOKEN, call, run_cli

A = IPv4Address


def d(text):
    return base64.b64decode(text).decode()


@pytest.fixture
def etcd():
    return FakeEtcd()


@pytest.fixture
def daemon(tmp_path, etcd):
    """A factory of daemons (service, backend) sharing the one fake etcd."""
    def factory(pool="198.51.100.10-198.51.100.12"):
        config = fake_config(tmp_path / "state.db", pool=pool, public_interface="pub0")
        backend = FakeBackend()
        svc = FloatingIPService(config, EtcdStore(["http://fake:2379"], "/fip", gateway=etcd), backend, FakeHost())
        svc.start()
        return svc, backend
    return factory


def test_plan_txn_compares_the_rev_key_and_writes_everything_at_once():
    alloc = Allocation(A("198.51.100.10"), "uid:1", "r1", A("10.77.0.11"))
    gone = Allocation(A("198.51.100.11"), "uid:2", None, None)
    body = plan_txn("/fip", 41, Change(before=(gone,), after=(alloc,)), [], {}, 5.0, True)
    assert body["compare"] == [{"key": base64.b64encode(b"/fip/rev").decode(), "target": "MOD",
                                "result": "LESS", "mod_revision": "42"}]
    ops = [(next(iter(op)), d(next(iter(op.values()))["key"])) for op in body["success"]]
    assert ops == [("request_delete_range", "/fip/alloc/198.51.100.11"), ("request_put", "/fip/gone/198.51.100.11"),
                   ("request_put", "/fip/alloc/198.51.100.10"),
                   ("request_put", "/fip/meta/history"), ("request_put", "/fip/rev")]


def test_a_stale_daemon_catches_up_and_never_hands_out_an_address_twice(daemon, etcd, monkeypatch):
    monkeypatch.setattr(etcdstore, "PAGE", 1)  # reads in pages too
    one, kernel_one = daemon()
    two, kernel_two = daemon()  # both read the empty state
    first, _ = one.allocate(private_ip=A("10.77.0.11"), ref="a")
    second, _ = two.allocate(private_ip=A("10.77.0.12"), ref="b")  # plans on a stale view first
    assert first.public_ip != second.public_ip
    assert sorted(a.public_ip for a in EtcdStore(["x"], "/fip", gateway=etcd).allocations()) == \
        [first.public_ip, second.public_ip]
    # the catch-up put the other daemon's association into the stale one's kernel as well
    assert kernel_two.live_pairs() == {(first.public_ip, A("10.77.0.11")), (second.public_ip, A("10.77.0.12"))}
    assert one.follow() and kernel_one.chains == kernel_two.chains
    assert not one.follow()  # nothing new: no catch-up


def test_without_the_compare_the_stale_daemon_would_take_the_same_address(daemon, etcd, monkeypatch):
    """The negative control of the test above: the compare is what keeps it exact."""
    real = etcdstore.plan_txn

    def no_compare(*args, **kwargs):
        return {**real(*args, **kwargs), "compare": []}
    monkeypatch.setattr(etcdstore, "plan_txn", no_compare)
    one, _ = daemon()
    two, _ = daemon()
    first, _ = one.allocate(ref="a")
    second, _ = two.allocate(ref="b")
    assert first.public_ip == second.public_ip  # handed out twice


def test_quotas_stay_exact_across_daemons(daemon):
    one, _ = daemon()
    two, _ = daemon()
    quota = [Quota("uid:7", 1, None)]
    one.allocate(owner="uid:7", quotas=quota)
    with pytest.raises(FipError) as err:
        two.allocate(owner="uid:7", quotas=quota)  # stale view: 0 held; after the catch-up: 1
    assert err.value.code == "quota_exceeded"


def test_release_and_move_through_another_daemon_reach_the_follower(daemon):
    one, _ = daemon()
    two, kernel_two = daemon()
    alloc, _ = one.allocate(private_ip=A("10.77.0.11"), owner="uid:1")
    assert two.follow() and kernel_two.live_pairs() == {(alloc.public_ip, A("10.77.0.11"))}
    one.associate(alloc.public_ip, A("10.77.0.12"), owner="uid:1", allow_move=True)
    assert two.follow() and kernel_two.live_pairs() == {(alloc.public_ip, A("10.77.0.12"))}
    assert alloc.public_ip in two.host.flushed  # the old flows cut there too
    one.release(alloc.public_ip, owner="uid:1")
    assert two.follow() and kernel_two.live_pairs() == set() and len(two.registry) == 0


def test_conflicts_are_bounded(daemon, etcd, monkeypatch):
    one, _ = daemon()
    monkeypatch.setattr(service_mod, "CONFLICT_RETRIES", 3)
    real_call, commits = etcd.call, []

    def always_changed(path, body):
        if path == "/v3/kv/txn" and body.get("compare"):
            commits.append(1)
            real_call("/v3/kv/put", {"key": base64.b64encode(b"/fip/rev").decode(), "value": ""})
        return real_call(path, body)
    monkeypatch.setattr(etcd, "call", always_changed)
    with pytest.raises(FipError) as err:
        one.allocate(ref="a")
    assert (err.value.code, err.value.status) == ("store_conflict", 503)
    assert len(commits) == 3 and len(one.registry) == 0


def test_fail_static_refuses_changes_keeps_rules_and_answers_reads(daemon, etcd, capsys, monkeypatch):
    one, kernel = daemon()
    alloc, _ = one.allocate(private_ip=A("10.77.0.11"), ref="a")
    rules = {c: list(r) for c, r in kernel.chains.items()}
    _server, url, stop = serve_in_thread(ApiApp(one, Authenticator(TOKEN)), max_body=4096, request_timeout=5)
    try:
        etcd.down = True
        for method, path, body in (("POST", "/v1/floatingips", {"ref": "b"}),
                                   ("DELETE", f"/v1/floatingips/{alloc.public_ip}", None),
                                   ("DELETE", f"/v1/floatingips/{alloc.public_ip}/association", None)):
            status, answer = call(url, method, path, body)
            assert status == 503 and answer["error"]["code"] == "store_unavailable", answer
            assert "etcd unavailable" in answer["error"]["message"]
        assert kernel.chains == rules and list(one.registry) == [alloc]
        status, answer = call(url, "GET", "/v1/floatingips")
        assert status == 200 and [f["public_ip"] for f in answer["floatingips"]] == [str(alloc.public_ip)]
        with pytest.raises(StoreUnavailable):
            one.follow()
        store = call(url, "GET", "/v1/health", token=None)[1]["store"]
        assert store["kind"] == "etcd" and store["ok"] is False and "etcd unavailable" in store["error"]
        assert store["last_read_age_s"] >= 0
        monkeypatch.setenv("IPFLOATER_TOKEN", TOKEN)
        code, out, _err = run_cli(url, capsys, "status")
        assert code == 0 and out.startswith("state store: etcd UNAVAILABLE (etcd unavailable") \
            and str(alloc.public_ip) in out
        etcd.down = False
        status, answer = call(url, "POST", "/v1/floatingips", {"ref": "b"})
        assert status == 201 and answer["public_ip"] != str(alloc.public_ip)
        assert call(url, "GET", "/v1/health", token=None)[1]["store"]["ok"] is True
    finally:
        stop()


def test_history_lives_in_etcd(daemon):
    one, _ = daemon()
    two, _ = daemon()
    alloc, _ = one.allocate(private_ip=A("10.77.0.11"), owner="uid:1", ref="a")
    one.release(alloc.public_ip, owner="uid:1")
    events = two.history_between(alloc.public_ip)["events"]
    assert [e.event for e in events] == ["allocate", "associate", "release"]
    assert two.history_at(alloc.public_ip, events[1].at)["event"].private_ip == A("10.77.0.11")


class _Answer:
    def __init__(self, status, data):
        self.status_code, self._data = status, data

    def json(self):
        return self._data


class _Session:
    """First endpoint refuses connections; the second answers."""

    def __init__(self):
        self.urls = []

    def post(self, url, json, timeout):
        import requests
        self.urls.append(url)
        if url.startswith("http://bad"):
            raise requests.ConnectionError("refused")
        return _Answer(200, {"header": {"revision": "3"}})


def test_gateway_fails_over_and_names_the_last_error():
    session = _Session()
    gw = Gateway(["http://bad:2379", "http://good:2379"], session=session)
    assert gw.call("/v3/kv/range", {}) == {"header": {"revision": "3"}}
    gw.call("/v3/kv/range", {})
    assert session.urls == ["http://bad:2379/v3/kv/range", "http://good:2379/v3/kv/range",
                            "http://good:2379/v3/kv/range"]  # the good one first next time
    with pytest.raises(StoreUnavailable, match=r"etcd unavailable \(http://bad:2379/v3/kv/range: ConnectionError\)"):
        Gateway(["http://bad:2379"], session=session).call("/v3/kv/range", {})


BASE = "[IPFLOATER]\nIP_POOL = 198.51.100.10-198.51.100.12\nPRIVATE_IP_RANGES = 10.77.0.0/24\n"


def test_config_state_store_keys():
    config = parse_config_text(BASE + "STATE_STORE = etcd\nETCD_ENDPOINTS = http://10.79.0.11:2379, "
                               "http://10.79.0.12:2379\nETCD_PREFIX = /fip/a\nETCD_TIMEOUT = 1.5\n")
    assert config.state_store == "etcd" and config.etcd_prefix == "/fip/a" and config.etcd_timeout == 1.5
    assert config.etcd_endpoints == ("http://10.79.0.11:2379", "http://10.79.0.12:2379")
    assert parse_config_text(BASE).state_store == "sqlite"
    for extra, message in (
            ("STATE_STORE = redis\n", "STATE_STORE: 'redis' is not sqlite or etcd"),
            ("STATE_STORE = etcd\n", "ETCD_ENDPOINTS: missing (required with STATE_STORE = etcd)"),
            ("STATE_STORE = etcd\nETCD_ENDPOINTS = 10.79.0.11:2379\n",
             "ETCD_ENDPOINTS: '10.79.0.11:2379' is not an http(s)://host:port URL"),
            ("ETCD_PREFIX = fip\n", "ETCD_PREFIX: 'fip' is not a key prefix such as /ipfloater"),
            ("ETCD_TIMEOUT = 0\n", "ETCD_TIMEOUT")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_config_text(BASE + extra)


def test_history_reads_in_pages_and_prunes_in_small_txns(daemon, monkeypatch):
    """Many events: read a page at a time, pruned in txns etcd accepts (at most 128 ops)."""
    monkeypatch.setattr(etcdstore, "PAGE", 7)
    one, _ = daemon()
    clock = [1000.0]
    one.clock = lambda: clock[0]
    alloc, _ = one.allocate(owner="uid:1")
    for n in range(150):
        clock[0] += 1
        one.associate(alloc.public_ip, A(f"10.77.0.{10 + n % 2}"), owner="uid:1", allow_move=True)
    assert [a.public_ip for a in one.store.allocations()] == [alloc.public_ip]
    events = one.store.history.all()
    assert len(events) == 151 and len({e.id for e in events}) == 151
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert one.store.history.prune(2000.0) == 150  # all but the address's last one
    assert [e.event for e in one.store.history.all()] == ["move"]


def test_adopt_is_refused_with_the_shared_store():
    from one_ipfloater import daemon
    config = parse_config_text(BASE + "STATE_STORE = etcd\nETCD_ENDPOINTS = http://10.79.0.11:2379\n")
    with pytest.raises(daemon.DaemonError, match="adopt: STATE_STORE = etcd keeps the state of the whole group"):
        daemon.adopt(config)
