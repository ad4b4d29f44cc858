"""Python client of the ipfloaterd REST API (used by the CLI and the OpenNebula driver).

The token is a bearer secret, so the client sends it to the URL it was given and
nowhere else: proxies from the environment ($HTTP_PROXY, $ALL_PROXY...) and ~/.netrc
are ignored unless the caller asks for them (``use_env_proxy``), and redirects are never
followed (a 3xx is an error naming its Location). URLs and host names are checked
before anything is sent, so a malformed one is one line, not a traceback.

Several daemon URLs (an HA pair, groups on one shared store) fail over: a call goes to
the one that last answered, then to the others in the configured order, but only where
doing it again cannot do it twice (see ``_call``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union
from urllib.parse import quote, urlsplit

import requests
import urllib3.exceptions

from .addresses import AddressError, parse_ipv4

DEFAULT_URL = "http://127.0.0.1:7003"
DEFAULT_TOKEN_FILE = "/var/lib/ipfloater/token"
MAX_URLS = 8  # the call's time bound is the timeout times this many
# A daemon that lost the shared state's compare 24 times in a row answers 503
# store_conflict, having changed nothing; the call is sent again (to the next URL, else
# the same) this many times, within the call's time bound.
CONFLICT_RESENDS = 2

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answer of the daemon (code, HTTP status, message) or no answer at all."""

    def __init__(self, code: str, message: str, status: int = 0):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class UrlError(ValueError):
    """A malformed daemon URL, host, port or timeout; the message is one line naming the
    field and the value."""


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_CTRL = re.compile(r"[\x00-\x20\x7f]")


def check_host(value: str, field: str = "-i/--server-ip") -> str:
    """An IPv4 address or a DNS host name (the daemon's API is IPv4; an IPv6 literal
    belongs in a URL: --url http://[::1]:7003)."""
    text = str(value)
    labels = text.rstrip(".").split(".")
    if text and len(text) <= 253 and all(_LABEL.fullmatch(x) for x in labels):
        if not all(x.isdigit() for x in labels):
            return text
        try:
            return str(parse_ipv4(text, field))
        except AddressError:
            pass
    hint = " (IPv6: use --url http://[ADDRESS]:PORT)" if ":" in text else ""
    raise UrlError(f"{field}: {text!r} is not an IPv4 address or a host name{hint}")


def check_port(value: Any, field: str = "-p/--server-port") -> int:
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise UrlError(f"{field}: {value!r} is not a port number (1-65535)")
    return int(text)


def check_timeout(value: Any, field: str = "--timeout") -> float:
    try:
        number = float(str(value).strip()) if str(value).strip().isascii() else math.nan
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 0 < number <= 3600):
        raise UrlError(f"{field}: {value!r} is not a number of seconds (0-3600)")
    return number


def check_url(value: str, field: str = "--url") -> str:
    """An http(s) URL with a host, a valid port, and nothing that would be sent
    elsewhere or differently (credentials, a query, a fragment, blanks)."""
    text = str(value)
    if _CTRL.search(text) or not text.isascii():
        raise UrlError(f"{field}: {value!r} must not contain spaces, control or non-ASCII "
                       "characters")
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. a bracketed host that is no address
        raise UrlError(f"{field}: {value!r} has an invalid host") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UrlError(f"{field}: {value!r} is not an http:// or https:// URL")
    if "@" in parts.netloc:
        raise UrlError(f"{field}: {value!r} must not contain credentials (user:password@); "
                       "the token authenticates")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise UrlError(f"{field}: {value!r} must not have a query or a fragment")
    try:
        port = parts.port
    except ValueError:
        raise UrlError(f"{field}: {value!r} has an invalid port") from None
    if port == 0 or (parts.netloc.rpartition("]")[2].endswith(":")):
        raise UrlError(f"{field}: {value!r} has an invalid port")
    host = parts.hostname or ""
    if not parts.netloc.startswith("["):  # a bracketed one was checked by urlsplit
        try:
            check_host(host, field)
        except UrlError:
            raise UrlError(f"{field}: {value!r} has an invalid host {host!r}") from None
    return text


