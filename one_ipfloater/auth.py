"""API tokens: named, with a role, stored hashed in the state database.

Roles: `operator` (the OpenNebula driver, admins: everything), `reader` (GET only) and
`owner` (bound to one owner name: every request acts as that owner). The TOKEN_FILE's
token is the operator token named `token-file`.

Secrets are 256 random bits, so a plain SHA-256 is enough: salts and slow KDFs protect
guessable passwords against dictionaries and brute force, and there is nothing to guess
in a random 256-bit secret. The hash also makes the lookup a dict access whose timing
tells an attacker nothing about any stored secret.

The daemon reads the table through its own SQLite connection and reloads it when
`PRAGMA data_version` says another connection (`ipfloaterd token ...`) committed, so
adds and revokes take effect at the next request, without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from collections import namedtuple
from typing import Optional

from .model import TEXT_FIELD_RE

OPERATOR, READER, OWNER = "operator", "reader", "owner"
ROLES = (OPERATOR, READER, OWNER)
TOKEN_FILE_NAME = "token-file"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    owner      TEXT,
    sha256     TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
"""


class Principal(namedtuple("Principal", "name role owner", defaults=(None,))):
    """Who a request comes from: the token's name, its role, its owner (owner role)."""

    __slots__ = ()


class TokenError(ValueError):
    """A refused token command; one line naming the field and the value."""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise TokenError(f"NAME: {name!r} must be 1-64 letters, digits and _.- (starting with a letter or digit)")
    if name == TOKEN_FILE_NAME:
        raise TokenError(f"NAME: {name!r} is reserved for the TOKEN_FILE's token")
    return name


def check_role(role: str, owner: Optional[str]) -> None:
    if role not in ROLES:
        raise TokenError(f"--role: {role!r} is not one of {', '.join(ROLES)}")
    if role == OWNER:
        if owner is None or not TEXT_FIELD_RE.fullmatch(owner):
            raise TokenError(f"--owner: {owner!r} must be 1-128 characters of letters, digits and _.:@/+- "
                             "(required with --role owner)")
    elif owner is not None:
        raise TokenError(f"--owner: {owner!r} is only for --role owner")


class TokenTable:
    """The `tokens` table of the state database (one connection, used under a lock)."""

    def __init__(self, db_path: str):
        self.db_path = db_path
        self._db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def add(self, name: str, role: str, owner: Optional[str] = None) -> str:
        """Create a token; returns its secret (shown once, never stored)."""
        check_name(name)
        check_role(role, owner)
        secret = secrets.token_urlsafe(32)
        with self._lock:
            try:
                self._db.execute("INSERT INTO tokens(name, role, owner, sha256, created_at) VALUES(?,?,?,?,?)",
                                 (name, role, owner, digest(secret), time.time()))
            except sqlite3.IntegrityError:
                raise TokenError(f"NAME: a token named {name!r} exists (revoke it first)") from None
        return secret

    def revoke(self, name: str) -> None:
        with self._lock:
            cur = self._db.execute("DELETE FROM tokens WHERE name=?", (name,))
        if cur.rowcount == 0:
            raise TokenError(f"NAME: no token named {name!r}")

    def list(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT name, role, owner, created_at FROM tokens ORDER BY name").fetchall()
        return [{"name": n, "role": r, "owner": o, "created_at": c} for n, r, o, c in rows]

    def by_digest(self) -> dict[str, Principal]:
        with self._lock:
            rows = self._db.execute("SELECT name, role, owner, sha256 FROM tokens").fetchall()
        return {h: Principal(n, r, o) for n, r, o, h in rows if r in ROLES}

    def data_version(self) -> int:
        with self._lock:
            return self._db.execute("PRAGMA data_version").fetchone()[0]


class Authenticator:
    """Secret -> Principal for the API: the TOKEN_FILE token and the table, cached."""

    def __init__(self, file_token: Optional[str], table: Optional[TokenTable] = None):
        self.file_token = file_token.encode() if file_token else None
        self.table = table
        self._version = None
        self._cache: dict[str, Principal] = {}
        self._lock = threading.Lock()

    def _tokens(self) -> dict[str, Principal]:
        if self.table is None:
            return {}
        version = self.table.data_version()
        with self._lock:
            if version != self._version:
                self._cache = self.table.by_digest()
                self._version = version
            return self._cache

    def __call__(self, secret: str) -> Optional[Principal]:
        if self.file_token is not None and hmac.compare_digest(secret.encode("utf-8", "surrogateescape"),
                                                               self.file_token):
            return Principal(TOKEN_FILE_NAME, OPERATOR)
        return self._tokens().get(digest(secret))
