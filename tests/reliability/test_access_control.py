"""Nobody in: tokens, listening address, file modes, least privilege, refusals."""

import json
import stat
import sys

import pytest

from tests.support.daemonproc import DaemonProcess
from tests.integration.conftest import TCP

pytestmark = pytest.mark.netns

CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
SETPRIV = ("setpriv", "--bounding-set=-all,+net_admin,+net_raw", "--inh-caps=-all,+net_admin,+net_raw",
           "--ambient-caps=-all,+net_admin,+net_raw", "--")


def test_runs_with_only_net_admin_and_net_raw(lab, tmp_path, servers, figures):
    with DaemonProcess(lab.ns_router, tmp_path / "d", wrapper=SETPRIV) as daemon:
        status = open(f"/proc/{daemon.proc.pid}/status").read()
        eff = int(next(l.split()[1] for l in status.splitlines() if l.startswith("CapEff:")), 16)
        assert eff == (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW), hex(eff)
        fip = daemon.cli("getip", lab.vm_ip(1)).stdout.strip()
        reply = lab.tcp_probe(lab.ns_client, fip, TCP)
        assert reply["ok"] and reply["reply"]["name"] == "vm1", reply
        moved = daemon.cli("redirect", fip, lab.vm_ip(2))  # conntrack flush + ARP need no more
        assert moved.returncode == 0, moved.stderr
        assert "flushed" in daemon.log() and "failed" not in daemon.log()
        assert lab.tcp_probe(lab.ns_client, fip, TCP)["reply"]["name"] == "vm2"
    figures("access", "capabilities the daemon needs", "CAP_NET_ADMIN, CAP_NET_RAW")


def test_files_are_private_and_token_never_logged(lab, tmp_path):
    with DaemonProcess(lab.ns_router, tmp_path / "d") as daemon:
        daemon.cli("getip", lab.vm_ip(1))
        for name in ("token", "state.db", "state.db-wal", "state.db.lock"):
            mode = stat.S_IMODE((tmp_path / "d" / name).stat().st_mode)
            assert mode == 0o600, (name, oct(mode))
        token = daemon.token
        assert len(token) >= 32
    assert token not in daemon.log()


def test_wrong_or_missing_token_learns_nothing(lab, tmp_path):
    with DaemonProcess(lab.ns_router, tmp_path / "d") as daemon:
        daemon.cli("getip", lab.vm_ip(1))
        probe = ("import json, sys, requests\n"
                 "out = []\n"
                 "for hdr in ({}, {'Authorization': 'Bearer wrong'}, {'Authorization': 'Basic x'},\n"
                 "            {'Authorization': 'Bearer ' + sys.argv[2][:-1]}):\n"
                 "    for m, p in (('GET', '/v1/floatingips'), ('GET', '/v1/pool'), ('DELETE', '/v1/floatingips/198.51.100.10'),\n"
                 "                 ('POST', '/v1/reconcile'), ('GET', '/v1/nothing')):\n"
                 "        r = requests.request(m, 'http://127.0.0.1:' + sys.argv[1] + p, headers=hdr, timeout=5)\n"
                 "        out.append([r.status_code, r.text])\n"
                 "print(json.dumps(out))\n")
        proc = lab.run(lab.ns_router, [sys.executable, "-c", probe,
                                       str(daemon.port), daemon.token])
        answers = json.loads(proc.stdout)
        assert len(answers) == 20
        for status, text in answers:
            assert status == 401
            assert json.loads(text) == {"error": {"code": "unauthorized", "message": "missing or invalid token"}}
        assert daemon.cli_json("show", "198.51.100.10")["private_ip"] == lab.vm_ip(1)  # nothing changed


def test_listens_on_loopback_only_by_default(lab, tmp_path):
    with DaemonProcess(lab.ns_router, tmp_path / "d") as daemon:
        assert daemon.cli("health").returncode == 0
        from_client = lab.tcp_probe(lab.ns_client, lab.router_pub_ip, daemon.port, timeout=1.5)
        assert not from_client["ok"] and from_client["errno"] == "ECONNREFUSED", from_client
        from_vm = lab.tcp_probe(lab.vm_ns(1), lab.router_priv_ip, daemon.port, timeout=1.5)
        assert not from_vm["ok"], from_vm


