"""GET /v1/history over HTTP (in process): roles (operator and reader see everything, an
owner token its owner's events only), the token's name as actor, bad parameters (400
naming the parameter and the value, nothing changed), and the `ipfloater history` CLI."""

import json

import pytest
import requests

from one_ipfloater import cli
from one_ipfloater.api import ApiApp
from one_ipfloater.auth import Authenticator, TokenTable
from one_ipfloater.httpserver import serve_in_thread
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.fakes import FakeBackend, FakeHost, fake_config

FILE_TOKEN = "f" * 40
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
ALICE_FIP, BOB_FIP = "198.51.100.10", "198.51.100.11"


class Clock:
    now = T0

    def __call__(self):
        return self.now


@pytest.fixture
def env(tmp_path):
    config = fake_config(tmp_path / "state.db", pool="198.51.100.10-198.51.100.20")
    clock = Clock()
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost(), clock=clock)
    svc.start()
    table = TokenTable(config.db_path)
    tokens = {"token-file": FILE_TOKEN, "operator": table.add("ops", "operator"),
              "reader": table.add("watch", "reader"), "owner": table.add("alice-tok", "owner", "alice")}
    _server, url, stop = serve_in_thread(ApiApp(svc, Authenticator(FILE_TOKEN, TokenTable(config.db_path))))
    # alice's address through her own token, bob's through the operator's, then a move at T0+100
    assert call(url, tokens["owner"], "POST", "/v1/floatingips",
                {"public_ip": ALICE_FIP, "private_ip": "10.77.0.11", "ref": "a"})[0] == 201
    assert call(url, tokens["operator"], "POST", "/v1/floatingips",
                {"public_ip": BOB_FIP, "private_ip": "10.77.0.12", "owner": "bob", "ref": "b"})[0] == 201
    clock.now = T0 + 100
    assert call(url, tokens["owner"], "PUT", f"/v1/floatingips/{ALICE_FIP}/association",
                {"private_ip": "10.77.0.13", "allow_move": True})[0] == 200
    yield url, svc, clock, tokens
    stop()
    table.close()


def call(url, token, method, path, body=None):
    resp = requests.request(method, url + path, json=body, timeout=5,
                            headers={"Authorization": f"Bearer {token}"} if token else {})
    return resp.status_code, resp.json()


def test_events_name_the_token_that_asked(env):
    url, _svc, _clock, tokens = env
    status, body = call(url, tokens["reader"], "GET", "/v1/history")
    assert status == 200 and not body["truncated"] and body["history_from"] == "2023-11-14T22:13:20Z"
    assert [(e["event"], e["public_ip"], e["owner"], e["actor"], e["at"]) for e in body["events"]] == [
        ("allocate", ALICE_FIP, "alice", "alice-tok", "2023-11-14T22:13:20Z"),
        ("associate", ALICE_FIP, "alice", "alice-tok", "2023-11-14T22:13:20Z"),
        ("allocate", BOB_FIP, "bob", "ops", "2023-11-14T22:13:20Z"),
        ("associate", BOB_FIP, "bob", "ops", "2023-11-14T22:13:20Z"),
        ("move", ALICE_FIP, "alice", "alice-tok", "2023-11-14T22:15:00Z")]
    move = body["events"][-1]
    assert (move["private_ip"], move["previous_private_ip"], move["pool"], move["ref"], move["at_unix"]) == (
        "10.77.0.13", "10.77.0.11", "default", "a", T0 + 100)


@pytest.mark.parametrize("at, private", [("1700000099", "10.77.0.11"), ("1700000100", "10.77.0.13"),
                                         ("2023-11-14T22:15:01Z", "10.77.0.13")])
def test_who_held_it_at_a_time(env, at, private):
    url, _svc, _clock, tokens = env
    status, body = call(url, tokens["operator"], "GET", f"/v1/history?public_ip={ALICE_FIP}&at={at}")
    assert status == 200 and body["held"] is True
    assert (body["event"]["owner"], body["event"]["ref"], body["event"]["private_ip"]) == ("alice", "a", private)


def test_before_the_history_and_never_allocated(env):
    url, _svc, _clock, tokens = env
    body = call(url, tokens["reader"], "GET", f"/v1/history?public_ip={ALICE_FIP}&at=1600000000")[1]
    assert body["held"] is None and body["event"] is None  # before the history began: unknown
    body = call(url, tokens["reader"], "GET", "/v1/history?public_ip=198.51.100.15&at=1700000050")[1]
    assert body["held"] is False and body["event"] is None


@pytest.mark.parametrize("role", ["token-file", "operator", "reader"])
def test_operators_and_readers_see_everything(env, role):
    url, _svc, _clock, tokens = env
    body = call(url, tokens[role], "GET", "/v1/history")[1]
    assert {e["owner"] for e in body["events"]} == {"alice", "bob"}
    assert call(url, tokens[role], "GET", f"/v1/history?public_ip={BOB_FIP}&at=1700000050")[1]["held"]


