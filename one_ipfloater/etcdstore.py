"""Shared state in etcd (STATE_STORE = etcd): the allocations and their history, through
etcd v3's JSON gateway with `requests` (a few POSTs; etcd3gw or grpc would add a
dependency tree for them).

Same interface as store.Store, so the service does not know which it has. Every change
is one etcd transaction that compares the mod revision of one key, `<prefix>/rev`, with
the revision this daemon last read, and writes the allocation keys, the history events
and `rev` together. One key for all changes, not the touched keys only: a quota, a ref
or a private address is a fact about every allocation, so any concurrent change must
make the plan stale. A failed compare raises StoreConflict (the service catches up and
plans again); no answer, or no quorum, raises StoreUnavailable (the service refuses
the change with 503 and keeps its rules: fail static).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address

from . import history as hist
from .history import BASELINE, Event, events_for
from .model import Allocation, Change
from .store import StoreConflict, StoreUnavailable

log = logging.getLogger(__name__)
PAGE = 1000  # keys read per request
PAGE_OPS = 100  # operations per txn of pruning and baselines (etcd's default limit: 128)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_end(key: str) -> str:
    """The range end that covers every key starting with `key` (its last byte + 1)."""
    raw = key.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


class Snapshot(namedtuple("Snapshot", "allocations revision created")):
    """The allocations at one etcd revision, and their creation times."""

    __slots__ = ()


class Delta(namedtuple("Delta", "base revision changes")):
    """What other daemons changed after revision `base` up to `revision`: `changes` is
    [(mod_revision, public_ip, Allocation or None when deleted, created_at)], oldest first."""

    __slots__ = ()


def delta_of(messages: Iterable[dict], prefix: str, base: int, target: int) -> Delta | None:
    """The delta in a watch's answers (pure): read until the event of `<prefix>/rev` at
    `target` or later (every change's txn writes it, so every revision up to it is
    complete), keep the allocation events up to the last such event. None when the watch
    cannot tell (compacted, canceled, ended early, an unreadable value): read it all."""
    rev_key, alloc = f"{prefix}/rev", f"{prefix}/alloc/"
    changes, last = [], base
    try:
        for msg in messages:
            if msg.get("canceled") or int(msg.get("compact_revision") or 0):
                return None
            for ev in msg.get("events") or ():
                kv = ev["kv"]
                key, mod = unb64(kv["key"]), int(kv["mod_revision"])
                if key == rev_key:
                    last = max(last, mod)
                elif key.startswith(alloc):
                    pub = IPv4Address(key[len(alloc):])
                    if ev.get("type") == "DELETE":
                        changes.append((mod, pub, None, None))
                    else:
                        value = json.loads(unb64(kv["value"]))
                        changes.append((mod, pub, _allocation(pub, value), value.get("created_at")))
            if last >= target:
                return Delta(base, last, [c for c in changes if c[0] <= last])
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("etcd watch: unreadable answer (%s); reading the whole state", exc)
    return None


def _allocation(pub: IPv4Address, value: dict) -> Allocation:
    return Allocation(pub, value["owner"], value["ref"],
                      IPv4Address(value["private_ip"]) if value["private_ip"] else None, value.get("owner_group"))


class Gateway:
    """POSTs to etcd's JSON gateway, trying each endpoint in turn (the last good first)."""

    def __init__(self, endpoints: Iterable[str], timeout: float = 2.0, session=None):
        import requests  # (only the etcd store needs it at the daemon's start)
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self._session = session or requests.Session()
        self._errors = (requests.RequestException, ValueError)
        self._good = 0
        self._lock = threading.Lock()

    def call(self, path: str, body: dict) -> dict:
        """The JSON answer; StoreUnavailable naming the last error when no endpoint gives one."""
        last = "no endpoint"
        with self._lock:
            first = self._good
        for i in range(len(self.endpoints)):
            k = (first + i) % len(self.endpoints)
            url = self.endpoints[k] + path
            try:
                answer = self._session.post(url, json=body, timeout=(min(self.timeout, 1.0), self.timeout))
                data = answer.json()
            except self._errors as exc:
                last = f"{url}: {type(exc).__name__}"
                continue
            if answer.status_code != 200 or "error" in data or "code" in data and "header" not in data:
                last = f"{url}: {data.get('error') or data.get('message') or answer.status_code}"
                continue
            with self._lock:
                self._good = k
            return data
        raise StoreUnavailable(f"etcd unavailable ({last})")

    def watch(self, body: dict) -> Iterator[dict]:
        """The messages (`result`s) of one watch on the last good endpoint, streamed, for at
        most about `timeout` in all; StoreUnavailable on any failure (the caller reads it
        all instead, through `call`, which tries the other endpoints)."""
        with self._lock:
            url = self.endpoints[self._good] + "/v3/watch"
        deadline = time.monotonic() + self.timeout
        try:
            with self._session.post(url, json=body, stream=True,
                                    timeout=(min(self.timeout, 1.0), self.timeout)) as answer:
                if answer.status_code != 200:
                    raise StoreUnavailable(f"{url}: {answer.status_code}")
                for line in answer.iter_lines():
                    if not line:
                        continue
                    data = json.loads(line)
                    if "result" not in data:
                        raise StoreUnavailable(f"{url}: {data.get('error') or data}")
                    yield data["result"]
                    if time.monotonic() > deadline:
                        raise StoreUnavailable(f"{url}: the watch did not reach the revision in time")
        except self._errors as exc:
            raise StoreUnavailable(f"{url}: {type(exc).__name__}") from None


