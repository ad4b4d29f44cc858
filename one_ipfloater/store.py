"""Durable state in SQLite: the allocations (the pool is the configuration's: IP_POOL).

SQLite in WAL mode with synchronous=FULL: once `commit()` returns, the change survives a
kill -9 or a power cut. Writes go through `transaction()`, which the service holds open
while it changes the kernel rules, so a change whose rules fail is rolled back whole.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address

from . import safefs
from .addresses import ipv4_from_text
from .history import events_for
from .historylog import HistoryLog
from .model import Allocation, Change

SCHEMA_VERSION = 1
# Files of earlier daemons also hold a `pool` table (a copy of
# IP_POOL rewritten at each start, read by nothing). It is left alone, not dropped: an
# older daemon that opens the file again recreates and fills it, as it always did.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS allocations (
    public_ip  TEXT PRIMARY KEY,
    owner      TEXT,
    ref        TEXT UNIQUE,
    private_ip TEXT UNIQUE,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""


def _add_owner_group(db: sqlite3.Connection) -> None:
    """The owner_group column (group quotas) on files of daemons before it: additive,
    so older daemons still read the file (they name their columns)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(allocations)")}
    if "owner_group" not in columns:
        db.execute("ALTER TABLE allocations ADD COLUMN owner_group TEXT")


class StoreError(RuntimeError):
    """The state file cannot be used; the message names the path."""


class StoreUnavailable(StoreError):
    """A shared store (etcd) did not answer, or answered without quorum: nothing was
    changed (the service fails static: 503, the rules stay)."""


class StoreConflict(StoreError):
    """Another daemon changed the shared state since it was read: plan again (on
    `delta`, the changes since, when the failed transaction has them; else on the
    changes up to `revision`, the state's revision it saw; else on the whole state)."""

    revision = None
    delta = None


def _ipv4(value: object, column: str) -> IPv4Address:
    """A stored address (the fast strict parser: the start reads thousands)."""
    try:
        return ipv4_from_text(value)
    except ValueError:
        raise ValueError(f"allocations.{column} {value!r} is not an IPv4 address") from None


def _create_private(path: str) -> bool:
    """Check the state file and its -wal/-shm by the safefs rules, and create it 0600
    before SQLite opens it (it would use the umask); True if it was created now.

    SQLite's `nofollow=1` URI parameter is not one (only the SQLITE_OPEN_NOFOLLOW flag
    is, which Python's sqlite3 cannot pass): measured here, a symbolic link opened with
    it is followed. The checks below hold because nobody but root or us can write the
    directory, so nobody can swap a file between them and SQLite's open."""
    for suffix in ("-wal", "-shm"):
        safefs.check_file("DB", path + suffix)
    try:
        fd, created = safefs.open_file("DB", path, os.O_RDWR), False
    except FileNotFoundError:
        fd, created = safefs.open_file("DB", path, os.O_RDWR | os.O_EXCL, create=True), True
    os.close(fd)
    return created


