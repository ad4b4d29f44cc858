"""What floating IPs a VM asks for, and what its lifecycle state means for them.

The user writes, in USER_TEMPLATE (``onevm update``) or in a NIC vector::

    FLOATING_IP     = "YES" | "NO" | "" | "<public IPv4>"   (case-insensitive, trimmed)
    FLOATING_IP_NIC = "<NIC_ID>"     (USER_TEMPLATE only; default: lowest NIC_ID with IPv4)
    NIC = [ NETWORK = "...", FLOATING_IP = "YES" ]        (per NIC; several NICs may ask)
    FLOATING_IP_POOL = "<pool name>" (in a NIC, else at the top level: USER_TEMPLATE, then
                                      TEMPLATE; else the NIC's virtual network's TEMPLATE;
                                      else "default"; ignored for a given address)

Top-level and per-NIC requests combine; "YES" on a NIC also asked for a given address
merges into that address; two different addresses for one NIC, or one address for two NICs,
are errors. ``FLOATING_IP_NIC`` is only read when the top-level ``FLOATING_IP`` asks for one.

Not a request: ``FLOATING_IP`` inside the NICs of a virtual-router instance (``VROUTER_ID``
in TEMPLATE). There it is OpenNebula's own attribute (the keepalived VIP, see
``vm-5.2-vrouter-2nic-done.xml``), so it is ignored; the top-level attribute still applies.

Errors never hide the valid requests of other NICs: the daemon can serve what is valid and
report the rest (one line each, naming the attribute and the value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address, IPv6Address
from typing import Dict, List, Mapping, Optional, Tuple

from ..addresses import DEFAULT_POOL, POOL_NAME_RE, ipv4_from_text, never_floating
from .vmxml import (ACTIVE, CLONING, CLONING_FAILURE, DONE, HOLD, INIT, PENDING, POWEROFF,
                    RUNNING, STOPPED, SUSPENDED, UNDEPLOYED, Vm)

__all__ = [
    "ATTR_FLOATING_IP", "ATTR_FLOATING_IP_NIC", "ATTR_FLOATING_IP_POOL", "DEFAULT_POOL",
    "FipRequest", "FipSpec", "desired_floating_ips", "pool_networks", "parse_public_ip",
    "ref_for", "parse_ref", "vm_phase",
    "status_for",
]

ATTR_FLOATING_IP = "FLOATING_IP"
ATTR_FLOATING_IP_NIC = "FLOATING_IP_NIC"
ATTR_FLOATING_IP_POOL = "FLOATING_IP_POOL"

_DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_NIC_ID = re.compile(r"[0-9]{1,9}")
_REF = re.compile(r"one:vm:(0|[1-9][0-9]{0,9}):nic:(0|[1-9][0-9]{0,9})")


@dataclass(frozen=True)
class FipRequest:
    """One NIC wants a floating IP: NAT ``public_ip`` (None = any pool address) to
    ``private_ip``, the NIC's IPv4 lease."""

    nic_id: int
    private_ip: IPv4Address
    public_ip: Optional[IPv4Address] = None
    pool: Optional[str] = None  # None: a given address (its own pool), or not decided yet


@dataclass(frozen=True)
class FipSpec:
    """All requests of a VM, sorted by NIC_ID, and one-line errors for what was refused."""

    requests: Tuple[FipRequest, ...] = ()
    errors: Tuple[str, ...] = ()


def _show(value: object, limit: int = 60) -> str:
    if isinstance(value, str) and len(value) > limit:
        value = value[: limit - 3] + "..."
    return repr(value)


def parse_public_ip(text: str) -> IPv4Address:
    """A public address as a user may ask for it: a plain dotted quad, nothing around it but
    spaces, and not in a block the daemon would refuse too (addresses.NEVER_FLOATING, the
    one policy of both sides). Raises ValueError saying why not. (Whether it is in the pool
    is the daemon's business.)"""
    if not isinstance(text, str):
        raise ValueError(f"{_show(text)} is not an IPv4 address")
    t = text.strip()
    try:
        ip = ipv4_from_text(t)
    except ValueError:
        if ":" in t and _looks_ipv6(t):
            raise ValueError(f"{_show(text)} is an IPv6 address; floating IPs are IPv4") from None
        raise ValueError(f"{_show(text)} is not an IPv4 address") from None
    bad = never_floating(ip)
    if bad is not None:
        raise ValueError(f"{_show(text)} is a {bad[1]} address ({bad[0]})")
    return ip


_ANY = "ANY"  # marker: any address from the pool


def _parse_value(raw: Optional[str]):
    """None (no request), _ANY, or an IPv4Address; ValueError for anything else."""
    if raw is None:
        return None
    t = raw.strip()
    if t == "" or t.upper() == "NO":
        return None
    if t.upper() == "YES":
        return _ANY
    if _DOTTED_QUAD.fullmatch(t) or (":" in t and _looks_ipv6(t)):
        return parse_public_ip(raw)
    raise ValueError(f"{_show(raw)} is not YES, NO or an IPv4 address")


