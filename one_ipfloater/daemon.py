"""`ipfloaterd`: the router-side daemon (foreground, for systemd).

    ipfloaterd [--config FILE] [run]     serve the API, reconcile now and periodically
    ipfloaterd --config FILE flush       remove every rule and address of ours (state kept)
    ipfloaterd --config FILE check       validate the config file and exit
    ipfloaterd --config FILE token add NAME --role operator|reader|owner [--owner O]
    ipfloaterd --config FILE token list | token revoke NAME

Stopping the daemon leaves the rules in place, so floating IPs stay up across restarts
and upgrades; the next start reconciles them with the stored state.
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading

from . import __version__, hostnet
from .cliutil import OneLineArgumentParser
from .config import ConfigError, DaemonConfig, load_config
from .model import FipError
from .nat_iptables import NatError
from .store import Store, StoreError

log = logging.getLogger("ipfloaterd")
DEFAULT_CONFIG = "/etc/ipfloaterd.conf"


class DaemonError(RuntimeError):
    """A reason the daemon cannot start or finish a command; one line."""


def load_or_create_token(path: str) -> str:
    """Read the API token, creating a random one (mode 0600) on first start."""
    try:
        with open(path, encoding="utf-8") as token_file:
            token = token_file.read().strip()
    except FileNotFoundError:
        import secrets  # only here: it loads OpenSSL, which the start does not otherwise need
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(token + "\n")
        log.info("created API token file %s (mode 0600)", path)
        return token
    except (OSError, UnicodeDecodeError) as exc:
        raise DaemonError(f"TOKEN_FILE: cannot read {path}: {exc}") from None
    if len(token) < 16:
        raise DaemonError(f"TOKEN_FILE: {path} holds a token shorter than 16 characters")
    return token


def take_instance_lock(config: DaemonConfig):
    """One daemon (or flush) per state file: a second one would fight over the rules."""
    lock_path = config.db_path + ".lock"
    os.makedirs(os.path.dirname(lock_path) or ".", mode=0o700, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DaemonError(f"DB: {config.db_path} is in use by a running ipfloaterd (stop it first)") from None
    return fd


def make_backend(config: DaemonConfig):
    from .nat import make_backend as choose  # NAT_BACKEND: iptables | nftables | auto
    return choose(config)


def limit_malloc_arenas(arenas: int = 1) -> None:
    """Cap glibc's malloc arenas. The API serves each connection on a thread of its own,
    and every thread may get an arena that keeps the memory it freed: with the iptables
    backend (each change copies the whole nat table through libiptc) that grew the daemon
    from 37 to 137 MB at 4,096 associations; with one arena it stays under 60 MB, at the
    same throughput (the GIL serialises the threads' allocations anyway)."""
    import ctypes  # here, not at the top: after the rules are in place
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


def run(config: DaemonConfig, ready_fd: int | None = None) -> int:
    """Serve until SIGTERM/SIGINT; rules stay in place when we stop."""
    from .service import FloatingIPService

    supervisor = Supervisor(ready_fd)
    lock_fd = take_instance_lock(config)
    token = load_or_create_token(config.token_file)
    store = Store(config.db_path, config.db_sync)
    service = FloatingIPService(config, store, make_backend(config))
    try:
        repairs = service.start(supervisor.rules_in_place)
    except (FipError, NatError, hostnet.HostNetError) as exc:
        raise DaemonError(str(exc)) from None
    log.info("started: %d addresses in the pool, %d allocated, %d repairs", len(config.pool),
             len(service.registry), len(repairs))
    gc.freeze()  # the start-up's objects live as long as we do: out of every later collection
    gc.enable()
    limit_malloc_arenas()  # before the API's threads exist
    # the HTTP stack is imported once the rules are in place
    from .api import ApiApp
    from .auth import Authenticator, TokenTable
    from .httpserver import make_server, serve, stop as stop_server
    try:
        tokens = TokenTable(config.db_path)
    except sqlite3.Error as exc:
        raise DaemonError(f"DB: cannot read the tokens of {config.db_path}: {exc}") from None
    app = ApiApp(service, Authenticator(token, tokens), max_body=config.max_body_bytes)
    try:
        server = make_server(app, config.rest_ip, config.rest_port, config.request_timeout,
                             config.max_body_bytes)
    except OSError as exc:
        raise DaemonError(f"REST_IP/REST_PORT: cannot listen on {config.rest_ip}:{config.rest_port}: "
                          f"{exc.strerror or exc}") from None
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %d: stopping (rules stay in place)", signum)
        stop.set()
        stop_server(server)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def reconcile_loop():
        while not stop.wait(config.reconcile_interval):
            try:
                service.reconcile()
            except Exception as exc:  # keep the loop alive; the next round retries
                log.error("periodic reconcile failed: %s", exc)

    if config.reconcile_interval > 0:
        threading.Thread(target=reconcile_loop, name="reconcile", daemon=True).start()
    host, port = server.effective_host, int(server.effective_port)
    log.info("listening on %s:%d (API v1, at most %d connections)", host, port, server.adj.connection_limit)
    supervisor.ready(host, port, len(service.registry))
    serve(server)
    tokens.close()
    store.close()
    os.close(lock_fd)
    return 0


def flush(config: DaemonConfig) -> int:
    """Remove our chains, jumps and floating addresses; the stored state stays, so the
    next start puts everything back."""
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
    print(json.dumps({"removed": repairs}))
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
    sub.add_parser("check", parents=[common], help="validate the config and exit")
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
    config_path = getattr(args, "config", None) or os.environ.get("IPFLOATERD_CONF", DEFAULT_CONFIG)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"ipfloaterd: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(args, "log_level", None) or config.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if command == "check":
            print(json.dumps({"config": config_path, "pool_size": len(config.pool),
                              "private_ranges": [str(n) for n in config.private_ranges]}))
            return 0
        if command == "flush":
            return flush(config)
        if command == "token":
            return token_command(config, args)
        return run(config, getattr(args, "ready_fd", None))
    except (DaemonError, StoreError) as exc:
        print(f"ipfloaterd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
