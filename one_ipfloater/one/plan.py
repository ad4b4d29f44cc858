"""What converging one VM means: desired floating IPs vs the daemon's allocations (pure).

Kept free of I/O so that ``ipfloater-one show`` can print exactly what a hook would do,
and so that the rules are readable in one place:

* Steps run in order: releases first (so an address can move between NICs of the same
  VM), then new allocations and moves in NIC_ID order.
* An allocation whose NIC is gone, or whose NIC now has another IPv4 lease that is not
  asked for, is always released: that private address may already belong to another VM.
* When the VM's request has errors (a typo in FLOATING_IP, say), allocations of NICs that
  still exist with the same lease are kept: a typo must not lose a public address that
  may be in DNS. The VM shows ERROR until it is fixed.
* An allocation under the VM's ref whose owner is not the VM's owner (another user's
  token wrote that ref, or the VM changed hands) is not the VM's: it is neither adopted
  (written back), moved nor released; the VM shows ERROR until an operator sorts it out.
* A held address is never traded for another under the same ref (the daemon refuses
  that with ref_conflict): asking for a different address releases the old one first,
  after the driver checked that the new one is free (``Step.replacing``). Asking for
  another pool does the same, after the driver checked that the pool has a free address
  (``Step.replacing_pool``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional

from .fipspec import FipSpec, parse_ref, ref_for, status_for
from .quota import user_scope
from .vmxml import Vm

__all__ = ["ATTR_ADDRESS", "ATTR_STATUS", "ATTR_ERROR", "ATTR_NIC_PREFIX", "Held", "Step",
           "owner_for", "held_from_api", "foreign_held", "ownership_errors", "plan_steps",
           "wanted_attributes",
           "changed_attributes", "error_line"]

ATTR_ADDRESS = "FLOATING_IP_ADDRESS"
ATTR_STATUS = "FLOATING_IP_STATUS"
ATTR_ERROR = "FLOATING_IP_ERROR"
ATTR_NIC_PREFIX = "FLOATING_IP_ADDRESS_NIC"
_NIC_ATTR = re.compile(re.escape(ATTR_NIC_PREFIX) + r"[0-9]+")
ATTR_ADDRESS_POOL = "FLOATING_IP_ADDRESS_POOL"   # written only when a pool other than default is used
ATTR_POOL_NIC_PREFIX = "FLOATING_IP_ADDRESS_POOL_NIC"
_POOL_NIC_ATTR = re.compile(re.escape(ATTR_POOL_NIC_PREFIX) + r"[0-9]+")
MAX_ERROR_CHARS = 1000


def owner_for(vm: Vm) -> str:
    """The daemon-side owner of a VM's allocations: its OpenNebula user."""
    return user_scope(vm.uid)


@dataclass(frozen=True)
class Held:
    """An allocation the daemon holds for one NIC of the VM."""

    nic_id: int
    public_ip: str
    private_ip: Optional[str]
    owner: Optional[str]
    ref: str
    pool: Optional[str] = None  # None: outside every pool, or a daemon that does not say


def held_from_api(items: Iterable[Mapping], vm_id: int) -> Dict[int, Held]:
    """Index the daemon's answer by NIC_ID; refs that do not parse, or name another VM,
    are not ours to touch and are skipped."""
    out: Dict[int, Held] = {}
    for item in items:
        parsed = parse_ref(item.get("ref"))
        if parsed is None or parsed[0] != vm_id:
            continue
        out[parsed[1]] = Held(nic_id=parsed[1], public_ip=str(item["public_ip"]),
                              private_ip=item.get("private_ip"), owner=item.get("owner"),
                              ref=item["ref"], pool=item.get("pool"))
    return out


def foreign_held(vm: Optional[Vm], held: Mapping[int, Held]) -> Dict[int, Held]:
    """The allocations under the VM's refs that are not its owner's (none when the VM is
    gone: then nobody can say whose they should be, and the ref names no VM)."""
    if vm is None:
        return {}
    owner = owner_for(vm)
    return {n: h for n, h in held.items() if h.owner != owner}


def ownership_errors(vm: Optional[Vm], held: Mapping[int, Held]) -> List[str]:
    """One line per allocation the VM must leave alone (``foreign_held``)."""
    if vm is None:
        return []
    owner = owner_for(vm)
    return [f"NIC {n}: {h.public_ip} is registered for this VM but belongs to "
            f"{h.owner or 'no owner'}, not {owner} (owner_mismatch); left untouched"
            for n, h in sorted(foreign_held(vm, held).items())]


@dataclass(frozen=True)
class Step:
    """One daemon call. ``action``: "release", "allocate" or "move" (re-point the held
    address at ``private_ip``: allocate with the same ref and allow_move). ``replacing``
    on a release: the address asked for instead, to check before letting go."""

    action: str
    nic_id: int
    ref: str
    public_ip: Optional[str] = None
    private_ip: Optional[str] = None
    owner: Optional[str] = None
    replacing: Optional[str] = None
    reason: str = ""
    pool: Optional[str] = None            # allocate: the pool to take an address from
    replacing_pool: Optional[str] = None  # release: the pool asked for instead