class Store:
    """Allocations; one connection, used under the service's lock.

    It has the shared store's interface (etcdstore.EtcdStore): `revision`, `read()`,
    `changed_revision()` and `health()`, answered as a local file would: nobody else
    changes it, so there is never a newer state to read or follow."""

    revision = 0

    def read(self):
        """A newer state written by someone else: never, for a local file."""
        return None

    def changed_revision(self) -> int:
        return self.revision

    def changes_since(self, target: int) -> None:
        """(A shared store's delta; the local file never changes under us.)"""
        return None

    def health(self) -> dict | None:
        """None: /v1/health shows a `store` only for a shared store."""
        return None

    on_commit = None  # called with each COMMIT's seconds (the daemon's metrics)

    def __init__(self, path: str, synchronous: str = "full"):
        """`synchronous`: "full" fsyncs every commit (survives a power cut); "normal"
        leaves the fsync to the WAL checkpoint (survives a crash of the daemon, kill -9
        included, but a power cut may lose the last changes) and allows more changes a
        second (benchmarks/ measures how many)."""
        self.path = str(path)
        self._history = False  # cached once the committed mark was read
        if synchronous not in ("full", "normal"):
            raise StoreError(f"DB_SYNC: {synchronous!r} is not full or normal")
        try:
            self.created = _create_private(self.path)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.executescript(SCHEMA)
            _add_owner_group(self._db)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta(key, value) VALUES('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"DB: {self.path} has schema {row[0]}, newer than this daemon's {SCHEMA_VERSION}")
            self.history = HistoryLog(self._db)  # (additive: no schema version bump)
        except safefs.UnsafePath as exc:
            raise StoreError(str(exc)) from None
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"DB: cannot open {self.path}: {exc}") from None
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.chmod(self.path + suffix, 0o600)

    def close(self) -> None:
        self._db.close()

    # -- history: "new" and "emptied by releases" differ -------------------------------

    def has_history(self) -> bool:
        """True once this file has held an allocation (or an adoption was recorded): an
        empty table then means "all released", not "a new or wrong file", and the start
        may remove what the kernel still holds of ours."""
        if self._history:
            return True
        row = self._db.execute("SELECT 1 FROM meta WHERE key='history'").fetchone()
        if row is None and self._db.execute("SELECT 1 FROM allocations LIMIT 1").fetchone() is None:
            return False
        if row is None:  # a file of an older daemon that holds allocations: mark it now,
            with self.transaction():  # so that it still counts once they are all released
                self.mark_history()
        self._history = True  # a committed mark never goes away
        return True

    def mark_history(self) -> None:
        """Record that this file is the state of record; must run inside `transaction()`."""
        self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES('history', ?)", (repr(time.time()),))

    @contextmanager
    def transaction(self) -> Iterator["Store"]:
        """BEGIN IMMEDIATE ... COMMIT; any exception rolls the whole change back."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            started = time.perf_counter()
            self._db.execute("COMMIT")
            if self.on_commit is not None:
                self.on_commit(time.perf_counter() - started)

    # -- allocations -----------------------------------------------------------------

    def allocations(self) -> list[Allocation]:
        """All stored allocations; a value that is not an address is a StoreError naming it.
        Rows are read one by one, not fetched all at once, and equal owners and groups share
        one string: at 65,536 rows those copies were a third of the start's peak memory."""
        rows = self._db.execute("SELECT public_ip, owner, ref, private_ip, owner_group FROM allocations")
        shared: dict = {}
        try:
            return [Allocation(_ipv4(pub, "public_ip"), shared.setdefault(owner, owner), ref,
                               _ipv4(priv, "private_ip") if priv else None, shared.setdefault(group, group))
                    for pub, owner, ref, priv, group in rows]
        except ValueError as exc:
            raise StoreError(f"DB: {self.path}: {exc}") from None

    def write(self, change: Change, *, actor: str | None = None, at: float | None = None,
              pool_of=None, adopted: bool = False) -> None:
        """Persist a planned change and its history events; must run inside `transaction()`.

        The rows of `before` go first, then those of `after` come in, so a change that
        swaps private addresses never trips a UNIQUE index; creation times survive.
        `actor` (the token's name), `at` (the service's clock) and `pool_of` go into the
        history (history.events_for), written here so that no change goes unrecorded.
        """
        now = time.time() if at is None else at
        self.history.append(events_for(change, now, actor, pool_of, adopted))
        if change.after:  # (every time, not cached: a rolled-back mark must not count)
            self.mark_history()
        created = {}
        for alloc in change.before:
            row = self._db.execute("SELECT created_at FROM allocations WHERE public_ip=?",
                                   (str(alloc.public_ip),)).fetchone()
            created[alloc.public_ip] = row[0] if row else now
            self._db.execute("DELETE FROM allocations WHERE public_ip=?", (str(alloc.public_ip),))
        self._db.executemany(
            "INSERT INTO allocations(public_ip, owner, ref, private_ip, created_at, updated_at, owner_group) "
            "VALUES(?, ?, ?, ?, ?, ?, ?)",
            ((str(a.public_ip), a.owner, a.ref, str(a.private_ip) if a.private_ip else None,
              created.get(a.public_ip, now), now, a.owner_group) for a in change.after))

    def replace_all(self, allocations: Iterable[Allocation]) -> None:
        """Used by tests and imports: the whole allocation table at once."""
        with self.transaction():
            self._db.execute("DELETE FROM allocations")
            self.write(Change(after=tuple(allocations)))
