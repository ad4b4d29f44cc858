"""The router's high-availability state, as keepalived decides it (master, backup, fault),
or `stop`: keepalived is not running on this router.

keepalived elects the active router of a pair; its notify scripts run
`ipfloaterd ha-state STATE`, which tells the running daemon (PUT /v1/ha-state with the
operator token) or, when no daemon answers (stopped, crashed, starting), does the same
work itself. Either way one function, `enter`, does it:

- it records the state in a small file beside the state database (`<DB>.ha-state`), so a
  daemon that restarts knows its state at once (keepalived notifies only on transitions);
  a file older than the last boot is ignored, since keepalived notifies again after one;
- on every change it deletes the conntrack entries of the floating addresses. A router
  that was master before still holds entries of flows that its peer carried on since;
  their sequence numbers have moved past what it saw, so when the flows come back the
  packets fail conntrack's TCP window check, are not translated, and the flow stalls for
  good (measured in the HA lab, tests/ha). Deleting them when the router stops being
  master means none is left when it is master again (the packets that arrive between
  keepalived's takeover and the notify script would otherwise be dropped, and TCP backs
  off); deleting them again on becoming master covers a notify that was missed. A
  router that is not master carries no floating traffic, so nothing of value is lost;
  deleted entries are picked up again at the next packet (loose pickup), with the same
  1:1 mapping.

`stop` is not a VRRP state: keepalived runs its `notify_stop` when it stops (systemctl stop,
an upgrade) and the systemd drop-in runs the same notify after any end of keepalived,
a crash or kill -9 included (ExecStopPost, which runs when no notify could). A router
whose keepalived is gone is master of nothing, whatever it was: its peer takes over, so
an on-link pair gives up the /32s here as in backup or fault. The state file then says
`stop`, so a daemon that restarts before keepalived does holds none either; keepalived's
first notify when it starts again (backup) replaces it.

The NAT rules do not depend on the state: both routers hold every association, so a
standby is ready before it is needed, and a daemon that dies leaves forwarding intact.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address

from . import groups
from .config import config_pools

log = logging.getLogger(__name__)

STATES = ("master", "backup", "fault", "stop")  # stop: keepalived is not running
UNKNOWN = "unknown"
SUFFIX = ".ha-state"


class HaStateError(ValueError):
    """A state that keepalived does not have; one line naming the field and the value."""


def parse_state(value, field: str = "state") -> str:
    """keepalived's state name (MASTER, backup...) as ours, lower case."""
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in STATES:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise HaStateError(f"{field}: {shown} is not one of {', '.join(STATES)}")
    return text


def state_path(db_path: str) -> str:
    return db_path + SUFFIX


def boot_time() -> float:
    """When the host booted (a state recorded before it is stale)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            for line in stat:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def read_state(path: str, booted: float | None = None) -> dict:
    """{"state", "since"} from the file; unknown when missing, unreadable or from before boot."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        state, since = parse_state(data.get("state")), float(data["since"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("ignoring the HA state file %s: %s", path, exc)
        return {"state": UNKNOWN, "since": None}
    if since < (boot_time() if booted is None else booted):
        return {"state": UNKNOWN, "since": None}
    return {"state": state, "since": since}


