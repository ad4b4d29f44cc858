"""On-link pools in a router pair: which floating /32s this router holds for its HA state.

In an on-link deployment (HA_MODE = onlink) the upstream router has the pool on the
shared public segment and ARPs for each floating address, so the addresses themselves
must follow keepalived's master: two holders would answer ARP for the same address
(the upstream's cache flips between them and flows break), none would black-hole it.
Only the master holds them; a backup, a router in fault, and a daemon that does not yet
know its state (no state file, or one from before the last boot) hold none. The NAT
rules are not concerned: every router keeps all of them, so a takeover only adds the
/32s and announces them with gratuitous ARP.

With HA_MODE none (a single router) or routed (the pool is routed to a VRRP address),
the addresses do not depend on the state: today's behaviour.

Pure functions: the service asks them and does the kernel work (service.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address

ONLINK = "onlink"


def holds_addresses(mode: str, state: str) -> bool:
    """Whether a router in HA state `state` puts the floating /32s on its interface."""
    return mode != ONLINK or state == "master"


def address_plan(associated: Iterable[IPv4Address], present: Iterable[IPv4Address],
                 holding: bool) -> tuple[list[IPv4Address], list[IPv4Address]]:
    """(to add, to remove), sorted: `present` (ours on the interface) converged to the
    associated addresses when `holding`, to none otherwise."""
    wanted = set(associated) if holding else set()
    present = set(present)
    return sorted(wanted - present), sorted(present - wanted)
