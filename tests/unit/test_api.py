"""REST API and CLI against a real HTTP server over the in-memory kernel (no root)."""

import json
import socket

import pytest
import requests

from one_ipfloater import cli
from one_ipfloater.api import ApiApp
from one_ipfloater.httpserver import serve_in_thread
from one_ipfloater.auth import Authenticator
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.fakes import FakeBackend, FakeHost, fake_config

TOKEN = "t" * 32


@pytest.fixture
def daemon(tmp_path):
    config = fake_config(tmp_path / "state.db")
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
    svc.start()
    _server, url, stop = serve_in_thread(ApiApp(svc, Authenticator(TOKEN)), max_body=4096, request_timeout=5)
    yield url, svc
    stop()


def call(url, method, path, body=None, token=TOKEN, raw=None, headers=None):
    hdrs = {"Authorization": f"Bearer {token}"} if token else {}
    hdrs.update(headers or {})
    resp = requests.request(method, url + path, json=body, data=raw, headers=hdrs, timeout=5)
    return resp.status_code, resp.json()


def test_lifecycle_over_http(daemon):
    url, _svc = daemon
    status, body = call(url, "POST", "/v1/floatingips", {"private_ip": "10.77.0.11", "owner": "uid:3"})
    assert status == 201 and body["public_ip"] == "198.51.100.10" and body["status"] == "associated"
    assert call(url, "GET", "/v1/floatingips/198.51.100.10")[1]["private_ip"] == "10.77.0.11"
    status, body = call(url, "PUT", "/v1/floatingips/198.51.100.10/association", {"private_ip": "10.77.0.12"})
    assert status == 403 and body["error"]["code"] == "owner_mismatch"  # leaving owner out is no wildcard
    status, body = call(url, "PUT", "/v1/floatingips/198.51.100.10/association",
                        {"private_ip": "10.77.0.12", "owner": "uid:3"})
    assert status == 409 and body["error"]["code"] == "address_in_use"
    status, body = call(url, "PUT", "/v1/floatingips/198.51.100.10/association",
                        {"private_ip": "10.77.0.12", "allow_move": True, "owner": "uid:3"})
    assert status == 200 and body["private_ip"] == "10.77.0.12"
    assert call(url, "GET", "/v1/floatingips?private_ip=10.77.0.12")[1]["floatingips"][0]["public_ip"] == "198.51.100.10"
    status, body = call(url, "DELETE", "/v1/floatingips/198.51.100.10/association", {"owner": "uid:3"})
    assert status == 200 and body["status"] == "allocated"
    status, body = call(url, "DELETE", "/v1/floatingips/198.51.100.10", {"owner": "uid:3"})
    assert status == 200 and body["status"] == "released"
    pool = call(url, "GET", "/v1/pool")[1]
    assert pool["free"] == 3 and {a["status"] for a in pool["addresses"]} == {"free"}


def test_health_needs_no_token_everything_else_does(daemon):
    url, svc = daemon
    # warnings depend on the host running the test (ip_forward): the service's own list
    assert call(url, "GET", "/v1/health", token=None) == (200, {"status": "ok", "warnings": svc.warnings})
    for method, path in (("GET", "/v1/version"), ("GET", "/v1/pool"), ("GET", "/v1/floatingips"),
                         ("POST", "/v1/floatingips"), ("POST", "/v1/reconcile")):
        for token in (None, "wrong", TOKEN[:-1]):
            status, body = call(url, method, path, token=token)
            assert status == 401 and body == {"error": {"code": "unauthorized",
                                                        "message": "missing or invalid token"}}


