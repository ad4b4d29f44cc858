"""Floating-IP quotas, kept where OpenNebula keeps per-user and per-group settings.

An operator writes, in a user's or a group's template (``oneuser update``,
``onegroup update``)::

    FLOATING_IP_QUOTA      = "3"                              (-1: unlimited)
    FLOATING_IP_POOL_QUOTA = [ POOL = "campus", LIMIT = "1" ] (may repeat, one per pool)

Absent, ``FLOATING_IP_QUOTA`` falls back to the front-end config's default (key
``FLOATING_IP_QUOTA``, default -1); a pool without a ``FLOATING_IP_POOL_QUOTA`` has no
limit of its own. Both the user's and the group's limits apply, each to its own usage (the
user's allocations; all allocations of the group's members), so the lower one bites first.
As OpenNebula does with its own quotas, the oneadmin user and group are exempt.

This module only reads and validates: the count happens in the daemon, atomically with
the allocation (contract fields ``quota`` and ``owner_group``). A value that does not
parse refuses new allocations with one line naming the attribute, the user or group and
the value: a typo must never mean "unlimited".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from . import rpc
from .vmxml import VmXmlError, safe_xml_root

__all__ = ["ATTR_QUOTA", "ATTR_POOL_QUOTA", "UNLIMITED", "MAX_LIMIT", "Subject", "Limits",
           "parse_limit", "parse_subject", "parse_subject_pool", "limits_of", "quota_request",
           "user_scope", "group_scope", "exempt", "read_limits", "QuotaError", "usage",
           "usage_lines"]

ATTR_QUOTA = "FLOATING_IP_QUOTA"
ATTR_POOL_QUOTA = "FLOATING_IP_POOL_QUOTA"
UNLIMITED = -1
MAX_LIMIT = 1_000_000
_INT = re.compile(r"-?[0-9]{1,9}")
_POOL = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # the pools' name rule


class QuotaError(ValueError):
    """Limits that cannot be used; one line per problem in ``lines``."""

    def __init__(self, lines: Sequence[str]):
        super().__init__("; ".join(lines))
        self.lines = list(lines)


def user_scope(uid: int) -> str:
    """The daemon-side owner of a user's allocations (plan.owner_for of its VMs)."""
    return f"one:uid:{uid}"


def group_scope(gid: int) -> str:
    """The daemon-side owner_group of the allocations of a group's members."""
    return f"one:gid:{gid}"


def exempt(uid: int, gid: int) -> bool:
    """oneadmin (user 0) and the oneadmin group (0) have no quotas in OpenNebula."""
    return uid == 0 or gid == 0


def _show(value: object, limit: int = 40) -> str:
    if isinstance(value, str) and len(value) > limit:
        value = value[: limit - 3] + "..."
    return repr(value)


def parse_limit(value: str, what: str) -> int:
    """A limit as written in a template: an integer from -1 (unlimited) to MAX_LIMIT,
    spaces around allowed. ``what`` names the attribute and its owner in the error."""
    text = value.strip() if isinstance(value, str) else None
    if text is None or not _INT.fullmatch(text) or not UNLIMITED <= int(text) <= MAX_LIMIT:
        raise ValueError(f"{what}: {_show(value)} is not a number of floating IPs "
                         f"(an integer from -1 = unlimited to {MAX_LIMIT})")
    return int(text)


@dataclass(frozen=True)
class Subject:
    """A user or a group as oned describes it: ``kind`` "user"/"group", the template's
    flat attributes and its vectors (name -> list of {KEY: value}, in document order).
    For a user, ``gid``/``gname`` are its primary group."""

    kind: str
    id: int
    name: str
    attrs: Mapping[str, str] = field(default_factory=dict)
    vectors: Mapping[str, Tuple[Mapping[str, str], ...]] = field(default_factory=dict)
    gid: Optional[int] = None
    gname: str = ""

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name} ({self.id})"

    @property
    def scope(self) -> str:
        return user_scope(self.id) if self.kind == "user" else group_scope(self.id)


