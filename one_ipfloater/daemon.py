"""`ipfloaterd`: the router-side daemon (foreground, for systemd).

    ipfloaterd [--config FILE] [run]     serve the API, reconcile now and periodically
    ipfloaterd --config FILE flush       remove every rule and address of ours (state kept)
    ipfloaterd --config FILE adopt       rebuild the state file from our live rules
    ipfloaterd --config FILE check       every check `run` makes (config, paths, host), creating nothing
    ipfloaterd --config FILE token add NAME --role operator|reader|owner [--owner O]
    ipfloaterd --config FILE token list | token revoke NAME
    ipfloaterd --config FILE ha-state master|backup|fault|stop   (keepalived's notify scripts)

Stopping the daemon leaves the rules in place, so floating IPs stay up across restarts
and upgrades; the next start reconciles them with the stored state. A state file that is
missing, empty or new while the kernel holds associations of ours is refused (livestate.py),
and one daemon, flush or adopt at a time runs per network namespace (instance.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
import time

from . import __version__, groups, hastate, hostnet, instance, logformat, onlink, preflight, safefs
from .cliutil import OneLineArgumentParser
from .config import ConfigError, DaemonConfig, config_pools, load_config
from .locking import flock_exclusive
from .livestate import AdoptError, plan_adopt, read_live, start_refusal
from .model import Change, FipError
from .nat.base import NatError
from .store import Store, StoreError

log = logging.getLogger("ipfloaterd")
DEFAULT_CONFIG = "/etc/ipfloaterd.conf"


class DaemonError(RuntimeError):
    """A reason the daemon cannot start or finish a command; one line."""


def load_or_create_token(path: str) -> str:
    """Read the API token, creating a random one (0600, whole or not at all) on first
    start. A token file reached through a symbolic link, owned by someone else, or that
    others could read or write is refused (safefs): it may have been planted or read."""
    try:
        try:
            fd = safefs.open_file("TOKEN_FILE", path, os.O_RDONLY, secret=True)
        except FileNotFoundError:
            import secrets  # only here: it loads OpenSSL, which the start does not otherwise need
            token = secrets.token_urlsafe(32)
            safefs.write_new("TOKEN_FILE", path, (token + "\n").encode())
            log.info("created API token file %s (mode 0600)", path)
            return token
        with os.fdopen(fd, encoding="utf-8") as token_file:
            token = token_file.read().strip()
    except safefs.UnsafePath as exc:
        raise DaemonError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DaemonError(f"TOKEN_FILE: cannot read {path}: {exc}") from None
    if len(token) < 16:
        raise DaemonError(f"TOKEN_FILE: {path} holds a token shorter than 16 characters")
    return token


def take_instance_lock(config: DaemonConfig):
    """One daemon (or flush) per state file: a second one would fight over the rules."""
    lock_path = config.db_path + ".lock"
    try:
        fd = safefs.open_file("DB", lock_path, os.O_RDWR, create=True)
    except safefs.UnsafePath as exc:
        raise DaemonError(str(exc)) from None
    except OSError as exc:
        raise DaemonError(f"DB: cannot open {lock_path}: {exc.strerror}") from None
    if not flock_exclusive(fd, 0):
        os.close(fd)
        raise DaemonError(f"DB: {config.db_path} is in use by a running ipfloaterd (stop it first)")
    return fd


def make_backend(config: DaemonConfig):
    from .nat import make_backend as choose  # NAT_BACKEND: iptables | nftables | auto
    return choose(config)


def limit_malloc_arenas(arenas: int = 1) -> None:
    """Cap glibc's malloc arenas. The API's worker threads each may get an arena that
    keeps the memory it freed: with the iptables backend (each change copies the whole nat
    table through libiptc) the daemon grew with every thread; with one arena it does not,
    at the same throughput (the GIL serialises the threads' allocations anyway).
    benchmarks/ figure 5 measures the peak. glibc reads the limit when a second thread
    first allocates, so this must run before any thread starts (a later call is ignored)."""
    import ctypes  # here, not at the top: both NAT backends import it anyway
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc: nothing to cap
        pass


class Supervisor:
    """Tells whoever started us how far the start got: systemd (`Type=notify`, through
    $NOTIFY_SOCKET) and, with `--ready-fd`, the test rigs, lab and benchmarks (one JSON
    line per event on an inherited pipe: "rules" once every rule is in place, "ready"
    once the API listens), so nobody polls or sleeps."""

    def __init__(self, ready_fd: int | None):
        self.ready_fd = ready_fd
        self.notify_socket = os.environ.pop("NOTIFY_SOCKET", None)  # not for our children

    def _sd_notify(self, message: str) -> None:
        if not self.notify_socket:
            return
        address = self.notify_socket
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.notify_socket, exc)

    def _event(self, event: dict, last: bool = False) -> None:
        if self.ready_fd is None:
            return
        os.write(self.ready_fd, json.dumps({**event, "pid": os.getpid()}).encode() + b"\n")
        if last:
            os.close(self.ready_fd)
            self.ready_fd = None

    def rules_in_place(self, count: int) -> None:
        self._event({"event": "rules", "associations": count})
        self._sd_notify(f"STATUS=NAT rules of {count} associations in place")

    def ready(self, host: str, port: int, count: int) -> None:
        self._event({"event": "ready", "host": host, "port": port}, last=True)
        self._sd_notify(f"READY=1\nSTATUS=serving API v1 on {host}:{port}, {count} associations")


def claim_namespace(what: str):
    """This network namespace's instance socket, before anything touches the kernel."""
    try:
        return instance.claim(what)
    except instance.InstanceBusy as exc:
        raise DaemonError(str(exc)) from None


def live_pairs_reader(config: DaemonConfig, backend):
    """Reads the live pairs of both our backends (the other's are live until migrated)."""
    from .nat import live_pairs_everywhere
    return lambda: live_pairs_everywhere(backend, config.xtables_lock)


def state_file_is_new(path: str) -> bool:
    """Missing or zero bytes: checked before opening, which would create or write it."""
    try:
        return os.stat(path).st_size == 0
    except FileNotFoundError:
        return True


def open_shared_store(config: DaemonConfig, stop: threading.Event | None = None):
    """The etcd store, once it answers: until then the daemon waits and retries without
    touching the kernel (fail static: the rules in place stay as they are)."""
    from .etcdstore import EtcdStore
    Store(config.db_path, config.db_sync).close()  # the local file: tokens, HA state
    store = EtcdStore(config.etcd_endpoints, config.etcd_prefix, config.etcd_timeout)
    delay, logged = 0.2, None
    while True:
        try:
            store.allocations()
            return store
        except StoreError as exc:
            if str(exc) != logged:
                log.warning("%s; the kernel is left as it is, retrying", exc)
                logged = str(exc)
        if stop is not None and stop.wait(delay):
            raise DaemonError("stopped while waiting for etcd")
        if stop is None:
            time.sleep(delay)  # (a bounded back-off while nothing else runs yet)
        delay = min(delay * 2, 5.0)


def open_store_safely(config: DaemonConfig, backend, config_path: str) -> Store:
    """The state file, unless it is missing, empty or new while the kernel holds
    associations of ours: then DaemonError, and nothing was created or written."""
    if config.state_store == "etcd":
        store = open_shared_store(config)
        new_file = False
    else:
        new_file = state_file_is_new(config.db_path)
        store = None if new_file else Store(config.db_path, config.db_sync)
    if store is None or not store.has_history():  # (true as well while it holds allocations)
        # only then is the kernel read: the usual start skips it
        try:
            live = read_live(live_pairs_reader(config, backend), hostnet, config.public_interface, config.pool)
        except (NatError, hostnet.HostNetError) as exc:
            raise DaemonError(f"cannot read the live rules: {exc}") from None
        reason = start_refusal(live, 0, False, config.db_path, config_path)
        if reason:
            if store is not None:
                store.close()
            raise DaemonError(reason)
    return store or Store(config.db_path, config.db_sync)


def start_metrics_listener(config: DaemonConfig, app):
    """Serve /metrics on METRICS_ADDRESS from a thread of its own (None when it is empty):
    the same bounded server as the API, with two worker threads."""
    if config.metrics_address is None:
        return None
    from .httpserver import make_server, serve
    host, port = config.metrics_address
    try:
        server = make_server(app, host, port, config.request_timeout, 1024, threads=2)
    except OSError as exc:
        raise DaemonError(f"METRICS_ADDRESS: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    threading.Thread(target=serve, args=(server,), name="metrics", daemon=True).start()
    log.info("metrics on http://%s/metrics", _host_port(host, int(server.effective_port)))
    return server


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run(config: DaemonConfig, ready_fd: int | None = None, config_path: str = DEFAULT_CONFIG) -> int:
    """Serve until SIGTERM/SIGINT; rules stay in place when we stop."""
    from .service import FloatingIPService

    limit_malloc_arenas()  # before any thread of ours exists: glibc reads the limit once
    supervisor = Supervisor(ready_fd)
    refused = preflight.path_problems(config)  # all of them before any is created
    if refused:
        raise DaemonError(refused[0])
    namespace_claim = claim_namespace("run")
    prober = instance.answer_probes(namespace_claim)
    lock_fd = take_instance_lock(config)
    backend = make_backend(config)
    store = open_store_safely(config, backend, config_path)
    token = load_or_create_token(config.token_file)
    service = FloatingIPService(config, store, backend)
    ha = hastate.HaState(hastate.state_path(config.db_path), lambda: hastate.served_addresses(service),
                         hostnet.flush_conntrack, on_change=service.ha_changed)  # known before the kernel is touched
    service.holds_addresses = onlink.holds_addresses(config.ha_mode, ha.state)  # on-link: the master's only
    try:
        repairs = service.start(supervisor.rules_in_place)
    except (FipError, NatError, hostnet.HostNetError) as exc:
        raise DaemonError(str(exc)) from None
    if store.created:
        log.info("started on a new state file %s: %d addresses in the pool", config.db_path, len(config.pool))
    else:
        log.info("started: %d addresses in the pool, %d allocated, %d repairs", len(config.pool),
                 len(service.registry), len(repairs))
    gc.freeze()  # the start-up's objects live as long as we do: out of every later collection
    gc.enable()
    # the HTTP stack (and the metrics) are imported once the rules are in place
    from .metrics import ROLE, MetricsApp, PrometheusMetrics
    metrics = PrometheusMetrics(service, backend.name,
                                role=lambda: ROLE if ha.state == "unknown" else ha.state)
    metrics.reconciled(len(repairs))  # the start's round
    service.observer = metrics
    store.on_commit = metrics.store_commit
    from .api import ApiApp
    from .auth import Authenticator, TokenTable
    from .httpserver import make_server, serve, stop as stop_server
    try:
        tokens = TokenTable(config.db_path)
    except sqlite3.Error as exc:
        raise DaemonError(f"DB: cannot read the tokens of {config.db_path}: {exc}") from None
    app = ApiApp(service, Authenticator(token, tokens), max_body=config.max_body_bytes, ha_state=ha)
    try:
        server = make_server(app, config.rest_ip, config.rest_port, config.request_timeout,
                             config.max_body_bytes)
    except OSError as exc:
        raise DaemonError(f"REST_IP/REST_PORT: cannot listen on {config.rest_ip}:{config.rest_port}: "
                          f"{exc.strerror or exc}") from None
    metrics_server = start_metrics_listener(config, MetricsApp(metrics))
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %d: stopping (rules stay in place)", signum)
        stop.set()
        stop_server(server)
        if metrics_server is not None:
            stop_server(metrics_server)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def reconcile_loop():
        """Every RECONCILE_INTERVAL, and soon after a side effect of a committed change
        failed (service.repair_wanted), whatever the interval."""
        while not stop.is_set():
            asked = service.repair_wanted.wait(config.reconcile_interval or None)
            if stop.is_set():
                return
            service.repair_wanted.clear()
            try:
                service.reconcile()
            except Exception as exc:  # keep the loop alive; the next round retries
                log.error("%s reconcile failed: %s", "repair" if asked else "periodic", exc)
                if asked:
                    service.repair_wanted.set()
            try:
                service.maybe_prune_history()  # once a day
            except Exception as exc:  # (sqlite3 errors included) the next day retries
                log.error("history pruning failed: %s", exc)
            if asked:
                stop.wait(1.0)  # at most one repair round a second while a failure persists

    def on_stop():
        stop.wait()
        service.repair_wanted.set()  # wake the loop so that it ends

    def follow_loop():
        """Shared state: every ETCD_POLL_INTERVAL, catch up with other daemons' changes
        (one small read of the revision key); etcd unreachable: log once, keep the rules."""
        failing = None
        while not stop.wait(config.etcd_poll_interval):
            try:
                service.follow()
                if failing is not None:
                    log.info("etcd answers again")
                failing = None
            except Exception as exc:
                if str(exc) != failing:
                    log.error("cannot follow the shared state (the rules in place stay): %s", exc)
                failing = str(exc)

    threading.Thread(target=reconcile_loop, name="reconcile", daemon=True).start()
    guard = None
    if config.state_store == "etcd":
        threading.Thread(target=follow_loop, name="follow", daemon=True).start()
        guard = threading.Thread(target=guard_loop, args=(config, service, store, ha, stop),
                                 name="routers", daemon=True)
        guard.start()
    threading.Thread(target=on_stop, name="reconcile-stop", daemon=True).start()
    host, port = server.effective_host, int(server.effective_port)
    log.info("listening on %s:%d (API v1, at most %d connections)", host, port, server.adj.connection_limit)
    supervisor.ready(host, port, len(service.registry))
    serve(server)
    if guard is not None:  # its registration goes with it (a router stopped serves nothing)
        guard.join(2 * config.etcd_timeout + 1)
    tokens.close()
    store.close()
    os.close(lock_fd)
    instance.release(namespace_claim, prober)
    return 0


def guard_loop(config: DaemonConfig, service, store, ha, stop: threading.Event) -> None:
    """Shared state: publish what this router serves under <prefix>/routers/<ROUTER_NAME>
    (on a lease kept alive every groups.REFRESH_INTERVAL, written again when it changes),
    read the other routers' and set the drift warnings (groups.judge) that /v1/health
    shows; etcd unreachable: the last warnings stay. At the stop the lease is revoked,
    which deletes the registration."""
    name = config.router_name or socket.gethostname()
    pools = config_pools(config)
    pool_layout = groups.layout(pools, config.pool_groups)
    served = list(service.served_pools) if service.served_pools is not None else [n for n, _ in pools]
    lease, published, shown = None, None, []
    while True:
        try:
            mine = groups.registration(pool_layout, config.router_group, served, ha.state, time.time())
            if lease is not None and not store.keep_alive(lease):
                lease = None  # expired meanwhile (etcd was unreachable longer than its TTL)
            if lease is None:
                lease, published = store.grant_lease(groups.LEASE_TTL), None
            if published != {**mine, "time": None}:
                store.put_router(name, mine, lease)
                published = {**mine, "time": None}
            found = groups.judge(name, pool_layout, {**store.routers(), name: mine})
        except StoreError:  # (follow_loop logs the store's trouble)
            found, lease = shown, None  # a lease that may have gone: a new one next round
        except Exception as exc:  # keep publishing; the next round retries
            log.error("router groups: %s", exc)
            found = shown
        for line in found:
            if line not in shown:
                log.warning("router groups: %s", line)
        for line in shown:
            if line not in found:
                log.info("router groups: resolved: %s", line)
        service.group_warnings = shown = found
        if stop.wait(groups.REFRESH_INTERVAL):
            break
    try:
        if lease is not None:
            store.revoke_lease(lease)
    except StoreError as exc:
        log.warning("router groups: registration %s not deleted (it expires): %s", name, exc)


def flush(config: DaemonConfig) -> int:
    """Remove our chains, jumps and floating addresses; the stored state stays, so the
    next start puts everything back."""
    namespace_claim = claim_namespace("flush")
    lock_fd = take_instance_lock(config)
    try:
        repairs = make_backend(config).flush()
        iface = config.public_interface
        if iface and hostnet.interface_exists(iface):
            pool = set(config.pool)
            for addr in sorted(hostnet.host_addresses(iface) & pool):
                hostnet.del_address(iface, addr)
                repairs.append(f"removed {addr}/32 from {iface}")
    except (NatError, hostnet.HostNetError) as exc:
        raise DaemonError(str(exc)) from None
    finally:
        os.close(lock_fd)
        instance.release(namespace_claim)
    print(json.dumps({"removed": repairs}))
    return 0


def check(config: DaemonConfig, path: str) -> int:
    """Every validation `run` makes, creating nothing: JSON on stdout, the first
    refusal as one line on stderr and run's exit status."""
    found = preflight.report(config, hostnet)
    metrics = config.metrics_address
    print(json.dumps({"config": path, "pool_size": len(config.pool), "history_days": config.history_days,
                      "pools": {name: len(addrs) for name, addrs in config_pools(config)},
                      **({"router_group": {"name": config.router_group, "pools": list(groups.served_pools(config))},
                          "pool_groups": dict(config.pool_groups)} if config.router_group else {}),
                      "private_ranges": [str(n) for n in config.private_ranges],
                      "metrics_address": _host_port(*metrics) if metrics else None, **found}))
    if found["errors"]:
        print(f"ipfloaterd: {found['errors'][0]}", file=sys.stderr)
        return 1
    return 0


def adopt(config: DaemonConfig) -> int:
    """Take the live associations of ours into the state file (after a wrong DB path or a
    restored disk), so that nothing has to be typed again. Owner and ref cannot be read
    from the kernel: adopted allocations are operator-owned (owner null). Touches no rule
    or address; refuses any conflict whole, writing nothing."""
    if config.state_store != "sqlite":  # the shared state is every router's: not one kernel's
        raise DaemonError("adopt: STATE_STORE = etcd keeps the state of the whole group; "
                          "adopt works on a router's own SQLite state only")
    namespace_claim = claim_namespace("adopt")
    lock_fd = take_instance_lock(config)
    try:
        backend = make_backend(config)
        try:
            live = read_live(live_pairs_reader(config, backend), hostnet, config.public_interface, config.pool)
        except (NatError, hostnet.HostNetError) as exc:
            raise DaemonError(f"adopt: cannot read the live rules: {exc}") from None
        existing = None if state_file_is_new(config.db_path) else Store(config.db_path, config.db_sync)
        stored = existing.allocations() if existing else []
        try:
            adopted = plan_adopt(live, config.pool, config.private_ranges, stored)
        except AdoptError as exc:
            raise DaemonError(f"adopt: {exc}; nothing written") from None
        store = existing or Store(config.db_path, config.db_sync)
        store.history.begin(time.time())  # what was held before is not "adopted"
        with store.transaction():
            store.write(Change(after=tuple(adopted)), actor="adopt", adopted=True)
            store.mark_history()
        store.close()
    finally:
        os.close(lock_fd)
        instance.release(namespace_claim)
    served = {pub for pub, _priv in live.pairs}
    print(json.dumps({
        "db": config.db_path, "backend": backend.name,
        "adopted": [{"public_ip": str(a.public_ip), "private_ip": str(a.private_ip)} for a in adopted],
        "already_stored": len(live.pairs) - len(adopted),
        "owner": None, "note": "adopted allocations are operator-owned (owner and ref unknown)",
        "stray_addresses": [str(a) for a in sorted(live.addresses - served)],
    }))
    return 0


def token_command(config: DaemonConfig, args) -> int:
    """`token add|list|revoke`: works while the daemon runs (it sees the change at once)."""
    from .auth import TokenError, TokenTable
    Store(config.db_path, config.db_sync).close()  # creates the state file as the daemon would
    table = TokenTable(config.db_path)
    try:
        if args.token_command == "add":
            secret = table.add(args.name, args.role, args.owner)
            if args.json:
                print(json.dumps({"name": args.name, "role": args.role, "owner": args.owner, "token": secret}))
            else:
                print(secret)
            log.info("token %r added (role %s%s)", args.name, args.role,
                     f", owner {args.owner}" if args.owner else "")
        elif args.token_command == "revoke":
            table.revoke(args.name)
            log.info("token %r revoked", args.name)
            if args.json:
                print(json.dumps({"name": args.name, "status": "revoked"}))
        else:
            tokens = table.list()
            if args.json:
                print(json.dumps({"tokens": tokens}))
            else:
                for t in tokens:
                    print(f"{t['name']}\t{t['role']}\t{t['owner'] or '-'}")
    except TokenError as exc:
        print(f"ipfloaterd: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        raise DaemonError(f"DB: {config.db_path}: {exc}") from None
    finally:
        table.close()
    return 0


# The original ipfloater's verbs: an operator who remembers them gets the replacement, not
# a usage error (the daemon does not detach itself; systemd or the foreground run does).
RETIRED_VERBS = {
    "start": "use `systemctl start ipfloaterd`, or `ipfloaterd run` to serve in the foreground",
    "stop": "use `systemctl stop ipfloaterd` (or Ctrl-C / SIGTERM to a foreground `ipfloaterd run`)",
}


def _ha_state_arg(value: str) -> str:
    try:
        return hastate.parse_state(value, "STATE")
    except hastate.HaStateError as exc:  # argparse names the argument itself
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None


def build_parser() -> argparse.ArgumentParser:
    """Subcommands (run is the default); common options go before or after them."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS,
                        help=f"config file (default {DEFAULT_CONFIG}, or $IPFLOATERD_CONF)")
    common.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default=argparse.SUPPRESS,
                        help="override LOG_LEVEL from the config")
    common.add_argument("--ready-fd", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser = OneLineArgumentParser(
        prog="ipfloaterd", parents=[common],
        description="Floating IP daemon: 1:1 NAT from a public address pool to private VM addresses.")
    parser.add_argument("--version", action="version", version=f"ipfloaterd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineArgumentParser)
    sub.add_parser("run", parents=[common], help="serve the API (the default)")
    sub.add_parser("flush", parents=[common], help="remove all our rules and addresses (state kept)")
    sub.add_parser("adopt", parents=[common],
                   help="rebuild the state file from our live rules (operator-owned; refused while a daemon runs)")
    sub.add_parser("check", parents=[common], help="every check run makes, creating nothing; JSON out")
    token = sub.add_parser("token", parents=[common], help="API tokens: add, list, revoke")
    tsub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True,
                                parser_class=OneLineArgumentParser)
    add = tsub.add_parser("add", parents=[common], help="create a token; prints its secret once")
    add.add_argument("name", metavar="NAME", help="a name for the token (logged with each change it makes)")
    add.add_argument("--role", required=True, help="operator (everything), reader (GET only) or "
                                                   "owner (acts as --owner only)")
    add.add_argument("--owner", help="the owner an owner token acts as (e.g. one:uid:5)")
    add.add_argument("--json", action="store_true", help="print a JSON object instead of the bare secret")
    lst = tsub.add_parser("list", parents=[common], help="names, roles and owners (never secrets)")
    lst.add_argument("--json", action="store_true", help="JSON output")
    rev = tsub.add_parser("revoke", parents=[common], help="delete a token (a running daemon refuses it at once)")
    rev.add_argument("name", metavar="NAME")
    rev.add_argument("--json", action="store_true", help="JSON output")
    ha = sub.add_parser("ha-state", parents=[common],
                        help="keepalived's notify: record master|backup|fault|stop and delete the "
                             "floating addresses' conntrack entries")
    ha.add_argument("state", metavar="STATE", type=_ha_state_arg,
                    help="master, backup, fault, or stop (keepalived is not running)")
    for verb in RETIRED_VERBS:  # no help=: left out of the help listing
        sub.add_parser(verb, parents=[common], description=f"Not a command: {RETIRED_VERBS[verb]}.")
    return parser


def main(argv: list[str] | None = None) -> int:
    gc.disable()  # the start makes tens of thousands of objects that all stay: no point collecting
    try:
        return _main(argv)
    finally:
        gc.enable()  # (run() froze what the start made and enabled it already)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    if command in RETIRED_VERBS:  # before the config is read: answers on any host, touches nothing
        print(f"ipfloaterd: there is no '{command}' command: {RETIRED_VERBS[command]}", file=sys.stderr)
        return 2
    config_path = getattr(args, "config", None) or os.environ.get("IPFLOATERD_CONF", DEFAULT_CONFIG)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"ipfloaterd: {exc}", file=sys.stderr)
        return 2
    logformat.setup(getattr(args, "log_level", None) or config.log_level, config.log_format,
                    "%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if command == "check":
            return check(config, config_path)
        if command == "flush":
            return flush(config)
        if command == "adopt":
            return adopt(config)
        if command == "token":
            return token_command(config, args)
        if command == "ha-state":
            return hastate.command(config, args.state)
        return run(config, getattr(args, "ready_fd", None), config_path)
    except (DaemonError, StoreError) as exc:
        print(f"ipfloaterd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
