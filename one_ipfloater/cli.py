"""`ipfloater`: the command-line client, compatible with the original ipfloater's CLI.

    ipfloater [-i IP] [-p PORT] [--token-file F] [--json] COMMAND ... [--json]

Human-readable output by default, `--json` (before or after the command) for scripts;
`--version` prints the client's version without asking the daemon; every error is one line on
stderr and a non-zero exit (1: refused by the daemon, 2: bad arguments, 3: no daemon).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import __version__, history, logformat
from .cliutil import OneLineArgumentParser, SummaryHelpFormatter, anywhere, command_summary
from .addresses import AddressError, parse_ipv4
from .client import (DEFAULT_TOKEN_FILE, ApiError, IpfloaterClient, UrlError, check_host,
                     check_port, check_timeout, check_urls, read_token)

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


def _ip_arg(field):
    def parse(value: str) -> str:
        try:
            return str(parse_ipv4(value, field))
        except AddressError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _time_arg(field):
    def parse(value: str) -> str:
        try:
            history.parse_time(value, field)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None  # argparse names it
        return value  # sent as given: the daemon parses it the same way
    return parse


def _limit_arg(value: str) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= 6 and 1 <= int(value) <= 10000):
        raise argparse.ArgumentTypeError(f"--limit: {value!r} is not a number from 1 to 10000")
    return int(value)


def _check_history_args(parser, args) -> None:
    """--at asks about one address at one time; the others list events."""
    if args.at is None:
        return
    if args.public_ip is None:
        parser.error("history --at: PUBLIC_IP is required")
    for name in ("since", "until", "limit"):
        if getattr(args, name) is not None:
            parser.error(f"history --at: --{name} cannot be combined with --at")


HISTORY_COLUMNS = ["at", "event", "public_ip", "private_ip", "previous_private_ip", "owner", "ref", "pool", "actor"]


def _history(args, client: IpfloaterClient):
    """`history`: the at-time answer as one line and its event, or a table of events."""
    if args.at is not None:
        answer = client.history(public_ip=args.public_ip, at=args.at)
        event = answer["event"]
        where = f"{answer['public_ip']} at {answer['at']}"
        if answer["held"] is None:
            line = f"{where}: unknown (the history starts at {answer['history_from']})"
        elif not answer["held"]:
            line = f"{where}: not allocated" + (f" (released {event['at']})" if event else "")
        else:
            target = event["private_ip"] or "no private address"
            line = (f"{where}: held by owner {event['owner'] or '-'}, ref {event['ref'] or '-'}, "
                    f"pointing at {target} (since {event['at']}, {event['event']} by {event['actor'] or '-'})")
        return answer, line + ("\n\n" + _table([event], HISTORY_COLUMNS) if event else "")
    found = client.history(public_ip=args.public_ip, since=args.since, until=args.until, limit=args.limit)
    text = _table(found["events"], HISTORY_COLUMNS)
    if found["truncated"]:
        text += f"\n(the first {len(found['events'])} events; narrow --since/--until or raise --limit)"
    return found, text


def _table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(r.get(c) if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    common = anywhere((("--json",), "machine-readable JSON output (before or after the command)"))
    parser = OneLineArgumentParser(
        prog="ipfloater", parents=[common], formatter_class=SummaryHelpFormatter,
        description="Client of ipfloaterd, the daemon that maps floating (public) IPs to\n"
                    "private IPs.")
    parser.add_argument("--version", action="version", version=f"ipfloater {__version__}",
                        help="show the client's version and exit (`version` asks the server too)")
    parser.add_argument("-i", "--server-ip", default=os.environ.get("IPFLOATER_SERVER_IP", "127.0.0.1"),
                        help="address where ipfloaterd listens (default 127.0.0.1)")
    parser.add_argument("-p", "--server-port", default=os.environ.get("IPFLOATER_SERVER_PORT", "7003"),
                        help="port where ipfloaterd listens (default 7003)")
    parser.add_argument("--url", action="append", metavar="URL[,URL...]",
                        help="full daemon URL (overrides -i/-p), e.g. https://router:7443; "
                        "no user:password@, query or fragment. Several (repeated or "
                        "comma-separated): tried in order, failing over when one does not answer")
    parser.add_argument("--token-file", default=None,
                        help=f"API token file (default $IPFLOATER_TOKEN, then {DEFAULT_TOKEN_FILE})")
    parser.add_argument("--timeout", default="10", help="seconds to wait for the daemon")
    parser.add_argument("--use-env-proxy", action="store_true",
                        help="send requests (and the token) through the proxy named by "
                        "$HTTP_PROXY/$HTTPS_PROXY/$ALL_PROXY (default: ignore them and connect "
                        "directly); redirects are never followed")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, help_text):
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    p = command("getip", "allocate a floating IP for a private IP (prints the public IP)")
    p.add_argument("private_ip", type=_ip_arg("private_ip"),
                   help="private IP address for which a floating IP is requested")
    p.add_argument("--owner", help="record this owner on the allocation")
    p.add_argument("--pool", help="take the address from this named pool (default: the pool 'default')")
    p = command("redirect", "point a floating IP at a private IP (moves it if needed)")
    p.add_argument("public_ip", type=_ip_arg("public_ip"), help="the floating IP address")
    p.add_argument("private_ip", type=_ip_arg("private_ip"),
                   help="private IP address the floating IP is to forward to")
    p.add_argument("--owner", help="record this owner on the allocation")
    p.add_argument("--operator", action="store_true",
                   help="explicit operator request: move another owner's address (operator tokens only)")
    p = command("releaseip", "release a floating IP, given the public or the private IP")
    p.add_argument("ip", type=_ip_arg("ip"),
                   help="the floating IP, or the private IP it forwards to")
    p.add_argument("--owner", help="the owner of the address")
    p.add_argument("--operator", action="store_true",
                   help="explicit operator request: release another owner's address (operator tokens only)")
    command("status", "show the allocations and their redirections (several --url: every "
            "daemon's health and HA state first)")
    p = command("ippool", "show the public addresses of every pool, or of one pool")
    p.add_argument("name", nargs="?", metavar="NAME", help="the pool's name (default: every pool)")
    command("version", "show the client and server versions")
    p = command("arp", "look a MAC address up in the router's neighbour table")
    p.add_argument("mac", help="the MAC address whose IP address is requested")
    p = command("show", "show one floating IP")
    p.add_argument("public_ip", type=_ip_arg("public_ip"), help="the floating IP address")
    command("reconcile", "repair the router's rules and addresses now; prints the repairs")
    command("health", "check that the daemon answers (no token needed)")
    p = command("history", "who held a floating IP at a time, or what changed in a period "
                "(for abuse reports)")
    p.add_argument("public_ip", nargs="?", type=_ip_arg("public_ip"), help="the floating IP address")
    p.add_argument("--at", type=_time_arg("--at"), metavar="TIME", help="who held PUBLIC_IP at this time "
                   "(ISO 8601 with a zone, e.g. 2026-03-01T14:05:00Z, or unix seconds)")
    p.add_argument("--since", type=_time_arg("--since"), metavar="TIME", help="events at or after this time")
    p.add_argument("--until", type=_time_arg("--until"), metavar="TIME", help="events at or before this time")
    p.add_argument("--limit", type=_limit_arg, metavar="N",
                   help="at most this many events (default 1000, at most 10000)")
    parser.epilog = command_summary("ipfloater", sub)
    return parser


def _execute(args, client: IpfloaterClient):
    """Run one command; returns (json_payload, human_text)."""
    cmd = args.command
    if cmd == "getip":
        existing = client.list(private_ip=args.private_ip)
        if existing and args.pool is not None and existing[0].get("pool") != args.pool:
            raise ApiError("address_in_use", f"private_ip: {args.private_ip} already has "
                           f"{existing[0]['public_ip']} of pool {existing[0].get('pool')!r}, "
                           f"not of pool {args.pool!r} (release it first)", 409)
        alloc = existing[0] if existing else client.allocate(private_ip=args.private_ip, owner=args.owner,
                                                             pool=args.pool)
        return alloc, alloc["public_ip"]
    if cmd == "redirect":
        try:
            current = client.show(args.public_ip)
        except ApiError as exc:
            if exc.code != "not_allocated":
                raise
            current = None
        if current is None:
            alloc = client.allocate(public_ip=args.public_ip, private_ip=args.private_ip, owner=args.owner)
        else:
            alloc = client.associate(args.public_ip, args.private_ip, allow_move=True, owner=args.owner,
                                     **({"operator": True} if args.operator else {}))
        return alloc, f"{alloc['public_ip']} -> {alloc['private_ip']}"
    if cmd == "releaseip":
        try:
            public = client.show(args.ip)["public_ip"]
        except ApiError as exc:
            if exc.code not in ("not_in_pool", "not_allocated"):
                raise
            served = client.list(private_ip=args.ip)
            if not served:
                raise ApiError("not_found", f"ip: {args.ip} is neither an allocated floating IP "
                                            f"nor a private IP with one", 404) from None
            public = served[0]["public_ip"]
        alloc = client.release(public, owner=args.owner, **({"operator": True} if args.operator else {}))
        return alloc, f"released {alloc['public_ip']}"
    if cmd == "status" and len(client.urls) > 1:
        return _group_status(client)
    if cmd == "status":
        items = client.list()
        health = client.health()
        ha = health.get("ha_state")  # keepalived's state of this router (HA pairs)
        text = _table(items, ["public_ip", "private_ip", "status", "owner", "ref"])
        store = health.get("store")  # a shared store (etcd): its health first
        if store:
            result = {"floatingips": items, "store": store}
            if ha and ha.get("state") != "unknown":
                result["ha_state"] = ha
                text = f"{_ha_line(ha['state'])}\n{text}"
            line = "ok" if store["ok"] else f"UNAVAILABLE ({store['error']}); changes are refused"
            return result, (f"state store: {store['kind']} {line}, revision {store['revision']}, "
                            f"state read {store['last_read_age_s']} s ago\n{_group_lines(health, result)}{text}")
        if not ha or ha.get("state") == "unknown":  # a single router: as before
            return {"floatingips": items}, text
        return {"floatingips": items, "ha_state": ha}, f"{_ha_line(ha['state'])}\n{text}"
    if cmd == "ippool":
        if args.name is not None:
            pool = client.pools(args.name)
            return pool, _table(pool["addresses"], ["public_ip", "status"]) + \
                f"\n{pool['free']} of {pool['size']} free in pool {pool['name']}"
        pools = client.pools()
        rows = [{**a, "pool": p["name"]} for p in pools for a in p["addresses"]]
        text = _table(rows, ["public_ip", "pool", "status"]) + "".join(
            f"\n{p['name']}: {p['free']} of {p['size']} free" for p in pools)
        # JSON: the `default` pool at the top as before (GET /v1/pool), every pool in "pools"
        return {**client.pool(), "pools": pools}, text
    if cmd == "version":
        server = client.version()
        payload = {"client": __version__, "server": server.get("version"), "backend": server.get("backend")}
        return payload, f"client {__version__}\nserver {payload['server']} ({payload['backend']})"
    if cmd == "arp":
        entries = client.neighbours(mac=args.mac)
        if not entries:
            raise ApiError("not_found", f"mac: {args.mac} is not in the router's neighbour table", 404)
        return {"neighbours": entries}, "\n".join(e["ip"] for e in entries)
    if cmd == "history":
        return _history(args, client)
    if cmd == "show":
        alloc = client.show(args.public_ip)
        return alloc, _table([alloc], ["public_ip", "private_ip", "status", "owner", "ref"])
    if cmd == "reconcile":
        result = client.reconcile()
        return result, "\n".join(result["repairs"]) or "nothing to repair"
    if cmd == "health":
        return client.health(), "ok"
    raise AssertionError(cmd)


def _ha_line(state: str) -> str:
    """`stop` is not one of keepalived's states: say what it means."""
    return f"HA state: {state}" + (" (keepalived is not running on this router)" if state == "stop" else "")


