"""Converge the floating IPs of OpenNebula VMs with ipfloaterd (what every hook runs).

``converge_vm`` is idempotent and trusts nothing but a VM ID: under the VM's lock it
re-reads the VM from oned (hook payloads are stale and unescaped), asks the daemon what
the VM holds (refs ``one:vm:<ID>:nic:<NIC_ID>``), runs the planned steps and writes
back to USER_TEMPLATE only what changed, so the ``one.vm.update`` hook its own write
fires ends after one no-op pass. Expected failures never raise: they end up in
``Result.errors`` (one line each) and, when the VM can be reached, as
FLOATING_IP_STATUS="ERROR" plus FLOATING_IP_ERROR.

No half-done state: each daemon call is atomic; a failed allocation leaves nothing
behind; a NAT that cannot follow its NIC to a new private address is disassociated
(never left pointing at an address that may now be another VM's); the allocations of
NICs that were served stay (they are valid, and the next run is a no-op for them).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import pyone

from ..client import ApiError, IpfloaterClient
from . import rpc
from .fipspec import FipSpec, desired_floating_ips, parse_ref, pool_networks, vm_phase
from .quota import QuotaError, exempt, group_scope, quota_request, read_limits
from .plan import (ATTR_STATUS, Held, Step, changed_attributes, error_line, foreign_held,
                   held_from_api, ownership_errors, plan_steps, wanted_attributes)
from .vmlock import LockError, open_lock_dir, vm_lock
from .vmxml import Vm, VmXmlError, parse_vm, parse_vm_pool

__all__ = ["Result", "SyncResult", "converge_vm", "sync_all", "read_vm", "held_by_vm",
           "clients_from_config", "desired_with_pools"]

log = logging.getLogger(__name__)

#: Daemon errors after which further calls in this run are pointless.
_FATAL = frozenset({"unreachable", "timeout", "unauthorized", "forbidden", "bad_response",
                    "no_token", "internal_error", "redirect"})


@dataclass
class Result:
    """What one converge did. ``phase``: wait | hold | release | gone ("" if the VM could
    not be read). ``addresses``: NIC_ID -> public address afterwards. ``written``: the
    USER_TEMPLATE attributes sent (empty: nothing changed)."""

    vm_id: int
    phase: str = ""
    addresses: Dict[int, str] = field(default_factory=dict)
    steps: List[Step] = field(default_factory=list)
    written: Dict[str, str] = field(default_factory=dict)
    status: str = ""
    errors: List[str] = field(default_factory=list)
    pools: Dict[int, str] = field(default_factory=dict)  # NIC_ID -> pool of its address

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def message(self) -> str:
        """One line: the errors, or a short summary."""
        if self.errors:
            return f"VM {self.vm_id}: {error_line(self.errors)}"
        if self.phase == "wait":
            return f"VM {self.vm_id}: not deployed yet, nothing to do"
        shown = ", ".join(f"NIC {n} {a}" for n, a in sorted(self.addresses.items()))
        return f"VM {self.vm_id}: {shown or 'no floating IP'}" + \
            (f" ({self.status})" if self.status else "")

    def as_dict(self) -> dict:
        return {"vm_id": self.vm_id, "phase": self.phase, "ok": self.ok,
                "addresses": {str(k): v for k, v in sorted(self.addresses.items())},
                "steps": [{"action": s.action, "nic_id": s.nic_id, "public_ip": s.public_ip,
                           "private_ip": s.private_ip} for s in self.steps],
                "written": dict(self.written), "status": self.status,
                "errors": list(self.errors)}


def clients_from_config(config) -> Tuple[Any, IpfloaterClient]:
    """An oned client (rpc.OneClient) and a daemon client from a OneConfig (reads both
    credentials; raises ConfigError)."""
    one = rpc.connect(config.one_xmlrpc, config.session(), config.one_timeout)
    return one, IpfloaterClient(config.ipfloater_url, config.token(), config.ipfloater_timeout,
                                use_env_proxy=config.use_env_proxy)


def read_vm(one: Any, vm_id: int) -> Vm:
    """The VM as oned has it now (``one.vm.info``, parsed by parse_vm)."""
    return parse_vm(rpc.vm_xml(one, vm_id))


def desired_with_pools(one: Any, vm: Vm, cache: Optional[Dict[int, Any]] = None) -> FipSpec:
    """What the VM asks for, pools decided: the FLOATING_IP_POOL of the virtual networks
    that decide one are read with ``one.vn.info``, each once (``cache``: network ID ->
    value or error text, shared by the VMs of one sweep)."""
    spec = desired_floating_ips(vm)
    needed = pool_networks(vm, spec)
    if not needed:
        return desired_floating_ips(vm, {}) if spec.requests else spec
    cache = {} if cache is None else cache
    for net_id in needed:
        if net_id not in cache:
            try:
                cache[net_id] = rpc.vnet_pool(one, net_id)
            except rpc.ONE_ERRORS as exc:
                cache[net_id] = _VnetError(rpc.describe_one_error(exc, one))
    pools = {n: v for n, v in cache.items() if not isinstance(v, _VnetError)}
    errors = {n: str(v) for n, v in cache.items() if isinstance(v, _VnetError)}
    return desired_floating_ips(vm, pools, errors)


class _VnetError(str):
    """A virtual network that could not be read (its one-line reason)."""


def held_by_vm(daemon: Any, vm_id: int) -> Dict[int, Held]:
    """The daemon's allocations for the VM's NICs, by NIC_ID."""
    return held_from_api(daemon.list(ref_prefix=f"one:vm:{vm_id}:"), vm_id)


def converge_vm(vm_id: int, one: Any, daemon: Any, *, lock_dir: Optional[str] = None,
                lock_timeout: float = 60.0, quota_default: int = -1,
                vnet_cache: Optional[Dict[int, Any]] = None) -> Result:
    """Bring the daemon and the VM's USER_TEMPLATE in line with what the VM asks for.

    ``one``: an rpc.OneClient; ``daemon``: an IpfloaterClient. ``lock_dir`` None takes no
    lock (only for callers that never run two converges at once). ``quota_default``: the
    limit of users and groups whose template sets none (config FLOATING_IP_QUOTA).
    ``vnet_cache``: see desired_with_pools."""
    result = Result(vm_id=vm_id)
    try:
        with vm_lock(lock_dir, vm_id, lock_timeout):
            _converge(vm_id, one, daemon, result, quota_default, vnet_cache)
    except LockError as exc:
        result.errors.append(str(exc))
    if result.errors:
        log.info("%s", result.message)
    return result


def _converge(vm_id: int, one: Any, daemon: Any, result: Result, quota_default: int = -1,
              vnet_cache: Optional[Dict[int, Any]] = None) -> None:
    try:
        vm: Optional[Vm] = read_vm(one, vm_id)
    except pyone.OneNoExistsException:
        vm = None
    except rpc.ONE_ERRORS as exc:
        result.errors.append(rpc.describe_one_error(exc, one))
        return
    except VmXmlError as exc:  # nothing safe to compare with: do not write back
        result.errors.append(f"cannot use the VM document: {exc}")
        return
    result.phase = "gone" if vm is None else vm_phase(vm)
    if result.phase == "wait":
        return
    spec = FipSpec()
    if vm is not None and result.phase == "hold":
        spec = desired_with_pools(one, vm, vnet_cache)
        result.errors.extend(spec.errors)
    try:
        held = held_by_vm(daemon, vm_id)
    except ApiError as exc:
        result.errors.append(_daemon_error(exc))
        if vm is not None:
            _write_back(one, vm, result, None)
        return
    foreign = foreign_held(vm, held)
    result.errors.extend(ownership_errors(vm, held))
    held = {n: h for n, h in held.items() if n not in foreign}  # never adopted
    steps = plan_steps(vm, result.phase, spec, held)
    result.pools = {n: h.pool for n, h in held.items() if h.pool}
    result.addresses = _execute(steps, daemon, held, result,
                                _new_allocation_fields(one, vm, steps, quota_default, result))
    if vm is not None:
        _write_back(one, vm, result, result.addresses)


def _new_allocation_fields(one: Any, vm: Optional[Vm], steps: List[Step], default: int,
                           result: Result) -> Optional[Dict[str, Any]]:
    """``owner_group`` and ``quota`` for this run's new allocations (the daemon counts
    them atomically); None when the limits cannot be used (errors in ``result``): then no
    new address is taken, and held ones stay. Read only when something is to be taken."""
    if vm is None or not any(s.action == "allocate" for s in steps):
        return {}
    fields: Dict[str, Any] = {"owner_group": group_scope(vm.gid)}
    if exempt(vm.uid, vm.gid):
        return fields
    try:
        user, group = read_limits(one, vm.uid, vm.gid, default)
    except QuotaError as exc:
        result.errors.extend(f"no new floating IP: {line}" for line in exc.lines)
        return None
    fields["quota"] = quota_request(user, group) or None
    return fields


def _execute(steps: List[Step], daemon: Any, held: Dict[int, Held],
             result: Result, new_fields: Optional[Dict[str, Any]] = None) -> Dict[int, str]:
    """Run the steps in order; ``new_fields`` go with new allocations (None: take none)."""
    addresses = {nic_id: h.public_ip for nic_id, h in held.items()}
    releasing = {s.public_ip for s in steps if s.action == "release"}
    failed = set()
    for step in steps:
        if step.nic_id in failed:
            continue
        if new_fields is None and (step.action == "allocate" or step.replacing):
            continue  # nothing new may be taken: keep the address a replacement would free
        try:
            if step.action == "release":
                if step.replacing and not _replacement_free(daemon, step, releasing, result):
                    failed.add(step.nic_id)
                    continue
                if step.replacing_pool and not _pool_has_room(daemon, step, result):
                    failed.add(step.nic_id)
                    continue
                _release(daemon, step)
                addresses.pop(step.nic_id, None)
                result.pools.pop(step.nic_id, None)
            else:
                if step.action == "move":
                    _check_private_free(daemon, step, addresses)
                got = daemon.allocate(public_ip=step.public_ip, private_ip=step.private_ip,
                                      owner=step.owner, ref=step.ref,
                                      allow_move=True if step.action == "move" else None,
                                      pool=step.pool,
                                      **((new_fields or {}) if step.action == "allocate" else {}))
                addresses[step.nic_id] = got["public_ip"]
                if got.get("pool"):
                    result.pools[step.nic_id] = got["pool"]
            result.steps.append(step)
            log.info("VM %d: %s NIC %d %s -> %s (%s)", result.vm_id, step.action, step.nic_id,
                     addresses.get(step.nic_id, step.public_ip), step.private_ip, step.reason)
        except ApiError as exc:
            failed.add(step.nic_id)
            result.errors.append(_step_error(step, exc))
            if exc.code in _FATAL:
                break
            if step.action == "move":
                _disassociate(daemon, step, result)
    return addresses


def _release(daemon: Any, step: Step) -> None:
    try:
        daemon.release(step.public_ip, owner=step.owner)
    except ApiError as exc:
        if exc.code != "not_allocated":  # already gone (another run got there first)
            raise


def _check_private_free(daemon: Any, step: Step, addresses: Dict[int, str]) -> None:
    """``allow_move`` also lets the daemon take the private address from whatever serves
    it; a move may only take it from this VM's own NICs, never from another VM (whose
    NIC has the same address after a lease bug or an operator's change). The daemon
    refuses that for another owner too (the answer is handled the same way)."""
    mine = set(addresses.values())
    served = daemon.list(private_ip=step.private_ip)
    if any(a.get("public_ip") not in mine for a in served):
        raise ApiError("private_in_use", f"private_ip: {step.private_ip} is already served",
                       409)


def _replacement_free(daemon: Any, step: Step, releasing: set, result: Result) -> bool:
    """Before giving up the held address for another one: is the other one free?"""
    wanted = step.replacing
    try:
        other = daemon.show(wanted)
    except ApiError as exc:
        if exc.code == "not_allocated":
            return True
        result.errors.append(_step_error(Step("allocate", step.nic_id, step.ref, wanted,
                                              step.private_ip), exc))
        return False
    if other.get("public_ip") in releasing:
        return True
    result.errors.append(f"NIC {step.nic_id}: {wanted} is already allocated to another VM "
                         f"(keeping {step.public_ip})")
    return False


def _pool_has_room(daemon: Any, step: Step, result: Result) -> bool:
    """Before giving up the held address for one of another pool: has that pool one?"""
    wanted = step.replacing_pool
    try:
        free = daemon.pools(wanted).get("free", 0)
    except ApiError as exc:
        result.errors.append(_step_error(Step("allocate", step.nic_id, step.ref, None,
                                              step.private_ip, pool=wanted), exc)
                             + f" (keeping {step.public_ip})")
        return False
    if free > 0:
        return True
    result.errors.append(f"NIC {step.nic_id}: no free address left in the floating IP pool "
                         f"{wanted!r} (keeping {step.public_ip})")
    return False


def _disassociate(daemon: Any, step: Step, result: Result) -> None:
    """A NAT that could not follow its NIC must not keep pointing at the old address."""
    try:
        daemon.disassociate(step.public_ip, owner=step.owner)
    except ApiError as exc:
        result.errors.append(f"NIC {step.nic_id}: could not unhook {step.public_ip} from its "
                             f"old address: {exc.message}")


def _daemon_error(exc: ApiError) -> str:
    text = " ".join(str(exc.message).split()) or exc.code
    if exc.code == "forbidden":  # the token's role does not allow what the driver does
        text += " (forbidden: IPFLOATER_TOKEN_FILE must hold an operator token)"
    return text


def _step_error(step: Step, exc: ApiError) -> str:
    nic, asked, code = f"NIC {step.nic_id}", step.public_ip, exc.code
    if code in _FATAL:
        return _daemon_error(exc)
    if step.action == "release":
        return f"{nic}: could not release {asked}: {_daemon_error(exc)} ({code})"
    messages = {
        "pool_exhausted": f"{nic}: no free address left in the floating IP pool"
                          + (f" {step.pool!r}" if step.pool else ""),
        "unknown_pool": f"{nic}: the floating IP pool {step.pool!r} does not exist "
                        f"({_daemon_error(exc)})",
        "not_in_pool": f"{nic}: {asked} is not in the floating IP pool",
        "address_in_use": f"{nic}: {asked} is already allocated to another VM",
        "owner_mismatch": f"{nic}: {asked} belongs to another user (owner_mismatch)",
        "private_not_allowed": f"{nic}: the router does not NAT to {step.private_ip} "
                               f"({_daemon_error(exc)})",
        "private_in_use": f"{nic}: {step.private_ip} is already served by another VM's "
                          "floating IP (private_in_use)",
        "quota_exceeded": f"{nic}: no floating IP, over quota: {_daemon_error(exc)}",
    }
    return messages.get(code, f"{nic}: {step.action} failed: {_daemon_error(exc)} ({code})")


def _write_back(one: Any, vm: Vm, result: Result,
                addresses: Optional[Dict[int, str]]) -> None:
    wanted = wanted_attributes(vm, result.phase, addresses, result.errors, result.pools)
    result.status = wanted.get(ATTR_STATUS, "")
    changes = changed_attributes(vm.user_template, wanted)
    if not changes:
        return
    try:
        rpc.update_user_template(one, vm.id, changes)
    except rpc.ONE_ERRORS as exc:
        result.errors.append(f"cannot write to the VM: {rpc.describe_one_error(exc, one)}")
        return
    result.written = changes


# --- all VMs ---------------------------------------------------------------------------

@dataclass
class SyncResult:
    """``sync_all``: one Result per VM converged, plus errors that stopped the sweep."""

    results: List[Result] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and all(r.ok for r in self.results)

    @property
    def released(self) -> List[Tuple[int, str]]:
        return [(r.vm_id, s.public_ip) for r in self.results for s in r.steps
                if s.action == "release"]

    def as_dict(self) -> dict:
        return {"ok": self.ok, "converged": sum(r.ok for r in self.results),
                "released": [{"vm_id": v, "public_ip": p} for v, p in self.released],
                "errors": list(self.errors) + [r.message for r in self.results if not r.ok],
                "vms": [r.as_dict() for r in self.results]}


def sync_all(one: Any, daemon: Any, *, lock_dir: Optional[str] = None,
             lock_timeout: float = 60.0, quota_default: int = -1) -> SyncResult:
    """Converge every VM but DONE ones, then every VM the daemon holds addresses for that
    was not in that list (DONE or gone: converge_vm re-reads it, so a VM created since the
    list was read is converged, not robbed). Refs that do not parse are left alone."""
    out = SyncResult()
    if lock_dir is not None:  # one line for the sweep, not one per VM
        try:
            os.close(open_lock_dir(lock_dir))
        except LockError as exc:
            out.errors.append(str(exc))
            return out
    try:
        vms = parse_vm_pool(rpc.vmpool_xml(one))
    except rpc.ONE_ERRORS as exc:  # never act on a partial view of the pool
        out.errors.append(rpc.describe_one_error(exc, one))
        return out
    except VmXmlError as exc:
        out.errors.append(f"cannot use the VM pool document: {exc}")
        return out
    listed = {vm.id for vm in vms}
    vnet_cache: Dict[int, Any] = {}  # each network read once per sweep
    for vm_id in sorted(listed):
        out.results.append(converge_vm(vm_id, one, daemon, lock_dir=lock_dir,
                                       lock_timeout=lock_timeout, quota_default=quota_default,
                                       vnet_cache=vnet_cache))
    try:
        allocations = daemon.list()
    except ApiError as exc:
        out.errors.append(_daemon_error(exc))
        return out
    orphans = sorted({ref[0] for ref in (parse_ref(a.get("ref")) for a in allocations)
                      if ref is not None and ref[0] not in listed})
    for vm_id in orphans:
        out.results.append(converge_vm(vm_id, one, daemon, lock_dir=lock_dir,
                                       lock_timeout=lock_timeout, quota_default=quota_default))
    return out