def check_urls(value: Union[str, Sequence[str]], field: str = "--url") -> tuple[str, ...]:
    """One daemon URL or several, separated by commas (spaces next to a comma are
    ignored) or given as a list; each checked by check_url. Order matters: the first is
    tried first."""
    items = [value] if isinstance(value, str) else list(value)
    urls: list[str] = []
    for item in (part for text in items for part in re.split(r" *, *", str(text))):
        if not item:
            raise UrlError(f"{field}: {','.join(map(str, items))!r} has an empty entry "
                           "(several URLs are separated by commas)")
        url = check_url(item, field).rstrip("/")
        if url in urls:
            raise UrlError(f"{field}: {item!r} is given twice")
        urls.append(url)
    if len(urls) > MAX_URLS:
        raise UrlError(f"{field}: {len(urls)} URLs given, at most {MAX_URLS}")
    return tuple(urls)


class _NoAnswer(Exception):
    """An attempt on one URL that may fail over: ``sent`` says whether the daemon may have
    received (and applied) the request."""

    def __init__(self, error: ApiError, sent: bool):
        super().__init__(error.message)
        self.error, self.sent = error, sent


#: The URL that last answered, per configured list (within the process: a sweep's
#: client and a CLI's share it, and a daemon that is down is not tried first each call).
_LAST_ANSWERED: dict[tuple[str, ...], str] = {}
_LAST_LOCK = threading.Lock()


def _ca_bundle(env: Mapping[str, str]) -> Any:
    """What requests reads from the environment besides proxies: a CA bundle. Kept when
    the environment is otherwise ignored (it decides whom to trust, not where to send)."""
    return env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE") or True


def read_token(token_file: Optional[str] = None, env: Optional[dict] = None,
               file_setting: str = "--token-file") -> str:
    """The token from $IPFLOATER_TOKEN, else from the token file. ``file_setting`` is
    how the caller's user names the token file (an option, or a configuration key), so
    that the error points at something that exists."""
    env = os.environ if env is None else env
    if env.get("IPFLOATER_TOKEN"):
        return env["IPFLOATER_TOKEN"].strip()
    path = token_file or DEFAULT_TOKEN_FILE
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ApiError("no_token", f"token file {path}: {exc.strerror} (set $IPFLOATER_TOKEN or {file_setting})") from None