DAEMON_COLUMNS = ["url", "health", "ha_state", "since", "warnings"]


def _group_lines(health: dict, result: dict) -> str:
    """Router groups (shared store): this router's group and the pools it applies, and
    the warnings (a drifted pool layout, a pool no live router serves), a line each."""
    text = ""
    group = health.get("router_group")
    if group:
        result["router_group"] = group
        text += f"router group: {group['name']} (applies pools: {', '.join(group['pools'])})\n"
    if health.get("warnings"):
        result["warnings"] = health["warnings"]
        text += "".join(f"warning: {line}\n" for line in health["warnings"])
    return text


def _daemon_row(url: str, answer) -> dict:
    """One daemon's line of `status`: its health (or why it has none) and HA state."""
    if isinstance(answer, ApiError):
        return {"url": url, "health": answer.code, "ha_state": None, "since": None,
                "warnings": None, "error": answer.message, "answer": None}
    ha = answer.get("ha_state") or {}
    return {"url": url, "health": answer.get("status", "?"), "ha_state": ha.get("state"),
            "since": ha.get("since"), "warnings": len(answer.get("warnings") or []),
            "error": None, "answer": answer}


def _group_status(client: IpfloaterClient):
    """`status` with several URLs: every daemon's health and HA state (asked of each, no
    failover), then the allocations from the first that answers. Raises ApiError (after
    the daemons are printed) when none does."""
    rows = [_daemon_row(url, answer) for url, answer in client.health_of_each()]
    columns = DAEMON_COLUMNS
    if any((row["answer"] or {}).get("router_group") for row in rows):  # router groups: say whose
        for row in rows:
            row["router_group"] = ((row["answer"] or {}).get("router_group") or {}).get("name")
        columns = DAEMON_COLUMNS[:2] + ["router_group"] + DAEMON_COLUMNS[2:]
    text = _table(rows, columns)
    try:
        items = client.list()
    except ApiError as exc:
        exc.partial = ({"daemons": rows, "floatingips": None}, text)
        raise
    payload = {"daemons": rows, "floatingips": items, "answered_by": client.url}
    return payload, (f"{text}\n\nallocations (from {client.url}):\n"
                     + _table(items, ["public_ip", "private_ip", "status", "owner", "ref"]))