@dataclass(frozen=True)
class Limits:
    """What applies to one user or group: ``limit`` over all pools (-1 unlimited),
    ``source`` "template" or "default", per-pool limits, and errors (any error refuses)."""

    subject: Subject
    limit: int = UNLIMITED
    source: str = "default"
    pools: Mapping[str, int] = field(default_factory=dict)
    errors: Tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"kind": self.subject.kind, "id": self.subject.id, "name": self.subject.name,
                "scope": self.subject.scope, "limit": self.limit, "source": self.source,
                "pools": dict(sorted(self.pools.items())), "errors": list(self.errors)}


def _int(root, tag: str, what: str) -> int:
    el = root.find(tag)
    text = (el.text or "").strip() if el is not None else ""
    if not _INT.fullmatch(text):
        raise VmXmlError(f"{what}/{tag}: {_show(text)} is not an integer")
    return int(text)


def _subject(el, kind: str, where: str) -> Subject:
    attrs: Dict[str, str] = {}
    vectors: Dict[str, List[Mapping[str, str]]] = {}
    template = el.find("TEMPLATE")
    for child in (template if template is not None else ()):
        key = child.tag.upper()
        if len(child):
            vectors.setdefault(key, []).append(
                {sub.tag.upper(): sub.text or "" for sub in child if not len(sub)})
        else:
            attrs.setdefault(key, child.text or "")
    return Subject(kind=kind, id=_int(el, "ID", where), name=(el.findtext("NAME") or ""),
                   attrs=attrs, vectors={k: tuple(v) for k, v in vectors.items()},
                   gid=_int(el, "GID", where) if kind == "user" else None,
                   gname=(el.findtext("GNAME") or "") if kind == "user" else "")


def parse_subject(xml: str, kind: str) -> Subject:
    """A ``one.user.info`` (``<USER>``) or ``one.group.info`` (``<GROUP>``) document."""
    tag = kind.upper()
    root = safe_xml_root(xml, what=f"{kind} document")
    if root.tag != tag:
        raise VmXmlError(f"document root is <{root.tag}>, expected <{tag}>")
    return _subject(root, kind, tag)


def parse_subject_pool(xml: str, kind: str) -> Tuple[Subject, ...]:
    """``one.userpool.info`` / ``one.grouppool.info``: the users or groups (their QUOTAS
    and DEFAULT_*_QUOTAS siblings are oned's own quotas, not ours)."""
    tag = kind.upper()
    root = safe_xml_root(xml, max_bytes=64 * 1024 * 1024, what=f"{kind} pool document")
    if root.tag != f"{tag}_POOL":
        raise VmXmlError(f"document root is <{root.tag}>, expected <{tag}_POOL>")
    return tuple(_subject(el, kind, f"{tag}_POOL/{tag}[{i}]")
                 for i, el in enumerate(root.findall(tag)))


def limits_of(subject: Subject, default: int = UNLIMITED) -> Limits:
    """The limits a template sets, validated; ``default`` when FLOATING_IP_QUOTA is
    absent or empty (``KEY=""`` is how oned keeps a cleared attribute)."""
    errors: List[str] = []
    limit, source = default, "default"
    if ATTR_QUOTA in subject.vectors:
        errors.append(f"{ATTR_QUOTA} of {subject.label}: a vector; write {ATTR_QUOTA} = \"N\"")
    raw = subject.attrs.get(ATTR_QUOTA, "")
    if raw.strip():
        try:
            limit, source = parse_limit(raw, f"{ATTR_QUOTA} of {subject.label}"), "template"
        except ValueError as exc:
            errors.append(str(exc))
    if ATTR_POOL_QUOTA in subject.attrs:
        errors.append(f"{ATTR_POOL_QUOTA} of {subject.label}: {_show(subject.attrs[ATTR_POOL_QUOTA])} "
                      f"is not a vector; write {ATTR_POOL_QUOTA} = [ POOL = \"name\", LIMIT = \"N\" ]")
    pools: Dict[str, int] = {}
    for vector in subject.vectors.get(ATTR_POOL_QUOTA, ()):
        what = f"{ATTR_POOL_QUOTA} of {subject.label}"
        pool = vector.get("POOL", "").strip()
        if not _POOL.fullmatch(pool):
            errors.append(f"{what}: POOL {_show(vector.get('POOL'))} is not a pool name")
            continue
        if pool in pools:
            errors.append(f"{what}: POOL {pool!r} appears twice")
            continue
        try:
            pools[pool] = parse_limit(vector.get("LIMIT", ""), f"{what}, POOL {pool!r}, LIMIT")
        except ValueError as exc:
            errors.append(str(exc))
    return Limits(subject, limit, source, pools, tuple(errors))


