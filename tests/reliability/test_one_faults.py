"""The OpenNebula side under faults and bad input, against a real daemon in the router
namespace: outages of oned and of the daemon, slow peers, racing hooks for one VM, bad
hook payloads and bad FLOATING_IP values."""

import base64
import os
import socket
import subprocess
import threading
import time

import pytest

from tests.support.daemonproc import DaemonProcess
from tests.support.frontend import REMOTES_DIR, Frontend
from tests.support.netlab import Lab
from tests.support.nsforward import PortForward
from tests.integration.conftest import TCP
from tests.reliability.conftest import assert_kernel_matches_state, snapshot

pytestmark = pytest.mark.netns

HOOK = REMOTES_DIR / "ipfloater" / "ipfloater-hook"
YES = 'NAME="web" NIC=[NETWORK="priv"] FLOATING_IP="YES"'


class Blackhole:
    """A TCP peer that accepts connections and never answers: a slow network or a hung
    server, as the client sees it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults")
    with Lab(vms=2) as lab:
        servers = [lab.start_server(lab.vm_ns(i), f"vm{i}", tcp_port=TCP) for i in (1, 2)]
        daemon = DaemonProcess(lab.ns_router, workdir / "daemon").start()
        forward = PortForward(lab.ns_router, daemon.port)
        fe = Frontend(workdir / "fe", f"http://127.0.0.1:{forward.port}", daemon.token)
        yield lab, daemon, fe, workdir
        fe.close()
        forward.close()
        daemon.stop()
        for server in servers:
            server.stop()


def run_hook(fe, vm_id, workdir, **conf_overrides):
    """Run the real hook for a RUNNING state event of `vm_id` with a modified front-end
    config (e.g. oned or the daemon somewhere else); returns (process, seconds)."""
    conf = fe.conf.read_text()
    env = dict(fe.env)
    for key, value in conf_overrides.items():
        if key in ("ONE_XMLRPC", "ONE_AUTH"):
            env[key] = value
        else:
            conf = "\n".join(l for l in conf.splitlines() if not l.startswith(key)) + f"\n{key} = {value}\n"
    path = workdir / f"conf-{time.monotonic_ns()}.conf"
    path.write_text(conf)
    env["IPFLOATER_ONE_CONF"] = str(path)
    payload = base64.b64encode(fe.sim.vm_xml(vm_id).encode())
    started = time.monotonic()
    proc = subprocess.run([str(HOOK)], input=payload, env={**os.environ, **env}, capture_output=True,
                          timeout=120)
    return proc, time.monotonic() - started


def detached_vm(fe):
    """A deployed VM whose hooks did not run (the hook system was looking elsewhere)."""
    fe.hem.pause()
    vm = fe.instantiate(YES)
    with fe.hem._cond:  # drop what was queued: these events were "missed"
        fe.hem._queue.clear()
    fe.hem.resume()
    return vm


@pytest.mark.parametrize("label, overrides, fragment", [
    ("oned down", {"ONE_XMLRPC": "http://127.0.0.1:{closed}/RPC2"}, "OpenNebula at http://127.0.0.1"),
    ("oned refuses the credentials", {"ONE_AUTH": "{bad_auth}"}, "authenticated"),
    ("oned hangs", {"ONE_XMLRPC": "http://127.0.0.1:{hole}/RPC2", "ONE_TIMEOUT": "1"}, "OpenNebula at http://127.0.0.1"),
    ("daemon down", {"IPFLOATER_URL": "http://127.0.0.1:{closed}"}, "unreachable"),
    ("daemon hangs", {"IPFLOATER_URL": "http://127.0.0.1:{hole}", "IPFLOATER_TIMEOUT": "1"}, "did not answer"),
])
def test_outages_fail_fast_with_one_line_then_sync_repairs(world, label, overrides, fragment, figures):
    lab, daemon, fe, workdir = world
    hole = Blackhole()
    bad_auth = workdir / "bad_auth"
    bad_auth.write_text("oneadmin:wrong\n")
    try:
        vm = detached_vm(fe)
        before = snapshot(lab, daemon)
        conf = {k: v.format(closed=closed_port(), hole=hole.port, bad_auth=bad_auth) for k, v in overrides.items()}
        proc, seconds = run_hook(fe, vm, workdir, **conf)
    finally:
        hole.close()
    err = proc.stderr.decode()
    assert proc.returncode != 0 and err.count("\n") == 1 and fragment in err, (label, err)
    assert snapshot(lab, daemon) == before  # no half-done allocation
    if label.startswith("daemon"):  # oned is reachable: the owner is told
        assert fe.user_template(vm)["FLOATING_IP_STATUS"] == "ERROR"
        assert fragment in fe.user_template(vm)["FLOATING_IP_ERROR"]
    figures("outages", f"{label}: hook fails after (s)", f"{seconds:.1f}")

    fe.pyone("alice").vm.action("terminate-hard", vm)  # meanwhile the VM went away too
    fe.settle()
    repaired = fe.ipfloater_one("sync", "--json")
    assert repaired.returncode == 0, repaired.stderr
    held = {f["ref"] for f in daemon.cli_json("status")["floatingips"]}
    assert not any(ref.startswith(f"one:vm:{vm}:") for ref in held)
    assert_kernel_matches_state(lab, daemon)


def test_sync_after_outage_converges_live_vms(world):
    lab, daemon, fe, workdir = world
    vm = detached_vm(fe)
    assert fe.address(vm) is None
    proc = fe.ipfloater_one("sync")
    assert proc.returncode == 0, proc.stderr
    fip = fe.address(vm)
    assert fip and assert_kernel_matches_state(lab, daemon) == {fip: fe.sim.nics(vm)[0]["IP"]}
    fe.pyone("alice").vm.action("terminate-hard", vm)
    fe.settle()
    assert daemon.cli_json("status") == {"floatingips": []}


def test_hooks_for_one_vm_racing_each_other(world, figures):
    lab, daemon, fe, workdir = world
    vm = fe.instantiate(YES)
    fe.settle()
    fe.hem.pause()
    alice = fe.pyone("alice")
    for value in ("NO", "YES", "198.51.100.30", "YES", "NO", "YES", "NO", "198.51.100.31", "YES", "YES"):
        alice.vm.update(vm, f'FLOATING_IP="{value}"', 1)  # 10 API hooks queued, plus write-backs later
    alice.vm.action("poweroff-hard", vm)
    alice.vm.action("resume", vm)
    queued = fe.hem.queued
    fe.hem.resume()  # released as one burst, up to 10 at once, in no particular order
    fe.settle()
    held = [f for f in daemon.cli_json("status")["floatingips"] if f["ref"].startswith(f"one:vm:{vm}:")]
    assert len(held) == 1  # the final attribute is YES: exactly one address
    assert fe.address(vm) == held[0]["public_ip"] and fe.user_template(vm)["FLOATING_IP_STATUS"] == "ACTIVE"
    assert assert_kernel_matches_state(lab, daemon) == {held[0]["public_ip"]: fe.sim.nics(vm)[0]["IP"]}
    figures("concurrency", "hooks for one VM released as one burst: runs / addresses held",
            f"{queued} / 1")
    alice.vm.action("terminate-hard", vm)
    fe.settle()


BAD_PAYLOADS = [
    ("not base64", b"%%% not base64 %%%"),
    ("base64 of garbage", base64.b64encode(b"\x00\x01garbage\xff")),
    ("empty", b""),
    ("billion laughs", base64.b64encode(b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                                        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><VM><ID>&b;</ID></VM>')),
    ("external entity", base64.b64encode(b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/shadow">]><VM><ID>&e;</ID></VM>')),
    ("huge document", base64.b64encode(b"<VM><ID>1</ID><X>" + b"a" * (9 << 20) + b"</X></VM>")),
    ("another resource", base64.b64encode(b"<HOST><ID>0</ID><NAME>h</NAME></HOST>")),
    ("VM without ID", base64.b64encode(b"<VM><NAME>x</NAME></VM>")),
    ("VM ID not a number", base64.b64encode(b"<VM><ID>1; reboot</ID></VM>")),
    ("CALL_INFO with bad VM ID", base64.b64encode(
        b"<CALL_INFO><RESULT>1</RESULT><PARAMETERS><PARAMETER><POSITION>2</POSITION><TYPE>IN</TYPE>"
        b"<VALUE>abc</VALUE></PARAMETER></PARAMETERS></CALL_INFO>")),
]

BAD_ATTRIBUTES = [
    ("space inside", 'FLOATING_IP="198.51.100. 20"', "FLOATING_IP"),
    ("quotes", 'FLOATING_IP="\\"YES\\""', "FLOATING_IP"),
    ("shell metacharacters", 'FLOATING_IP="YES; rm -rf /"', "FLOATING_IP"),
    ("command substitution", 'FLOATING_IP="$(reboot)"', "FLOATING_IP"),
    ("network address", 'FLOATING_IP="198.51.100.0"', "198.51.100.0"),
    ("broadcast address", 'FLOATING_IP="255.255.255.255"', "FLOATING_IP"),
    ("outside the pool", 'FLOATING_IP="203.0.113.77"', "203.0.113.77"),
    ("IPv6", 'FLOATING_IP="2001:db8::1"', "FLOATING_IP"),
    ("NIC that does not exist", 'FLOATING_IP="YES" FLOATING_IP_NIC="7"', "FLOATING_IP_NIC"),
    ("NIC id not a number", 'FLOATING_IP="YES" FLOATING_IP_NIC="first"', "FLOATING_IP_NIC"),
]


def test_bad_hook_payloads(world, figures):
    lab, daemon, fe, workdir = world
    before = snapshot(lab, daemon)
    for label, payload in BAD_PAYLOADS:
        proc = subprocess.run([str(HOOK)], input=payload, env={**os.environ, **fe.env}, capture_output=True,
                              timeout=60)
        err = proc.stderr.decode()
        assert proc.returncode != 0 and err.count("\n") == 1 and err.startswith("ipfloater-hook: "), (label, err)
    assert snapshot(lab, daemon) == before
    figures("bad input", "hook payloads: non-zero exit, one line, nothing changed",
            f"{len(BAD_PAYLOADS)} of {len(BAD_PAYLOADS)}")


def test_bad_floating_ip_values(world, figures):
    lab, daemon, fe, workdir = world
    before = snapshot(lab, daemon)
    fe.hem.clear_log()
    vms = []
    for label, attrs, fragment in BAD_ATTRIBUTES:
        vm = fe.instantiate(f'NAME="bad" NIC=[NETWORK="priv"] {attrs}')
        fe.settle()
        ut = fe.user_template(vm)
        assert ut.get("FLOATING_IP_STATUS") == "ERROR" and fragment in ut.get("FLOATING_IP_ERROR", ""), (label, ut)
        assert "\n" not in ut["FLOATING_IP_ERROR"]
        failed = [e for e in fe.hem.executions() if not e.success and e.hook_name == "ipfloater-running"]
        assert failed and failed[-1].stderr.decode().count("\n") == 1, label
        vms.append(vm)
    assert snapshot(lab, daemon)[:2] == before[:2] and snapshot(lab, daemon)[3] == before[3]
    for vm in vms:
        fe.pyone("alice").vm.action("terminate-hard", vm)
    fe.settle()
    figures("bad input", "FLOATING_IP values: ERROR written back, hook exit != 0, nothing allocated",
            f"{len(BAD_ATTRIBUTES)} of {len(BAD_ATTRIBUTES)}")
