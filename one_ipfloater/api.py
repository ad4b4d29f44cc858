"""The daemon's JSON REST API (v1): a small WSGI application (served by httpserver.py).

The API is small and has one client per cloud, so no web framework is needed; what a
framework would give (routing, body limits, JSON errors, auth) is the code below.
Every answer is JSON; every error is `{"error": {"code": ..., "message": ...}}` with a
stable code. Every route except /v1/health needs `Authorization: Bearer <token>`; the
token's role (auth.py) decides what it may do, and an owner token always acts as its
owner, whatever the request says.
"""

from __future__ import annotations

import json
import logging
import math
import re
from ipaddress import IPv4Address
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlsplit

from . import history, hostnet
from .addresses import POOL_NAME_RE, AddressError, parse_ipv4
from .auth import OPERATOR, OWNER, READER, Principal
from .httpserver import error_body
from .metrics import Observer
from .model import TEXT_FIELD_RE, FipError, bad_request
from .quota import parse_quotas

log = logging.getLogger(__name__)

API_PREFIX = "/v1"
MAC_RE = re.compile(r"[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}")
MAX_URI = 2048
MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 20
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")


def _show(value: Any) -> str:
    """repr of a bad value, cut short: error messages stay one readable line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _ip(value: Any, field: str) -> IPv4Address:
    try:
        return parse_ipv4(value, field)
    except AddressError as exc:
        raise bad_request(str(exc)[:200]) from None


def _text(value: Any, field: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not TEXT_FIELD_RE.fullmatch(value):
        raise bad_request(f"{field}: {_show(value)} must be 1-128 characters of letters, digits and _.:@/+-")
    return value


def _pool_name(value: Any, field: str = "pool") -> Optional[str]:
    """A pool name as sent (whether it is configured is the registry's question)."""
    if value is None:
        return None
    if not isinstance(value, str) or not POOL_NAME_RE.fullmatch(value):
        raise FipError("unknown_pool", f"{field}: {_show(value)} is not a pool name "
                       "(a lower-case letter, then up to 31 of a-z 0-9 _ -)", 422)
    return value


def _flag(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{field}: {_show(value)} is not a boolean")
    return value


def _fields(body: Any, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(body, dict):
        raise bad_request(f"body: expected a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"{_show(unknown[0])[1:-1]}: unknown field (allowed: {', '.join(sorted(allowed))})")
    for name in sorted(required):
        if body.get(name) is None:
            raise bad_request(f"{name}: missing (required)")
    return body


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"number with {len(text)} digits")
    return int(text)


def _float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:20]} out of range")
    return number


def _constant(text: str):
    raise ValueError(f"{text} is not JSON")


def _depth(value: Any, limit: int) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise ValueError(f"nested deeper than {limit} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def parse_json(raw: bytes) -> Any:
    """The body as JSON; anything odd (nesting, absurd numbers, NaN) is a 400."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw.decode("utf-8"), parse_int=_int, parse_float=_float,
                           parse_constant=_constant)
        _depth(value, MAX_JSON_DEPTH)
    except RecursionError:
        raise bad_request(f"body: not valid JSON (nested deeper than {MAX_JSON_DEPTH} levels)") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise bad_request(f"body: not valid JSON ({str(exc)[:120]})") from None
    return value


class Exposition(tuple):
    """(content type, body) of an answer that is not JSON: the Prometheus text format."""

    __slots__ = ()


_NO_OBSERVER = Observer()


def _forbidden(message: str) -> FipError:
    return FipError("forbidden", message, 403)


class Request:
    """One request as the routes see it: method, route, query, body and who asks."""

    def __init__(self, method: str, path: str, route: list[str], query: dict, raw: bytes,
                 principal: Principal):
        self.method, self.path, self.route, self.query = method, path, route, query
        self.raw = raw
        self.principal = principal
        self._body = None

    def body(self, allowed: set[str], required: set[str] = frozenset()) -> dict:
        if self._body is None:
            self._body = parse_json(self.raw)
        return _fields(self._body, allowed, required)

    # -- what the token allows --------------------------------------------------------

    def owner(self, value: Any, field: str = "owner") -> Optional[str]:
        """The owner the request acts as: an owner token's own, whatever was sent."""
        given = _text(value, field)
        p = self.principal
        if p.role == OWNER:
            if given is not None and given != p.owner:
                raise _forbidden(f"{field}: token {p.name!r} acts for {p.owner!r} only, not {given!r}")
            return p.owner
        return given

    def operator(self, value: Any) -> bool:
        explicit = _flag(value, "operator")
        if explicit and self.principal.role != OPERATOR:
            raise _forbidden(f"operator: token {self.principal.name!r} ({self.principal.role}) "
                             "may not make operator requests")
        return explicit

    @property
    def unowned_ok(self) -> bool:
        """Allocations without an owner: operator tokens only."""
        return self.principal.role == OPERATOR


class ApiApp:
    """The WSGI application: routes /v1/... to the service."""

    def __init__(self, service, authenticate: Callable[[str], Optional[Principal]], max_body: int = 65536,
                 ha_state=None):
        self.service = service
        self.authenticate = authenticate
        self.max_body = max_body
        self.ha_state = ha_state  # hastate.HaState: keepalived's word on this router (HA pairs)

    # -- plumbing --------------------------------------------------------------------

    def __call__(self, environ: dict, start_response) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        status, payload, who = self._handle(environ, method)
        ctype = "application/json"
        if isinstance(payload, Exposition):
            ctype, data = payload
        else:
            data = json.dumps(payload, sort_keys=True).encode() + b"\n" if status < 400 else \
                error_body(status, payload["error"]["message"], payload["error"]["code"])
        if status >= 400:
            getattr(self.service, "observer", _NO_OBSERVER).refused(payload["error"]["code"])
        headers = [("Content-Type", ctype), ("Content-Length", str(len(data)))]
        if status == 413:  # the body was not read: what follows on the connection is not a request
            headers.append(("Connection", "close"))
        if method not in ("GET", "HEAD"):
            outcome = payload["error"]["code"] if status >= 400 else "ok"
            log.info("%s %s by %s: %d %s", method, environ.get("PATH_INFO", "")[:200], who, status, outcome)
        else:
            log.debug("%s %s by %s: %d", method, environ.get("PATH_INFO", "")[:200], who, status)
        start_response(f"{status} {_REASONS.get(status, 'Error')}", headers)
        return [] if method == "HEAD" else [data]

    def _handle(self, environ: dict, method: str) -> tuple[int, dict, str]:
        who = "-"
        try:
            uri = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
            if len(uri) > MAX_URI:
                raise FipError("uri_too_long", f"path: {len(uri)} characters is over the limit of {MAX_URI}", 414)
            if method not in METHODS:
                raise FipError("not_implemented", f"method: {_show(method)} is not supported", 501)
            raw = self._read_body(environ)
            url = urlsplit(uri)
            path = url.path
            parts = [p for p in path.split("/") if p]
            if not parts or "/" + parts[0] != API_PREFIX:
                raise FipError("not_found", f"path: {_show(path)} is not an API route", 404)
            route = parts[1:]
            if route == ["health"] and method in ("GET", "HEAD"):
                health = {"status": "ok", "warnings": list(getattr(self.service, "warnings", []))
                          + list(getattr(self.service, "group_warnings", []))}
                if self.ha_state is not None:
                    health["ha_state"] = self.ha_state.view()
                store = getattr(self.service, "store_health", lambda: None)()
                if store is not None:  # a shared store (etcd): its health, how old the state read is
                    health["store"] = store
                group = getattr(self.service, "group_health", lambda: None)()
                if group is not None:  # ROUTER_GROUP: this router's group and the pools it applies
                    health["router_group"] = group
                return 200, health, who
            principal = self._principal(environ)
            if principal is None:
                return 401, {"error": {"code": "unauthorized", "message": "missing or invalid token"}}, who
            who = principal.name
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            req = Request(method, path, route, query, raw, principal)
            status, payload = self._route(req)
            return status, payload, who
        except FipError as exc:
            return exc.status, {"error": {"code": exc.code, "message": exc.message}}, who
        except Exception:  # a bug: answer, log, keep serving
            log.exception("internal error on %s %s", method, environ.get("PATH_INFO", "")[:200])
            return 500, {"error": {"code": "internal_error", "message": "internal error (see the daemon log)"}}, who

    def _principal(self, environ: dict) -> Optional[Principal]:
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return None
        return self.authenticate(given.strip())

    def _read_body(self, environ: dict) -> bytes:
        """The whole body (bounded; the server checked the framing)."""
        length_text = environ.get("CONTENT_LENGTH") or "0"
        if not (length_text.isascii() and length_text.isdigit()):
            raise bad_request(f"Content-Length: {_show(length_text)} is not a number")
        length = int(length_text)
        if length > self.max_body:
            raise FipError("body_too_large", f"body: {length} bytes is over the limit of {self.max_body}", 413)
        return environ["wsgi.input"].read(length) if length else b""

    # -- routes ----------------------------------------------------------------------

    def _route(self, req: Request) -> tuple[int, dict]:
        svc = self.service
        method, route, query, p = req.method, req.route, req.query, req.principal
        known = self._known_methods(route)
        if known and method not in known:
            raise FipError("method_not_allowed", f"method: {method} is not allowed here (use {', '.join(known)})", 405)
        if not known:
            raise FipError("not_found", f"path: {_show(req.path)} is not an API route", 404)
        if p.role == READER and method != "GET":
            raise _forbidden(f"token {p.name!r} (reader) may only read")
        if route == ["version"]:
            return 200, svc.version()
        if route == ["pool"]:
            return 200, svc.pool()
        if route == ["pools"]:
            return 200, {"pools": svc.pools()}
        if route[:1] == ["pools"]:
            name = _pool_name(route[1])
            if name not in svc.registry.pools:
                raise FipError("unknown_pool", f"pool: {name!r} is not a configured pool "
                               f"(known: {', '.join(svc.registry.pools)})", 404)
            return 200, svc.pool_detail(name)
        if route == ["metrics"]:
            if p.role == OWNER:
                raise _forbidden(f"metrics: token {p.name!r} (owner) may not read the daemon's metrics")
            return 200, Exposition(getattr(svc, "observer", _NO_OBSERVER).exposition())
        if route == ["reconcile"]:
            if p.role != OPERATOR:
                raise _forbidden(f"reconcile: token {p.name!r} ({p.role}) may not reconcile")
            req.body(set())
            return 200, {"repairs": svc.reconcile()}
        if route == ["ha-state"]:
            return self._ha_state(req)
        if route == ["neighbours"]:
            if p.role == OWNER:
                raise _forbidden(f"neighbours: token {p.name!r} (owner) may not list the router's neighbours")
            mac = query.get("mac")
            if mac is not None and not MAC_RE.fullmatch(mac):
                raise bad_request(f"mac: {_show(mac)} is not a MAC address")
            entries = hostnet.neighbours()
            if mac is not None:
                entries = [e for e in entries if e["mac"] == mac.lower().replace("-", ":")]
            return 200, {"neighbours": entries}
        if route == ["history"]:
            return 200, self._history(req)
        if route == ["floatingips"]:
            if method == "GET":
                unknown = sorted(set(query) - {"private_ip", "ref", "owner", "ref_prefix", "pool"})
                if unknown:
                    raise bad_request(f"{_show(unknown[0])[1:-1]}: unknown query parameter")
                private = _ip(query["private_ip"], "private_ip") if "private_ip" in query else None
                items = svc.list(private_ip=private, ref=_text(query.get("ref"), "ref"),
                                 owner=req.owner(query.get("owner")),
                                 ref_prefix=_text(query.get("ref_prefix"), "ref_prefix"),
                                 pool=self._pool(query))
                return 200, {"floatingips": [self._view(a) for a in items]}
            body = req.body({"public_ip", "private_ip", "owner", "ref", "allow_move", "operator",
                             "owner_group", "quota", "pool"})
            for field in ("owner_group", "quota"):  # what counts against whom: the operator's say
                if body.get(field) is not None and p.role != OPERATOR:
                    raise _forbidden(f"{field}: token {p.name!r} ({p.role}) may not set it (operator tokens only)")
            alloc, created = svc.allocate(
                public_ip=_ip(body["public_ip"], "public_ip") if body.get("public_ip") is not None else None,
                private_ip=_ip(body["private_ip"], "private_ip") if body.get("private_ip") is not None else None,
                owner=req.owner(body.get("owner")), ref=_text(body.get("ref"), "ref"),
                allow_move=_flag(body.get("allow_move"), "allow_move"),
                operator=req.operator(body.get("operator")), unowned_ok=req.unowned_ok,
                owner_group=_text(body.get("owner_group"), "owner_group"),
                quotas=parse_quotas(body.get("quota")), actor=p.name,
                pool=self._pool(body))
            return (201 if created else 200), self._view(alloc)
        public_ip = _ip(route[1], "public_ip")
        if len(route) == 2 and method == "GET":
            alloc = svc.show(public_ip)
            if p.role == OWNER and alloc.owner != p.owner:
                raise FipError("owner_mismatch", f"public_ip: {public_ip} does not belong to {p.owner!r}", 403)
            return 200, self._view(alloc)
        if len(route) == 2:  # DELETE
            body = req.body({"owner", "operator"})
            alloc = svc.release(public_ip, owner=req.owner(body.get("owner")),
                                operator=req.operator(body.get("operator")), unowned_ok=req.unowned_ok,
                                actor=p.name)
            return 200, {**self._view(alloc), "status": "released"}
        if method == "PUT":
            body = req.body({"private_ip", "owner", "allow_move", "operator"}, {"private_ip"})
            alloc = svc.associate(public_ip, _ip(body["private_ip"], "private_ip"),
                                  owner=req.owner(body.get("owner")),
                                  allow_move=_flag(body.get("allow_move"), "allow_move"),
                                  operator=req.operator(body.get("operator")), unowned_ok=req.unowned_ok,
                                  actor=p.name)
            return 200, self._view(alloc)
        body = req.body({"owner", "operator"})
        alloc = svc.disassociate(public_ip, owner=req.owner(body.get("owner")),
                                 operator=req.operator(body.get("operator")), unowned_ok=req.unowned_ok,
                                 actor=p.name)
        return 200, self._view(alloc)

    def _ha_state(self, req: Request) -> tuple[int, dict]:
        """keepalived's notify (through `ipfloaterd ha-state`): operator tokens only."""
        if self.ha_state is None:
            raise FipError("not_found", "path: '/v1/ha-state' is not served by this daemon", 404)
        if req.method == "GET":
            return 200, self.ha_state.view()
        if req.principal.role != OPERATOR:
            raise _forbidden(f"ha-state: token {req.principal.name!r} ({req.principal.role}) may not set it")
        from .hastate import HaStateError, parse_state
        body = req.body({"state"}, {"state"})
        try:
            state = parse_state(body["state"])
        except HaStateError as exc:
            raise bad_request(str(exc)) from None
        return 200, self.ha_state.set(state)

    @staticmethod
    def _known_methods(route: list[str]) -> list[str]:
        table = {("version",): ["GET"], ("pool",): ["GET"], ("reconcile",): ["POST"], ("ha-state",): ["GET", "PUT"],
                 ("neighbours",): ["GET"], ("floatingips",): ["GET", "POST"], ("history",): ["GET"],
                 ("metrics",): ["GET"]}
        if tuple(route) in table:
            return table[tuple(route)]
        if route and route[0] == "pools" and len(route) <= 2:
            return ["GET"]
        if len(route) == 2 and route[0] == "floatingips":
            return ["GET", "DELETE"]
        if len(route) == 3 and route[0] == "floatingips" and route[2] == "association":
            return ["PUT", "DELETE"]
        return []

    def _history(self, req: Request) -> dict:
        """GET /v1/history: who held public_ip `at` a time, or the events in [since, until].
        Owner tokens see their owner's events only."""
        query, p = req.query, req.principal
        unknown = sorted(set(query) - {"public_ip", "at", "since", "until", "limit"})
        if unknown:
            raise bad_request(f"{_show(unknown[0])[1:-1]}: unknown query parameter "
                              "(allowed: at, limit, public_ip, since, until)")
        times = {}
        for name in ("at", "since", "until"):
            if name in query:
                try:
                    times[name] = history.parse_time(query[name], name)
                except ValueError as exc:
                    raise bad_request(str(exc)[:200]) from None
        public_ip = _ip(query["public_ip"], "public_ip") if "public_ip" in query else None
        if "at" in times:
            for name in ("since", "until", "limit"):
                if name in query:
                    raise bad_request(f"{name}: {_show(query[name])} cannot be combined with at")
            if public_ip is None:
                raise bad_request("public_ip: missing (required with at)")
            answer = self.service.history_at(public_ip, times["at"])
            event = answer["event"]
            if p.role == OWNER and event is not None and event.owner != p.owner:
                raise FipError("owner_mismatch", f"public_ip: {public_ip} at {answer['at']} was not "
                               f"held by {p.owner!r}", 403)
            return {**answer, "event": event.as_dict() if event else None}
        if "since" in times and "until" in times and times["since"] > times["until"]:
            raise bad_request(f"since: {_show(query['since'])} is after until {_show(query['until'])}")
        limit = 1000
        if "limit" in query:
            text = query["limit"]
            if not (text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text) <= 10000):
                raise bad_request(f"limit: {_show(text)} is not a number from 1 to 10000")
            limit = int(text)
        found = self.service.history_between(public_ip, times.get("since"), times.get("until"),
                                             owner=p.owner if p.role == OWNER else None, limit=limit)
        return {**found, "events": [ev.as_dict() for ev in found["events"]]}

    @staticmethod
    def _pool(given: dict) -> Optional[str]:
        """The `pool` a request names, checked; None when it names none (the service then
        uses the address's own pool, or `default`)."""
        return _pool_name(given["pool"]) if given.get("pool") is not None else None

    def _view(self, alloc) -> dict:
        pool = self.service.registry.pool_of(alloc.public_ip)
        return alloc.as_dict(in_pool=pool is not None, pool=pool)


_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
            411: "Length Required", 413: "Payload Too Large", 414: "URI Too Long", 422: "Unprocessable Entity",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
            503: "Service Unavailable"}