@pytest.mark.parametrize("method, path, kwargs, status, code, fragment", [
    ("POST", "/v1/floatingips", {"raw": b"{nope"}, 400, "bad_request", "body: not valid JSON"),
    ("POST", "/v1/floatingips", {"body": []}, 400, "bad_request", "expected a JSON object"),
    ("POST", "/v1/floatingips", {"body": {"private_ip": 7}}, 400, "bad_request", "private_ip: 7"),
    ("POST", "/v1/floatingips", {"body": {"private_ip": "10.77.0.11 "}}, 400, "bad_request", "private_ip"),
    ("POST", "/v1/floatingips", {"body": {"privat_ip": "10.77.0.11"}}, 400, "bad_request", "privat_ip: unknown field"),
    ("POST", "/v1/floatingips", {"body": {"owner": "a b"}}, 400, "bad_request", "owner"),
    ("POST", "/v1/floatingips", {"body": {"allow_move": "yes"}}, 400, "bad_request", "allow_move"),
    ("POST", "/v1/floatingips", {"body": {"public_ip": "203.0.113.1"}}, 422, "not_in_pool", "not in the pool"),
    ("POST", "/v1/floatingips", {"body": {"private_ip": "10.99.0.1"}}, 422, "private_not_allowed", "outside"),
    ("POST", "/v1/floatingips", {"raw": b"x" * 5000}, 413, "body_too_large", "over the limit"),
    ("PUT", "/v1/floatingips/198.51.100.10/association", {"body": {}}, 400, "bad_request", "private_ip: missing"),
    ("GET", "/v1/floatingips/198.51.100.11", {}, 404, "not_allocated", "not allocated"),
    ("GET", "/v1/floatingips/nonsense", {}, 400, "bad_request", "public_ip: 'nonsense'"),
    ("GET", "/v1/nothing", {}, 404, "not_found", "not an API route"),
    ("GET", "/v2/health", {}, 404, "not_found", "not an API route"),
    ("PATCH", "/v1/floatingips", {}, 405, "method_not_allowed", "GET, POST"),
    ("GET", "/v1/reconcile", {}, 405, "method_not_allowed", "POST"),
    ("GET", "/v1/floatingips?color=red", {}, 400, "bad_request", "color: unknown query parameter"),
    ("GET", "/v1/neighbours?mac=zz", {}, 400, "bad_request", "mac: 'zz'"),
])
def test_bad_requests_get_clear_errors_and_change_nothing(daemon, method, path, kwargs, status, code, fragment):
    url, svc = daemon
    before = (list(svc.registry), svc.store.allocations())
    got_status, body = call(url, method, path, **kwargs)
    assert (got_status, body["error"]["code"]) == (status, code)
    assert fragment in body["error"]["message"] and "\n" not in body["error"]["message"]
    assert before == (list(svc.registry), svc.store.allocations())


def test_pool_exhausted_is_a_409(daemon):
    url, _svc = daemon
    for i in range(3):
        assert call(url, "POST", "/v1/floatingips", {})[0] == 201
    status, body = call(url, "POST", "/v1/floatingips", {})
    assert status == 409 and body["error"]["code"] == "pool_exhausted"


def test_keepalive_connection_survives_errors(daemon):
    url, _svc = daemon
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        for _ in range(3):
            assert session.post(url + "/v1/floatingips", data=b"{bad", timeout=5).status_code == 400
            assert session.get(url + "/v1/version", timeout=5).status_code == 200


