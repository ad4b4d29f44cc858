"""History for abuse reports: the events of each change kind, written in the change's own
transaction, append-only, pruned by age, and the queries (pure and SQL agree), all on a
clock the tests drive (no root needed)."""

import re
import sqlite3
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from one_ipfloater import history
from one_ipfloater.config import ConfigError, parse_config_text
from one_ipfloater.history import Event, events_for, parse_time
from one_ipfloater.model import Allocation, Change, FipError
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.fakes import FakeBackend, FakeHost, fake_config

A = IPv4Address
DAY = 86400.0
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
PUB, PUB2 = A("198.51.100.10"), A("198.51.100.11")
PACKAGE = Path(__file__).resolve().parents[2] / "one_ipfloater"


class Clock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def make(tmp_path):
    """A service on the state file of this test (each call: a restart), on a clock."""
    def factory(clock, history_days=400, public_interface="pub0"):
        config = fake_config(tmp_path / "state.db", public_interface=public_interface)._replace(
            history_days=history_days)
        svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost(), clock=clock)
        svc.start()
        return svc
    return factory


def kinds(events):
    return [(e.event, str(e.public_ip), str(e.private_ip) if e.private_ip else None,
             str(e.previous_private_ip) if e.previous_private_ip else None) for e in events]


# -- the events of each change kind (pure) ------------------------------------------------

ALLOC = Allocation(PUB, "uid:1", "vm:1:0")


@pytest.mark.parametrize("change, expected", [
    (Change(after=(ALLOC,)), [("allocate", "198.51.100.10", None, None)]),
    (Change(after=(ALLOC._replace(private_ip=A("10.77.0.11")),)),
     [("allocate", "198.51.100.10", None, None), ("associate", "198.51.100.10", "10.77.0.11", None)]),
    (Change(before=(ALLOC,), after=(ALLOC._replace(private_ip=A("10.77.0.11")),)),
     [("associate", "198.51.100.10", "10.77.0.11", None)]),
    (Change(before=(ALLOC._replace(private_ip=A("10.77.0.11")),), after=(ALLOC._replace(private_ip=A("10.77.0.12")),)),
     [("move", "198.51.100.10", "10.77.0.12", "10.77.0.11")]),
    (Change(before=(ALLOC._replace(private_ip=A("10.77.0.11")),), after=(ALLOC,)),
     [("disassociate", "198.51.100.10", None, "10.77.0.11")]),
    (Change(before=(ALLOC._replace(private_ip=A("10.77.0.11")),)),
     [("release", "198.51.100.10", None, "10.77.0.11")]),
    (Change(), []),
])
def test_events_of_each_change_kind(change, expected):
    events = events_for(change, T0, "ops", lambda ip: "default")
    assert kinds(events) == expected
    assert all((e.at, e.owner, e.ref, e.pool, e.actor) == (T0, "uid:1", "vm:1:0", "default", "ops") for e in events)


def test_adopted_allocations_are_adopt_events():
    adopted = Allocation(PUB, None, None, A("10.77.0.11"))
    events = events_for(Change(after=(adopted,)), T0, "adopt", adopted=True)
    assert kinds(events) == [("adopt", "198.51.100.10", "10.77.0.11", None)]
    assert events[0].pool is None and events[0].actor == "adopt"  # no pool known: NULL


# -- through the service: every change recorded, with actor, clock and pool -----------------

def test_every_change_is_recorded_with_time_actor_and_pool(make):
    clock = Clock()
    svc = make(clock)
    svc.allocate(private_ip=A("10.77.0.11"), owner="uid:1", ref="vm:1:0", actor="ops")
    clock.now += 10
    svc.associate(PUB, A("10.77.0.12"), owner="uid:1", allow_move=True, actor="alice-tok")
    clock.now += 10
    svc.disassociate(PUB, owner="uid:1", actor="alice-tok")
    clock.now += 10
    svc.release(PUB, owner="uid:1", actor="ops")
    events = svc.store.history.all()
    assert kinds(events) == [("allocate", "198.51.100.10", None, None),
                             ("associate", "198.51.100.10", "10.77.0.11", None),
                             ("move", "198.51.100.10", "10.77.0.12", "10.77.0.11"),
                             ("disassociate", "198.51.100.10", None, "10.77.0.12"),
                             ("release", "198.51.100.10", None, None)]
    assert [e.at - T0 for e in events] == [0, 0, 10, 20, 30]
    assert [e.actor for e in events] == ["ops", "ops", "alice-tok", "alice-tok", "ops"]
    assert {(e.owner, e.ref, e.pool) for e in events} == {("uid:1", "vm:1:0", "default")}


