"""The SQLite store: reading allocations back, bad stored values, files of older daemons."""

import os
import sqlite3
from ipaddress import IPv4Address

import pytest
from hypothesis import example, given, settings, strategies as st

from one_ipfloater.model import Allocation
from one_ipfloater.store import Store, StoreError, _ipv4

A = IPv4Address
POOL = [A(f"198.51.100.{i}") for i in range(10, 20)]


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "state.db"))
    yield s
    s.close()


def ipaddress_parse(text):
    try:
        return A(text)
    except ValueError:
        return None


def fast_parse(text):
    try:
        return _ipv4(text, "public_ip")
    except ValueError as exc:
        assert str(exc) == f"allocations.public_ip {text!r} is not an IPv4 address"
        return None


octet = st.integers(0, 300).map(str) | st.integers(0, 300).map(lambda n: f"{n:03d}") | st.sampled_from(
    ["", "0x1", "+1", "-1", " 1", "1 ", "1\n", "٤", "４", "1e1", "00"])


@settings(max_examples=1000)
@example("198.51.100.010")
@example("1.2.3.4\x00")
@example("1.2.3")
@example("::ffff:1.2.3.4")
@example("1.2.3.4/32")
@example("\ud800")
@given(st.lists(octet, min_size=1, max_size=6).map(".".join)
       | st.text(alphabet="0123456789.:/ x%\t\n\x00٤", max_size=20))
def test_fast_parse_accepts_exactly_what_ipaddress_accepts(text):
    assert fast_parse(text) == ipaddress_parse(text)


@given(st.integers(0, 2**32 - 1))
def test_fast_parse_reads_every_canonical_address(n):
    assert _ipv4(str(A(n)), "public_ip") == A(n)


def test_allocations_read_back(store):
    allocs = [Allocation(A("198.51.100.10"), owner="uid:1", ref="r1", private_ip=A("10.77.0.11")),
              Allocation(A("198.51.100.11")), Allocation(A("255.255.255.255"), private_ip=A("0.0.0.0"))]
    store.replace_all(allocs)
    assert sorted(store.allocations(), key=lambda a: int(a.public_ip)) == allocs


@pytest.mark.parametrize("public, private, message", [
    ("198.51.100.010", "10.77.0.11", "allocations.public_ip '198.51.100.010' is not an IPv4 address"),
    ("198.51.100.10", "10.77.0.11\n", "allocations.private_ip '10.77.0.11\\n' is not an IPv4 address"),
    ("198.51.100.10", "fe80::1", "allocations.private_ip 'fe80::1' is not an IPv4 address"),
    ("198.51.100.10", b"\x0a\x4d\x00\x0b", "allocations.private_ip b'\\nM\\x00\\x0b' is not an IPv4 address"),
    (None, "10.77.0.11", "allocations.public_ip None is not an IPv4 address"),
])
def test_bad_stored_address_is_one_line_naming_column_and_value(store, public, private, message):
    store.replace_all([Allocation(A("198.51.100.12"), private_ip=A("10.77.0.12"))])
    store._db.execute("INSERT INTO allocations(public_ip, owner, ref, private_ip, created_at, updated_at) "
                      "VALUES(?, NULL, NULL, ?, 0, 0)", (public, private))
    with pytest.raises(StoreError) as err:
        store.allocations()
    assert str(err.value) == f"DB: {store.path}: {message}"


# The schema of the daemons that recorded IP_POOL in the state file at every start.
OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE pool (public_ip TEXT PRIMARY KEY, sort_key INTEGER NOT NULL UNIQUE);
CREATE TABLE allocations (public_ip TEXT PRIMARY KEY, owner TEXT, ref TEXT UNIQUE,
    private_ip TEXT UNIQUE, created_at REAL NOT NULL, updated_at REAL NOT NULL);
INSERT INTO meta VALUES('schema', '1');
INSERT INTO meta VALUES('history', '1.0');
INSERT INTO allocations VALUES('198.51.100.12', 'alice', 'vm:7', '10.77.0.12', 1.0, 2.0);
"""


def tables(path):
    db = sqlite3.connect(path)
    try:
        return sorted(n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"))
    finally:
        db.close()


def test_a_new_file_has_no_pool_table(store):
    """The pool is IP_POOL's; nothing reads a copy of it, so none is written."""
    assert tables(store.path) == ["allocations", "history", "meta"]


def test_an_old_file_with_a_pool_table_loads_and_is_left_alone(tmp_path):
    path = str(tmp_path / "state.db")
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.executemany("INSERT INTO pool VALUES(?, ?)", [(str(a), int(a)) for a in POOL])
    db.commit()
    db.close()
    os.chmod(path, 0o600)
    store = Store(path)
    try:
        assert store.allocations() == [Allocation(A("198.51.100.12"), "alice", "vm:7", A("10.77.0.12"))]
        assert store.has_history()
        assert store._db.total_changes == 0  # opening and reading wrote nothing
    finally:
        store.close()
    assert tables(path) == ["allocations", "history", "meta", "pool"]  # (history: added, additive)
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM pool").fetchone() == (len(POOL),)
    db.close()