def quota_request(*limits: Limits) -> List[dict]:
    """The daemon's ``quota`` list for a new allocation (unlimited entries left out)."""
    out: List[dict] = []
    for lim in limits:
        if lim.limit != UNLIMITED:
            out.append({"scope": lim.subject.scope, "limit": lim.limit, "pool": None})
        out += [{"scope": lim.subject.scope, "limit": n, "pool": pool}
                for pool, n in sorted(lim.pools.items()) if n != UNLIMITED]
    return out


def read_limits(one: Any, uid: int, gid: int, default: int = UNLIMITED) -> Tuple[Limits, Limits]:
    """The user's and the group's limits from oned (``one.user.info``, ``one.group.info``).
    Raises QuotaError when either cannot be read or has a bad value, so the caller refuses
    the allocation instead of guessing."""
    found = []
    for kind, ident, method in (("user", uid, "one.user.info"), ("group", gid, "one.group.info")):
        try:
            xml = rpc.call_raw(one, method, ident)
            if not isinstance(xml, str):
                raise ValueError(f"{method}: oned answered {type(xml).__name__}, not a document")
            found.append(limits_of(parse_subject(xml, kind), default))
        except rpc.ONE_ERRORS as exc:  # VmXmlError is a ValueError
            raise QuotaError([f"cannot read the quota of {kind} {ident}: "
                              f"{rpc.describe_one_error(exc, one)}"]) from None
    errors = [e for lim in found for e in lim.errors]
    if errors:
        raise QuotaError(errors)
    return found[0], found[1]


def _held(allocations: Sequence[Mapping[str, Any]], key: str, scope: str) -> Tuple[int, Dict[str, int]]:
    """How many allocations name ``scope`` in ``key``, in all and per pool (an allocation
    view without "pool", from a daemon before named pools, is in ``default``)."""
    mine = [a for a in allocations if a.get(key) == scope]
    per_pool: Dict[str, int] = {}
    for a in mine:
        pool = a.get("pool", "default") or "(outside every pool)"
        per_pool[pool] = per_pool.get(pool, 0) + 1
    return len(mine), per_pool


def usage(subjects: Sequence[Subject], allocations: Sequence[Mapping[str, Any]],
          default: int = UNLIMITED, everyone: bool = False) -> List[dict]:
    """Limits and usage per user and group, as the daemon counts them (a user's
    allocations by owner, a group's by owner_group). Without ``everyone``: only those
    that hold addresses, set a limit in their template, or have a bad value."""
    rows = []
    for subject in subjects:
        limits = limits_of(subject, default)
        count, per_pool = _held(allocations, "owner" if subject.kind == "user" else "owner_group",
                                subject.scope)
        if not (everyone or count or limits.source == "template" or limits.pools or limits.errors):
            continue
        row = limits.as_dict()
        row.update(held=count, held_by_pool=dict(sorted(per_pool.items())),
                   exempt=subject.id == 0)
        rows.append(row)
    return rows


def usage_lines(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """``ipfloater-one quota`` for people: one line per user or group."""
    def shown(limit: int) -> str:
        return "unlimited" if limit == UNLIMITED else str(limit)

    lines = [f"{'KIND':<6} {'ID':>5}  {'NAME':<16} {'HELD':>5}  LIMIT"]
    for r in rows:
        limit = "exempt (oneadmin)" if r["exempt"] else \
            shown(r["limit"]) + (" (default)" if r["source"] == "default" else "")
        pools = ", ".join(f"{p} {r['held_by_pool'].get(p, 0)}/{shown(n)}" for p, n in r["pools"].items())
        lines.append(f"{r['kind']:<6} {r['id']:>5}  {r['name']:<16} {r['held']:>5}  {limit}"
                     + (f"; per pool: {pools}" if pools else "")
                     + (f"; ERROR: {'; '.join(r['errors'])}" if r["errors"] else ""))
    return lines
