"""The token goes to the configured URL and nowhere else: no proxy from the environment
(unless asked), no ~/.netrc, no redirect followed. Tiny recording HTTP servers on
127.0.0.1 stand for the daemon, a redirect target and a proxy; the real `ipfloater`
console script runs as a subprocess, and the driver's client is built from its config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from one_ipfloater.client import ApiError, IpfloaterClient
from one_ipfloater.one.config import parse_one_config_text
from one_ipfloater.one.driver import clients_from_config

TOKEN = "s3cret-token-" + "t" * 20
BIN = Path(sys.executable).parent
PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
              "all_proxy", "NO_PROXY", "no_proxy", "NETRC", "REQUESTS_CA_BUNDLE",
              "CURL_CA_BUNDLE")


class Recorder:
    """An HTTP server on 127.0.0.1 that records (method, path, Authorization) of every
    request and answers ``reply(path)``: (status, headers, JSON body)."""

    def __init__(self, reply):
        self.requests = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                recorder.requests.append((self.command, self.path,
                                          self.headers.get("Authorization")))
                status, headers, body = reply(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    @property
    def tokens(self):
        return [auth for _, _, auth in self.requests]


def daemon_reply(path):
    return 200, {}, {"floatingips": [], "status": "ok"}


@pytest.fixture
def servers():
    made = []

    def make(reply=daemon_reply):
        made.append(Recorder(reply))
        return made[-1]
    yield make
    for r in made:
        r.close()


@pytest.fixture
def clean_env(monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def redirector(servers, status, location):
    return servers(lambda path: (status, {"Location": location}, {"moved": True}))


def cli(*args, env=None):
    base = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    return subprocess.run([str(BIN / "ipfloater"), *args], capture_output=True, text=True,
                          env={**base, "IPFLOATER_TOKEN": TOKEN, **(env or {})}, timeout=60)


# --- redirects -----------------------------------------------------------------------------

@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("where", ["other-port", "same-server"])
def test_a_redirect_is_an_error_naming_the_location_and_is_not_followed(servers, clean_env,
                                                                         status, where):
    target = servers()
    moved = redirector(servers, status, f"{target.url}/v1/floatingips" if where == "other-port"
                       else "/elsewhere/v1/floatingips")
    client = IpfloaterClient(moved.url, TOKEN, timeout=5)
    for call in (lambda: client.list(), lambda: client.allocate(private_ip="10.0.0.5")):
        with pytest.raises(ApiError) as info:
            call()
        err = info.value
        assert err.code == "redirect" and err.status == status
        assert "\n" not in err.message and "redirects are not followed" in err.message
        assert (f"{target.url}/v1/floatingips" if where == "other-port"
                else "/elsewhere/v1/floatingips") in err.message
    assert target.requests == []  # nothing at all went to the redirect target
    assert [p for _, p, _ in moved.requests] == ["/v1/floatingips"] * 2  # one hop each
    assert moved.tokens == [f"Bearer {TOKEN}"] * 2


def test_cli_refuses_a_redirect_with_one_line(servers, clean_env):
    target = servers()
    moved = redirector(servers, 307, f"{target.url}/v1/floatingips")
    proc = cli("--url", moved.url, "status")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("ipfloater: ")
    assert f"answered 307 redirecting to '{target.url}/v1/floatingips'" in proc.stderr
    assert target.requests == []


# --- proxies and ~/.netrc from the environment ---------------------------------------------

def proxy_env(proxy):
    return {"HTTP_PROXY": proxy.url, "http_proxy": proxy.url, "ALL_PROXY": proxy.url,
            "all_proxy": proxy.url}


def test_cli_ignores_the_environment_proxy_unless_asked(servers):
    daemon, proxy = servers(), servers()
    proc = cli("--url", daemon.url, "--json", "status", env=proxy_env(proxy))
    assert proc.returncode == 0, proc.stderr
    # (status asks /v1/floatingips, then /v1/health for the router's HA state)
    assert proxy.requests == [] and daemon.tokens == [f"Bearer {TOKEN}"] * 2
    # The control: asked to, it goes through the proxy (so the recorder would have seen it).
    proc = cli("--use-env-proxy", "--url", daemon.url, "--json", "status", env=proxy_env(proxy))
    assert proc.returncode == 0, proc.stderr
    assert [(m, p) for m, p, _ in proxy.requests] == [("GET", f"{daemon.url}/v1/floatingips"),
                                                       ("GET", f"{daemon.url}/v1/health")]
    assert len(daemon.requests) == 2


def test_driver_client_follows_ipfloater_use_env_proxy(servers, clean_env, tmp_path):
    daemon, proxy = servers(), servers()
    for var, value in proxy_env(proxy).items():
        clean_env.setenv(var, value)
    clean_env.setenv("IPFLOATER_TOKEN", TOKEN)
    (tmp_path / "auth").write_text("oneadmin:pw\n")
    seen = {}
    for setting in ("", "IPFLOATER_USE_ENV_PROXY = no\n", "IPFLOATER_USE_ENV_PROXY = yes\n"):
        config = parse_one_config_text(f"[ONE_IPFLOATER]\nIPFLOATER_URL = {daemon.url}\n"
                                       f"ONE_AUTH = {tmp_path}/auth\n{setting}", "c", env={})
        _, client = clients_from_config(config)
        before = len(proxy.requests)
        client.list()
        seen[setting] = len(proxy.requests) - before
    assert seen == {"": 0, "IPFLOATER_USE_ENV_PROXY = no\n": 0,
                    "IPFLOATER_USE_ENV_PROXY = yes\n": 1}
    assert set(daemon.tokens) == {f"Bearer {TOKEN}"}


def test_netrc_never_replaces_the_token(servers, clean_env, tmp_path):
    daemon = servers()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password other\n")
    os.chmod(netrc, 0o600)
    clean_env.setenv("NETRC", str(netrc))
    IpfloaterClient(daemon.url, TOKEN, timeout=5).list()
    assert daemon.tokens == [f"Bearer {TOKEN}"]


def test_ca_bundle_from_the_environment_is_still_used(clean_env, tmp_path):
    clean_env.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    assert IpfloaterClient("https://router:7443", TOKEN).verify == str(tmp_path / "ca.pem")
    clean_env.delenv("REQUESTS_CA_BUNDLE")
    assert IpfloaterClient("https://router:7443", TOKEN).verify is True