def _alloc_value(a: Allocation, created: float, now: float) -> str:
    return json.dumps({"owner": a.owner, "ref": a.ref, "private_ip": str(a.private_ip) if a.private_ip else None,
                       "owner_group": a.owner_group, "created_at": created, "updated_at": now})


def _event_value(ev: Event) -> str:
    d = ev._asdict()
    for k in ("public_ip", "private_ip", "previous_private_ip"):
        d[k] = str(d[k]) if d[k] else None
    d.pop("id")
    return json.dumps(d)


def _event(value: str, ident) -> Event:
    d = json.loads(value)
    for k in ("public_ip", "private_ip", "previous_private_ip"):
        d[k] = IPv4Address(d[k]) if d[k] else None
    return Event(id=ident, **d)


def plan_txn(prefix: str, read_rev: int, change: Change, events: list[Event], created: dict,
             now: float, mark_history: bool) -> dict:
    """The etcd txn body of one change (pure): compare `<prefix>/rev` unchanged since
    `read_rev`, then delete the `before` keys, put the `after` keys, the events and rev."""
    rev_key = f"{prefix}/rev"
    ops = []
    after = {a.public_ip for a in change.after}
    for a in change.before:
        if a.public_ip not in after:
            ops.append({"request_delete_range": {"key": b64(f"{prefix}/alloc/{a.public_ip}")}})
            # a tombstone: a range by mod revision shows puts only (delta_reads); one key
            # per address ever released, so at most the pool's size
            ops.append({"request_put": {"key": b64(f"{prefix}/gone/{a.public_ip}"), "value": b64(repr(now))}})
    for a in change.after:
        ops.append({"request_put": {"key": b64(f"{prefix}/alloc/{a.public_ip}"),
                                    "value": b64(_alloc_value(a, created.get(a.public_ip, now), now))}})
    for n, ev in enumerate(events):
        key = f"{prefix}/history/{ev.at:020.6f}/{read_rev:012d}-{n:04d}-{uuid.uuid4().hex[:8]}"
        ops.append({"request_put": {"key": b64(key), "value": b64(_event_value(ev))}})
    if mark_history:
        ops.append({"request_put": {"key": b64(f"{prefix}/meta/history"), "value": b64(repr(now))}})
    ops.append({"request_put": {"key": b64(rev_key), "value": b64(repr(now))}})
    return {"compare": [{"key": b64(rev_key), "target": "MOD", "result": "LESS",
                         "mod_revision": str(read_rev + 1)}],
            "success": ops,
            # a failed compare answers with what changed since `read_rev` (not every
            # allocation): the re-plan needs no second round trip, and its cost follows
            # the changes
            "failure": delta_reads(prefix, read_rev)}


