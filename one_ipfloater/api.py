"""The daemon's JSON REST API (v1) on the standard library's threading HTTP server.

The API is small and has one client per cloud, so no web framework is needed; what a
framework would give (routing, body limits, JSON errors, auth) is the ~150 lines below.
Every answer is JSON; every error is `{"error": {"code": ..., "message": ...}}` with a
stable code. Every route except /v1/health needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

from . import hostnet
from .addresses import AddressError, parse_ipv4
from .model import FipError, bad_request

log = logging.getLogger(__name__)

API_PREFIX = "/v1"
TEXT_FIELD_RE = re.compile(r"^[A-Za-z0-9_.:@/+-]{1,128}$")
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")


def _ip(value: Any, field: str) -> IPv4Address:
    try:
        return parse_ipv4(value, field)
    except AddressError as exc:
        raise bad_request(str(exc)) from None


def _text(value: Any, field: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not TEXT_FIELD_RE.match(value):
        raise bad_request(f"{field}: {value!r} must be 1-128 characters of letters, digits and _.:@/+-")
    return value


def _flag(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{field}: {value!r} is not a boolean")
    return value


def _fields(body: Any, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(body, dict):
        raise bad_request(f"body: expected a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")
    for name in sorted(required):
        if body.get(name) is None:
            raise bad_request(f"{name}: missing (required)")
    return body


class ApiHandler(BaseHTTPRequestHandler):
    """Routes /v1/... to the service; one instance per request."""

    server_version = "ipfloaterd"
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the body would wait
    # for the client's delayed ACK (~40 ms per request on a kept-alive connection).
    disable_nagle_algorithm = True

    # -- plumbing --------------------------------------------------------------------

    def log_message(self, fmt, *args):  # route access logs through logging, never tokens
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload, sort_keys=True).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error": {"code": code, "message": message}})

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        expected = self.server.token.encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)

    def _read_body(self) -> bytes:
        """Read the whole request body (bounded) before anything else, so that every
        answer, errors included, leaves the connection in a clean state."""
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise FipError("length_required", "Content-Length: required (chunked bodies are not accepted)", 411)
            return b""
        if not length_text.isdigit():
            self.close_connection = True
            raise bad_request(f"Content-Length: {length_text!r} is not a number")
        length = int(length_text)
        if length > self.server.max_body:
            self.close_connection = True
            raise FipError("body_too_large", f"body: {length} bytes is over the limit of {self.server.max_body}", 413)
        return self.rfile.read(length) if length else b""

    def _json(self) -> Any:
        if not self._raw_body.strip():
            return {}
        try:
            return json.loads(self._raw_body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad_request(f"body: not valid JSON ({exc})") from None

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        try:
            self._raw_body = self._read_body()
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True,
                                                   strict_parsing=False).items()}
            if not parts or "/" + parts[0] != API_PREFIX:
                raise FipError("not_found", f"path: {url.path!r} is not an API route", 404)
            route = parts[1:]
            if route == ["health"] and self.command in ("GET", "HEAD"):
                self._send(200, {"status": "ok"})
                return
            if not self._authorized():
                self._error(401, "unauthorized", "missing or invalid token")
                return
            status, payload = self._route(route, query)
            self._send(status, payload)
        except FipError as exc:
            self._error(exc.status, exc.code, exc.message)
        except Exception:  # a bug: answer, log, keep serving
            log.exception("internal error on %s %s", self.command, url.path)
            self._error(500, "internal_error", "internal error (see the daemon log)")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = lambda self: self._dispatch()

    # -- routes ----------------------------------------------------------------------

    def _route(self, route: list[str], query: dict) -> tuple[int, dict]:
        svc = self.server.service
        method = self.command
        if route == ["version"] and method == "GET":
            return 200, svc.version()
        if route == ["pool"] and method == "GET":
            return 200, svc.pool()
        if route == ["reconcile"] and method == "POST":
            _fields(self._json(), set())
            return 200, {"repairs": svc.reconcile()}
        if route == ["neighbours"] and method == "GET":
            mac = query.get("mac")
            if mac is not None and not MAC_RE.match(mac):
                raise bad_request(f"mac: {mac!r} is not a MAC address")
            entries = hostnet.neighbours()
            if mac is not None:
                entries = [e for e in entries if e["mac"] == mac.lower().replace("-", ":")]
            return 200, {"neighbours": entries}
        if route == ["floatingips"]:
            if method == "GET":
                unknown = sorted(set(query) - {"private_ip", "ref", "owner", "ref_prefix"})
                if unknown:
                    raise bad_request(f"{unknown[0]}: unknown query parameter")
                private = _ip(query["private_ip"], "private_ip") if "private_ip" in query else None
                items = svc.list(private_ip=private, ref=_text(query.get("ref"), "ref"),
                                 owner=_text(query.get("owner"), "owner"),
                                 ref_prefix=_text(query.get("ref_prefix"), "ref_prefix"))
                return 200, {"floatingips": [self._view(a) for a in items]}
            if method == "POST":
                body = _fields(self._json(), {"public_ip", "private_ip", "owner", "ref", "allow_move", "operator"})
                alloc, created = svc.allocate(
                    public_ip=_ip(body["public_ip"], "public_ip") if body.get("public_ip") is not None else None,
                    private_ip=_ip(body["private_ip"], "private_ip") if body.get("private_ip") is not None else None,
                    owner=_text(body.get("owner"), "owner"), ref=_text(body.get("ref"), "ref"),
                    allow_move=_flag(body.get("allow_move"), "allow_move"),
                    operator=_flag(body.get("operator"), "operator"))
                return (201 if created else 200), self._view(alloc)
        if len(route) in (2, 3) and route[0] == "floatingips":
            public_ip = _ip(route[1], "public_ip")
            sub = route[2:]
            if sub == [] and method == "GET":
                return 200, self._view(svc.show(public_ip))
            if sub == [] and method == "DELETE":
                body = _fields(self._json(), {"owner", "operator"})
                alloc = svc.release(public_ip, owner=_text(body.get("owner"), "owner"),
                                    operator=_flag(body.get("operator"), "operator"))
                return 200, {**self._view(alloc), "status": "released"}
            if sub == ["association"] and method == "PUT":
                body = _fields(self._json(), {"private_ip", "owner", "allow_move", "operator"}, {"private_ip"})
                alloc = svc.associate(public_ip, _ip(body["private_ip"], "private_ip"),
                                      owner=_text(body.get("owner"), "owner"),
                                      allow_move=_flag(body.get("allow_move"), "allow_move"),
                                      operator=_flag(body.get("operator"), "operator"))
                return 200, self._view(alloc)
            if sub == ["association"] and method == "DELETE":
                body = _fields(self._json(), {"owner", "operator"})
                alloc = svc.disassociate(public_ip, owner=_text(body.get("owner"), "owner"),
                                         operator=_flag(body.get("operator"), "operator"))
                return 200, self._view(alloc)
        known = self._known_methods(route)
        if known:
            raise FipError("method_not_allowed", f"method: {method} is not allowed here (use {', '.join(known)})", 405)
        raise FipError("not_found", f"path: {self.path.split('?')[0]!r} is not an API route", 404)

    @staticmethod
    def _known_methods(route: list[str]) -> list[str]:
        table = {("version",): ["GET"], ("pool",): ["GET"], ("reconcile",): ["POST"],
                 ("neighbours",): ["GET"], ("floatingips",): ["GET", "POST"]}
        if tuple(route) in table:
            return table[tuple(route)]
        if len(route) == 2 and route[0] == "floatingips":
            return ["GET", "DELETE"]
        if len(route) == 3 and route[0] == "floatingips" and route[2] == "association":
            return ["PUT", "DELETE"]
        return []

    def _view(self, alloc) -> dict:
        return alloc.as_dict(in_pool=alloc.public_ip in self.server.service.registry.pool)


class ApiServer(ThreadingHTTPServer):
    """HTTP server bound to the service, the token and the request limits."""

    daemon_threads = True
    allow_reuse_address = True
    # listen() backlog. socketserver's default of 5 overflowed when OpenNebula ran twenty
    # hooks at once (a burst of 20 connections before the accept loop caught up): the
    # kernel reset some of them (tests/reliability, 20 clients x 200 requests).
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], service, token: str, max_body: int = 65536,
                 timeout: float = 10.0):
        self.service = service
        self.token = token
        self.max_body = max_body
        self.request_timeout = timeout
        family_v6 = ":" in address[0]
        if family_v6:
            import socket
            self.address_family = socket.AF_INET6
        super().__init__(address, ApiHandler)

    def get_request(self):
        sock, addr = super().get_request()
        sock.settimeout(self.request_timeout)  # a slow or stuck client cannot hold a thread forever
        return sock, addr