def _looks_ipv6(t: str) -> bool:
    try:
        IPv6Address(t)
        return True
    except (AddressValueError, ValueError):
        return False


def _pool_for(vm: Vm, nic, network_pools: Optional[Mapping[int, Optional[str]]],
              network_errors: Mapping[int, str]) -> Tuple[Optional[str], Optional[str]]:
    """(pool, error) of a NIC asking for any address: NIC > VM top level > virtual network >
    default. Pool None without error: the network decides and has not been read."""
    for where, raw in ((f"{ATTR_FLOATING_IP_POOL} in NIC {nic.nic_id}",
                        nic.attrs.get(ATTR_FLOATING_IP_POOL)),
                       (ATTR_FLOATING_IP_POOL, vm.user_template.get(ATTR_FLOATING_IP_POOL)),
                       (f"{ATTR_FLOATING_IP_POOL} in TEMPLATE", vm.template_pool)):
        if raw is not None and raw.strip():
            return _checked_pool(where, raw)
    if network_pools is None or nic.network_id is None:
        return (None if network_pools is None and nic.network_id is not None else DEFAULT_POOL), None
    if nic.network_id in network_errors:
        return None, (f"NIC {nic.nic_id}: cannot read virtual network {nic.network_id} for its "
                      f"{ATTR_FLOATING_IP_POOL}: {network_errors[nic.network_id]}")
    raw = network_pools.get(nic.network_id)
    if raw is not None and raw.strip():
        return _checked_pool(f"{ATTR_FLOATING_IP_POOL} of virtual network {nic.network_id}", raw)
    return DEFAULT_POOL, None


def _checked_pool(where: str, raw: str) -> Tuple[Optional[str], Optional[str]]:
    name = raw.strip()
    if POOL_NAME_RE.fullmatch(name):
        return name, None
    return None, (f"{where}: {_show(raw)} is not a pool name (a lower-case letter, then up to "
                  "31 of a-z 0-9 _ -)")


def pool_networks(vm: Vm, spec: FipSpec) -> List[int]:
    """The virtual networks whose FLOATING_IP_POOL is still needed to decide `spec`'s pools
    (read each once with ``one.vn.info``)."""
    nics = {n.nic_id: n for n in vm.nics}
    return sorted({nics[r.nic_id].network_id for r in spec.requests
                   if r.public_ip is None and r.pool is None and r.nic_id in nics
                   and nics[r.nic_id].network_id is not None})


