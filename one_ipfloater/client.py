"""Python client of the ipfloaterd REST API (used by the CLI and the OpenNebula driver).

The token is a bearer secret, so the client sends it to the URL it was given and
nowhere else: proxies from the environment ($HTTP_PROXY, $ALL_PROXY...) and ~/.netrc
are ignored unless the caller asks for them (``use_env_proxy``), and redirects are never
followed (a 3xx is an error naming its Location). URLs and host names are checked
before anything is sent, so a malformed one is one line, not a traceback.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import quote, urlsplit

import requests

from .addresses import AddressError, parse_ipv4

DEFAULT_URL = "http://127.0.0.1:7003"
DEFAULT_TOKEN_FILE = "/var/lib/ipfloater/token"


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

    def __init__(self, url: str = DEFAULT_URL, token: str = "", timeout: float = 10.0,
                 session: Optional[requests.Session] = None, use_env_proxy: bool = False):
        """``use_env_proxy``: honour $HTTP(S)_PROXY/$ALL_PROXY/$NO_PROXY and ~/.netrc
        (requests' ``trust_env``); off by default. Raises UrlError on a bad URL."""
        self.url = check_url(url, "url").rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.trust_env = use_env_proxy
        self.verify = True if use_env_proxy else _ca_bundle(os.environ)

    def _call(self, method: str, path: str, body: Optional[dict] = None,
              params: Optional[dict] = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            resp = self.session.request(method, f"{self.url}/v1{path}", json=body, params=params,
                                        headers=headers, timeout=self.timeout,
                                        allow_redirects=False, verify=self.verify)
        except requests.Timeout:
            raise ApiError("timeout", f"ipfloaterd at {self.url} did not answer within {self.timeout:g}s") from None
        except requests.ConnectionError:
            raise ApiError("unreachable", f"ipfloaterd at {self.url} is unreachable") from None
        except (requests.RequestException, ValueError) as exc:  # bad header, bad URL...
            raise ApiError("bad_request", f"cannot send the request to ipfloaterd at "
                                          f"{self.url}: {' '.join(str(exc).split())}") from None
        if 300 <= resp.status_code < 400:
            location = resp.headers.get("Location", "")
            raise ApiError("redirect", f"ipfloaterd at {self.url} answered {resp.status_code} "
                                       f"redirecting to {location!r}; redirects are not "
                                       "followed (the token goes only to the configured URL)",
                           resp.status_code)
        try:
            payload = resp.json()
        except ValueError:
            raise ApiError("bad_response", f"ipfloaterd at {self.url} answered {resp.status_code} "
                                           f"with a body that is not JSON", resp.status_code) from None
        if resp.status_code >= 400:
            err = payload.get("error", {}) if isinstance(payload, dict) else {}
            raise ApiError(err.get("code", "error"), err.get("message", f"HTTP {resp.status_code}"),
                           resp.status_code)
        return payload

    def health(self) -> dict:
        return self._call("GET", "/health")

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
        return self._call("POST", "/floatingips", {k: v for k, v in fields.items() if v is not None})

    def associate(self, public_ip: str, private_ip: str, **fields) -> dict:
        body = {"private_ip": private_ip, **{k: v for k, v in fields.items() if v is not None}}
        return self._call("PUT", f"/floatingips/{public_ip}/association", body)

    def disassociate(self, public_ip: str, **fields) -> dict:
        return self._call("DELETE", f"/floatingips/{public_ip}/association",
                          {k: v for k, v in fields.items() if v is not None})

    def release(self, public_ip: str, **fields) -> dict:
        return self._call("DELETE", f"/floatingips/{public_ip}",
                          {k: v for k, v in fields.items() if v is not None})

    def reconcile(self) -> dict:
        return self._call("POST", "/reconcile", {})

    def history(self, **params) -> dict:
        """GET /v1/history: public_ip, at | since, until, limit (times as the API takes them)."""
        return self._call("GET", "/history", params={k: v for k, v in params.items() if v is not None})

    def set_ha_state(self, state: str) -> dict:
        return self._call("PUT", "/ha-state", {"state": state})

    def neighbours(self, mac: Optional[str] = None) -> list[dict]:
        return self._call("GET", "/neighbours", params={"mac": mac} if mac else None)["neighbours"]