def test_taking_another_addresses_private_ip_records_both(make):
    svc = make(Clock())
    svc.allocate(public_ip=PUB, private_ip=A("10.77.0.11"))
    svc.allocate(public_ip=PUB2, private_ip=A("10.77.0.12"))
    svc.associate(PUB2, A("10.77.0.11"), allow_move=True, actor="ops")
    assert kinds(svc.store.history.all()[-2:]) == [("move", "198.51.100.11", "10.77.0.11", "10.77.0.12"),
                                                   ("disassociate", "198.51.100.10", None, "10.77.0.11")]


def test_a_change_rolled_back_leaves_no_event(make):
    svc = make(Clock())
    svc.allocate(private_ip=A("10.77.0.11"))
    before = svc.store.history.all()
    svc.backend.fail_update = svc.backend.fail_sync = True
    with pytest.raises(FipError) as err:
        svc.allocate(private_ip=A("10.77.0.12"))
    assert err.value.status == 500
    with pytest.raises(FipError):  # refused before any write: nothing either
        svc.release(PUB2)
    assert svc.store.history.all() == before and len(before) == 2


def test_no_op_requests_record_nothing(make):
    svc = make(Clock())
    svc.allocate(private_ip=A("10.77.0.11"), ref="r")
    svc.allocate(private_ip=A("10.77.0.11"), ref="r")  # idempotent: the same address
    svc.associate(PUB, A("10.77.0.11"))
    assert len(svc.store.history.all()) == 2


def test_history_survives_restarts_and_reconciles(make):
    clock = Clock()
    svc = make(clock)
    svc.allocate(private_ip=A("10.77.0.11"), owner="uid:1", actor="ops")
    svc.backend.chains.clear()  # drift: the reconcile repairs the kernel, not the history
    assert svc.reconcile()
    events = svc.store.history.all()
    svc.store.close()
    again = make(clock)
    assert again.store.history.all() == events
    assert again.history_at(PUB, clock.now)["event"].owner == "uid:1"


def test_a_file_of_an_earlier_version_gets_baselines_once(tmp_path, make):
    store = Store(str(tmp_path / "state.db"))
    with store.transaction():  # what an earlier daemon wrote: allocations, no events
        store._db.execute("INSERT INTO allocations(public_ip, owner, ref, private_ip, created_at, updated_at) "
                          "VALUES('198.51.100.10', 'uid:1', 'r', '10.77.0.11', 1, 1)")
    store.close()
    clock = Clock()
    svc = make(clock)
    assert kinds(svc.store.history.all()) == [("baseline", "198.51.100.10", "10.77.0.11", None)]
    assert svc.history_at(PUB, T0)["held"] and svc.history_at(PUB, T0 - 1)["held"] is None
    svc.store.close()
    clock.now += 5
    assert len(make(clock).store.history.all()) == 1  # once


# -- append-only ------------------------------------------------------------------------

def test_history_cannot_be_updated(make):
    svc = make(Clock())
    svc.allocate(private_ip=A("10.77.0.11"))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        svc.store._db.execute("UPDATE history SET owner='someone-else'")
    # negative control: without the trigger the same statement goes through
    db = sqlite3.connect(svc.store.path)
    db.execute("DROP TRIGGER history_append_only")
    assert db.execute("UPDATE history SET owner='x'").rowcount == 2
    db.close()


def test_no_code_updates_the_history():
    """No UPDATE of the history in the package (the trigger forbids it; this names the line)."""
    statement = re.compile(r"UPDATE\s+(OR\s+\w+\s+)?history\b", re.IGNORECASE)
    found = [f"{p.name}:{n}" for p in PACKAGE.rglob("*.py")
             for n, line in enumerate(p.read_text().splitlines(), 1) if statement.search(line)]
    assert found == []
    assert statement.search("db.execute('update history set owner=?')")  # the pattern does find one


# -- pruning by age ------------------------------------------------------------------------

