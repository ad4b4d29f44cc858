"""The router's HA state (keepalived's notify): parsing, the state file, the conntrack
flush, PUT /v1/ha-state and `ipfloaterd ha-state` when no daemon answers (no root)."""

import json
import os
import socket
import subprocess
from ipaddress import IPv4Address as A
from pathlib import Path

import pytest
import requests

from one_ipfloater import daemon as daemon_mod
from one_ipfloater import hastate, hostnet
from one_ipfloater.api import ApiApp
from one_ipfloater.auth import Authenticator, TokenTable
from one_ipfloater.httpserver import serve_in_thread
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.fakes import FakeBackend, FakeHost, fake_config

TOKEN = "t" * 32


def test_states_are_keepalived_s_and_anything_else_is_refused_naming_it():
    assert hastate.parse_state("MASTER") == "master" and hastate.parse_state(" backup") == "backup"
    assert hastate.parse_state("STOP") == "stop"  # keepalived's notify_stop, or systemd's ExecStopPost
    for bad in ("primary", "", None, 3, "master;reboot"):
        with pytest.raises(hastate.HaStateError) as exc:
            hastate.parse_state(bad)
        assert str(exc.value).startswith("state: ") and repr(bad) in str(exc.value) and "\n" not in str(exc.value)


def test_enter_flushes_the_floating_addresses_and_records_the_state(tmp_path):
    path = str(tmp_path / "db.ha-state")
    flushed = []

    def flush(addrs):
        flushed.append(set(addrs))
        return {a: 2 for a in addrs}

    done = hastate.enter("master", path, [A("203.0.113.10"), A("203.0.113.11")], flush, clock=lambda: 1e9 + 5)
    assert done == {"state": "master", "since": 1e9 + 5, "conntrack_flushed": 4}
    assert flushed == [{A("203.0.113.10"), A("203.0.113.11")}]
    assert hastate.read_state(path, booted=1e9) == {"state": "master", "since": 1e9 + 5}
    # leaving master flushes too: nothing stale is left for the next time it is master
    assert hastate.enter("backup", path, [A("203.0.113.10")], flush, clock=lambda: 1e9 + 6)["conntrack_flushed"] == 2
    assert hastate.read_state(path, booted=1e9)["state"] == "backup"


def test_a_state_from_before_the_boot_or_a_broken_file_is_unknown(tmp_path):
    path = tmp_path / "db.ha-state"
    hastate.write_state(str(path), "master", 100.0)
    assert hastate.read_state(str(path), booted=200.0) == {"state": "unknown", "since": None}
    path.write_text('{"state": "leader", "since": 300}')
    assert hastate.read_state(str(path), booted=200.0)["state"] == "unknown"
    path.write_text("not json")
    assert hastate.read_state(str(path), booted=200.0)["state"] == "unknown"
    assert hastate.read_state(str(tmp_path / "missing"), booted=0.0)["state"] == "unknown"


@pytest.fixture
def api(tmp_path):
    config = fake_config(tmp_path / "state.db")
    host = FakeHost()
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), host)
    svc.start()
    ha = hastate.HaState(hastate.state_path(config.db_path), lambda: hastate.served_addresses(svc),
                         host.flush_conntrack)
    tokens = TokenTable(config.db_path)
    reader = tokens.add("ro", "reader")
    _server, url, stop = serve_in_thread(ApiApp(svc, Authenticator(TOKEN, tokens), ha_state=ha),
                                         max_body=4096, request_timeout=5)
    yield url, host, reader
    stop()
    tokens.close()


def call(url, method, path, body=None, token=TOKEN):
    resp = requests.request(method, url + path, json=body, timeout=5,
                            headers={"Authorization": f"Bearer {token}"} if token else {})
    return resp.status_code, resp.json()


def test_put_ha_state_flushes_and_health_reports_it(api):
    url, host, _reader = api
    assert call(url, "GET", "/v1/health", token=None)[1]["ha_state"]["state"] == "unknown"
    status, body = call(url, "PUT", "/v1/ha-state", {"state": "master"})
    assert status == 200 and body["state"] == "master" and body["previous"] == "unknown"
    assert set(host.flushed) == {A("198.51.100.10"), A("198.51.100.11"), A("198.51.100.12")}
    health = call(url, "GET", "/v1/health", token=None)[1]
    assert health["ha_state"]["state"] == "master" and health["ha_state"]["changes"] == 1