def write_state(path: str, state: str, since: float) -> None:
    """Whole or not at all (a reader never sees half a file)."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, json.dumps({"state": state, "since": since}).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def enter(state: str, path: str, floating: Iterable[IPv4Address],
          flush: Callable[[Iterable[IPv4Address]], dict], clock: Callable[[], float] = time.time) -> dict:
    """Record `state` and delete the floating addresses' conntrack entries.
    Returns what was done: {"state", "since", "conntrack_flushed"}."""
    since = clock()
    addresses = set(floating)
    flushed = sum(flush(addresses).values()) if addresses else 0
    write_state(path, state, since)
    return {"state": state, "since": since, "conntrack_flushed": flushed}


class HaState:
    """The daemon's view: the current state, changed by PUT /v1/ha-state, one at a time."""

    def __init__(self, path: str, floating: Callable[[], Iterable[IPv4Address]],
                 flush: Callable[[Iterable[IPv4Address]], dict], clock: Callable[[], float] = time.time,
                 on_change: Callable[[str], list] | None = None):
        self.path = path
        self._floating, self._flush, self._clock = floating, flush, clock
        self._on_change = on_change  # the service's ha_changed: on-link /32s follow the state
        self._lock = threading.Lock()
        current = read_state(path)
        self.state, self.since = current["state"], current["since"]
        self.changes = 0

    def view(self) -> dict:
        return {"state": self.state, "since": self.since, "changes": self.changes}

    def set(self, state: str) -> dict:
        """Enter `state` (flushing even if it is the current one: keepalived's word wins)."""
        with self._lock:
            previous = self.state
            done = enter(state, self.path, self._floating(), self._flush, self._clock)
            self.state, self.since = state, done["since"]
            self.changes += 1
            if self._on_change is not None:  # (recorded first: a restart acts on the new state)
                done["addresses"] = self._on_change(state)
        log.warning("HA state %s -> %s: deleted %d conntrack entries of the floating addresses",
                    previous, state, done["conntrack_flushed"])
        for line in done.get("addresses") or ():
            log.warning("HA state %s: %s", state, line)
        return {**done, "previous": previous}


def served_addresses(service) -> set:
    """The addresses whose flows a new state forgets: the pool and any still-served one
    (read under the service's lock: an API change may be editing the registry)."""
    with service._lock:
        if service.served is not None:  # ROUTER_GROUP: the served pools' only
            return set(service.served)
        return set(service.registry.pool) | {pub for pub, _priv in service.registry.associations()}


def command(config, state: str) -> int:
    """`ipfloaterd ha-state STATE` (keepalived's notify): tell the running daemon; when
    none answers, record the state and flush here, so that the cleanup never depends on
    the daemon being up. JSON on stdout; exit 1 if the daemon refused (the work is done
    anyway) or the work failed, with one line on stderr."""
    from . import hostnet
    from .client import ApiError, IpfloaterClient, read_token
    host = "127.0.0.1" if config.rest_ip in ("0.0.0.0", "") else config.rest_ip
    try:
        client = IpfloaterClient(f"http://{host}:{config.rest_port}",
                                 read_token(config.token_file, file_setting="TOKEN_FILE"), timeout=5.0)
        print(json.dumps({**client.set_ha_state(state), "by": "daemon"}))
        return 0
    except ApiError as exc:
        refused = exc.code not in ("unreachable", "timeout", "no_token")
        why = exc.message
    try:
        served = groups.served_addresses(config_pools(config), groups.served_pools(config))  # ROUTER_GROUP
        done = enter(state, state_path(config.db_path), config.pool if served is None else sorted(served),
                     hostnet.flush_conntrack)
        if state != "master" and getattr(config, "ha_mode", "none") == "onlink":
            done["addresses"] = give_up_addresses(config, hostnet)
    except (OSError, hostnet.HostNetError) as exc:
        print(f"ipfloaterd: ha-state {state}: {exc} (the daemon: {why})", file=sys.stderr)
        return 1
    log.warning("HA state -> %s (the daemon: %s): deleted %d conntrack entries of the floating addresses",
                state, why, done["conntrack_flushed"])
    print(json.dumps({**done, "by": "ha-state command", "daemon": why}))
    if refused:
        print(f"ipfloaterd: ha-state: the daemon refused: {why}", file=sys.stderr)
        return 1
    return 0


def give_up_addresses(config, host) -> list[str]:
    """On-link pair, no daemon answering: a router that stops being master drops every pool
    /32 from its interface itself, so that two routers never answer ARP for one address.
    (Becoming master without a daemon adds nothing: the daemon, when it starts, reads the
    state file and puts back the associated addresses; it alone knows which they are.)"""
    iface = config.public_interface
    if not iface or not host.interface_exists(iface):
        return []
    removed = []
    for addr in sorted(host.host_addresses(iface) & set(config.pool)):
        host.del_address(iface, addr)
        removed.append(f"removed {addr}/32 from {iface}")
    return removed