def test_a_year_later_the_holder_is_still_known(make):
    clock = Clock()
    svc = make(clock)
    svc.allocate(private_ip=A("10.77.0.11"), owner="uid:1", ref="vm:1:0", actor="ops")
    clock.now += DAY
    svc.release(PUB, owner="uid:1", actor="ops")
    clock.now += 365 * DAY
    assert svc.maybe_prune_history() == 0  # (400 days: nothing is old enough)
    answer = svc.history_at(PUB, T0 + DAY / 2)
    assert answer["held"] and answer["event"].owner == "uid:1" and answer["event"].ref == "vm:1:0"
    assert answer["event"].private_ip == A("10.77.0.11")
    assert svc.history_at(PUB, T0 + 2 * DAY)["held"] is False


def test_pruning_at_the_limit_keeps_what_still_answers(make, caplog):
    clock = Clock()
    svc = make(clock, history_days=400)
    svc.allocate(public_ip=PUB, private_ip=A("10.77.0.11"), owner="uid:1", actor="ops")  # held for good
    svc.allocate(public_ip=PUB2, owner="uid:2")
    clock.now += 10 * DAY
    svc.release(PUB2, owner="uid:2")
    clock.now += 20 * DAY
    svc.allocate(public_ip=PUB2, owner="uid:3")
    assert len(svc.store.history.all()) == 5
    clock.now = T0 + 400 * DAY + 15 * DAY  # the cutoff falls between the release and uid:3
    caplog.set_level("INFO")
    assert svc.maybe_prune_history() == 2  # PUB: allocate; PUB2: allocate
    assert "pruned 2 events older than 400 days" in caplog.text
    left = kinds(svc.store.history.all())
    assert left == [("associate", "198.51.100.10", "10.77.0.11", None), ("release", "198.51.100.11", None, None),
                    ("allocate", "198.51.100.11", None, None)]
    cutoff = clock.now - 400 * DAY
    assert svc.history_at(PUB, cutoff + 1)["event"].owner == "uid:1"  # held all along: still answered
    assert svc.history_at(PUB2, cutoff + 1)["held"] is False
    assert svc.history_at(PUB2, T0 + 5 * DAY)["held"] is None  # before the cutoff, pruned: unknown
    assert svc.history_at(PUB2, clock.now)["event"].owner == "uid:3"
    assert svc.maybe_prune_history() == 0  # once a day
    clock.now += DAY + 1
    assert svc.maybe_prune_history() == 0  # a day later: ran, nothing more to drop
    assert svc._next_prune == clock.now + DAY
    assert svc.store.history.known_from() == cutoff  # (and wrote nothing: nothing was lost)


def test_history_days_0_keeps_everything(make):
    clock = Clock()
    svc = make(clock, history_days=0)
    svc.allocate(private_ip=A("10.77.0.11"))
    clock.now += 100 * 365 * DAY
    svc.prune_history()
    assert len(svc.store.history.all()) == 2


def test_pruning_runs_at_start(make):
    clock = Clock()
    svc = make(clock, history_days=1)
    svc.allocate(public_ip=PUB)
    svc.release(PUB)
    svc.allocate(public_ip=PUB)
    svc.store.close()
    clock.now += 3 * DAY
    assert kinds(make(clock, history_days=1).store.history.all()) == [("allocate", "198.51.100.10", None, None)]


@pytest.mark.parametrize("value, expected", [("400", 400), ("0", 0), ("36500", 36500)])
def test_history_days_config(value, expected):
    text = f"[IPFLOATER]\nIP_POOL = 198.51.100.10\nPRIVATE_IP_RANGES = 10.77.0.0/24\nHISTORY_DAYS = {value}\n"
    assert parse_config_text(text).history_days == expected


@pytest.mark.parametrize("value", ["-1", "1.5", "36501", "forever", ""])
def test_history_days_refusals_name_key_and_value(value):
    text = f"[IPFLOATER]\nIP_POOL = 198.51.100.10\nPRIVATE_IP_RANGES = 10.77.0.0/24\nHISTORY_DAYS = {value}\n"
    with pytest.raises(ConfigError, match=f"HISTORY_DAYS: {re.escape(repr(value))}"):
        parse_config_text(text)


# -- query edges ----------------------------------------------------------------------------