def desired_floating_ips(vm: Vm, network_pools: Optional[Mapping[int, Optional[str]]] = None,
                         network_errors: Optional[Mapping[int, str]] = None) -> FipSpec:
    """The floating IPs ``vm`` asks for. Never raises on user input; raises ValueError only
    for a reduced ``one.vmpool.info`` body, which lacks the attributes this needs.

    ``network_pools``: FLOATING_IP_POOL of the virtual networks (``pool_networks``; None
    if not read: then requests that depend on one have pool None); ``network_errors``:
    why a network could not be read."""
    if vm.reduced:
        raise ValueError(f"VM {vm.id}: reduced body (one.vmpool.info) lacks NIC attributes; "
                         "read it with one.vm.info or one.vmpool.infoextended")
    errors: List[str] = []
    asked: Dict[int, List[Optional[IPv4Address]]] = {}
    nics = {}
    for n in vm.nics:  # sorted by NIC_ID (Vm guarantees it); first wins on a duplicate
        nics.setdefault(n.nic_id, n)
    alias_ids = {a.nic_id for a in vm.aliases}

    def ask(nic_id: int, value) -> None:
        asked.setdefault(nic_id, []).append(None if value is _ANY else value)

    # Top level: USER_TEMPLATE FLOATING_IP (+ FLOATING_IP_NIC).
    for attr in (ATTR_FLOATING_IP, ATTR_FLOATING_IP_NIC):
        if attr in vm.user_vectors:
            errors.append(f"{attr}: is a vector attribute ({attr}=[...]); expected a value")
    try:
        top = _parse_value(vm.user_template.get(ATTR_FLOATING_IP))
    except ValueError as exc:
        errors.append(f"{ATTR_FLOATING_IP}: {exc}")
        top = None
    if top is not None:
        raw_nic = vm.user_template.get(ATTR_FLOATING_IP_NIC, "")
        if raw_nic.strip():
            t = raw_nic.strip()
            if not _NIC_ID.fullmatch(t):
                errors.append(f"{ATTR_FLOATING_IP_NIC}: {_show(raw_nic)} is not a NIC_ID")
            elif int(t) in alias_ids:
                errors.append(f"{ATTR_FLOATING_IP_NIC}: NIC {int(t)} is a NIC_ALIAS, not a NIC")
            elif int(t) not in nics:
                errors.append(f"{ATTR_FLOATING_IP_NIC}: NIC {int(t)} does not exist")
            elif nics[int(t)].ip is None:
                errors.append(f"{ATTR_FLOATING_IP_NIC}: NIC {int(t)} has no IPv4 address")
            else:
                ask(int(t), top)
        else:
            first = next((n for n in vm.nics if n.ip is not None), None)
            if first is None:
                errors.append(f"{ATTR_FLOATING_IP}: {_show(vm.user_template.get(ATTR_FLOATING_IP))}"
                              " but no NIC has an IPv4 address")
            else:
                ask(first.nic_id, top)

    # Per NIC: FLOATING_IP inside the NIC vector (not on virtual routers, see module doc).
    if vm.vrouter_id is None:
        for nic in vm.nics:
            where = f"{ATTR_FLOATING_IP} in NIC {nic.nic_id}"
            try:
                value = _parse_value(nic.attrs.get(ATTR_FLOATING_IP))
            except ValueError as exc:
                errors.append(f"{where}: {exc}")
                continue
            if value is None:
                continue
            if nic.ip is None:
                errors.append(f"{where}: the NIC has no IPv4 address")
                continue
            ask(nic.nic_id, value)
        for alias in vm.aliases:
            try:
                value = _parse_value(alias.attrs.get(ATTR_FLOATING_IP))
            except ValueError:
                value = _ANY
            if value is not None:
                errors.append(f"{ATTR_FLOATING_IP} in NIC_ALIAS {alias.nic_id}: floating IPs "
                              "go on NICs, not on aliases")

    requests: List[FipRequest] = []
    owner: Dict[IPv4Address, int] = {}
    for nic_id in sorted(asked):
        specific = sorted({ip for ip in asked[nic_id] if ip is not None})
        if len(specific) > 1:
            errors.append(f"{ATTR_FLOATING_IP}: NIC {nic_id} is asked for "
                          + " and ".join(str(ip) for ip in specific))
            continue
        public = specific[0] if specific else None
        if public is not None:
            if public in owner:
                errors.append(f"{ATTR_FLOATING_IP}: {public} is asked for NIC {owner[public]} "
                              f"and NIC {nic_id}; NIC {nic_id} gets none")
                continue
            owner[public] = nic_id
        pool = None
        if public is None:
            pool, problem = _pool_for(vm, nics[nic_id], network_pools, network_errors or {})
            if problem is not None:
                errors.append(problem)
                continue
        requests.append(FipRequest(nic_id=nic_id, private_ip=nics[nic_id].ip, public_ip=public,
                                   pool=pool))
    for attr in (ATTR_FLOATING_IP_POOL,):
        if attr in vm.user_vectors:
            errors.append(f"{attr}: is a vector attribute ({attr}=[...]); expected a value")
    return FipSpec(requests=tuple(requests), errors=tuple(errors))


# --- allocation reference --------------------------------------------------------------------

def ref_for(vm_id: int, nic_id: int) -> str:
    """The reference the daemon stores with an allocation: the OpenNebula driver's
    idempotency key (one floating IP per VM NIC)."""
    for name, v in (("vm_id", vm_id), ("nic_id", nic_id)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}: {v!r} is not a non-negative integer")
    return f"one:vm:{vm_id}:nic:{nic_id}"


def parse_ref(ref: object) -> Optional[Tuple[int, int]]:
    """(vm_id, nic_id) from a reference made by :func:`ref_for`; None for anything else
    (another driver's reference, or a damaged one)."""
    if not isinstance(ref, str):
        return None
    m = _REF.fullmatch(ref)
    return (int(m.group(1)), int(m.group(2))) if m else None


# --- lifecycle policy ------------------------------------------------------------------------

_WAIT = frozenset({INIT, PENDING, HOLD, CLONING, CLONING_FAILURE})
_HOLD = frozenset({ACTIVE, STOPPED, SUSPENDED, POWEROFF, UNDEPLOYED})


def vm_phase(vm: Vm) -> str:
    """What the VM's STATE means for its floating IPs.

    * "release": DONE; the private leases are gone.
    * "wait": not (or no longer) placed on a host: INIT, PENDING, HOLD, CLONING*. Do nothing
      yet: allocate nothing, release nothing (a resumed VM passes through PENDING).
    * "hold": ACTIVE (any LCM state), STOPPED, SUSPENDED, POWEROFF, UNDEPLOYED: the VM keeps
      its leases, so its floating IPs stay allocated and associated. Unknown STATE codes
      also give "hold": never release on a state we do not understand."""
    if vm.state == DONE:
        return "release"
    if vm.state in _WAIT:
        return "wait"
    return "hold"


def status_for(vm: Vm) -> str:
    """"ACTIVE" only when the VM is ACTIVE/RUNNING, else "DOWN" (the floating IP's status)."""
    return "ACTIVE" if vm.state == ACTIVE and vm.lcm_state == RUNNING else "DOWN"
