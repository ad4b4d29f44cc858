"""History for abuse reports: what each change did to each public address (pure: no I/O).

An abuse report names a public address and a time, often months later; the allocations
table only knows the present. So every committed change is also written as events, one
per public address it touched, each saying what that address became (owner, ref, NAT
target) and what it pointed at before. "Who held it at T" is then the last event of that
address at or before T. historylog.py stores the events; this module makes and reads them.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from ipaddress import IPv4Address

from .model import Change

ALLOCATE, ASSOCIATE, MOVE, DISASSOCIATE, RELEASE = "allocate", "associate", "move", "disassociate", "release"
ADOPT = "adopt"          # taken into the state file from the live rules (`ipfloaterd adopt`)
BASELINE = "baseline"    # already held when the history began (a state file of an earlier version)
EVENTS = (ALLOCATE, ASSOCIATE, MOVE, DISASSOCIATE, RELEASE, ADOPT, BASELINE)
# Times later than this are typos, not reports: datetime cannot show them anyway.
MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z
_UNIX = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")


class Event(namedtuple("Event", "at event public_ip private_ip previous_private_ip owner ref pool actor id",
                       defaults=(None,))):
    """One history record: at `at` (unix seconds), `event` made `public_ip` point at
    `private_ip` (None: nowhere) for `owner`/`ref`; `previous_private_ip` is where it
    pointed before. A release keeps the owner, ref and target it had, so the record says
    whose it was. `id` orders events of the same time (None until stored)."""

    __slots__ = ()

    @property
    def held(self) -> bool:
        """Whether the address was allocated after this event."""
        return self.event != RELEASE

    def as_dict(self) -> dict:
        return {
            "id": self.id, "at": iso(self.at), "at_unix": self.at, "event": self.event,
            "public_ip": str(self.public_ip),
            "private_ip": str(self.private_ip) if self.private_ip else None,
            "previous_private_ip": str(self.previous_private_ip) if self.previous_private_ip else None,
            "owner": self.owner, "ref": self.ref, "pool": self.pool, "actor": self.actor,
        }


def events_for(change: Change, at: float, actor: str | None = None,
               pool_of: Callable[[IPv4Address], str | None] | None = None,
               adopted: bool = False) -> list[Event]:
    """The events of one change, per public address it touched (allocation and its
    association in one request are two events, so each kind can be asked for).
    `adopted`: the new allocations came from the live rules, not from a request."""
    pool = pool_of or (lambda _ip: None)
    at = round(at, 6)  # whole microseconds: the ISO form shown (iso) names the same instant
    before = {a.public_ip: a for a in change.before}
    after = {a.public_ip: a for a in change.after}
    events: list[Event] = []

    def add(kind, alloc, private, previous):
        events.append(Event(at, kind, alloc.public_ip, private, previous, alloc.owner, alloc.ref,
                            pool(alloc.public_ip), actor))

    for pub in list(before) + [p for p in after if p not in before]:
        old, new = before.get(pub), after.get(pub)
        if new is None:
            add(RELEASE, old, None, old.private_ip)
        elif old is None and adopted:
            add(ADOPT, new, new.private_ip, None)
        elif old is None:
            add(ALLOCATE, new, None, None)
            if new.private_ip:
                add(ASSOCIATE, new, new.private_ip, None)
        elif old.private_ip != new.private_ip:
            kind = ASSOCIATE if old.private_ip is None else DISASSOCIATE if new.private_ip is None else MOVE
            add(kind, new, new.private_ip, old.private_ip)
    return events


def last_at(events: Iterable[Event], public_ip: IPv4Address, at: float) -> Event | None:
    """The event that says who held `public_ip` at `at`: its last one at or before `at`."""
    found = None
    for ev in events:
        if ev.public_ip == public_ip and ev.at <= at and (found is None or _order(ev) > _order(found)):
            found = ev
    return found


def between(events: Iterable[Event], public_ip: IPv4Address | None = None, since: float | None = None,
            until: float | None = None, owner: str | None = None) -> list[Event]:
    """The events in [since, until] (either end open when None), oldest first."""
    return sorted((ev for ev in events
                   if (public_ip is None or ev.public_ip == public_ip)
                   and (since is None or ev.at >= since) and (until is None or ev.at <= until)
                   and (owner is None or ev.owner == owner)), key=_order)


def prunable(events: Iterable[Event], before: float) -> set:
    """Ids of events older than `before` that pruning may drop: all but each address's
    last one before it, which still says who holds the address from then on."""
    events = [ev for ev in events if ev.at < before]
    keep = {}
    for ev in events:
        if ev.public_ip not in keep or _order(ev) > _order(keep[ev.public_ip]):
            keep[ev.public_ip] = ev
    kept = {ev.id for ev in keep.values()}
    return {ev.id for ev in events if ev.id not in kept}


def _order(ev: Event) -> tuple:
    return (ev.at, ev.id if ev.id is not None else 0)


# -- times: ISO 8601 UTC or unix seconds -------------------------------------------------

def iso(at: float) -> str:
    """UTC ISO 8601 with a Z, whole seconds unless the time has a fraction; then to the
    microsecond, so that a time copied from an event and asked about names that event
    (rounded to the millisecond it could fall before it and name the previous holder)."""
    moment = datetime.fromtimestamp(at, timezone.utc)
    text = moment.isoformat(timespec="seconds" if at == int(at) else "microseconds")
    return text.replace("+00:00", "Z")


def parse_time(value: object, field: str) -> float:
    """Unix seconds (ASCII digits, one dot) or ISO 8601 with a time zone (Z or +hh:mm);
    ValueError naming the field and the value. A time without a zone is refused: read as
    local time on one host and UTC on another, it would name another holder."""
    text = str(value).strip()
    if _UNIX.fullmatch(text):
        number = float(text)
    else:
        try:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" and text else text)
        except ValueError:
            raise ValueError(f"{field}: {value!r} is not a time (ISO 8601 such as "
                             "2026-03-01T14:05:00Z, or unix seconds)") from None
        if moment.tzinfo is None or len(text) < 11:
            raise ValueError(f"{field}: {value!r} has no time zone (add Z for UTC)")
        number = moment.timestamp()
    if not 0 <= number <= MAX_TIME:
        raise ValueError(f"{field}: {value!r} is out of range (1970 to 9999)")
    return number