class IpfloaterClient:
    """Thin wrapper: one method per API route; errors become ApiError."""

    def __init__(self, url: Union[str, Sequence[str]] = DEFAULT_URL, token: str = "",
                 timeout: float = 10.0, session: Optional[requests.Session] = None,
                 use_env_proxy: bool = False, clock=time.monotonic):
        """``url``: one URL, several separated by commas, or a list (check_urls).
        ``use_env_proxy``: honour $HTTP(S)_PROXY/$ALL_PROXY/$NO_PROXY and ~/.netrc
        (requests' ``trust_env``); off by default. Raises UrlError on a bad URL."""
        self.urls = check_urls(url, "url")
        self.token = token
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.trust_env = use_env_proxy
        self.verify = True if use_env_proxy else _ca_bundle(os.environ)
        self.clock = clock

    @property
    def url(self) -> str:
        """The URL tried first: the one that last answered, else the first configured."""
        with _LAST_LOCK:
            return _LAST_ANSWERED.get(self.urls, self.urls[0])

    def _call(self, method: str, path: str, body: Optional[dict] = None,
              params: Optional[dict] = None, *, repeatable: Optional[bool] = None,
              failover: bool = True) -> Any:
        """Send the request to the URL that last answered, then to the others in order.

        Fails over when no daemon answered (refused connection, timeout, reset) or one
        answered 503 (refused: fail static, a backup that does not take changes; a
        `store_conflict`, which changed nothing, is also sent again to the same daemon, up to
        CONFLICT_RESENDS times: with one URL too); never on
        another answer (a 4xx is the answer). When the request may have reached a daemon
        (a timeout or a reset after sending, another 5xx) it is sent again elsewhere only
        if it is ``repeatable`` (idempotent; default: reads). With several URLs the whole
        call ends within the timeout times their number."""
        repeatable = method == "GET" if repeatable is None else repeatable
        first = self.url
        order = [first] if not failover else [first] + [u for u in self.urls if u != first]
        deadline = self.clock() + self.timeout * len(order)
        failures: list[ApiError] = []
        resends = CONFLICT_RESENDS
        for n, url in enumerate(order):
            remaining = deadline - self.clock()
            if n and remaining <= 0:
                failures.append(ApiError("timeout", f"{url}: not tried, the call's "
                                                    f"{self.timeout * len(order):g}s were spent"))
                continue
            if n:  # to connect and to answer, together within what is left
                connect = min(self.timeout, remaining / 2)
                limit: Any = (connect, min(self.timeout, remaining - connect))
            else:  # each up to the timeout, as with one URL (twice it is within the bound)
                limit = self.timeout
            try:
                answer = self._attempt(url, method, path, body, params, limit)
            except _NoAnswer as exc:
                failures.append(exc.error)
                if exc.error.code == "store_conflict" and resends:  # changed nothing: once more
                    resends -= 1
                    order.append(url)
                rest = order[n + 1:]
                if exc.sent and not repeatable and rest:
                    raise ApiError(exc.error.code, f"{exc.error.message} (not sent to "
                                   f"{rest[0]}: the change may have been made; look before "
                                   "doing it again)", exc.error.status) from None
                if rest:
                    log.warning("ipfloaterd at %s: %s; %s", url,
                                exc.error.code if exc.error.status != 503 else f"503 {exc.error.code}",
                                "sending it again" if rest[0] == url else f"failing over to {rest[0]}")
                continue
            with _LAST_LOCK:
                _LAST_ANSWERED[self.urls] = url
            return answer
        last = failures[-1]
        if len(set(order[:len(failures)])) == 1:  # one daemon (resent: its last answer)
            raise last
        raise ApiError(last.code, "no ipfloaterd answered: " + "; ".join(
            f.message if f.message.startswith(("ipfloaterd at", "http")) else
            f"{u}: {f.message}" for u, f in zip(order, failures)), last.status)

    def _attempt(self, url: str, method: str, path: str, body: Optional[dict],
                 params: Optional[dict], timeout: Any) -> Any:
        """One request to one URL: the answer, an ApiError (an answer), or _NoAnswer.
        ``timeout``: seconds, or (to connect, to answer) as requests takes them."""
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            resp = self.session.request(method, f"{url}/v1{path}", json=body, params=params,
                                        headers=headers, timeout=timeout,
                                        allow_redirects=False, verify=self.verify)
        except requests.Timeout as exc:
            connecting = isinstance(exc, requests.ConnectTimeout)
            waited = timeout if not isinstance(timeout, tuple) else \
                round(timeout[0 if connecting else 1], 1)  # what was left of the call's time
            raise _NoAnswer(ApiError("timeout", f"ipfloaterd at {url} did not answer within "
                                                f"{waited:g}s"), sent=not connecting) from None
        except requests.ConnectionError as exc:
            reason = getattr(exc.args[0] if exc.args else None, "reason", None)
            raise _NoAnswer(ApiError("unreachable", f"ipfloaterd at {url} is unreachable"),
                            sent=not isinstance(reason, (urllib3.exceptions.NewConnectionError,
                                                         urllib3.exceptions.ConnectTimeoutError))
                            ) from None
        except (requests.RequestException, ValueError) as exc:  # bad header, bad URL...
            raise ApiError("bad_request", f"cannot send the request to ipfloaterd at "
                                          f"{url}: {' '.join(str(exc).split())}") from None
        if 300 <= resp.status_code < 400:
            location = resp.headers.get("Location", "")
            raise ApiError("redirect", f"ipfloaterd at {url} answered {resp.status_code} "
                                       f"redirecting to {location!r}; redirects are not "
                                       "followed (the token goes only to the configured URL)",
                           resp.status_code)
        try:
            payload = resp.json()
        except ValueError:
            error = ApiError("bad_response", f"ipfloaterd at {url} answered {resp.status_code} "
                                             f"with a body that is not JSON", resp.status_code)
            if resp.status_code >= 500:  # e.g. a proxy's error page
                raise _NoAnswer(error, sent=resp.status_code != 503) from None
            raise error from None
        if resp.status_code >= 400:
            err = payload.get("error", {}) if isinstance(payload, dict) else {}
            error = ApiError(err.get("code", "error"), err.get("message", f"HTTP {resp.status_code}"),
                             resp.status_code)
            if resp.status_code >= 500:
                raise _NoAnswer(error, sent=resp.status_code != 503)
            raise error
        return payload

    def health(self) -> dict:
        return self._call("GET", "/health")

    def health_of_each(self) -> list[tuple[str, Any]]:
        """(url, GET /v1/health answer or the ApiError) of every configured daemon, in
        order, without failing over: what ``ipfloater status`` shows of an HA group.
        Asked all at once (one thread per URL): a router that does not answer costs the
        timeout once, not once per router after it."""
        def ask(url: str) -> tuple[str, Any]:
            try:
                return url, self._attempt(url, "GET", "/health", None, None, self.timeout)
            except _NoAnswer as exc:
                return url, exc.error
            except ApiError as exc:
                return url, exc
        if len(self.urls) == 1:
            return [ask(self.urls[0])]
        with ThreadPoolExecutor(max_workers=len(self.urls), thread_name_prefix="health") as pool:
            return list(pool.map(ask, self.urls))  # map keeps the order of the URLs

    def version(self) -> dict:
        return self._call("GET", "/version")

    def pool(self) -> dict:
        return self._call("GET", "/pool")

    def pools(self, name: Optional[str] = None) -> Any:
        """Every pool (a list), or one pool (a dict): figures and addresses."""
        if name is None:
            return self._call("GET", "/pools")["pools"]
        return self._call("GET", f"/pools/{quote(name, safe='')}")

    def list(self, **filters) -> list[dict]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self._call("GET", "/floatingips", params=params)["floatingips"]

    def show(self, public_ip: str) -> dict:
        return self._call("GET", f"/floatingips/{public_ip}")

    def allocate(self, **fields) -> dict:
        """With a ``ref`` the daemon returns what the ref holds, so sending it again (to
        another URL, after a timeout) cannot take a second address; without one it can."""
        return self._call("POST", "/floatingips", {k: v for k, v in fields.items() if v is not None},
                          repeatable=fields.get("ref") is not None)

    def associate(self, public_ip: str, private_ip: str, **fields) -> dict:
        body = {"private_ip": private_ip, **{k: v for k, v in fields.items() if v is not None}}
        return self._call("PUT", f"/floatingips/{public_ip}/association", body, repeatable=True)

    def disassociate(self, public_ip: str, **fields) -> dict:
        return self._call("DELETE", f"/floatingips/{public_ip}/association",
                          {k: v for k, v in fields.items() if v is not None}, repeatable=True)

    def release(self, public_ip: str, **fields) -> dict:
        """Repeatable: a second release answers not_allocated (the driver takes that as done)."""
        return self._call("DELETE", f"/floatingips/{public_ip}",
                          {k: v for k, v in fields.items() if v is not None}, repeatable=True)

    def reconcile(self) -> dict:
        return self._call("POST", "/reconcile", {}, repeatable=True)

    def history(self, **params) -> dict:
        """GET /v1/history: public_ip, at | since, until, limit (times as the API takes them)."""
        return self._call("GET", "/history", params={k: v for k, v in params.items() if v is not None})

    def set_ha_state(self, state: str) -> dict:
        """This router's state: never sent to another router's daemon."""
        return self._call("PUT", "/ha-state", {"state": state}, failover=False)

    def neighbours(self, mac: Optional[str] = None) -> list[dict]:
        return self._call("GET", "/neighbours", params={"mac": mac} if mac else None)["neighbours"]
