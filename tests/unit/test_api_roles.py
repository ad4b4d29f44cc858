"""Token roles over HTTP (in process): every route x every role, owner tokens acting as
their owner only, operator requests only from operator tokens, adds and revokes seen by
the running server at the next request."""

import logging
from ipaddress import IPv4Address as A

import pytest
import requests

from one_ipfloater import hostnet
from one_ipfloater.api import ApiApp
from one_ipfloater.httpserver import serve_in_thread
from one_ipfloater.auth import Authenticator, TokenError, TokenTable
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.fakes import FakeBackend, FakeHost, fake_config

FILE_TOKEN = "f" * 40
ALICE_FIP, BOB_FIP, LOOSE_FIP = "198.51.100.10", "198.51.100.11", "198.51.100.12"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setattr(hostnet, "neighbours", lambda: [])  # the root namespace's table is not ours
    config = fake_config(tmp_path / "state.db", pool="198.51.100.10-198.51.100.20")
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
    svc.start()
    svc.allocate(public_ip=A(ALICE_FIP), private_ip=A("10.77.0.11"), owner="alice", ref="a")
    svc.allocate(public_ip=A(BOB_FIP), private_ip=A("10.77.0.12"), owner="bob", ref="b")
    svc.allocate(public_ip=A(LOOSE_FIP), private_ip=A("10.77.0.13"))
    table = TokenTable(config.db_path)
    tokens = {"token-file": FILE_TOKEN, "operator": table.add("ops", "operator"),
              "reader": table.add("watch", "reader"), "owner": table.add("alice-tok", "owner", "alice")}
    _server, url, stop = serve_in_thread(ApiApp(svc, Authenticator(FILE_TOKEN, TokenTable(config.db_path))))
    yield url, svc, table, tokens
    stop()
    table.close()


def call(url, token, method, path, body=None):
    resp = requests.request(method, url + path, json=body, timeout=5,
                            headers={"Authorization": f"Bearer {token}"} if token else {})
    return resp.status_code, resp.json()


# (method, path, body) -> expected status per role; "fresh" state for each row
MATRIX = [
    ("GET", "/v1/health", None, {"token-file": 200, "operator": 200, "reader": 200, "owner": 200, None: 200}),
    ("GET", "/v1/version", None, {"token-file": 200, "operator": 200, "reader": 200, "owner": 200, None: 401}),
    ("GET", "/v1/pool", None, {"token-file": 200, "operator": 200, "reader": 200, "owner": 200, None: 401}),
    ("GET", "/v1/neighbours", None, {"token-file": 200, "operator": 200, "reader": 200, "owner": 403, None: 401}),
    ("GET", "/v1/floatingips", None, {"token-file": 200, "operator": 200, "reader": 200, "owner": 200, None: 401}),
    ("GET", f"/v1/floatingips/{ALICE_FIP}", None,
     {"token-file": 200, "operator": 200, "reader": 200, "owner": 200, None: 401}),
    ("GET", f"/v1/floatingips/{BOB_FIP}", None,
     {"token-file": 200, "operator": 200, "reader": 200, "owner": 403, None: 401}),
    ("POST", "/v1/reconcile", None, {"token-file": 200, "operator": 200, "reader": 403, "owner": 403, None: 401}),
    ("POST", "/v1/floatingips", {"private_ip": "10.77.0.50"},
     {"token-file": 201, "operator": 201, "reader": 403, "owner": 201, None: 401}),
    ("PUT", f"/v1/floatingips/{ALICE_FIP}/association", {"private_ip": "10.77.0.51", "owner": "alice", "allow_move": True},
     {"token-file": 200, "operator": 200, "reader": 403, "owner": 200, None: 401}),
    ("PUT", f"/v1/floatingips/{BOB_FIP}/association", {"private_ip": "10.77.0.51", "allow_move": True},
     {"token-file": 403, "operator": 403, "reader": 403, "owner": 403, None: 401}),
    ("PUT", f"/v1/floatingips/{BOB_FIP}/association", {"private_ip": "10.77.0.51", "allow_move": True, "operator": True},
     {"token-file": 200, "operator": 200, "reader": 403, "owner": 403, None: 401}),
    ("PUT", f"/v1/floatingips/{LOOSE_FIP}/association", {"private_ip": "10.77.0.51", "allow_move": True},
     {"token-file": 200, "operator": 200, "reader": 403, "owner": 403, None: 401}),
    ("DELETE", f"/v1/floatingips/{ALICE_FIP}/association", {"owner": "alice"},
     {"token-file": 200, "operator": 200, "reader": 403, "owner": 200, None: 401}),
    ("DELETE", f"/v1/floatingips/{BOB_FIP}/association", {},
     {"token-file": 403, "operator": 403, "reader": 403, "owner": 403, None: 401}),
    ("DELETE", f"/v1/floatingips/{ALICE_FIP}", {"owner": "alice"},
     {"token-file": 200, "operator": 200, "reader": 403, "owner": 200, None: 401}),
    ("DELETE", f"/v1/floatingips/{BOB_FIP}", {"owner": "alice"},
     {"token-file": 403, "operator": 403, "reader": 403, "owner": 403, None: 401}),
    ("DELETE", f"/v1/floatingips/{LOOSE_FIP}", {},
     {"token-file": 200, "operator": 200, "reader": 403, "owner": 403, None: 401}),
]