@pytest.mark.parametrize("args, fragment", [
    (("getip", "10.77.0.1"), "address of the router itself"),
    (("getip", "10.77.0.0"), "network or broadcast"),
    (("getip", "10.77.0.255"), "network or broadcast"),
    (("getip", "192.168.1.5"), "outside PRIVATE_IP_RANGES"),
    (("redirect", "198.51.100.1", "10.77.0.11"), "not in the pool"),
    (("redirect", "203.0.113.5", "10.77.0.11"), "not in the pool"),
])
def test_refused_targets_whoever_asks(lab, tmp_path, args, fragment):
    with DaemonProcess(lab.ns_router, tmp_path / "d") as daemon:
        proc = daemon.cli(*args)
        assert proc.returncode == 1 and fragment in proc.stderr, proc.stderr
        assert daemon.cli_json("status") == {"floatingips": []}


def test_owner_protection_over_the_api(lab, tmp_path):
    with DaemonProcess(lab.ns_router, tmp_path / "d") as daemon:
        script = ("import json, sys, requests\n"
                  "u = 'http://127.0.0.1:' + sys.argv[1] + '/v1'\n"
                  "h = {'Authorization': 'Bearer ' + sys.argv[2]}\n"
                  "def c(m, p, b): r = requests.request(m, u + p, json=b, headers=h, timeout=5); return [r.status_code, r.json()]\n"
                  "out = [c('POST', '/floatingips', {'private_ip': '10.77.0.11', 'owner': 'one:uid:1'}),\n"
                  "       c('PUT', '/floatingips/198.51.100.10/association', {'private_ip': '10.77.0.12', 'owner': 'one:uid:2', 'allow_move': True}),\n"
                  "       c('DELETE', '/floatingips/198.51.100.10', {'owner': 'one:uid:2'}),\n"
                  "       c('PUT', '/floatingips/198.51.100.10/association', {'private_ip': '10.77.0.12', 'owner': 'one:uid:2', 'allow_move': True, 'operator': True})]\n"
                  "print(json.dumps(out))\n")
        out = json.loads(lab.run(lab.ns_router, [sys.executable, "-c", script,
                                                 str(daemon.port), daemon.token]).stdout)
        assert [o[0] for o in out] == [201, 403, 403, 200]
        assert out[1][1]["error"]["code"] == "owner_mismatch"
        assert out[3][1]["private_ip"] == "10.77.0.12" and out[3][1]["owner"] == "one:uid:1"


PROBE = ("import json, sys, requests\n"
         "u = 'http://127.0.0.1:' + sys.argv[1] + '/v1'\n"
         "def c(tok, m, p, b=None):\n"
         "    r = requests.request(m, u + p, json=b, headers={'Authorization': 'Bearer ' + tok}, timeout=5)\n"
         "    return [r.status_code, r.json()]\n"
         "print(json.dumps([c(*step) for step in json.loads(sys.argv[2])]))\n")


def _calls(lab, daemon, steps):
    out = lab.run(lab.ns_router, [sys.executable, "-c", PROBE, str(daemon.port), json.dumps(steps)]).stdout
    return json.loads(out)


def _token(daemon, *args):
    import subprocess
    return subprocess.run(daemon.argv("token", *args), capture_output=True, text=True, timeout=30)


def test_tokens_added_and_revoked_while_the_daemon_runs(lab, tmp_path, figures):
    with DaemonProcess(lab.ns_router, tmp_path / "d") as daemon:
        reader = _token(daemon, "add", "watch", "--role", "reader").stdout.strip()
        alice = json.loads(_token(daemon, "add", "alice", "--role", "owner", "--owner", "one:uid:1",
                                  "--json").stdout)["token"]
        first = _calls(lab, daemon, [
            [alice, "POST", "/floatingips", {"private_ip": "10.77.0.11"}],
            [reader, "GET", "/floatingips"],
            [reader, "DELETE", "/floatingips/198.51.100.10", {}],
            [alice, "PUT", "/floatingips/198.51.100.10/association", {"private_ip": "10.77.0.12", "owner": "one:uid:2"}],
            [alice, "DELETE", "/floatingips/198.51.100.10", {"operator": True}],
            [reader, "POST", "/reconcile", {}]])
        assert [s for s, _ in first] == [201, 200, 403, 403, 403, 403], first
        assert first[0][1]["owner"] == "one:uid:1"
        assert _token(daemon, "revoke", "watch").returncode == 0
        after = _calls(lab, daemon, [[reader, "GET", "/floatingips"], [alice, "GET", "/floatingips"]])
        assert [s for s, _ in after] == [401, 200], after  # seen at the next request, no restart
        assert daemon.running()
        log = daemon.log()
        assert "by alice: 201" in log and reader not in log and alice not in log
        listed = json.loads(_token(daemon, "list", "--json").stdout)["tokens"]
        assert [t["name"] for t in listed] == ["alice"] and "token" not in listed[0]
    figures("access", "roles enforced over a real daemon", "operator, reader, owner; revoke live")
