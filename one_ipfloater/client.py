"""Python client of the ipfloaterd REST API (used by the CLI and the OpenNebula driver)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import requests

DEFAULT_URL = "http://127.0.0.1:7003"
DEFAULT_TOKEN_FILE = "/var/lib/ipfloater/token"


class ApiError(Exception):
    """An error answer of the daemon (code, HTTP status, message) or no answer at all."""

    def __init__(self, code: str, message: str, status: int = 0):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def read_token(token_file: Optional[str] = None, env: Optional[dict] = None) -> str:
    """The token from $IPFLOATER_TOKEN, else from the token file."""
    env = os.environ if env is None else env
    if env.get("IPFLOATER_TOKEN"):
        return env["IPFLOATER_TOKEN"].strip()
    path = token_file or DEFAULT_TOKEN_FILE
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ApiError("no_token", f"token file {path}: {exc.strerror} (set IPFLOATER_TOKEN or --token-file)") from None


class IpfloaterClient:
    """Thin wrapper: one method per API route; errors become ApiError."""

    def __init__(self, url: str = DEFAULT_URL, token: str = "", timeout: float = 10.0,
                 session: Optional[requests.Session] = None):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = session or requests.Session()

    def _call(self, method: str, path: str, body: Optional[dict] = None,
              params: Optional[dict] = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            resp = self.session.request(method, f"{self.url}/v1{path}", json=body, params=params,
                                        headers=headers, timeout=self.timeout)
        except requests.Timeout:
            raise ApiError("timeout", f"ipfloaterd at {self.url} did not answer within {self.timeout:g}s") from None
        except requests.ConnectionError:
            raise ApiError("unreachable", f"ipfloaterd at {self.url} is unreachable") from None
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

    def neighbours(self, mac: Optional[str] = None) -> list[dict]:
        return self._call("GET", "/neighbours", params={"mac": mac} if mac else None)["neighbours"]