def test_slow_client_does_not_block_others(daemon):
    url, _svc = daemon
    host, port = url.rsplit(":", 1)
    with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as stuck:
        stuck.sendall(b"POST /v1/floatingips HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        assert call(url, "GET", "/v1/health", token=None)[0] == 200


def run_cli(url, capsys, *args):
    host, port = url.replace("http://", "").split(":")
    code = cli.main(["-i", host, "-p", port, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_original_commands(daemon, capsys, monkeypatch):
    url, _svc = daemon
    monkeypatch.setenv("IPFLOATER_TOKEN", TOKEN)
    assert run_cli(url, capsys, "getip", "10.77.0.11") == (0, "198.51.100.10\n", "")
    assert run_cli(url, capsys, "getip", "10.77.0.11") == (0, "198.51.100.10\n", "")
    code, out, _ = run_cli(url, capsys, "redirect", "198.51.100.12", "10.77.0.12")
    assert code == 0 and out == "198.51.100.12 -> 10.77.0.12\n"
    code, out, _ = run_cli(url, capsys, "--json", "status")
    assert [f["public_ip"] for f in json.loads(out)["floatingips"]] == ["198.51.100.10", "198.51.100.12"]
    code, out, _ = run_cli(url, capsys, "status")
    assert out.splitlines()[0].split() == ["PUBLIC_IP", "PRIVATE_IP", "STATUS", "OWNER", "REF"]
    assert run_cli(url, capsys, "releaseip", "10.77.0.12")[1] == "released 198.51.100.12\n"
    assert run_cli(url, capsys, "releaseip", "198.51.100.10")[1] == "released 198.51.100.10\n"
    code, out, _ = run_cli(url, capsys, "--json", "ippool")
    assert json.loads(out)["free"] == 3
    code, out, _ = run_cli(url, capsys, "--json", "version")
    assert json.loads(out)["server"] == json.loads(out)["client"]


def test_cli_changes_owned_addresses_only_with_owner_or_operator(daemon, capsys, monkeypatch):
    url, _svc = daemon
    monkeypatch.setenv("IPFLOATER_TOKEN", TOKEN)
    assert run_cli(url, capsys, "getip", "10.77.0.11", "--owner", "one:uid:4")[0] == 0
    code, _, err = run_cli(url, capsys, "redirect", "198.51.100.10", "10.77.0.12")
    assert code == 1 and "belongs to 'one:uid:4'" in err  # no owner named: refused
    code, out, _ = run_cli(url, capsys, "redirect", "198.51.100.10", "10.77.0.12", "--owner", "one:uid:4")
    assert code == 0 and out == "198.51.100.10 -> 10.77.0.12\n"
    assert run_cli(url, capsys, "releaseip", "198.51.100.10")[0] == 1
    assert run_cli(url, capsys, "releaseip", "198.51.100.10", "--operator")[1] == "released 198.51.100.10\n"


def test_cli_errors_are_one_line_and_nonzero(daemon, capsys, monkeypatch):
    url, _svc = daemon
    monkeypatch.setenv("IPFLOATER_TOKEN", TOKEN)
    code, out, err = run_cli(url, capsys, "getip", "10.99.0.1")
    assert code == 1 and out == "" and err == "ipfloater: private_ip: 10.99.0.1 is outside PRIVATE_IP_RANGES (10.77.0.0/24)\n"
    code, _, err = run_cli(url, capsys, "releaseip", "10.77.0.50")
    assert code == 1 and "neither an allocated floating IP" in err
    code, _, err = run_cli(url, capsys, "--json", "show", "198.51.100.11")
    assert code == 1 and json.loads(err)["error"]["code"] == "not_allocated"
    monkeypatch.setenv("IPFLOATER_TOKEN", "wrong-token-wrong-token")
    code, _, err = run_cli(url, capsys, "status")
    assert code == 1 and err == "ipfloater: missing or invalid token\n"
    with pytest.raises(SystemExit) as exc:
        cli.main(["getip", "10.77.0.999"])
    assert exc.value.code == 2
    assert "private_ip: '10.77.0.999' is not an IPv4 address" in capsys.readouterr().err


def test_cli_without_daemon_exits_3(capsys, monkeypatch):
    monkeypatch.setenv("IPFLOATER_TOKEN", TOKEN)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _out, err = run_cli(f"http://127.0.0.1:{port}", capsys, "status")
    assert code == 3 and "unreachable" in err


def test_list_filters(daemon):
    url, _svc = daemon
    call(url, "POST", "/v1/floatingips", {"private_ip": "10.77.0.11", "ref": "one:vm:1:nic:0", "owner": "one:uid:1"})
    call(url, "POST", "/v1/floatingips", {"ref": "one:vm:12:nic:0", "owner": "one:uid:2"})
    call(url, "POST", "/v1/floatingips", {"ref": "one:vm:1:nic:2", "owner": "one:uid:1"})

    def refs(query):
        return [f["ref"] for f in call(url, "GET", "/v1/floatingips" + query)[1]["floatingips"]]

    assert refs("?ref_prefix=one:vm:1:") == ["one:vm:1:nic:0", "one:vm:1:nic:2"]
    assert refs("?owner=one:uid:2") == ["one:vm:12:nic:0"]
    assert refs("?ref=one:vm:1:nic:2") == ["one:vm:1:nic:2"]
    assert refs("?private_ip=10.77.0.11&owner=one:uid:1") == ["one:vm:1:nic:0"]