def test_a_move_at_t_answered_for_t_minus_1_t_and_t_plus_1(make):
    clock = Clock()
    svc = make(clock)
    svc.allocate(private_ip=A("10.77.0.11"), owner="uid:1")
    clock.now = T = T0 + 3600
    svc.associate(PUB, A("10.77.0.12"), owner="uid:1", allow_move=True)
    assert svc.history_at(PUB, T - 1)["event"].private_ip == A("10.77.0.11")
    assert svc.history_at(PUB, T)["event"].private_ip == A("10.77.0.12")  # at or before T
    assert svc.history_at(PUB, T + 1)["event"].private_ip == A("10.77.0.12")
    assert svc.history_at(PUB, T0)["event"].event == "associate"  # same time: the later event
    assert svc.history_at(PUB, T0 - 1)["held"] is None  # before the history began
    assert svc.history_at(PUB2, T)["held"] is False and svc.history_at(PUB2, T)["event"] is None


def test_between_is_inclusive_ordered_and_limited(make):
    clock = Clock()
    svc = make(clock)
    for i in range(3):
        svc.allocate(public_ip=A(f"198.51.100.1{i}"), owner=f"uid:{i}")
        clock.now += 10
    got = svc.history_between(since=T0 + 10, until=T0 + 20)
    assert [str(e.public_ip) for e in got["events"]] == ["198.51.100.11", "198.51.100.12"]
    assert not got["truncated"]
    got = svc.history_between(limit=2)
    assert len(got["events"]) == 2 and got["truncated"]
    assert [e.owner for e in svc.history_between(owner="uid:1")["events"]] == ["uid:1"]
    assert [e.owner for e in svc.history_between(public_ip=PUB)["events"]] == ["uid:0"]


events_st = st.lists(st.tuples(st.integers(0, 20), st.sampled_from(history.EVENTS), st.integers(10, 13),
                               st.sampled_from([None, "a", "b"])), max_size=30)


@settings(max_examples=60, deadline=None)
@given(rows=events_st, t=st.integers(-1, 21), since=st.none() | st.integers(0, 20),
       until=st.none() | st.integers(0, 20), owner=st.sampled_from([None, "a", "b"]))
def test_sql_queries_agree_with_the_pure_functions(tmp_path_factory, rows, t, since, until, owner):
    store = Store(str(tmp_path_factory.mktemp("h") / "state.db"))
    try:
        events = [Event(float(at), kind, A(f"198.51.100.{n}"), None, None, who, None, None, None)
                  for at, kind, n, who in rows]
        with store.transaction():
            store.history.append(events)
        stored = store.history.all()
        assert [e._replace(id=None) for e in stored] == sorted(events, key=lambda e: e.at)
        for n in (10, 11):
            assert store.history.last_at(A(f"198.51.100.{n}"), t) == history.last_at(stored, A(f"198.51.100.{n}"), t)
        assert store.history.between(None, since, until, owner) == history.between(stored, None, since, until, owner)
        expected = history.prunable(stored, t)
        assert store.history.prune(t) == len(expected)
        assert {e.id for e in store.history.all()} == {e.id for e in stored} - expected
    finally:
        store.close()


@pytest.mark.parametrize("text, expected", [
    ("1700000000", T0), ("1700000000.5", T0 + 0.5), ("2023-11-14T22:13:20Z", T0),
    ("2023-11-14T22:13:20+00:00", T0), ("2023-11-14T23:13:20+01:00", T0), ("2023-11-14 22:13:20z", T0),
    ("2023-11-14T22:13:20.250Z", T0 + 0.25), ("0", 0.0),
])
def test_times_iso_utc_or_unix_seconds(text, expected):
    assert parse_time(text, "at") == expected


@pytest.mark.parametrize("text, fragment", [
    ("2023-11-14T22:13:20", "no time zone"), ("2023-11-14", "no time zone"), ("yesterday", "not a time"),
    ("", "not a time"), ("-5", "not a time"), ("1e9", "not a time"), ("١٧٠٠", "not a time"),
    ("99999999999999", "not a time"), ("999999999999", "out of range"), ("nan", "not a time"),
])
def test_bad_times_name_the_field_and_value(text, fragment):
    with pytest.raises(ValueError) as err:
        parse_time(text, "since")
    assert str(err.value).startswith(f"since: {text!r}") and fragment in str(err.value)


def test_iso_is_utc_with_z():
    assert history.iso(T0) == "2023-11-14T22:13:20Z"
    assert history.iso(T0 + 0.25) == "2023-11-14T22:13:20.250000Z"


@settings(max_examples=300)
@given(st.integers(0, 10**6 * 4_000_000_000))
def test_an_event_time_shown_and_read_back_is_the_same_instant(micros):
    at = events_for(Change(after=(ALLOC,)), micros / 10**6 + 1e-7)[0].at
    assert parse_time(history.iso(at), "at") == at
