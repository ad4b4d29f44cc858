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
import random
import threading
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address

from . import __version__, groups, history, hostnet, onlink, preflight
from .coalesce import Coalescer
from .config import DaemonConfig, config_pools
from .metrics import Observer, outcome
from .model import DEFAULT_POOL, Allocation, Change, FipError, Registry
from .nat import NatError, remove_other_backends
from .nat.ruleset import desired_spec, pair_delta
from .quota import Quota, check_quotas
from .store import Store, StoreConflict, StoreError, StoreUnavailable

CONFLICT_RETRIES = 24  # plans a change loses to other daemons (shared state) before it gives up

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

    def __init__(self, config: DaemonConfig, store: Store, backend, host=hostnet, clock=time.time):
        self.config = config
        self.clock = clock  # the history's times (tests drive it)
        self._next_prune = None  # the clock's time of the next daily history pruning
        self.store = store
        self.backend = backend
        self.host = host
        self._lock = threading.RLock()
        self._conntrack_flush = Coalescer(host.flush_conntrack)
        self.registry = Registry(config.pool, store.allocations(), pools=config_pools(config))
        self.warnings: list[str] = []  # preflight's, set by start(); /v1/health shows them
        self.repair_wanted = threading.Event()  # set when a committed change's side effect failed
        # HA_MODE onlink: the /32s only on the master (onlink.py); the daemon sets it from the
        # HA state before start(): until then a router of an on-link pair holds none
        self.holds_addresses = onlink.holds_addresses(config.ha_mode, "unknown")
        self._kernel_behind = False  # a conflict's catch-up updated the registry, not yet the kernel
        self._moved_behind: set[IPv4Address] = set()  # addresses others moved meanwhile
        # ROUTER_GROUP: the kernel holds the served pools' associations only (groups.py);
        # None: every pool's, as a router without groups always did
        self.served_pools = groups.served_pools(config)
        self.served = groups.served_addresses(config_pools(config), self.served_pools)
        self.group_warnings: list[str] = []  # the routers' guard's (groups.judge), set by the daemon

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
            self._begin_history()
            if iface:
                log.info("addresses on %s in place after %.3f s", iface, time.perf_counter() - started)
            for alloc in self.registry:
                if alloc.public_ip not in self.registry.pool:
                    log.warning("%s is allocated but no longer in any pool (IP_POOL or [POOL ...]); "
                                "it stays until released", alloc.public_ip)
            # leftovers of a backend switched away from, once ours are in place
            return repairs + remove_other_backends(self.backend, self.config.xtables_lock)

    def desired(self, registry: Registry | None = None):
        """The NAT the kernel should hold for `registry` (default: the current one)."""
        if registry is None:  # (not `or`: an empty Registry is falsy)
            registry = self.registry
        return desired_spec(groups.only_served(registry.associations(), self.served), self.config.private_ranges,
                             registry.pool if self.served is None else self.served, self.config.block_public_ips)

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
        if at_start:  # a filter chain this version adds, or BLOCK_PUBLIC_IPS turned on: no drift
            for line in rule_repairs.installed:
                log.info("installed: %s (absent before: new in this version or this config)", line)
            rule_repairs = [line for line in rule_repairs if line not in rule_repairs.installed]
        repairs = list(rule_repairs) + address_repairs
        for line in repairs:
            log.warning("reconcile repaired: %s", line)
        return repairs

    def _sync_addresses(self) -> list[str]:
        iface = self.config.public_interface
        if not iface:
            return []
        wanted = {pub for pub, _priv in groups.only_served(self.registry.associations(), self.served)}
        # (every pool's: another group's /32 left here from before is removed)
        present = self.host.host_addresses(iface) & (self.registry.pool | wanted)
        missing, extra = onlink.address_plan(wanted, present, self.holds_addresses)
        self._add_addresses(missing)
        if len(missing) > 10:  # e.g. after a reboot: one line, not thousands
            repairs = [f"added {len(missing)} addresses to {iface} ({missing[0]} ... {missing[-1]})"]
        else:
            repairs = [f"added {addr}/32 to {iface}" for addr in missing]
        for addr in extra:
            self.host.del_address(iface, addr)
            repairs.append(f"removed {addr}/32 from {iface}")
        return repairs

    def ha_changed(self, state: str) -> list[str]:
        """keepalived's new state (hastate.HaState calls it): on an on-link pair the master
        takes the floating /32s and announces them, any other state gives them up."""
        with self._lock:
            mode = self.config.ha_mode
            self.holds_addresses = onlink.holds_addresses(mode, state)
            if mode != onlink.ONLINK:
                return []
            iface = self.config.public_interface
            try:
                kept = self.host.host_addresses(iface) if self.holds_addresses else set()
                repairs = self._sync_addresses()
            except Exception as exc:  # the state stands (recorded); reconcile converges to it
                self._side_effect_failed(f"HA state {state}: the addresses on {iface}", exc)
                return [f"failed: {exc}"]
            # a master that already held some (a repeated notify, a removal that failed)
            # announces them too: the upstream may have learnt the peer's MAC meanwhile
            self._announce(sorted(kept & {pub for pub, _priv in
                                          groups.only_served(self.registry.associations(), self.served)}))
            return repairs

    def _add_addresses(self, addrs: list[IPv4Address]) -> None:
        """Put floating addresses on the public interface and announce them."""
        if not addrs:
            return
        self.host.add_addresses(self.config.public_interface, addrs)
        self._announce(addrs)

    def _announce(self, addrs: list[IPv4Address]) -> None:
        """Gratuitous ARP for each address (neighbours switch to us at once)."""
        iface = self.config.public_interface
        if self.config.gratuitous_arp:
            for addr in addrs:
                try:
                    self.host.gratuitous_arp(iface, addr)
                except Exception as exc:  # an announcement; neighbours learn the address anyway
                    log.warning("gratuitous ARP for %s on %s failed: %s", addr, iface, exc)

    # -- the change pipeline ---------------------------------------------------------

    def _commit(self, change: Change, actor: str | None = None) -> None:
        """Persist `change` and apply its NAT delta, all or nothing; then side effects.

        Until the transaction commits, any failure (of the rules, of the state file, or of
        something unforeseen) rolls back the file and puts the rules back as the registry
        says: the answer is "not applied" and it is true. Once it commits, the change is
        applied, whatever its side effects do."""
        if change.noop:
            return
        before_pairs, after_pairs = groups.served_change(change, self.served).associations()
        removed, added = pair_delta(before_pairs, after_pairs)
        touched = applied = False
        try:
            with self.store.transaction():
                self.store.write(change, actor=actor, at=self.clock(), pool_of=self.registry.pool_of)
                # after a conflict the kernel follows in full once the change is stored
                # (_retrying): the window in which another daemon can get in first is short
                touched = not self._kernel_behind
                try:
                    if touched:
                        self.backend.apply(removed, added)
                        applied = True
                except NatError as exc:
                    log.warning("incremental rule change failed (%s); converging in full", exc)
                    trial = Registry(self.registry.pool, self.registry, pools=self.registry.pools.items())
                    trial.apply(change)
                    self.backend.sync(self.desired(trial))
        except Exception as exc:
            if applied:  # the rules changed: take the change back
                self._undo_rules(removed, added)
            elif touched:  # the rules may be half changed, whatever failed
                self._restore_rules()
            if isinstance(exc, (FipError, StoreConflict)):
                raise
            if isinstance(exc, StoreUnavailable):  # fail static: nothing changed
                raise FipError("store_unavailable", f"change not applied: {exc}; the rules in place "
                               "stay, reads answer from the last known state", 503) from None
            log.error("change rolled back: %s", exc)
            raise FipError("internal_error", f"change not applied: {exc}", 500) from None
        self.registry.apply(change)
        self._after_commit(change)

    def _side_effect_failed(self, what: str, exc: BaseException) -> None:
        """A committed change's side effect failed: log it, ask for a repair round."""
        log.error("%s failed after the change was committed (reconcile will repair it): %s", what, exc)
        self.repair_wanted.set()

    def _undo_rules(self, removed, added) -> None:
        """Take back an applied NAT delta whose change did not commit (a shared store's
        conflict, most often): the inverse delta, not a sync of every rule."""
        try:
            self.backend.apply(added, removed)
        except Exception as exc:  # (the kernel was not as the registry said)
            log.warning("taking back the rule change failed (%s); converging in full", exc)
            self._restore_rules()

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
        change = groups.served_change(change, self.served)
        before = {a.public_ip for a in change.before if a.private_ip}
        after = {a.public_ip for a in change.after if a.private_ip}
        try:
            if self.holds_addresses:  # (a backup of an on-link pair: the NAT only)
                self._add_addresses(sorted(after - before))
            for addr in sorted(before - after):
                self.host.del_address(iface, addr)
        except Exception as exc:  # committed: never "not applied" (netlink timeouts included)
            self._side_effect_failed(f"updating the addresses {', '.join(map(str, sorted(before ^ after)))} "
                                     f"on {iface}", exc)

    def _flush_conntrack(self, change: Change) -> None:
        """Cut the flows of moved or released addresses before the caller gets its answer.
        (A new association needs none: no entry without NAT can exist for it, since
        forwarded packets to an unassociated address are dropped before conntrack
        confirms them: ruleset.CHAIN_FWD.)

        Runs outside the service lock: a conntrack dump walks the kernel's whole hash
        table (however few flows there are), and other changes need not wait
        for it; concurrent flushes share dumps (coalesce.py). Should the address be
        associated again meanwhile, a flow of the new association deleted here is picked
        up again at its next packet with the new NAT.
        """
        self._cut_flows(self._moved_here(change))

    def _moved_here(self, change: Change) -> set[IPv4Address]:
        """The addresses of `change` whose flows this router cuts: moved or released, in
        the pools it serves."""
        return groups.served_change(change, self.served).moved_addresses()

    def _cut_flows(self, moved: set[IPv4Address]) -> None:
        """Delete the conntrack entries of `moved` (a change's, or those gathered by a
        conflict's catch-ups); a failure leaves old flows to their timeout."""
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

    def _run(self, plan: Callable[[], tuple[Allocation, Change]], action: str,
             actor: str | None = None) -> Allocation:
        def attempt():
            alloc, change = plan()
            self._commit(change, actor)
            return alloc, change

        alloc, change = self._retrying(attempt)
        self._flush_conntrack(change)
        if not change.noop:
            log.info("%s %s (private=%s owner=%s ref=%s)", action, alloc.public_ip, alloc.private_ip,
                     alloc.owner, alloc.ref)
        return alloc

    def _retrying(self, attempt: Callable[[], tuple]) -> tuple:
        """Run `attempt` (plan and commit) under the lock; when another daemon changed the
        shared state first (StoreConflict), catch up and plan again, a bounded number of
        times; the kernel follows those catch-ups at the end. SQLite never conflicts."""
        with self._lock:
            try:
                for tries in range(CONFLICT_RETRIES):
                    try:
                        return attempt()
                    except StoreConflict as exc:
                        log.info("%s; catching up and planning again", exc)
                        target, delta = exc.revision, exc.delta
                    if tries:  # a random back-off: daemons that keep colliding get out of step
                        time.sleep(random.uniform(0, min(0.1, 0.002 * 2 ** tries)))
                        target = delta = None  # (older now: read again)
                    try:
                        self._catch_up_to_replan(target, delta)
                    except StoreError as failed:
                        raise FipError("store_unavailable", f"change not applied: {failed}", 503) from None
                raise FipError("store_conflict", f"change not applied: the shared state changed under it "
                               f"{CONFLICT_RETRIES} times in a row; try again", 503)
            finally:
                if self._kernel_behind or self._moved_behind:
                    self._converge_kernel()

    def _catch_up_to_replan(self, target: int | None, delta=None) -> None:
        """A conflict's catch-up, under the lock: the changes since (`delta`, the failed
        txn's answer; else asked up to `target`, the revision it saw) taken in as a
        follower does; else the whole state, into the registry only (the kernel after)."""
        if delta is None:
            delta = self.store.changes_since(target or self.store.changed_revision())
        if delta is None:
            self.catch_up(kernel=False)
            return
        change = self._take_delta(delta)
        if change is not None:  # (their flows cut when the change is done)
            self._moved_behind |= self._moved_here(change)

    def _converge_kernel(self) -> None:
        """The kernel to the registry after conflicts' catch-ups from the whole state,
        and the flows of the addresses others changed cut; a failure is left to the
        repair round."""
        moved, self._moved_behind = self._moved_behind, set()
        behind, self._kernel_behind = self._kernel_behind, False
        try:
            if behind:
                self._reconcile()
        except Exception as exc:
            self._side_effect_failed("converging the rules to the shared state", exc)
        self._cut_flows(moved)

    def catch_up(self, kernel: bool = True) -> list[str]:
        """Read the shared state again and converge the kernel to it: another daemon's
        changes (the follower calls this when the store's revision moved). Flows of
        addresses that moved elsewhere are cut, as if the change had been made here.
        `kernel=False` (a conflict's re-plan): the registry only, the kernel after."""
        snapshot = self.store.read()  # (outside the lock: a slow store must not stall reads)
        with self._lock:
            if snapshot is None:
                allocations = self.store.allocations()
            elif snapshot.revision <= self.store.revision:
                return []  # a change made here meanwhile is newer than what was read
            else:
                allocations = self.store.use(snapshot)
            old = tuple(self.registry)
            self.registry = Registry(self.config.pool, allocations, self.registry.router_addresses,
                                     pools=config_pools(self.config))
            change = Change(before=old, after=tuple(self.registry))
            if not kernel:
                self._kernel_behind = True
                self._moved_behind |= self._moved_here(change)
                return []
            repairs = self._reconcile()
        self._flush_conntrack(change)
        return repairs

    def follow(self) -> bool:
        """Catch up if the shared state changed since it was read (True then): with the
        changes since then when the store can tell them (etcdstore.changes_since), else by
        reading it all. The local SQLite file never changes under us."""
        target = self.store.changed_revision()
        if target <= self.store.revision:
            return False
        delta = self.store.changes_since(target)  # (outside the lock, as catch_up's read)
        if delta is None:
            self.catch_up()
        else:
            self.apply_delta(delta)
        return True

    def apply_delta(self, delta) -> None:
        """Other daemons' changes (etcdstore.Delta) taken in as a local change is: the
        registry by the changed allocations, the kernel by their NAT delta, the addresses,
        their flows cut. Not a reconcile: the cost follows the changes, and the periodic
        reconcile still repairs drift."""
        change = self._take_delta(delta)
        if change is not None:  # (outside the lock, as after a local change)
            self._flush_conntrack(change)

    def _take_delta(self, delta) -> Change | None:
        """apply_delta's part, under the lock: the change taken in (None: nothing new). The
        kernel only if it follows the registry (after a conflict's catch-up from the whole
        state it does not: that ends in a reconcile)."""
        with self._lock:
            if delta.revision <= self.store.revision:
                return None  # a change made here meanwhile is newer than what was read
            latest = {}
            for mod, pub, alloc, _created in delta.changes:
                if mod > self.store.revision:  # (older ones: in the registry already)
                    latest[pub] = alloc
            old = [a for a in map(self.registry.get, latest) if a is not None]
            new = [a for a in latest.values() if a is not None]
            same = set(old) & set(new)  # (rewritten unchanged)
            change = Change(before=tuple(a for a in old if a not in same),
                            after=tuple(a for a in new if a not in same))
            self.store.advance(delta)
            if change.noop:
                return None
            self.registry.apply(change)
            if self._kernel_behind:
                self._moved_behind |= self._moved_here(change)
                return None
            removed, added = pair_delta(*groups.served_change(change, self.served).associations())
            try:
                self.backend.apply(removed, added)
            except Exception as exc:  # (the kernel may not have been as the registry said)
                log.warning("incremental rule change of others' changes failed (%s); converging in full", exc)
                self._restore_rules()
            self._after_commit(change)
            return change

    def group_health(self) -> dict | None:
        """This router's group and the pools it applies (/v1/health); None without groups."""
        if self.config.router_group is None:
            return None
        return {"name": self.config.router_group, "pools": list(self.served_pools)}

    def store_health(self) -> dict | None:
        """The shared store's health (/v1/health `store`); None with the local SQLite file."""
        return self.store.health()

    # -- operations ------------------------------------------------------------------

    @_observed("allocate")
    def allocate(self, public_ip: IPv4Address | None = None, private_ip: IPv4Address | None = None,
                 owner: str | None = None, ref: str | None = None, allow_move: bool = False,
                 operator: bool = False, unowned_ok: bool = True,
                 owner_group: str | None = None, quotas: Sequence[Quota] = (),
                 pool: str | None = None, *, actor: str | None = None) -> tuple[Allocation, bool]:
        """Take an address (of `pool`, see Registry.plan_allocate) and optionally associate
        it, in one atomic change.

        Returns (allocation, created): created is False when `ref` already held it.
        `quotas` are counted here, under the lock, so racing requests cannot overshoot.
        """
        def attempt():
            if private_ip is not None:
                self.registry.check_target(private_ip, self.config.private_ranges)
            alloc, change = self.registry.plan_allocate(public_ip, owner, ref, operator, unowned_ok,
                                                        pool=pool)
            created = not change.noop
            if created:
                alloc = alloc._replace(owner_group=owner_group)
                change = Change(after=(alloc,))
                check_quotas(self.registry, alloc, quotas)
            if private_ip is not None and alloc.private_ip != private_ip:
                self.registry.apply(change)
                try:
                    alloc, assoc = self.registry.plan_associate(
                        alloc.public_ip, private_ip, self.config.private_ranges, owner,
                        allow_move=allow_move, operator=operator, unowned_ok=unowned_ok)
                finally:
                    self.registry.apply(change.inverse())
                change = change.then(assoc)
            self._commit(change, actor)
            return (alloc, created), change

        (alloc, created), change = self._retrying(attempt)
        self._flush_conntrack(change)
        if not change.noop:
            log.info("allocated %s (pool=%s private=%s owner=%s ref=%s)", alloc.public_ip,
                     self.registry.pool_of(alloc.public_ip), alloc.private_ip, alloc.owner, alloc.ref)
        return alloc, created

    @_observed(_associate_kind)
    def associate(self, public_ip: IPv4Address, private_ip: IPv4Address, owner: str | None = None,
                  allow_move: bool = False, operator: bool = False, unowned_ok: bool = True, *,
                  actor: str | None = None) -> Allocation:
        return self._run(lambda: self.registry.plan_associate(
            public_ip, private_ip, self.config.private_ranges, owner, allow_move, operator, unowned_ok),
            "associated", actor)

    @_observed("disassociate")
    def disassociate(self, public_ip: IPv4Address, owner: str | None = None,
                     operator: bool = False, unowned_ok: bool = True, *,
                     actor: str | None = None) -> Allocation:
        return self._run(lambda: self.registry.plan_disassociate(public_ip, owner, operator, unowned_ok),
                         "disassociated", actor)

    @_observed("release")
    def release(self, public_ip: IPv4Address, owner: str | None = None,
                operator: bool = False, unowned_ok: bool = True, *,
                actor: str | None = None) -> Allocation:
        return self._run(lambda: self.registry.plan_release(public_ip, owner, operator, unowned_ok), "released",
                         actor)

    # -- queries -----------------------------------------------------------------------

    def show(self, public_ip: IPv4Address) -> Allocation:
        with self._lock:
            return self.registry.require(public_ip)

    def list(self, private_ip: IPv4Address | None = None, ref: str | None = None,
             owner: str | None = None, ref_prefix: str | None = None,
             pool: str | None = None) -> list[Allocation]:
        """Allocations matching every given filter (ref_prefix: e.g. all NICs of one VM)."""
        with self._lock:
            if pool is not None:
                self.registry.require_pool(pool)
            return [a for a in self.registry
                    if (private_ip is None or a.private_ip == private_ip)
                    and (ref is None or a.ref == ref)
                    and (owner is None or a.owner == owner)
                    and (ref_prefix is None or (a.ref or "").startswith(ref_prefix))
                    and (pool is None or self.registry.pool_of(a.public_ip) == pool)]

    def pool(self) -> dict:
        """The `default` pool as before (empty if there is none), plus every pool's figures."""
        with self._lock:
            answer = {"size": 0, "free": 0, "addresses": []}
            if DEFAULT_POOL in self.registry.pools:
                answer = self.pool_detail(DEFAULT_POOL)
                del answer["name"], answer["allocated"], answer["associated"]
                answer.pop("router_group", None)
            answer["pools"] = [self.pool_detail(name, addresses=False) for name in self.registry.pools]
            return answer

    def pool_detail(self, name: str, addresses: bool = True) -> dict:
        """One pool: its figures and (`addresses`) each address's status
        (free/allocated/associated)."""
        with self._lock:
            reg = self.registry
            addrs = reg.pools[reg.require_pool(name)]
            free = reg.free_count(name)
            associated = reg.association_count(name)
            answer = {"name": name, "size": len(addrs), "free": free,
                      "allocated": len(addrs) - free - associated, "associated": associated}
            if self.config.router_group is not None:  # (router groups: who applies it)
                answer["router_group"] = groups.pool_group(self.config, name)
            if addresses:
                answer["addresses"] = [
                    {"public_ip": str(addr), "status": "free" if alloc is None else
                     "associated" if alloc.private_ip else "allocated"}
                    for addr, alloc in ((addr, reg.get(addr)) for addr in sorted(addrs))]
            return answer

    def pools(self) -> list[dict]:
        with self._lock:
            return [self.pool_detail(name) for name in self.registry.pools]

    def version(self) -> dict:
        return {"version": __version__, "backend": self.backend.name}

    # -- history (history.py, historylog.py) -------------------------------------------

    def _begin_history(self) -> None:
        baselines = self.store.history.begin(self.clock(), self.registry.pool_of)
        if baselines:
            log.info("history begins: %d allocations held now recorded as baseline", baselines)
        self.prune_history()

    def prune_history(self) -> int:
        """Drop history older than HISTORY_DAYS (0: keep forever); run at the start and
        once a day (maybe_prune_history), logged."""
        days = self.config.history_days
        with self._lock:
            self._next_prune = self.clock() + 86400
            if not days:
                return 0
            before = self.clock() - days * 86400
            removed = self.store.history.prune(before)
        log.info("history: pruned %d events older than %d days (before %s)", removed, days, history.iso(before))
        return removed

    def maybe_prune_history(self) -> int:
        """Prune if a day has passed since the last pruning (the reconcile loop asks)."""
        if self._next_prune is not None and self.clock() < self._next_prune:
            return 0
        return self.prune_history()

    def history_at(self, public_ip: IPv4Address, at: float) -> dict:
        """Who held `public_ip` at `at`: the last event at or before it. `held` is None
        when `at` is before what the history still knows (its start or the pruning)."""
        with self._lock:
            event = self.store.history.last_at(public_ip, at)
            known = self.store.history.known_from()
        held = None if (known is not None and at < known and event is None) else bool(event and event.held)
        return {"public_ip": str(public_ip), "at": history.iso(at), "at_unix": at, "held": held,
                "event": event, "history_from": history.iso(known) if known is not None else None}

    def history_between(self, public_ip: IPv4Address | None = None, since: float | None = None,
                        until: float | None = None, owner: str | None = None, limit: int = 1000) -> dict:
        """Events in [since, until], oldest first, at most `limit` (`truncated` says more)."""
        with self._lock:
            events = self.store.history.between(public_ip, since, until, owner, limit + 1)
            known = self.store.history.known_from()
        return {"events": events[:limit], "truncated": len(events) > limit,
                "history_from": history.iso(known) if known is not None else None}