@pytest.mark.parametrize("method, path, body, expected", MATRIX,
                         ids=[f"{m} {p} {sorted((b or {}).items())}" for m, p, b, _ in MATRIX])
@pytest.mark.parametrize("role", ["token-file", "operator", "reader", "owner", None])
def test_role_matrix(env, role, method, path, body, expected):
    url, svc, _table, tokens = env
    before = list(svc.registry)
    status, answer = call(url, tokens.get(role), method, path, body)
    assert status == expected[role], answer
    if status >= 400:
        assert list(svc.registry) == before  # a refusal changes nothing
        assert set(answer) == {"error"}


def test_owner_token_acts_as_its_owner_only(env):
    url, svc, _table, tokens = env
    tok = tokens["owner"]
    status, body = call(url, tok, "POST", "/v1/floatingips", {})
    assert status == 201 and body["owner"] == "alice"  # the owner comes from the token
    for method, path, payload in (("POST", "/v1/floatingips", {"owner": "bob"}),
                                  ("PUT", f"/v1/floatingips/{ALICE_FIP}/association",
                                   {"private_ip": "10.77.0.60", "owner": "bob"}),
                                  ("DELETE", f"/v1/floatingips/{ALICE_FIP}", {"owner": "bob"}),
                                  ("GET", "/v1/floatingips?owner=bob", None)):
        status, answer = call(url, tok, method, path, payload)
        assert status == 403 and answer["error"]["code"] == "forbidden", answer
        assert "alice" in answer["error"]["message"]
    listed = call(url, tok, "GET", "/v1/floatingips")[1]["floatingips"]
    assert {f["owner"] for f in listed} == {"alice"}
    # idempotent allocate by another owner's ref: refused, not handed over
    status, answer = call(url, tok, "POST", "/v1/floatingips", {"ref": "b"})
    assert status == 403 and answer["error"]["code"] == "owner_mismatch"
    # allow_move onto bob's private address: refused
    status, answer = call(url, tok, "PUT", f"/v1/floatingips/{ALICE_FIP}/association",
                          {"private_ip": "10.77.0.12", "allow_move": True})
    assert status == 409 and answer["error"]["code"] == "private_in_use"
    assert svc.show(A(BOB_FIP)).private_ip == A("10.77.0.12")


@pytest.mark.parametrize("role", ["reader", "owner"])
def test_operator_flag_from_a_non_operator_token_is_forbidden(env, role):
    url, svc, _table, tokens = env
    before = list(svc.registry)
    status, answer = call(url, tokens[role], "DELETE", f"/v1/floatingips/{ALICE_FIP}", {"operator": True})
    assert status == 403 and answer["error"]["code"] == "forbidden", answer
    assert list(svc.registry) == before


def test_added_and_revoked_tokens_take_effect_without_restart(env):
    url, _svc, table, tokens = env
    other = TokenTable(table.db_path)  # another connection, as `ipfloaterd token ...` would be
    secret = other.add("late", "reader")
    assert call(url, secret, "GET", "/v1/pool")[0] == 200
    other.revoke("late")
    assert call(url, secret, "GET", "/v1/pool")[0] == 401
    other.revoke("watch")
    assert call(url, tokens["reader"], "GET", "/v1/pool")[0] == 401
    assert call(url, tokens["operator"], "GET", "/v1/pool")[0] == 200
    other.close()


def test_changes_are_logged_with_the_token_name_never_the_secret(env, caplog):
    url, _svc, _table, tokens = env
    caplog.set_level(logging.INFO, logger="one_ipfloater.api")
    call(url, tokens["operator"], "POST", "/v1/floatingips", {})
    call(url, tokens["owner"], "DELETE", f"/v1/floatingips/{BOB_FIP}", {})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "by ops: 201" in text and "by alice-tok: 403 owner_mismatch" in text
    assert not any(secret in text for secret in tokens.values())


@pytest.mark.parametrize("name, role, owner, fragment", [
    ("bad name", "reader", None, "NAME"), ("x\n", "reader", None, "NAME"), ("token-file", "reader", None, "reserved"),
    ("ok", "root", None, "--role"), ("ok", "owner", None, "--owner"), ("ok", "owner", "a\nb", "--owner"),
    ("ok", "reader", "alice", "only for --role owner"), ("-x", "reader", None, "NAME"),
])
def test_token_table_refuses_bad_input_with_one_line(tmp_path, name, role, owner, fragment):
    table = TokenTable(str(tmp_path / "s.db"))
    with pytest.raises(TokenError) as err:
        table.add(name, role, owner)
    assert fragment in str(err.value) and "\n" not in str(err.value).replace("\\n", "")
    assert table.list() == []
