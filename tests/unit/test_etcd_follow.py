"""The follower's delta (tests/fakes_etcd.py): the keys written since its revision and the
tombstones of those deleted (one read-only txn; the failed txn's answer on a conflict),
else etcd's watch from revision + 1 (tombstones missing: a daemon of an older version),
else the whole state. Another daemon's puts, moves and deletes reach the registry, the
kernel (incrementally: apply, not sync), the addresses and conntrack; compaction, a stalled
watch or an odd answer fall back to reading it all; a change made here between the read
and the lock is not applied twice."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address

import pytest

from one_ipfloater import etcdstore
from one_ipfloater.etcdstore import EtcdStore, Gateway, StoreUnavailable, delta_of
from one_ipfloater.service import FloatingIPService
from tests.fakes import FakeBackend, FakeHost, fake_config
from tests.fakes_etcd import FakeEtcd

A = IPv4Address
POOL = "198.51.100.10-198.51.100.200"


class CountingBackend(FakeBackend):
    """FakeBackend that counts full syncs and incremental applies."""

    def __init__(self):
        super().__init__()
        self.syncs = self.applies = 0

    def sync(self, desired):
        self.syncs += 1
        return super().sync(desired)

    def apply(self, removed, added):
        self.applies += 1
        return super().apply(removed, added)


@pytest.fixture
def etcd():
    return FakeEtcd()


@pytest.fixture
def daemon(tmp_path, etcd):
    def factory():
        config = fake_config(tmp_path / "state.db", pool=POOL, public_interface="pub0")
        backend = CountingBackend()
        svc = FloatingIPService(config, EtcdStore(["http://fake:2379"], "/fip", gateway=etcd), backend, FakeHost())
        svc.start()
        return svc, backend
    return factory


def full_reads(store, monkeypatch):
    """A list that gets one item per read of every allocation by `store`."""
    reads = []
    real = store.read

    def counted():
        reads.append(1)
        return real()
    monkeypatch.setattr(store, "read", counted)
    return reads


def without_tombstones(etcd, monkeypatch):
    """Daemons of an older version: their deletions leave no tombstone (the watch answers)."""
    real = etcd.call

    def call(path, body):
        if path == "/v3/kv/txn":
            body = {**body, "success": [op for op in body.get("success") or () if not base64.b64decode(
                op.get("request_put", {}).get("key", "")).startswith(b"/fip/gone/")]}
        return real(path, body)
    monkeypatch.setattr(etcd, "call", call)


def rules(svc):
    return {c: sorted(svc.desired().ordered(c)) for c in svc.desired().chains()}


def kernel(svc):
    return {c: sorted(r) for c, r in svc.backend.chains.items() if r or c in rules(svc)}


@pytest.mark.parametrize("tombstones", [True, False])
def test_a_put_a_move_and_a_delete_arrive_as_a_delta_applied_incrementally(daemon, etcd, monkeypatch,
                                                                          tombstones):
    if not tombstones:
        without_tombstones(etcd, monkeypatch)
    one, _ = daemon()
    two, kernel_two = daemon()
    kept, _ = one.allocate(private_ip=A("10.77.0.11"), owner="uid:1")
    moved, _ = one.allocate(private_ip=A("10.77.0.12"), owner="uid:1")
    gone, _ = one.allocate(private_ip=A("10.77.0.13"), owner="uid:1")
    assert two.follow()
    reads = full_reads(two.store, monkeypatch)
    syncs, applies, base = kernel_two.syncs, kernel_two.applies, two.store.revision
    two.host.flushed.clear()
    new, _ = one.allocate(private_ip=A("10.77.0.14"), owner="uid:2")  # a put
    one.associate(moved.public_ip, A("10.77.0.15"), owner="uid:1", allow_move=True)  # a move
    one.release(gone.public_ip, owner="uid:1")  # a delete
    assert two.follow()
    assert reads == []  # the delta, not a read of it all
    assert etcd.watches == ([] if tombstones else [base + 1])  # (the watch: only without tombstones)
    assert (kernel_two.syncs, kernel_two.applies) == (syncs, applies + 1)  # one incremental apply
    assert list(two.registry) == list(one.registry) and kept in two.registry
    assert kernel_two.live_pairs() == {(kept.public_ip, A("10.77.0.11")), (new.public_ip, A("10.77.0.14")),
                                       (moved.public_ip, A("10.77.0.15"))}
    assert kernel(two) == rules(two)  # exactly what a full reconcile would write
    assert two.host.addresses == one.host.addresses == {kept.public_ip, moved.public_ip, new.public_ip}
    # moved and released only: not `kept`, nor `new` (the FORWARD drop left it no untranslated flow)
    assert set(two.host.flushed) == {moved.public_ip, gone.public_ip}
    assert two.store._created == one.store._created and two.store.revision == one.store.revision
    txns = etcd.calls["/v3/kv/txn"]
    assert not two.follow() and etcd.calls["/v3/kv/txn"] == txns  # nothing new: one read of `rev` only
    # the follower plans on the delta's revision: its next change commits without a conflict
    txns = etcd.calls["/v3/kv/txn"]
    two.allocate(private_ip=A("10.77.0.16"), ref="x")
    assert etcd.calls["/v3/kv/txn"] == txns + 1


@pytest.mark.parametrize("tombstones", [True, False])
def test_a_follower_that_missed_many_revisions_catches_up_from_the_delta(daemon, etcd, monkeypatch, tombstones):
    if not tombstones:
        without_tombstones(etcd, monkeypatch)
    one, _ = daemon()
    two, kernel_two = daemon()
    held = [one.allocate(private_ip=A(f"10.77.0.{10 + n}"), owner="uid:1")[0] for n in range(5)]
    assert two.follow()  # (it knows these: their deletion needs a tombstone, or the watch)
    reads = full_reads(two.store, monkeypatch)
    for n in range(60):  # 60 and more revisions, each address touched several times
        alloc, _ = one.allocate(A(f"198.51.100.{100 + n}"), A(f"10.77.0.{20 + n}"), owner="uid:1")
        held.append(alloc)
        if n % 3 == 0:
            one.associate(alloc.public_ip, A(f"10.77.0.{100 + n}"), owner="uid:1", allow_move=True)
        if n % 4 == 1:
            one.release(held.pop(0).public_ip, owner="uid:1")
        if n % 5 == 2:
            one.disassociate(held[-1].public_ip, owner="uid:1")
    syncs, applies = kernel_two.syncs, kernel_two.applies
    assert two.follow() and reads == [] and len(etcd.watches) == (0 if tombstones else 1)
    assert (kernel_two.syncs, kernel_two.applies) == (syncs, applies + 1)
    assert list(two.registry) == list(one.registry) and kernel(two) == rules(two)
    assert kernel_two.live_pairs() == one.backend.live_pairs()
    assert two.host.addresses == one.host.addresses
    assert two.store._created == one.store._created


def test_without_tombstones_compaction_falls_back_to_reading_it_all(daemon, etcd, monkeypatch):
    without_tombstones(etcd, monkeypatch)
    one, _ = daemon()
    two, kernel_two = daemon()
    one.allocate(private_ip=A("10.77.0.10"), ref="x")
    y, _ = one.allocate(ref="y")
    assert two.follow()
    one.release(y.public_ip)  # (no tombstone: the watch is asked)
    first, _ = one.allocate(A("198.51.100.150"), A("10.77.0.11"), owner="uid:1")
    etcd.compact(etcd.revision)  # two's revision + 1 is before it
    reads = full_reads(two.store, monkeypatch)
    assert two.follow() and reads == [1] and etcd.watches[-1] < etcd.compacted
    assert list(two.registry) == list(one.registry) and kernel_two.live_pairs() == one.backend.live_pairs()
    assert (first.public_ip, A("10.77.0.11")) in kernel_two.live_pairs()
    second, _ = one.allocate(private_ip=A("10.77.0.12"), owner="uid:1")  # after the compaction: a delta
    assert two.follow() and reads == [1] and list(two.registry) == list(one.registry)


@pytest.mark.parametrize("trouble", ["stalls", "down", "unreadable"])
def test_a_watch_that_cannot_answer_falls_back_to_reading_it_all(daemon, etcd, monkeypatch, trouble):
    without_tombstones(etcd, monkeypatch)
    one, _ = daemon()
    two, kernel_two = daemon()
    z, _ = one.allocate(private_ip=A("10.77.0.11"), owner="uid:1")
    assert two.follow()
    one.release(z.public_ip, owner="uid:1")  # (no tombstone: the watch is asked)
    alloc, _ = one.allocate(A("198.51.100.150"), A("10.77.0.11"), owner="uid:1")
    reads = full_reads(two.store, monkeypatch)
    if trouble == "stalls":
        etcd.watch_stalls = True
    elif trouble == "down":
        real = etcd.watch

        def refused(body):
            raise StoreUnavailable("http://fake:2379/v3/watch: ConnectionError")
            yield real(body)
        monkeypatch.setattr(etcd, "watch", refused)
    else:
        real = etcd.watch

        def garbled(body):
            for msg in real(body):
                for ev in msg.get("events") or ():
                    ev["kv"]["value"] = base64.b64encode(b"{not json").decode()
                yield msg
        monkeypatch.setattr(etcd, "watch", garbled)
    assert two.follow() and reads == [1]
    assert list(two.registry) == list(one.registry)
    assert kernel_two.live_pairs() == {(alloc.public_ip, A("10.77.0.11"))}


def test_a_change_made_here_between_the_watch_and_the_lock_is_not_applied_twice(daemon, etcd):
    one, _ = daemon()
    two, kernel_two = daemon()
    alloc, _ = one.allocate(private_ip=A("10.77.0.11"), owner="uid:1")
    delta = two.store.changes_since(two.store.changed_revision())  # what follow() reads, unlocked
    assert [c[1] for c in delta.changes] == [alloc.public_ip]
    # meanwhile a request here: it conflicts, catches up (the state the failed txn returned)
    # and commits; then the address the delta puts is moved by a third daemon
    mine, _ = two.allocate(private_ip=A("10.77.0.12"), ref="mine")
    three, _ = daemon()
    three.associate(alloc.public_ip, A("10.77.0.13"), owner="uid:1", allow_move=True)
    assert two.follow()
    want = {(alloc.public_ip, A("10.77.0.13")), (mine.public_ip, A("10.77.0.12"))}
    assert kernel_two.live_pairs() == want
    two.apply_delta(delta)  # older than the state now: nothing to do (it would undo the move)
    assert kernel_two.live_pairs() == want and two.registry.get(alloc.public_ip).private_ip == A("10.77.0.13")
    assert one.follow() and list(one.registry) == list(two.registry)
    assert one.backend.live_pairs() == kernel_two.live_pairs()


def test_a_delta_partly_older_than_the_state_applies_only_the_newer_changes(daemon, etcd):
    one, _ = daemon()
    two, kernel_two = daemon()
    a, _ = one.allocate(private_ip=A("10.77.0.11"), owner="uid:1")
    one.release(a.public_ip, owner="uid:1")  # (a's address is free again; the next allocation takes it)
    base = two.store.revision
    delta_all = two.store.changes_since(two.store.changed_revision())
    b, _ = one.allocate(private_ip=A("10.77.0.12"), owner="uid:1")
    later = two.store.changes_since(two.store.changed_revision())
    assert later.base == base and later.revision > delta_all.revision
    two.apply_delta(delta_all)
    assert len(two.registry) == 0 and two.store.revision == delta_all.revision
    two.apply_delta(later)  # from `base` still: its first changes are in already
    assert list(two.registry) == [b] and kernel_two.live_pairs() == {(b.public_ip, A("10.77.0.12"))}


def test_a_failed_incremental_apply_converges_in_full(daemon):
    one, _ = daemon()
    two, kernel_two = daemon()
    kernel_two.fail_update = True
    alloc, _ = one.allocate(private_ip=A("10.77.0.11"), owner="uid:1")
    syncs = kernel_two.syncs
    assert two.follow() and kernel_two.syncs == syncs + 1
    assert kernel_two.live_pairs() == {(alloc.public_ip, A("10.77.0.11"))}


def _watch_result(events, revision=9):
    return {"header": {"revision": str(revision)}, "events": events}


def _put(key, rev, value):
    return {"kv": {"key": base64.b64encode(key.encode()).decode(), "mod_revision": str(rev),
                   "value": base64.b64encode(json.dumps(value).encode()).decode()}}


VALUE = {"owner": "uid:1", "ref": None, "private_ip": "10.77.0.11", "created_at": 5.0}


def test_delta_of_ends_at_the_rev_event_and_keeps_no_later_change():
    msgs = [{"header": {"revision": "9"}, "created": True},
            _watch_result([_put("/fip/alloc/198.51.100.10", 8, VALUE), _put("/fip/history/x", 8, {}),
                           _put("/fip/rev", 8, 1.0),
                           _put("/fip/alloc/198.51.100.11", 9, VALUE)])]  # rev 9's `rev` not seen yet
    delta = delta_of(iter(msgs), "/fip", 7, 8)
    assert delta.base == 7 and delta.revision == 8
    assert [(c[0], c[1], c[3]) for c in delta.changes] == [(8, A("198.51.100.10"), 5.0)]
    assert delta_of(iter(msgs), "/fip", 7, 9) is None  # the stream ended before the target
    assert delta_of(iter([{"header": {}, "canceled": True, "compact_revision": "8"}]), "/fip", 7, 8) is None


class _Stream(BaseHTTPRequestHandler):
    """A gateway's watch: the lines `lines` in chunks as etcd sends them, then the stream
    stays open (until `release`)."""

    protocol_version = "HTTP/1.1"
    lines: list = []
    release = threading.Event()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in self.lines:
            data = json.dumps(line).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.release.wait(10)

    def log_message(self, *_args):
        pass


def test_gateway_watch_streams_results_and_gives_up_at_its_timeout():
    _Stream.lines = [{"result": {"header": {"revision": "3"}, "created": True}},
                     {"result": _watch_result([_put("/fip/rev", 3, 1.0)], 3)}]
    _Stream.release = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        gw = Gateway([f"http://127.0.0.1:{server.server_address[1]}"], timeout=0.5)
        got = gw.watch({"create_request": {}})
        assert next(got)["created"] and next(got)["events"][0]["kv"]["mod_revision"] == "3"
        with pytest.raises(StoreUnavailable, match="ReadTimeout|ConnectionError"):
            next(got)  # the stream stays open, nothing more comes: bounded by the timeout
        store = EtcdStore(["x"], "/fip", gateway=gw)
        assert store._watched_changes(2, 3).revision == 3
    finally:
        _Stream.release.set()
        server.shutdown()
        server.server_close()


def test_the_follow_loop_uses_no_full_read_with_paging_either(daemon, etcd, monkeypatch):
    """(PAGE small: the full read would take several range calls; the delta takes one txn
    while the changes fit a page.)"""
    monkeypatch.setattr(etcdstore, "PAGE", 2)
    one, _ = daemon()
    two, _ = daemon()
    for n in range(2):
        one.allocate(private_ip=A(f"10.77.0.{30 + n}"), owner="uid:1")
    ranges, txns = two.store.gateway.calls["/v3/kv/range"], two.store.gateway.calls["/v3/kv/txn"]
    assert two.follow()
    assert two.store.gateway.calls["/v3/kv/range"] == ranges + 1  # the `rev` key
    assert two.store.gateway.calls["/v3/kv/txn"] == txns + 1  # the changes, in one read-only txn
    assert list(two.registry) == list(one.registry) and etcd.watches == []
    # more changes than a page holds: the watch answers
    for n in range(3):
        one.allocate(private_ip=A(f"10.77.0.{40 + n}"), owner="uid:1")
    assert two.follow() and len(etcd.watches) == 1 and list(two.registry) == list(one.registry)


def test_a_conflict_replans_on_the_delta_without_a_full_read_or_sync(daemon, etcd, monkeypatch):
    one, _ = daemon()
    two, kernel_two = daemon()
    theirs, _ = one.allocate(private_ip=A("10.77.0.11"), ref="a")  # two does not know it yet
    moved, _ = one.allocate(private_ip=A("10.77.0.12"), ref="b")
    one.associate(moved.public_ip, A("10.77.0.13"), allow_move=True)
    reads = full_reads(two.store, monkeypatch)
    syncs, txns = kernel_two.syncs, etcd.calls["/v3/kv/txn"]
    two.host.flushed.clear()
    mine, _ = two.allocate(private_ip=A("10.77.0.14"), ref="c")  # plans on a stale view first
    assert etcd.calls["/v3/kv/txn"] == txns + 2 and reads == [] and kernel_two.syncs == syncs
    assert mine.public_ip not in (theirs.public_ip, moved.public_ip)
    assert list(two.registry) == EtcdStore(["x"], "/fip", gateway=etcd).allocations()
    assert kernel_two.live_pairs() == {(theirs.public_ip, A("10.77.0.11")), (moved.public_ip, A("10.77.0.13")),
                                       (mine.public_ip, A("10.77.0.14"))}
    assert kernel(two) == rules(two)
    assert two.host.flushed == []  # all new to two's kernel: nothing moved or released there
    assert two.host.addresses == {theirs.public_ip, moved.public_ip, mine.public_ip}
    assert not two.follow()  # its own change is the newest: nothing to catch up


def test_a_conflict_without_tombstones_and_compacted_replans_on_the_whole_state(daemon, etcd, monkeypatch):
    without_tombstones(etcd, monkeypatch)
    one, _ = daemon()
    two, kernel_two = daemon()
    x, _ = one.allocate(ref="x")
    assert two.follow()
    one.release(x.public_ip)  # (no tombstone: the watch is asked, but it was compacted)
    theirs, _ = one.allocate(A("198.51.100.150"), A("10.77.0.11"), ref="a")
    etcd.compact(etcd.revision)
    reads = full_reads(two.store, monkeypatch)
    syncs = kernel_two.syncs
    mine, _ = two.allocate(private_ip=A("10.77.0.14"), ref="c")
    assert reads == [1] and kernel_two.syncs == syncs + 1  # read it all, then one reconcile
    assert list(two.registry) == EtcdStore(["x"], "/fip", gateway=etcd).allocations()
    assert kernel_two.live_pairs() == {(theirs.public_ip, A("10.77.0.11")), (mine.public_ip, A("10.77.0.14"))}


def test_a_conflict_takes_its_rules_back_by_the_inverse_delta_or_in_full(daemon, etcd):
    one, _ = daemon()
    two, kernel_two = daemon()
    theirs, _ = one.allocate(private_ip=A("10.77.0.11"), ref="a")
    real_apply, calls = kernel_two.apply, []

    def second_apply_fails(removed, added):  # the first: the change; the second: taking it back
        calls.append((set(removed), set(added)))
        if len(calls) == 2:
            raise etcdstore.StoreUnavailable("stands for any failure") from None
        return real_apply(removed, added)
    kernel_two.apply = second_apply_fails
    syncs = kernel_two.syncs
    mine, _ = two.allocate(private_ip=A("10.77.0.14"), ref="c")
    assert calls[1] == (calls[0][1], calls[0][0])  # the inverse of the first
    assert kernel_two.syncs == syncs + 1  # it failed: the rules converged in full instead
    assert kernel_two.live_pairs() == {(theirs.public_ip, A("10.77.0.11")), (mine.public_ip, A("10.77.0.14"))}
    assert kernel(two) == rules(two)


def test_range_delta_is_checked_against_the_count():
    e = lambda t: base64.b64encode(t.encode()).decode()  # noqa: E731
    put = {"key": e("/fip/alloc/198.51.100.11"), "mod_revision": "8", "value": e(json.dumps(VALUE))}
    tomb = {"key": e("/fip/gone/198.51.100.10"), "mod_revision": "8", "value": e("1.0")}
    known = {A("198.51.100.10"), A("198.51.100.12")}
    ranges = [{}, {"kvs": [put]}, {"kvs": [tomb]}, {"count": "2"}]
    delta = etcdstore.range_delta(ranges, 9, "/fip", 7, known)
    assert [(c[1], c[2] is None) for c in delta.changes] == [(A("198.51.100.11"), False), (A("198.51.100.10"), True)]
    assert delta.revision == 9 and delta.base == 7
    # a deletion without its tombstone: the count says one too many
    assert etcdstore.range_delta([{}, {"kvs": [put]}, {}, {"count": "2"}], 9, "/fip", 7, known) is None
    assert etcdstore.range_delta([{}, {"kvs": [put], "more": True}, {"kvs": [tomb]}, {"count": "2"}],
                                 9, "/fip", 7, known) is None  # a page did not hold them all
    # deleted then allocated again: the put stands
    again = {**tomb, "key": e("/fip/gone/198.51.100.11")}
    delta = etcdstore.range_delta([{}, {"kvs": [put]}, {"kvs": [again]}, {"count": "3"}], 9, "/fip", 7, known)
    assert [(c[1], c[2] is None) for c in delta.changes] == [(A("198.51.100.11"), False)]