def delta_reads(prefix: str, base: int) -> list[dict]:
    """The reads (txn operations, at one revision) of what changed after `base`: `rev`,
    the allocations written since, the tombstones of those deleted since, and how many
    allocations there are now (range_delta checks the delta against it)."""
    alloc, gone = f"{prefix}/alloc/", f"{prefix}/gone/"
    since = {"min_mod_revision": str(base + 1), "limit": str(PAGE)}  # (etcd limits after filtering)
    return [{"request_range": {"key": b64(f"{prefix}/rev")}},
            {"request_range": {"key": b64(alloc), "range_end": prefix_end(alloc), **since}},
            {"request_range": {"key": b64(gone), "range_end": prefix_end(gone), **since}},
            {"request_range": {"key": b64(alloc), "range_end": prefix_end(alloc), "count_only": True}}]


def range_delta(ranges: list[dict], revision: int, prefix: str, base: int, known: set) -> Delta | None:
    """The Delta from `base` to `revision` in delta_reads' answers (pure), checked: the
    addresses `known` at `base`, with the puts and tombstones applied, must be as many
    as etcd holds. None when they are not (a deletion without a tombstone: a daemon of
    an older version, a hand edit) or when a page did not hold every change."""
    try:
        _rev, puts, gones, counted = ranges
        if puts.get("more") or gones.get("more"):
            return None
        changes, present = [], set()
        for kv in puts.get("kvs") or ():
            pub = IPv4Address(unb64(kv["key"])[len(f"{prefix}/alloc/"):])
            value = json.loads(unb64(kv["value"]))
            changes.append((int(kv["mod_revision"]), pub, _allocation(pub, value), value.get("created_at")))
            present.add(pub)
        gone = set()
        for kv in gones.get("kvs") or ():
            pub = IPv4Address(unb64(kv["key"])[len(f"{prefix}/gone/"):])
            if pub not in present:  # (deleted, then allocated again: the put stands)
                changes.append((int(kv["mod_revision"]), pub, None, None))
                gone.add(pub)
        if len(present | (known - gone)) != int(counted.get("count") or 0):
            return None
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("etcd: unreadable changes (%s); reading the whole state", exc)
        return None
    return Delta(base, revision, sorted(changes, key=lambda c: c[0]))