def test_an_owner_token_sees_its_owner_only(env):
    url, svc, _clock, tokens = env
    tok = tokens["owner"]
    body = call(url, tok, "GET", "/v1/history")[1]
    assert {e["owner"] for e in body["events"]} == {"alice"} and len(body["events"]) == 3
    assert call(url, tok, "GET", f"/v1/history?public_ip={BOB_FIP}")[1]["events"] == []
    status, body = call(url, tok, "GET", f"/v1/history?public_ip={BOB_FIP}&at=1700000050")
    assert status == 403 and body["error"]["code"] == "owner_mismatch" and "alice" in body["error"]["message"]
    assert call(url, tok, "GET", f"/v1/history?public_ip={ALICE_FIP}&at=1700000050")[1]["held"]
    assert call(url, None, "GET", "/v1/history")[0] == 401
    assert call(url, tokens["reader"], "POST", "/v1/history", {})[0] in (403, 405)
    assert call(url, tokens["operator"], "DELETE", "/v1/history", {})[0] == 405


@pytest.mark.parametrize("query, fragment", [
    ("at=soon&public_ip=198.51.100.10", "at: 'soon' is not a time"),
    ("at=2023-11-14T22:13:20&public_ip=198.51.100.10", "at: '2023-11-14T22:13:20' has no time zone"),
    ("since=-1", "since: '-1' is not a time"),
    ("until=999999999999", "until: '999999999999' is out of range"),
    ("since=1700000100&until=1700000000", "since: '1700000100' is after until '1700000000'"),
    ("at=1700000000", "public_ip: missing (required with at)"),
    ("at=1700000000&public_ip=198.51.100.10&since=1", "since: '1' cannot be combined with at"),
    ("at=1700000000&public_ip=198.51.100.10&limit=5", "limit: '5' cannot be combined with at"),
    ("limit=0", "limit: '0' is not a number from 1 to 10000"),
    ("limit=10001", "limit: '10001'"),
    ("limit=1e3", "limit: '1e3'"),
    ("public_ip=198.51.100.999", "198.51.100.999"),
    ("owner=bob", "owner: unknown query parameter"),
])
def test_bad_parameters_are_400_naming_parameter_and_value(env, query, fragment):
    url, svc, _clock, tokens = env
    before = svc.store.history.all()
    status, body = call(url, tokens["operator"], "GET", f"/v1/history?{query}")
    assert status == 400 and body["error"]["code"] == "bad_request", body
    assert fragment in body["error"]["message"]
    assert svc.store.history.all() == before


def test_limit_truncates_oldest_first(env):
    url, _svc, _clock, tokens = env
    body = call(url, tokens["operator"], "GET", "/v1/history?limit=2&since=2023-11-14T22:13:20Z")[1]
    assert len(body["events"]) == 2 and body["truncated"] and body["events"][0]["event"] == "allocate"


# -- the CLI ---------------------------------------------------------------------------

def run_cli(url, capsys, monkeypatch, token, *args):
    monkeypatch.setenv("IPFLOATER_TOKEN", token)
    host, port = url.replace("http://", "").split(":")
    code = cli.main(["-i", host, "-p", port, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_history(env, capsys, monkeypatch):
    url, _svc, _clock, tokens = env
    tok = tokens["reader"]
    code, out, err = run_cli(url, capsys, monkeypatch, tok, "history", ALICE_FIP, "--at", "2023-11-14T22:14:00Z")
    assert code == 0, err
    assert out.splitlines()[0] == ("198.51.100.10 at 2023-11-14T22:14:00Z: held by owner alice, ref a, "
                                   "pointing at 10.77.0.11 (since 2023-11-14T22:13:20Z, associate by alice-tok)")
    code, out, _ = run_cli(url, capsys, monkeypatch, tok, "history", "--since", "1700000050")
    lines = out.splitlines()
    assert lines[0].split() == ["AT", "EVENT", "PUBLIC_IP", "PRIVATE_IP", "PREVIOUS_PRIVATE_IP", "OWNER", "REF",
                                "POOL", "ACTOR"]
    assert lines[1].split() == ["2023-11-14T22:15:00Z", "move", ALICE_FIP, "10.77.0.13", "10.77.0.11", "alice",
                                "a", "default", "alice-tok"]
    code, out, _ = run_cli(url, capsys, monkeypatch, tok, "--json", "history", BOB_FIP)
    assert [e["event"] for e in json.loads(out)["events"]] == ["allocate", "associate"]
    code, out, _ = run_cli(url, capsys, monkeypatch, tok, "history", "198.51.100.15", "--at", "1700000050")
    assert out.strip() == "198.51.100.15 at 2023-11-14T22:14:10Z: not allocated"


@pytest.mark.parametrize("args, fragment", [
    (["history", "--at", "1700000000"], "PUBLIC_IP is required"),
    (["history", ALICE_FIP, "--at", "1700000000", "--since", "1"], "--since cannot be combined with --at"),
    (["history", ALICE_FIP, "--at", "noon"], "argument --at: 'noon' is not a time"),
    (["history", "--limit", "0"], "--limit: '0' is not a number from 1 to 10000"),
])
def test_cli_history_usage_errors_are_one_line_exit_2(env, capsys, monkeypatch, args, fragment):
    url, _svc, _clock, tokens = env
    with pytest.raises(SystemExit) as exited:
        run_cli(url, capsys, monkeypatch, tokens["reader"], *args)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def test_cli_history_refusal_exit_1(env, capsys, monkeypatch):
    url, _svc, _clock, tokens = env
    code, _out, err = run_cli(url, capsys, monkeypatch, tokens["owner"], "history", BOB_FIP, "--at", "1700000050")
    assert code == 1 and err.startswith("ipfloater: public_ip: 198.51.100.11 at")