def test_put_ha_state_stop_flushes_and_health_says_keepalived_stopped(api):
    """`stop` (keepalived is not running) is a change like any other: flushed, recorded, shown."""
    url, host, _reader = api
    call(url, "PUT", "/v1/ha-state", {"state": "master"})
    host.flushed.clear()
    status, body = call(url, "PUT", "/v1/ha-state", {"state": "stop"})
    assert status == 200 and (body["state"], body["previous"]) == ("stop", "master")
    assert set(host.flushed) == {A("198.51.100.10"), A("198.51.100.11"), A("198.51.100.12")}
    assert call(url, "GET", "/v1/health", token=None)[1]["ha_state"]["state"] == "stop"


def test_put_ha_state_refuses_readers_and_bad_states_changing_nothing(api):
    url, host, reader = api
    status, body = call(url, "PUT", "/v1/ha-state", {"state": "master"}, token=reader)
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = call(url, "PUT", "/v1/ha-state", {"state": "leader"})
    assert status == 400 and body["error"]["message"] == "state: 'leader' is not one of master, backup, fault, stop"
    status, body = call(url, "PUT", "/v1/ha-state", {"role": "master"})
    assert status == 400 and body["error"]["message"].startswith("role: unknown field")
    assert host.flushed == [] and call(url, "GET", "/v1/ha-state")[1]["state"] == "unknown"


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_command_does_the_work_itself_when_no_daemon_answers(tmp_path, monkeypatch, capsys):
    """`ipfloaterd ha-state master` with nobody listening on REST_PORT (the daemon died)."""
    conf = tmp_path / "ipfloaterd.conf"
    conf.write_text(f"[IPFLOATER]\nIP_POOL = 203.0.113.10-203.0.113.12\nPRIVATE_IP_RANGES = 10.77.0.0/24\n"
                    f"DB = {tmp_path / 'state.db'}\nTOKEN_FILE = {tmp_path / 'token'}\n"
                    f"REST_PORT = {_closed_port()}\n")
    (tmp_path / "token").write_text(TOKEN)
    monkeypatch.delenv("IPFLOATER_TOKEN", raising=False)
    flushed = []
    monkeypatch.setattr(hostnet, "flush_conntrack", lambda addrs: flushed.extend(addrs) or {a: 1 for a in addrs})
    assert daemon_mod.main(["--config", str(conf), "ha-state", "MASTER"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["by"] == "ha-state command" and out["conntrack_flushed"] == 3 and "unreachable" in out["daemon"]
    assert sorted(flushed) == [A("203.0.113.10"), A("203.0.113.11"), A("203.0.113.12")]
    assert hastate.read_state(str(tmp_path / "state.db.ha-state"))["state"] == "master"


def test_the_command_refuses_a_state_keepalived_does_not_have(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        daemon_mod.main(["--config", str(tmp_path / "none.conf"), "ha-state", "leader"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert "argument STATE: 'leader' is not one of master, backup, fault, stop" in err
    assert not (tmp_path / "none.conf.ha-state").exists()


KEEPALIVED_DIR = Path(__file__).resolve().parents[2] / "etc" / "keepalived"


def test_keepalived_s_end_runs_the_notify_with_stop_on_a_stop_and_after_a_crash(tmp_path):
    """keepalived.conf's notify_stop (a clean stop) and the drop-in's ExecStopPost (any end,
    kill -9 included) run the same notify with `stop`; systemd accepts the drop-in."""
    conf = (KEEPALIVED_DIR / "keepalived.conf").read_text()
    assert 'notify_stop   "/usr/local/sbin/ipfloater-notify stop /etc/ipfloaterd.conf"' in conf
    dropin = (KEEPALIVED_DIR / "keepalived.service.d" / "ipfloaterd.conf").read_text()
    assert "\n[Service]\nExecStopPost=/usr/local/sbin/ipfloater-notify stop /etc/ipfloaterd.conf\n" in dropin
    assert "\nRestart=on-failure\n" in dropin  # a crash's leftover VRRP addresses go at the restart
    # systemd's own check, with the repository's script where the drop-in expects it
    (tmp_path / "keepalived.service.d").mkdir()
    (tmp_path / "keepalived.service.d" / "ipfloaterd.conf").write_text(
        dropin.replace("/usr/local/sbin/ipfloater-notify", str(KEEPALIVED_DIR / "ipfloater-notify")))
    proc = subprocess.run(["systemd-analyze", "verify", "keepalived.service"], capture_output=True, text=True,
                          env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:/lib/systemd/system:"}, timeout=60)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