class EtcdStore:
    """Allocations and history under ETCD_PREFIX; used under the service's lock.

    `revision` is the etcd revision of the last read or committed state: the next change
    commits only if nobody changed the state after it (plan_txn's compare)."""

    on_commit = None
    created = False

    def __init__(self, endpoints: Iterable[str], prefix: str = "/ipfloater", timeout: float = 2.0,
                 gateway: Gateway | None = None):
        self.prefix = prefix.rstrip("/")
        self.path = f"etcd {','.join(endpoints)} {self.prefix}"
        self.gateway = gateway or Gateway(endpoints, timeout)
        self.revision = 0
        self._created: dict = {}
        self._pending: list | None = None
        self.history = EtcdHistory(self)
        self.last_ok: float | None = None  # time.time() of the last answer from etcd
        self.last_error: str | None = None

    def close(self) -> None:
        pass

    def call(self, path: str, body: dict) -> dict:
        """One gateway call; its outcome is the store's health."""
        try:
            data = self.gateway.call(path, body)
        except StoreUnavailable as exc:
            self.last_error = str(exc)
            raise
        self.last_ok, self.last_error = time.time(), None
        return data

    def health(self) -> dict:
        age = None if self.last_ok is None else round(time.time() - self.last_ok, 3)
        return {"kind": "etcd", "ok": self.last_error is None and self.last_ok is not None,
                "revision": self.revision, "last_read_age_s": age, "error": self.last_error}

    def _range(self, key: str, prefix: bool = True, **extra) -> dict:
        body = {"key": b64(key), **extra}
        if prefix:
            body["range_end"] = prefix_end(key)
        return self.call("/v3/kv/range", body)

    def range_all(self, prefix: str) -> dict:
        """Every key under `prefix`, a page at a time at one revision (an answer must stay
        under the gateway's message size limit): {"kvs": [...], "header": the first's}."""
        kvs, header, start = [], None, b64(prefix)
        while True:
            body = {"key": start, "range_end": prefix_end(prefix), "limit": str(PAGE)}
            if header is not None:
                body["revision"] = header["revision"]
            data = self.call("/v3/kv/range", body)
            header = header or data["header"]
            page = data.get("kvs") or []
            kvs.extend(page)
            if not data.get("more") or not page:
                return {"kvs": kvs, "header": header}
            start = b64(unb64(page[-1]["key"]) + "\0")

    # -- reads ---------------------------------------------------------------------------

    def read(self) -> Snapshot:
        """All allocations, read at one revision (no side effect: see `use`)."""
        return self._snapshot(self.range_all(f"{self.prefix}/alloc/"))

    @staticmethod
    def _snapshot(data: dict) -> Snapshot:
        out, created = [], {}
        for kv in data.get("kvs") or []:
            key, value = unb64(kv["key"]), json.loads(unb64(kv["value"]))
            pub = IPv4Address(key.rsplit("/", 1)[1])
            out.append(_allocation(pub, value))
            created[pub] = value.get("created_at")
        return Snapshot(out, int(data["header"]["revision"]), created)

    def use(self, snapshot: Snapshot) -> list[Allocation]:
        """Plan the next changes against `snapshot` (its revision is what they compare)."""
        self._created = dict(snapshot.created)
        self.revision = snapshot.revision
        return snapshot.allocations

    def allocations(self) -> list[Allocation]:
        return self.use(self.read())

    def changes_since(self, target: int) -> Delta | None:
        """What changed after `revision` up to `target` (the mod revision of `rev`) or
        later: a cost in proportion to the changes, not to the allocations. No side
        effect (see `advance`). First the keys written since (delta_reads: one read-only
        txn); when that cannot be checked complete, etcd's watch from revision + 1, which
        replays its history, deletions included; None when neither can answer (revision
        compacted, timeout, anything odd): the caller reads the whole state, which stays
        the truth."""
        base, known = self.revision, set(self._created)  # (`revision` first: see range_delta)
        if base <= 0 or target <= base:
            return None
        answer = self.call("/v3/kv/txn", {"compare": [], "success": delta_reads(self.prefix, base)})
        ranges = [r.get("response_range") or {} for r in answer.get("responses") or ()]
        delta = range_delta(ranges, int(answer["header"]["revision"]), self.prefix, base, known) \
            if len(ranges) == 4 else None
        if delta is not None:
            return delta
        log.info("etcd: the changes since revision %d are not all in the keys written since "
                 "(a deletion without a tombstone?); watching them", base)
        return self._watched_changes(base, target)

    def _watched_changes(self, base: int, target: int) -> Delta | None:
        """changes_since from the watch (delta_of); None when it cannot answer."""
        rev_key = f"{self.prefix}/rev"
        # alloc/, gone/, history/, meta/ and rev, in key order: `rev` ends every change's revision
        body = {"create_request": {"key": b64(f"{self.prefix}/alloc/"), "range_end": b64(rev_key + "\0"),
                                   "start_revision": str(base + 1)}}
        messages = self.gateway.watch(body)
        try:
            delta = delta_of(messages, self.prefix, base, target)
        except StoreUnavailable as exc:
            log.info("etcd watch from revision %d failed (%s); reading the whole state", base + 1, exc)
            return None
        finally:
            messages.close()
        if delta is None:
            log.info("etcd watch from revision %d cannot answer (compacted?); reading the whole state", base + 1)
        return delta

    def advance(self, delta: Delta) -> None:
        """Plan the next changes against the state after `delta` (its changes after
        `revision`: a change committed here meanwhile is in already)."""
        for mod, pub, alloc, created in delta.changes:
            if mod <= self.revision:
                continue
            if alloc is None:
                self._created.pop(pub, None)
            else:
                self._created[pub] = created
        self.revision = max(self.revision, delta.revision)

    def changed_revision(self) -> int:
        """The mod revision of `<prefix>/rev` (0: never written): greater than `revision`
        when another daemon changed the state since this one read it."""
        kvs = self._range(f"{self.prefix}/rev", prefix=False).get("kvs") or []
        return int(kvs[0]["mod_revision"]) if kvs else 0

    def has_history(self) -> bool:
        return bool(self._range(f"{self.prefix}/meta/history", prefix=False).get("kvs")) or \
            bool(self._range(f"{self.prefix}/alloc/", count_only=True).get("count"))

    # -- the change: buffered inside transaction(), one txn at its end ------------------

    def mark_history(self) -> None:
        self._pending.append(("mark", None))

    @contextmanager
    def transaction(self) -> Iterator["EtcdStore"]:
        self._pending = []
        try:
            yield self
            started = time.perf_counter()
            self._commit(self._pending)
            if self.on_commit is not None:
                self.on_commit(time.perf_counter() - started)
        finally:
            self._pending = None

    def write(self, change: Change, *, actor: str | None = None, at: float | None = None,
              pool_of=None, adopted: bool = False) -> None:
        now = time.time() if at is None else at
        self._pending.append(("change", (change, events_for(change, now, actor, pool_of, adopted), now)))

    def _commit(self, pending: list) -> None:
        if not pending:
            return
        change, events, now = Change(), [], time.time()
        for kind, item in pending:
            if kind == "change":
                change, events, now = change.then(item[0]), events + item[1], item[2]
        mark = bool(change.after) or any(kind == "mark" for kind, _ in pending)
        created = {pub: t for pub, t in self._created.items() if t is not None}
        body = plan_txn(self.prefix, self.revision, change, events, created, now, mark)
        answer = self.call("/v3/kv/txn", body)
        if not answer.get("succeeded"):
            conflict = StoreConflict(f"etcd: the state changed since revision {self.revision}")
            ranges = [r["response_range"] for r in answer.get("responses") or () if "response_range" in r]
            kvs = ranges[0].get("kvs") if ranges else None
            if kvs:
                conflict.revision = int(kvs[0]["mod_revision"])
            if len(ranges) == 4:
                conflict.delta = range_delta(ranges, int(answer["header"]["revision"]), self.prefix,
                                             self.revision, set(self._created))
            raise conflict
        self.revision = int(answer["header"]["revision"])
        for a in change.before:
            self._created.pop(a.public_ip, None)
        for a in change.after:
            self._created[a.public_ip] = created.get(a.public_ip, now)

    # -- the routers' registrations (groups.py): outside `rev`, so never a conflict ------
    # Each under a lease the daemon keeps alive: a keep-alive writes no revision (a put
    # every few seconds would grow etcd's history for ever without compaction), and the
    # key goes when the router stops refreshing it, by etcd's clock alone.

    def grant_lease(self, ttl: int) -> str:
        return str(self.call("/v3/lease/grant", {"TTL": ttl})["ID"])

    def keep_alive(self, lease: str) -> bool:
        """False when the lease expired (etcd answers a TTL of 0, or none)."""
        answer = self.call("/v3/lease/keepalive", {"ID": lease})
        return int((answer.get("result") or {}).get("TTL") or 0) > 0

    def revoke_lease(self, lease: str) -> None:
        self.call("/v3/lease/revoke", {"ID": lease})

    def put_router(self, name: str, record: dict, lease: str) -> None:
        self.call("/v3/kv/put", {"key": b64(f"{self.prefix}/routers/{name}"), "value": b64(json.dumps(record)),
                                 "lease": lease})

    def routers(self) -> dict[str, dict]:
        """name -> registration of every router whose lease is alive (unreadable ones left out)."""
        out = {}
        for kv in self.range_all(f"{self.prefix}/routers/")["kvs"]:
            try:
                out[unb64(kv["key"]).rsplit("/", 1)[1]] = json.loads(unb64(kv["value"]))
            except (ValueError, KeyError):
                continue
        return out

    def replace_all(self, allocations: Iterable[Allocation]) -> None:
        current = self.allocations()
        with self.transaction():
            self.write(Change(before=tuple(current), after=tuple(allocations)))


