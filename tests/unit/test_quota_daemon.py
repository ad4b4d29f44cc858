"""Quotas in the daemon: the request's `quota` list, the count under the service lock
(racing threads never overshoot), per pool, the owner_group column and its migration,
and the API's answers (in process, no root)."""

import sqlite3
import threading
from ipaddress import IPv4Address as A

import pytest
import requests

from one_ipfloater import quota as quota_mod
from one_ipfloater.api import ApiApp
from one_ipfloater.auth import Authenticator, TokenTable
from one_ipfloater.httpserver import serve_in_thread
from one_ipfloater.model import Allocation, FipError, Registry
from one_ipfloater.quota import Quota, check_quotas, parse_quotas
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.fakes import FakeBackend, FakeHost, fake_config

TOKEN = "q" * 40
POOL = "198.51.100.10-198.51.100.40"


def service(tmp_path, pool=POOL, extra=""):
    config = fake_config(tmp_path / "state.db", pool=pool, extra=extra)
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
    svc.start()
    return svc


# -- the request's list -------------------------------------------------------------------

def test_parse_quotas_accepts_limits_and_drops_unlimited():
    assert parse_quotas(None) == ()
    assert parse_quotas([{"scope": "one:uid:5", "limit": 3}, {"scope": "one:gid:1", "limit": -1},
                         {"scope": "one:gid:1", "limit": 0, "pool": "campus"}]) == (
        Quota("one:uid:5", 3, None), Quota("one:gid:1", 0, "campus"))


@pytest.mark.parametrize("value, words", [
    ("3", "quota: '3' is not a list"),
    ([1], "quota[0]: 1 is not an object"),
    ([{"scope": "u", "limit": 1, "extra": 1}], "quota[0].extra: unknown field"),
    ([{"limit": 1}], "quota[0].scope: None"),
    ([{"scope": "a b", "limit": 1}], "quota[0].scope: 'a b'"),
    ([{"scope": "u", "limit": True}], "quota[0].limit: True is not an integer"),
    ([{"scope": "u", "limit": "3"}], "quota[0].limit: '3' is not an integer"),
    ([{"scope": "u", "limit": -2}], "quota[0].limit: -2"),
    ([{"scope": "u", "limit": 1.5}], "quota[0].limit: 1.5"),
    ([{"scope": "u", "limit": 1, "pool": "Campus!"}], "quota[0].pool: 'Campus!' is not a pool name"),
    ([{"scope": "u", "limit": 1}] * 17, "quota: 17 entries is over the limit of 16"),
])
def test_parse_quotas_refuses_bad_entries_naming_field_and_value(value, words):
    with pytest.raises(FipError) as err:
        parse_quotas(value)
    assert err.value.status == 400 and words in err.value.message


# -- the count, in the service ---------------------------------------------------------------

def test_quota_refuses_the_next_new_allocation_but_never_a_held_ref(tmp_path):
    svc = service(tmp_path)
    q = [Quota("one:uid:5", 2, None)]
    for i in range(2):
        svc.allocate(owner="one:uid:5", ref=f"r{i}", owner_group="one:gid:1", quotas=q)
    with pytest.raises(FipError) as err:
        svc.allocate(owner="one:uid:5", ref="r2", quotas=q)
    assert err.value.code == "quota_exceeded" and err.value.status == 409
    assert err.value.message == ("quota: one:uid:5 already holds 2 floating IP(s) in all pools; "
                                 "its limit is 2")
    assert len(svc.registry) == 2  # nothing taken
    alloc, created = svc.allocate(owner="one:uid:5", ref="r1", quotas=[Quota("one:uid:5", 0, None)])
    assert not created and alloc.ref == "r1"  # a lowered limit takes nothing away
    other, created = svc.allocate(owner="one:uid:6", ref="x", quotas=[Quota("one:uid:6", 1, None)])
    assert created  # another user counts on its own


def test_group_quota_counts_every_member_of_the_group(tmp_path):
    svc = service(tmp_path)
    q = lambda uid: [Quota(f"one:uid:{uid}", 5, None), Quota("one:gid:100", 3, None)]  # noqa: E731
    svc.allocate(owner="one:uid:1", ref="a", owner_group="one:gid:100", quotas=q(1))
    svc.allocate(owner="one:uid:2", ref="b", owner_group="one:gid:100", quotas=q(2))
    svc.allocate(owner="one:uid:3", ref="c", owner_group="one:gid:100", quotas=q(3))
    svc.allocate(owner="one:uid:4", ref="d", owner_group="one:gid:200")  # another group
    with pytest.raises(FipError) as err:
        svc.allocate(owner="one:uid:1", ref="e", owner_group="one:gid:100", quotas=q(1))
    assert "one:gid:100 already holds 3" in err.value.message and "its limit is 3" in err.value.message