def _endpoint(args) -> tuple[tuple[str, ...], float]:
    """The daemon URLs and timeout, checked (raises UrlError, one line)."""
    timeout = check_timeout(args.timeout)
    if args.url is not None:
        return check_urls(args.url, "--url"), timeout
    return (f"http://{check_host(args.server_ip)}:{check_port(args.server_port)}",), timeout


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    # the client's one line per failover (several --url), as JSON with --json
    logformat.setup(logging.WARNING, "json" if args.json else "text", "ipfloater: %(message)s")
    if args.command == "history":
        _check_history_args(parser, args)
    try:
        url, timeout = _endpoint(args)
    except UrlError as exc:
        parser.error(str(exc))  # one line, exit 2
    try:
        token = "" if args.command == "health" else read_token(args.token_file)
        client = IpfloaterClient(url, token, timeout=timeout, use_env_proxy=args.use_env_proxy)
        payload, text = _execute(args, client)
    except ApiError as exc:
        partial = getattr(exc, "partial", None)  # what was learnt before it failed
        if partial is not None:
            print(json.dumps(partial[0], sort_keys=True) if args.json else partial[1])
        if args.json:
            print(json.dumps({"error": {"code": exc.code, "message": exc.message}}), file=sys.stderr)
        else:
            print(f"ipfloater: {exc.message}", file=sys.stderr)
        return EXIT_UNREACHABLE if exc.code in ("unreachable", "timeout", "no_token") else EXIT_REFUSED
    print(json.dumps(payload, sort_keys=True) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