def plan_steps(vm: Optional[Vm], phase: str, spec: FipSpec,
               held: Mapping[int, Held]) -> List[Step]:
    """The calls that take the daemon from ``held`` to what ``vm`` asks for in ``phase``
    (``vm`` may be None for "release" and "gone")."""
    def release(h: Held, reason: str, replacing: Optional[str] = None) -> Step:
        return Step("release", h.nic_id, h.ref, h.public_ip, h.private_ip, h.owner,
                    replacing, reason)

    foreign = foreign_held(vm, held)
    held = {n: h for n, h in held.items() if n not in foreign}
    if phase in ("release", "gone"):
        why = "the VM is DONE" if phase == "release" else "the VM does not exist"
        return [release(h, why) for _, h in sorted(held.items())]
    if phase != "hold" or vm is None:
        return []
    wanted = {r.nic_id: r for r in spec.requests}
    leases = {n.nic_id: str(n.ip) for n in vm.nics if n.ip is not None}
    releases: List[Step] = []
    others: List[Step] = []
    for nic_id, h in sorted(held.items()):
        r = wanted.get(nic_id)
        if r is None:
            if nic_id not in leases:
                releases.append(release(h, f"NIC {nic_id} is gone or has no IPv4"))
            elif spec.errors and leases[nic_id] == h.private_ip:
                continue  # kept while the request is broken (module doc)
            else:
                releases.append(release(h, f"NIC {nic_id} no longer asks for one"))
        elif r.public_ip is not None and str(r.public_ip) != h.public_ip:
            releases.append(release(h, f"NIC {nic_id} asks for {r.public_ip} instead",
                                    replacing=str(r.public_ip)))
        elif r.public_ip is None and r.pool is not None and h.pool is not None and h.pool != r.pool:
            releases.append(dataclasses.replace(
                release(h, f"NIC {nic_id} asks for pool {r.pool!r} instead of {h.pool!r}"),
                replacing_pool=r.pool))
    released = {s.nic_id for s in releases}
    owner = owner_for(vm)
    for r in spec.requests:
        if r.nic_id in foreign:
            continue  # that NIC's ref is taken by someone else's allocation
        h = held.get(r.nic_id)
        private = str(r.private_ip)
        public = str(r.public_ip) if r.public_ip is not None else None
        if h is None or r.nic_id in released:
            others.append(Step("allocate", r.nic_id, ref_for(vm.id, r.nic_id), public, private,
                               owner, reason=f"NIC {r.nic_id} asks for "
                               f"{public or 'a floating IP'}"
                               + (f" of pool {r.pool!r}" if public is None and r.pool else ""),
                               pool=r.pool if public is None else None))
        elif h.private_ip != private:
            others.append(Step("move", r.nic_id, h.ref, h.public_ip, private, owner,
                               reason=f"NIC {r.nic_id} now has {private}"))
    return releases + others


def error_line(errors: Iterable[str]) -> str:
    """All errors as one bounded line (what FLOATING_IP_ERROR and stderr show). No
    ``]]>``: the value travels in CDATA and must read back exactly as written."""
    text = " ".join("; ".join(e for e in errors if e).split()).replace("]]>", "]] >")
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def wanted_attributes(vm: Vm, phase: str, addresses: Optional[Mapping[int, str]],
                      errors: Iterable[str], pools: Optional[Mapping[int, str]] = None
                      ) -> Dict[str, str]:
    """USER_TEMPLATE values the VM should show. ``addresses`` (NIC_ID -> public) None
    means "unknown" (the daemon did not answer): only status and error are set then.
    ``pools`` (NIC_ID -> pool): the pools are shown (FLOATING_IP_ADDRESS_POOL...) only
    when one is not `default`, so that VMs of a one-pool cloud get nothing new."""
    line = error_line(errors)
    attrs: Dict[str, str] = {ATTR_ERROR: line}
    if addresses is None:
        attrs[ATTR_STATUS] = "ERROR" if line else vm.user_template.get(ATTR_STATUS, "")
        return attrs
    if line:
        attrs[ATTR_STATUS] = "ERROR"
    elif addresses and phase == "hold":
        attrs[ATTR_STATUS] = status_for(vm)
    else:
        attrs[ATTR_STATUS] = ""
    ordered = sorted(addresses.items())
    attrs[ATTR_ADDRESS] = ordered[0][1] if ordered else ""
    for key in vm.user_template:
        if _NIC_ATTR.fullmatch(key):
            attrs[key] = ""
    if len(ordered) > 1:
        for nic_id, public in ordered:
            attrs[f"{ATTR_NIC_PREFIX}{nic_id}"] = public
    _pool_attributes(vm, attrs, ordered, pools or {})
    return attrs


def _pool_attributes(vm: Vm, attrs: Dict[str, str], ordered, pools: Mapping[int, str]) -> None:
    shown = any(pools.get(n) not in (None, "default") for n, _ in ordered)
    attrs[ATTR_ADDRESS_POOL] = (pools.get(ordered[0][0]) or "") if shown else ""
    for key in vm.user_template:
        if _POOL_NIC_ATTR.fullmatch(key):
            attrs[key] = ""
    if shown and len(ordered) > 1:
        for nic_id, _public in ordered:
            attrs[f"{ATTR_POOL_NIC_PREFIX}{nic_id}"] = pools.get(nic_id) or ""


def changed_attributes(current: Mapping[str, str], wanted: Mapping[str, str]) -> Dict[str, str]:
    """Only what differs; an absent attribute counts as empty, so a VM that never asked
    for a floating IP gets nothing written (and a write-back hook loop ends)."""
    return {k: v for k, v in wanted.items() if current.get(k, "") != v}