def test_a_quota_must_name_the_owner_or_the_group_of_the_request(tmp_path):
    svc = service(tmp_path)
    with pytest.raises(FipError) as err:
        svc.allocate(owner="one:uid:1", ref="a", owner_group="one:gid:1", quotas=[Quota("one:uid:2", 1, None)])
    assert err.value.status == 400 and "quota[0].scope: 'one:uid:2' is neither" in err.value.message
    assert len(svc.registry) == 0


def test_per_pool_quota_counts_only_that_pool(tmp_path):
    """.10-.19 are the pool 'campus', the rest 'default'."""
    svc = service(tmp_path, pool="198.51.100.20-198.51.100.40",
                  extra="[POOL campus]\nIP_POOL = 198.51.100.10-198.51.100.19\n")
    q = [Quota("u", 1, "campus"), Quota("u", 3, None)]
    svc.allocate(public_ip=A("198.51.100.11"), owner="u", ref="c1", quotas=q)
    with pytest.raises(FipError) as err:
        svc.allocate(public_ip=A("198.51.100.12"), owner="u", ref="c2", quotas=q)
    assert err.value.message == "quota: u already holds 1 floating IP(s) in pool 'campus'; its limit is 1"
    svc.allocate(public_ip=A("198.51.100.21"), owner="u", ref="d1", quotas=q)  # default: fine
    svc.allocate(public_ip=A("198.51.100.22"), owner="u", ref="d2", quotas=q)
    with pytest.raises(FipError) as err:  # the overall limit counts both pools
        svc.allocate(public_ip=A("198.51.100.23"), owner="u", ref="d3", quotas=q)
    assert "already holds 3 floating IP(s) in all pools" in err.value.message


def test_ip_pool_is_the_pool_default():
    reg = Registry([A("198.51.100.10")])
    assert reg.pool_of(A("198.51.100.10")) == "default"
    assert reg.pool_of(A("198.51.100.99")) is None


def test_twenty_racing_threads_of_one_user_get_exactly_the_quota(tmp_path):
    """The count and the take happen under one lock: no overshoot, whatever the timing."""
    svc = service(tmp_path)
    start = threading.Barrier(20)
    results = []

    def one(i):
        start.wait(timeout=30)
        try:
            svc.allocate(private_ip=A(f"10.77.0.{20 + i}"), owner="one:uid:5", ref=f"one:vm:{i}:nic:0",
                         owner_group="one:gid:1", quotas=[Quota("one:uid:5", 3, None)])
            results.append("ok")
        except FipError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == ["ok"] * 3 + ["quota_exceeded"] * 17
    assert len(svc.registry) == 3


def test_check_quotas_without_the_lock_would_overshoot():
    """Negative control for the race test: two planners that both count before either
    takes see the same count and both pass; only the service lock prevents that."""
    reg = Registry([A("198.51.100.10"), A("198.51.100.11")])
    q = [Quota("u", 1, None)]
    first = Allocation(A("198.51.100.10"), "u", "r1")
    second = Allocation(A("198.51.100.11"), "u", "r2")
    check_quotas(reg, first, q)
    check_quotas(reg, second, q)  # counted before `first` was applied: passes too
    with pytest.raises(FipError):
        reg._add(first)
        check_quotas(reg, second, q)


# -- persistence -------------------------------------------------------------------------------

