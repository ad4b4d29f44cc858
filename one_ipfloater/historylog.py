"""The `history` table of the state database: append, prune by age, query.

It shares the store's connection, so events go in inside the transaction of the change
they record: a change rolled back leaves no event, a committed one always has its events.
Append-only: a trigger refuses any UPDATE, so no code path (ours or a later one) can
rewrite what an abuse report may rely on; only pruning by age deletes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address

from .history import BASELINE, Event

SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    id                  INTEGER PRIMARY KEY,
    at                  REAL NOT NULL,
    event               TEXT NOT NULL,
    public_ip           TEXT NOT NULL,
    private_ip          TEXT,
    previous_private_ip TEXT,
    owner               TEXT,
    ref                 TEXT,
    pool                TEXT,
    actor               TEXT
);
CREATE INDEX IF NOT EXISTS history_by_address ON history(public_ip, at);
CREATE INDEX IF NOT EXISTS history_by_time ON history(at);
CREATE TRIGGER IF NOT EXISTS history_append_only BEFORE UPDATE ON history
BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;
"""
COLUMNS = "at, event, public_ip, private_ip, previous_private_ip, owner, ref, pool, actor, id"
SINCE_KEY = "history_since"          # meta: when the history began (first start with it)
PRUNED_KEY = "history_pruned_before"  # meta: the last pruning's cutoff


def _row(ev: Event) -> tuple:
    return (ev.at, ev.event, str(ev.public_ip), str(ev.private_ip) if ev.private_ip else None,
            str(ev.previous_private_ip) if ev.previous_private_ip else None, ev.owner, ev.ref,
            ev.pool, ev.actor)


def _event(row: tuple) -> Event:
    at, kind, pub, priv, prev, owner, ref, pool, actor, ident = row
    return Event(at, kind, IPv4Address(pub), IPv4Address(priv) if priv else None,
                 IPv4Address(prev) if prev else None, owner, ref, pool, actor, ident)


class HistoryLog:
    """The history table on the store's connection (used under the service's lock)."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db
        db.executescript(SCHEMA)

    def _meta(self, key: str) -> float | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return float(row[0]) if row else None

    def append(self, events: Iterable[Event]) -> None:
        """Must run inside the store's transaction (the change's own)."""
        self._db.executemany(f"INSERT INTO history({COLUMNS.rsplit(', ', 1)[0]}) VALUES(?,?,?,?,?,?,?,?,?)",
                             map(_row, events))

    def begin(self, at: float, pool_of: Callable[[IPv4Address], str | None] | None = None) -> int:
        """Start the history of this file once: every allocation without an event gets a
        baseline one (a file of an earlier version), so that "who holds it" has an answer
        from now on. Runs its own transaction; the number of baselines written."""
        if self._meta(SINCE_KEY) is not None:
            return 0
        pool = pool_of or (lambda _ip: None)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            rows = self._db.execute(
                "SELECT public_ip, owner, ref, private_ip FROM allocations "
                "WHERE public_ip NOT IN (SELECT public_ip FROM history)").fetchall()
            self.append(Event(at, BASELINE, IPv4Address(pub), IPv4Address(priv) if priv else None,
                              None, owner, ref, pool(IPv4Address(pub)), "start")
                        for pub, owner, ref, priv in rows)
            self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES(?, ?)", (SINCE_KEY, repr(at)))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return len(rows)

    def known_from(self) -> float | None:
        """From when on the history answers: its start, or the last pruning's cutoff."""
        times = [t for t in (self._meta(SINCE_KEY), self._meta(PRUNED_KEY)) if t is not None]
        return max(times) if times else None

    def prune(self, before: float) -> int:
        """Delete events older than `before`, but each address's last one before it (it
        says who holds the address from then on: see history.prunable); how many."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cur = self._db.execute(
                "DELETE FROM history WHERE at < ?1 AND id NOT IN ("
                " SELECT id FROM (SELECT id, ROW_NUMBER() OVER ("
                "  PARTITION BY public_ip ORDER BY at DESC, id DESC) AS n FROM history WHERE at < ?1)"
                " WHERE n = 1)", (before,))
            if cur.rowcount:  # (else nothing is written: no fsync on the start's path; the
                # previous cutoff stays true, as nothing between it and this one is gone)
                self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (PRUNED_KEY, repr(before)))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return cur.rowcount

    def last_at(self, public_ip: IPv4Address, at: float) -> Event | None:
        """The event that says who held `public_ip` at `at` (history.last_at, indexed)."""
        row = self._db.execute(f"SELECT {COLUMNS} FROM history WHERE public_ip=? AND at<=? "
                               "ORDER BY at DESC, id DESC LIMIT 1", (str(public_ip), at)).fetchone()
        return _event(row) if row else None

    def between(self, public_ip: IPv4Address | None = None, since: float | None = None,
                until: float | None = None, owner: str | None = None, limit: int | None = None) -> list[Event]:
        """history.between, indexed; at most `limit` events, oldest first."""
        where, args = [], []
        for clause, value in (("public_ip=?", str(public_ip) if public_ip else None), ("at>=?", since),
                              ("at<=?", until), ("owner=?", owner)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"SELECT {COLUMNS} FROM history"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY at, id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [_event(row) for row in self._db.execute(sql, args)]

    def all(self) -> list[Event]:
        return self.between()
