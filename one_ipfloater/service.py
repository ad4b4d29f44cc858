"""The floating-IP service: plans a change, persists it and converges the kernel to it.

Every mutating call runs under one lock: plan against the registry (pure), write the
change to SQLite inside an open transaction, apply the NAT delta in one commit, commit
the transaction, then update the registry. A failure at any step before the commit
rolls everything back, so a request is either fully applied or not at all. Side effects
that cannot be rolled back (addresses, ARP, conntrack flush) come after the commit: once
it is committed the change stands, so their failure is logged and left to reconcile
(`repair_wanted` asks the daemon for a round soon), never reported as "not applied".
`reconcile()` converges rules and addresses to the stored state from scratch.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address

from . import __version__, hostnet, preflight
from .coalesce import Coalescer
from .config import DaemonConfig
from .metrics import Observer, outcome
from .model import Allocation, Change, FipError, Registry
from .nat import NatError, remove_other_backends
from .nat.ruleset import desired_spec, pair_delta
from .store import Store

log = logging.getLogger(__name__)


def _observed(kind):
    """Report the decorated change to `self.observer`: its kind (a name, or a function of
    the call's arguments), result and time, whatever it raised."""
    def decorate(method):
        @functools.wraps(method)
        def observed(self, *args, **kwargs):
            name = kind if isinstance(kind, str) else kind(self, *args, **kwargs)
            started = time.perf_counter()
            try:
                result = method(self, *args, **kwargs)
            except BaseException as exc:
                self.observer.change(name, outcome(exc), time.perf_counter() - started)
                raise
            self.observer.change(name, "ok", time.perf_counter() - started)
            return result
        return observed
    return decorate


def _associate_kind(self, public_ip, private_ip, *_args, **_kwargs) -> str:
    """`move` when the address serves another private address now (read without the
    lock: it only names the metric)."""
    current = self.registry.get(public_ip)
    return "move" if current is not None and current.private_ip not in (None, private_ip) else "associate"


class FloatingIPService:
    """Allocate / associate / disassociate / release, and reconcile."""

    observer: Observer = Observer()  # the daemon sets its metrics here (metrics.py)

    def __init__(self, config: DaemonConfig, store: Store, backend, host=hostnet):
        self.config = config
        self.store = store
        self.backend = backend
        self.host = host
        self._lock = threading.RLock()
        self._conntrack_flush = Coalescer(host.flush_conntrack)
        self.registry = Registry(config.pool, store.allocations())
        self.warnings: list[str] = []  # preflight's, set by start(); /v1/health shows them
        self.repair_wanted = threading.Event()  # set when a committed change's side effect failed

    # -- start-up and reconcile ------------------------------------------------------

    def start(self, rules_in_place: Callable[[int], None] | None = None) -> list[str]:
        """Check the host, converge the kernel to the stored state, record the pool.

        The rules go in first (with the pool checks that must precede them), then the
        addresses: after a reboot NAT is back as soon as possible. `rules_in_place(n)`
        is called in between (the daemon tells its supervisor)."""
        with self._lock:
            iface = self.config.public_interface
            self.warnings, self.registry.router_addresses = preflight.require(self.config, self.host, self.registry.pool)
            started = time.perf_counter()

            def rules_done() -> None:
                count = self.registry.association_count()
                log.info("rules of %d associations in place after %.3f s", count, time.perf_counter() - started)
                if rules_in_place is not None:
                    rules_in_place(count)

            repairs = self.reconcile(rules_done, at_start=True)
            if iface:
                log.info("addresses on %s in place after %.3f s", iface, time.perf_counter() - started)
            for alloc in self.registry:
                if alloc.public_ip not in self.registry.pool:
                    log.warning("%s is allocated but no longer in IP_POOL; it stays until released",
                                alloc.public_ip)
            # leftovers of a backend switched away from, once ours are in place
            return repairs + remove_other_backends(self.backend, self.config.xtables_lock)

    def desired(self, registry: Registry | None = None):
        """The NAT the kernel should hold for `registry` (default: the current one)."""
        if registry is None:  # (not `or`: an empty Registry is falsy)
            registry = self.registry
        return desired_spec(registry.associations(), self.config.private_ranges,
                             registry.pool, self.config.block_public_ips)

    def reconcile(self, rules_done: Callable[[], None] | None = None, at_start: bool = False) -> list[str]:
        """`_reconcile`, counted by the observer (runs, failures, repairs)."""
        try:
            repairs = self._reconcile(rules_done, at_start)
        except BaseException:
            self.observer.reconciled(None)
            raise
        self.observer.reconciled(len(repairs))
        return repairs

    def _reconcile(self, rules_done: Callable[[], None] | None = None, at_start: bool = False) -> list[str]:
        """Repair drift: our chains, jumps and floating addresses back to the stored state
        (`rules_done` runs once the rules are, before the addresses); the repairs.

        At a start where the kernel held nothing of ours (a clean install, a reboot) the
        rules and addresses are installed, not repaired: one info line says so, and no
        repair is reported."""
        with self._lock:
            desired = self.desired()
            rule_repairs = self.backend.sync(desired)
            if rules_done is not None:
                rules_done()
            address_repairs = self._sync_addresses()
            count = self.registry.association_count()
        if at_start and rule_repairs.installed_afresh:
            log.info("installed rules for %d associations (%s)", count, "; ".join(rule_repairs))
            for line in address_repairs:
                log.info("installed: %s", line)
            return []
        repairs = list(rule_repairs) + address_repairs
        for line in repairs:
            log.warning("reconcile repaired: %s", line)
        return repairs

    def _sync_addresses(self) -> list[str]:
        iface = self.config.public_interface
        if not iface:
            return []
        wanted = {pub for pub, _priv in self.registry.associations()}
        present = self.host.host_addresses(iface) & (self.registry.pool | wanted)
        missing = sorted(wanted - present)
        self._add_addresses(missing)
        if len(missing) > 10:  # e.g. after a reboot: one line, not thousands
            repairs = [f"added {len(missing)} addresses to {iface} ({missing[0]} ... {missing[-1]})"]
        else:
            repairs = [f"added {addr}/32 to {iface}" for addr in missing]
        for addr in sorted(present - wanted):
            self.host.del_address(iface, addr)
            repairs.append(f"removed {addr}/32 from {iface}")
        return repairs

    def _add_addresses(self, addrs: list[IPv4Address]) -> None:
        """Put floating addresses on the public interface and announce them."""
        if not addrs:
            return
        iface = self.config.public_interface
        self.host.add_addresses(iface, addrs)
        if self.config.gratuitous_arp:
            for addr in addrs:
                try:
                    self.host.gratuitous_arp(iface, addr)
                except Exception as exc:  # an announcement; neighbours learn the address anyway
                    log.warning("gratuitous ARP for %s on %s failed: %s", addr, iface, exc)

    # -- the change pipeline ---------------------------------------------------------

    def _commit(self, change: Change) -> None:
        """Persist `change` and apply its NAT delta, all or nothing; then side effects.

        Until the transaction commits, any failure (of the rules, of the state file, or of
        something unforeseen) rolls back the file and puts the rules back as the registry
        says: the answer is "not applied" and it is true. Once it commits, the change is
        applied, whatever its side effects do."""
        if change.noop:
            return
        before_pairs, after_pairs = change.associations()
        removed, added = pair_delta(before_pairs, after_pairs)
        touched = False
        try:
            with self.store.transaction():
                self.store.write(change)
                touched = True
                try:
                    self.backend.apply(removed, added)
                except NatError as exc:
                    log.warning("incremental rule change failed (%s); converging in full", exc)
                    trial = Registry(self.registry.pool, self.registry)
                    trial.apply(change)
                    self.backend.sync(self.desired(trial))
        except Exception as exc:
            if touched:  # the rules may be half changed, whatever failed
                self._restore_rules()
            if isinstance(exc, FipError):
                raise
            log.error("change rolled back: %s", exc)
            raise FipError("internal_error", f"change not applied: {exc}", 500) from None
        self.registry.apply(change)
        self._after_commit(change)

    def _side_effect_failed(self, what: str, exc: BaseException) -> None:
        """A committed change's side effect failed: log it, ask for a repair round."""
        log.error("%s failed after the change was committed (reconcile will repair it): %s", what, exc)
        self.repair_wanted.set()

    def _restore_rules(self) -> None:
        try:
            self.backend.sync(self.desired())
        except Exception as exc:  # the periodic reconcile will try again
            log.error("could not restore the rules after a failed change: %s", exc)
            self.repair_wanted.set()

    def _after_commit(self, change: Change) -> None:
        """Floating addresses follow the change (under the lock: they must not reorder)."""
        iface = self.config.public_interface
        if not iface:
            return
        before = {a.public_ip for a in change.before if a.private_ip}
        after = {a.public_ip for a in change.after if a.private_ip}
        try:
            self._add_addresses(sorted(after - before))
            for addr in sorted(before - after):
                self.host.del_address(iface, addr)
        except Exception as exc:  # committed: never "not applied" (netlink timeouts included)
            self._side_effect_failed(f"updating the addresses {', '.join(map(str, sorted(before ^ after)))} "
                                     f"on {iface}", exc)

    def _flush_conntrack(self, change: Change) -> None:
        """Cut the flows of moved or released addresses before the caller gets its answer.

        Runs outside the service lock: a conntrack dump walks the kernel's whole hash
        table (however few flows there are), and other changes need not wait
        for it; concurrent flushes share dumps (coalesce.py). Should the address be
        associated again meanwhile, a flow of the new association deleted here is picked
        up again at its next packet with the new NAT.
        """
        moved = change.moved_addresses()
        if not self.config.conntrack_flush or not moved:
            return
        try:
            counts = self._conntrack_flush(moved)
        except Exception as exc:  # committed: old flows end at their timeout instead
            log.error("conntrack not flushed for %s (the change stands): %s",
                      ", ".join(map(str, sorted(moved))), exc)
            return
        for addr in sorted(moved):
            log.info("flushed %d conntrack entries of %s", counts.get(addr, 0), addr)

    def _run(self, plan: Callable[[], tuple[Allocation, Change]], action: str) -> Allocation:
        with self._lock:
            alloc, change = plan()
            self._commit(change)
        self._flush_conntrack(change)
        if not change.noop:
            log.info("%s %s (private=%s owner=%s ref=%s)", action, alloc.public_ip, alloc.private_ip,
                     alloc.owner, alloc.ref)
        return alloc

    # -- operations ------------------------------------------------------------------

    @_observed("allocate")
    def allocate(self, public_ip: IPv4Address | None = None, private_ip: IPv4Address | None = None,
                 owner: str | None = None, ref: str | None = None, allow_move: bool = False,
                 operator: bool = False, unowned_ok: bool = True) -> tuple[Allocation, bool]:
        """Take an address and optionally associate it, in one atomic change.

        Returns (allocation, created): created is False when `ref` already held it.
        """
        with self._lock:
            if private_ip is not None:
                self.registry.check_target(private_ip, self.config.private_ranges)
            alloc, change = self.registry.plan_allocate(public_ip, owner, ref, operator, unowned_ok)
            created = not change.noop
            if private_ip is not None and alloc.private_ip != private_ip:
                self.registry.apply(change)
                try:
                    alloc, assoc = self.registry.plan_associate(
                        alloc.public_ip, private_ip, self.config.private_ranges, owner,
                        allow_move=allow_move, operator=operator, unowned_ok=unowned_ok)
                finally:
                    self.registry.apply(change.inverse())
                change = change.then(assoc)
            self._commit(change)
        self._flush_conntrack(change)
        if not change.noop:
            log.info("allocated %s (private=%s owner=%s ref=%s)", alloc.public_ip, alloc.private_ip,
                     alloc.owner, alloc.ref)
        return alloc, created

    @_observed(_associate_kind)
    def associate(self, public_ip: IPv4Address, private_ip: IPv4Address, owner: str | None = None,
                  allow_move: bool = False, operator: bool = False, unowned_ok: bool = True) -> Allocation:
        return self._run(lambda: self.registry.plan_associate(
            public_ip, private_ip, self.config.private_ranges, owner, allow_move, operator, unowned_ok),
            "associated")

    @_observed("disassociate")
    def disassociate(self, public_ip: IPv4Address, owner: str | None = None,
                     operator: bool = False, unowned_ok: bool = True) -> Allocation:
        return self._run(lambda: self.registry.plan_disassociate(public_ip, owner, operator, unowned_ok),
                         "disassociated")

    @_observed("release")
    def release(self, public_ip: IPv4Address, owner: str | None = None,
                operator: bool = False, unowned_ok: bool = True) -> Allocation:
        return self._run(lambda: self.registry.plan_release(public_ip, owner, operator, unowned_ok), "released")

    # -- queries -----------------------------------------------------------------------

    def show(self, public_ip: IPv4Address) -> Allocation:
        with self._lock:
            return self.registry.require(public_ip)

    def list(self, private_ip: IPv4Address | None = None, ref: str | None = None,
             owner: str | None = None, ref_prefix: str | None = None) -> list[Allocation]:
        """Allocations matching every given filter (ref_prefix: e.g. all NICs of one VM)."""
        with self._lock:
            return [a for a in self.registry
                    if (private_ip is None or a.private_ip == private_ip)
                    and (ref is None or a.ref == ref)
                    and (owner is None or a.owner == owner)
                    and (ref_prefix is None or (a.ref or "").startswith(ref_prefix))]

    def pool(self) -> dict:
        with self._lock:
            status = {a.public_ip: ("associated" if a.private_ip else "allocated") for a in self.registry}
            addresses = [{"public_ip": str(a), "status": status.get(a, "free")}
                         for a in sorted(self.registry.pool)]
            return {"size": len(self.registry.pool), "free": self.registry.free_count(),
                    "addresses": addresses}

    def version(self) -> dict:
        return {"version": __version__, "backend": self.backend.name}