def test_owner_group_is_stored_and_an_old_file_gains_the_column(tmp_path):
    db = tmp_path / "state.db"
    old = sqlite3.connect(db)  # a file as daemons before quotas wrote it
    old.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE allocations (public_ip TEXT PRIMARY KEY, owner TEXT, ref TEXT UNIQUE,
            private_ip TEXT UNIQUE, created_at REAL NOT NULL, updated_at REAL NOT NULL);
        INSERT INTO allocations VALUES ('198.51.100.10', 'one:uid:5', 'r0', NULL, 1.0, 1.0);
    """)
    old.commit()
    old.close()
    svc = service(tmp_path)
    assert [a.owner_group for a in svc.registry] == [None]
    svc.allocate(owner="one:uid:5", ref="r1", owner_group="one:gid:7")
    svc.store.close()
    again = Store(str(db))
    assert {a.ref: a.owner_group for a in again.allocations()} == {"r0": None, "r1": "one:gid:7"}
    assert again._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("1",)
    again.close()


def test_a_move_keeps_the_owner_group(tmp_path):
    svc = service(tmp_path)
    alloc, _ = svc.allocate(private_ip=A("10.77.0.11"), owner="u", ref="r", owner_group="g")
    moved = svc.associate(alloc.public_ip, A("10.77.0.12"), owner="u", allow_move=True)
    assert moved.owner_group == "g" and svc.store.allocations()[0].owner_group == "g"


# -- over HTTP -----------------------------------------------------------------------------------

@pytest.fixture
def http(tmp_path):
    svc = service(tmp_path)
    table = TokenTable(svc.config.db_path)
    owner_token = table.add("alice-tok", "owner", "one:uid:5")
    _server, url, stop = serve_in_thread(ApiApp(svc, Authenticator(TOKEN, TokenTable(svc.config.db_path))))
    yield url, svc, owner_token
    stop()
    table.close()


def post(url, body, token=TOKEN):
    resp = requests.post(url + "/v1/floatingips", json=body, timeout=5,
                         headers={"Authorization": f"Bearer {token}"})
    return resp.status_code, resp.json()


def test_api_quota_exceeded_and_owner_group_in_the_view(http):
    url, svc, _ = http
    body = {"owner": "one:uid:5", "owner_group": "one:gid:1", "quota": [{"scope": "one:uid:5", "limit": 1}]}
    status, view = post(url, {**body, "ref": "a"})
    assert status == 201 and view["owner_group"] == "one:gid:1"
    status, answer = post(url, {**body, "ref": "b"})
    assert status == 409 and answer["error"] == {
        "code": "quota_exceeded",
        "message": "quota: one:uid:5 already holds 1 floating IP(s) in all pools; its limit is 1"}
    assert post(url, {**body, "ref": "a"})[0] == 200  # the held ref is never refused
    status, answer = post(url, {**body, "ref": "c", "quota": [{"scope": "one:uid:5", "limit": "x"}]})
    assert status == 400 and "quota[0].limit: 'x'" in answer["error"]["message"]
    assert len(svc.registry) == 1


def test_api_only_operator_tokens_set_quota_or_owner_group(http):
    url, svc, owner_token = http
    for field, value in (("quota", [{"scope": "one:uid:5", "limit": 9}]), ("owner_group", "one:gid:1")):
        status, answer = post(url, {"ref": "z", field: value}, token=owner_token)
        assert status == 403 and answer["error"]["code"] == "forbidden"
        assert answer["error"]["message"].startswith(f"{field}: token 'alice-tok' (owner) may not set it")
    assert len(svc.registry) == 0
    assert post(url, {"ref": "z"}, token=owner_token)[0] == 201


def test_a_release_frees_quota_and_the_index_matches_a_full_count(tmp_path):
    """The per-scope index (Registry.held_by) follows allocations, moves and releases, and
    agrees with a count over every allocation, also after a restart (index built afresh)."""
    svc = service(tmp_path)
    q = [Quota("u", 2, None), Quota("g", 3, None)]
    a, _ = svc.allocate(private_ip=A("10.77.0.11"), owner="u", ref="a", owner_group="g", quotas=q)
    svc.allocate(owner="u", ref="b", owner_group="g", quotas=q)
    with pytest.raises(FipError):
        svc.allocate(owner="u", ref="c", owner_group="g", quotas=q)
    svc.associate(a.public_ip, A("10.77.0.12"), owner="u", allow_move=True)
    svc.release(a.public_ip, owner="u")
    svc.allocate(owner="u", ref="c", owner_group="g", quotas=q)  # room again
    svc.allocate(owner="v", ref="d", owner_group="g")
    with pytest.raises(FipError) as err:
        svc.allocate(owner="v", ref="e", owner_group="g", quotas=[Quota("g", 3, None)])
    assert "g already holds 3" in err.value.message

    def full_count(registry, scope):
        return sum(1 for x in registry if scope in (x.owner, x.owner_group))

    for registry in (svc.registry, service(tmp_path).registry):
        assert {s: quota_mod.held(registry, s) for s in ("u", "v", "g", "nobody")} == \
            {s: full_count(registry, s) for s in ("u", "v", "g", "nobody")} == \
            {"u": 2, "v": 1, "g": 3, "nobody": 0}