class EtcdHistory:
    """The history under `<prefix>/history/`: keys ordered by time, so a range is a time span."""

    def __init__(self, store: EtcdStore):
        self.store = store

    def _meta(self, name: str) -> float | None:
        kvs = self.store._range(f"{self.store.prefix}/meta/{name}", prefix=False).get("kvs") or []
        return float(unb64(kvs[0]["value"])) if kvs else None

    def _put_meta(self, name: str, value: float) -> None:
        self.store.call("/v3/kv/put", {"key": b64(f"{self.store.prefix}/meta/{name}"), "value": b64(repr(value))})

    def _kvs(self) -> list[dict]:
        return self.store.range_all(f"{self.store.prefix}/history/")["kvs"]

    def _keyed(self) -> list[tuple[str, Event]]:
        """(key, event) oldest first; an event's id is its create revision and its
        place among the events of that revision (one change's events share one)."""
        out, seen = [], {}
        for kv in self._kvs():
            rev = int(kv["create_revision"])
            seen[rev] = seen.get(rev, -1) + 1
            out.append((kv["key"], _event(unb64(kv["value"]), rev * 10000 + seen[rev])))
        return out

    def all(self) -> list[Event]:
        return [ev for _key, ev in self._keyed()]

    def append(self, events) -> None:  # (events go in through EtcdStore.write)
        raise NotImplementedError

    def begin(self, at: float, pool_of: Callable | None = None) -> int:
        """Baselines for allocations without events, once (history_since marks it)."""
        if self._meta("history_since") is not None:
            return 0
        pool = pool_of or (lambda _ip: None)
        seen = {ev.public_ip for ev in self.all()}
        events = [Event(at, BASELINE, a.public_ip, a.private_ip, None, a.owner, a.ref, pool(a.public_ip), "start")
                  for a in self.store.allocations() if a.public_ip not in seen]
        ops = [op for op in plan_txn(self.store.prefix, self.store.revision, Change(), events, {}, at,
                                     False)["success"]
               if unb64(op["request_put"]["key"]) != f"{self.store.prefix}/rev"]
        for i in range(0, len(ops), PAGE_OPS):  # etcd takes at most 128 operations a txn
            self.store.call("/v3/kv/txn", {"compare": [], "success": ops[i:i + PAGE_OPS]})
        self._put_meta("history_since", at)  # last: an interrupted begin starts again
        return len(events)

    def known_from(self) -> float | None:
        times = [t for t in (self._meta("history_since"), self._meta("history_pruned_before")) if t is not None]
        return max(times) if times else None

    def prune(self, before: float) -> int:
        keyed = self._keyed()
        drop = hist.prunable([ev for _key, ev in keyed], before)
        if not drop:
            return 0
        ops = [{"request_delete_range": {"key": key}} for key, ev in keyed if ev.id in drop]
        for i in range(0, len(ops), PAGE_OPS):  # etcd takes at most 128 operations a txn
            self.store.call("/v3/kv/txn", {"compare": [], "success": ops[i:i + PAGE_OPS]})
        self._put_meta("history_pruned_before", before)
        return len(ops)

    def last_at(self, public_ip: IPv4Address, at: float) -> Event | None:
        return hist.last_at(self.all(), public_ip, at)

    def between(self, public_ip=None, since=None, until=None, owner=None, limit=None) -> list[Event]:
        events = hist.between(self.all(), public_ip, since, until, owner)
        return events if limit is None else events[:limit]
