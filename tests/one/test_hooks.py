"""The REAL hook script (remotes/hooks/ipfloater/ipfloater-hook), run by the Hook Execution
Manager emulation for the templates of hooks/, registered with ``ipfloater-one
install-hooks`` against the oned simulator. Hooks are separate processes that find oned,
the daemon and their credentials through the environment, as on a front-end."""

import base64
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pyone
import pytest

from one_ipfloater.one import cli
from tests.paths import SAMPLES
from tests.support.hem import HookExecutionManager
from tests.one.fipenv import POOL, TOKEN, FipEnv

REPO = Path(__file__).resolve().parents[2]
HOOKS_DIR = REPO / "hooks"
REMOTES = REPO / "remotes" / "hooks"
HOOK = REMOTES / "ipfloater" / "ipfloater-hook"
YES = 'NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="YES"'
IDLE = 120


@dataclass
class Rig:
    env: FipEnv
    hem: HookExecutionManager
    hook_env: dict

    def settle(self):
        self.hem.wait_idle(IDLE)

    def runs(self, name=None):
        return self.hem.executions(name)


def install(args, capsys):
    code = cli.main(["install-hooks", "--dir", str(HOOKS_DIR), *args])
    return code, capsys.readouterr()


@pytest.fixture
def rig(env, tmp_path, monkeypatch, capsys):
    auth = tmp_path / "one_auth"
    auth.write_text("oneadmin:adminpw\n")
    conf = tmp_path / "ipfloater.conf"
    conf.write_text(f"[ONE_IPFLOATER]\nIPFLOATER_URL = {env.daemon_url}\n"
                    f"IPFLOATER_TOKEN_FILE = {tmp_path / 'no-such-token'}\n"
                    f"LOCK_DIR = {tmp_path / 'locks'}\nONE_TIMEOUT = 20\n"
                    "IPFLOATER_TIMEOUT = 20\n")
    hook_env = {
        "ONE_XMLRPC": env.sim.url, "ONE_AUTH": str(auth), "IPFLOATER_ONE_CONF": str(conf),
        "IPFLOATER_TOKEN": TOKEN,
        # `#!/usr/bin/env python3` must find the interpreter the package is installed in.
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }
    for key, value in hook_env.items():
        monkeypatch.setenv(key, value)
    code, out = install([], capsys)
    assert code == 0, out.err
    assert out.out.count("created") == len(list(HOOKS_DIR.glob("*.hook")))
    hem = HookExecutionManager(env.sim, remotes_dir=str(REMOTES), env=hook_env, seed=3).start()
    try:
        yield Rig(env, hem, hook_env)
        hem.wait_idle(IDLE)
    finally:
        hem.stop()


def all_succeeded(runs):
    return all(r.success for r in runs), [(r.hook_name, r.exit_code, r.stderr) for r in runs
                                          if not r.success]


def run_hook(rig, stdin: bytes, *args):
    return subprocess.run([str(HOOK), *args], input=stdin, env={**os.environ, **rig.hook_env},
                          capture_output=True, timeout=60)


# --- registration ------------------------------------------------------------------------

def test_install_hooks_registers_every_template_idempotently(rig, capsys, tmp_path):
    names = {h.name: h for h in rig.env.sim.hooks()}
    assert set(names) == {p.stem for p in HOOKS_DIR.glob("*.hook")}
    assert names["ipfloater-poweroff"].template["STATE"] == "POWEROFF"
    assert names["ipfloater-update"].template["ARGUMENTS"] == "$API --call one.vm.update"
    code, out = install(["--json"], capsys)
    assert code == 0 and {h["action"] for h in json.loads(out.out)["hooks"]} == {"unchanged"}
    changed = tmp_path / "hooks"
    shutil.copytree(HOOKS_DIR, changed)
    path = changed / "ipfloater-done.hook"
    path.write_text(path.read_text().replace('TIMEOUT         = "120"', 'TIMEOUT = "90"'))
    assert cli.main(["install-hooks", "--dir", str(changed), "--dry-run"]) == 0
    assert "would be updated ipfloater-done" in capsys.readouterr().out
    assert cli.main(["install-hooks", "--dir", str(changed)]) == 0
    out = capsys.readouterr().out
    assert "updated          ipfloater-done" in out and out.count("unchanged") == len(names) - 1
    hooks = {h.name: h for h in rig.env.sim.hooks()}
    assert hooks["ipfloater-done"].template["TIMEOUT"] == "90"
    assert hooks["ipfloater-done"].id == names["ipfloater-done"].id


def _stored(sim):
    return {h.name: (h.id, h.type, h.template) for h in sim.hooks()}


def test_second_install_changes_nothing_against_oned_74_storage(rig, capsys):
    """oned 7.4 stores ON as STATE/LCM_STATE and adds REMOTE: a registered hook never
    equals its file. A second run still finds nothing to do, sends nothing, exits 0."""
    before = _stored(rig.env.sim)
    assert before["ipfloater-running"][2]["STATE"] == "ACTIVE"
    assert "ON" not in before["ipfloater-running"][2]  # the simulator stores like oned
    for _ in range(2):
        code, out = install([], capsys)
        assert code == 0, out.err
        assert out.out.count("unchanged") == len(before), out.out
    assert _stored(rig.env.sim) == before


def test_an_edited_hook_is_put_back_and_fires_on_the_same_state(rig, capsys):
    sim, one = rig.env.sim, rig.env.one
    before = _stored(sim)
    hook_id = before["ipfloater-running"][0]
    # an operator's `onehook update --append`: another state, run remotely, shorter timeout
    one.hook.update(hook_id, 'LCM_STATE="BOOT"\nREMOTE="YES"\nTIMEOUT="5"', 1)
    assert _stored(sim)["ipfloater-running"][2]["LCM_STATE"] == "BOOT"
    code, out = install(["--json"], capsys)
    assert code == 0, out.err
    actions = {h["name"]: h["action"] for h in json.loads(out.out)["hooks"]}
    assert actions.pop("ipfloater-running") == "updated"
    assert set(actions.values()) == {"unchanged"}
    assert _stored(sim) == before  # put back exactly as oned stored it at creation
    code, out = install([], capsys)
    assert code == 0 and out.out.count("unchanged") == len(before)
    vm = rig.env.create(YES)  # deploy: PROLOG, BOOT, RUNNING
    rig.settle()
    running = rig.runs("ipfloater-running")
    assert len(running) == 1 and running[0].success, [(r.exit_code, r.stderr) for r in running]
    assert rig.env.ut(vm)["FLOATING_IP_STATUS"] == "ACTIVE"


# --- lifecycle through hooks ---------------------------------------------------------------

def test_deploy_writes_the_address_back_and_the_write_back_loop_ends(rig):
    alice = rig.env.pyone("alice:alicepw")
    vm = alice.vm.allocate(YES)  # what `onetemplate instantiate` sends
    rig.env.one.vm.deploy(vm, 0)  # the scheduler's (oneadmin's) deploy
    rig.settle()
    pub = rig.env.public(vm)
    ut = rig.env.ut(vm)
    assert ut["FLOATING_IP_ADDRESS"] == pub[0] and ut["FLOATING_IP_STATUS"] == "ACTIVE"
    runs = rig.runs()
    assert all_succeeded(runs)[0], all_succeeded(runs)[1]
    # RUNNING converges and writes once; the update hook that write fires is a no-op.
    assert Counter(r.hook_name for r in runs) == {"ipfloater-running": 1, "ipfloater-update": 1}
    assert len(rig.env.updates(vm)) == 1
    assert runs[0].stdout.decode().strip() == f"ipfloater-hook: VM {vm}: NIC 0 {pub[0]} (ACTIVE)"


def test_onevm_update_removing_the_request_releases(rig):
    vm = rig.env.create(YES)
    rig.settle()
    pub = rig.env.public(vm)[0]
    rig.hem.clear_log()
    alice = rig.env.pyone("alice:alicepw")
    alice.vm.update(vm, 'DESCRIPTION="web server"', 0)  # `onevm update`: replace, no FLOATING_IP
    rig.settle()
    assert rig.env.held(vm) == {} and rig.env.svc.registry.get(IPv4Address(pub)) is None
    assert rig.env.ut(vm) == {"DESCRIPTION": "web server"}  # nothing left to clear: no write
    assert [r.hook_name for r in rig.runs()] == ["ipfloater-update"]
    alice.vm.update(vm, 'FLOATING_IP="YES"', 1)  # and back
    rig.settle()
    assert rig.env.ut(vm)["FLOATING_IP_ADDRESS"] in POOL
    assert all_succeeded(rig.runs())[0]


def test_error_written_by_a_hook_does_not_loop(rig):
    vm = rig.env.create('NAME="a" NIC=[NETWORK="priv"]')
    rig.settle()
    rig.hem.clear_log()
    rig.env.one.vm.update(vm, 'FLOATING_IP="maybe"', 1)
    rig.settle()
    runs = rig.runs()
    # the user's update and the driver's ERROR write-back; the second sees nothing new
    assert [r.hook_name for r in runs] == ["ipfloater-update", "ipfloater-update"]
    for r in runs:
        lines = r.stderr.decode().splitlines()
        assert r.exit_code == 1 and len(lines) == 1 and "'maybe' is not YES" in lines[0]
    assert rig.env.ut(vm)["FLOATING_IP_STATUS"] == "ERROR" and len(rig.env.updates(vm)) == 2


def test_poweroff_attach_detach_and_terminate_through_api_and_state_hooks(rig):
    one = rig.env.one
    vm = rig.env.create('NAME="a" NIC=[NETWORK="priv", FLOATING_IP="YES"]')
    rig.settle()
    first = rig.env.public(vm)[0]
    one.vm.action("poweroff", vm)
    rig.settle()
    assert rig.env.ut(vm)["FLOATING_IP_STATUS"] == "DOWN"
    rig.hem.clear_log()
    one.vm.attachnic(vm, 'NIC=[NETWORK="priv", FLOATING_IP="YES"]')
    rig.settle()
    assert {r.hook_name for r in rig.runs()} == {"ipfloater-attachnic", "ipfloater-update"}
    pub = rig.env.public(vm)
    assert len(pub) == 2 and rig.env.ut(vm)["FLOATING_IP_ADDRESS_NIC1"] == pub[1]
    one.vm.detachnic(vm, 1)
    rig.settle()
    assert rig.env.public(vm) == {0: first}
    one.vm.action("resume", vm)
    rig.settle()
    assert rig.env.ut(vm)["FLOATING_IP_STATUS"] == "ACTIVE"
    one.vm.action("terminate-hard", vm)
    rig.settle()
    assert rig.env.held(vm) == {} and rig.env.ut(vm)["FLOATING_IP_ADDRESS"] == ""
    assert all_succeeded(rig.runs())[0], all_succeeded(rig.runs())[1]


def test_twenty_vms_deployed_at_once_get_twenty_addresses(rig):
    rig.hem.pause()
    vms = [rig.env.create(YES, owner=("alice", "bob")[i % 2]) for i in range(20)]
    rig.hem.resume()
    rig.settle()
    addresses = [rig.env.ut(vm).get("FLOATING_IP_ADDRESS") for vm in vms]
    assert len(set(addresses)) == 20 and set(addresses) <= set(POOL)
    assert all(rig.env.public(vm) == {0: a} for vm, a in zip(vms, addresses))
    runs = rig.runs()
    assert all_succeeded(runs)[0], all_succeeded(runs)[1]
    assert Counter(r.hook_name for r in runs) == {"ipfloater-running": 20, "ipfloater-update": 20}
    assert rig.hem.peak_running > 1


# --- hostile or useless input ----------------------------------------------------------

@pytest.mark.parametrize("stdin", [
    b"", b"not base64!", base64.b64encode(b"<NOPE/>"), base64.b64encode(b"hello"),
    base64.b64encode(b"<VM><ID>x</ID></VM>"), b"--bogus",
], ids=["empty", "not-base64", "wrong-root", "not-xml", "bad-id", "bad-option"])
def test_bad_payload_exits_non_zero_with_one_line(rig, stdin):
    proc = run_hook(rig, stdin)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("ipfloater-hook: ")
    assert rig.env.svc.registry.free_count() == len(POOL)


def test_failed_api_calls_are_ignored(rig):
    vm = rig.env.create(YES)
    rig.settle()
    rig.hem.clear_log()
    with pytest.raises(pyone.OneApiException):
        rig.env.one.vm.update(vm, 'FLOATING_IP="NO"', 2)  # bad update type: RESULT 0
    with pytest.raises(pyone.OneNoExistsException):
        rig.env.one.vm.attachnic(999, 'NIC=[NETWORK="priv"]')
    rig.settle()
    runs = rig.runs()
    assert sorted(r.hook_name for r in runs) == ["ipfloater-attachnic", "ipfloater-update"]
    for r in runs:
        out = r.stdout.decode().splitlines()
        assert r.exit_code == 0 and len(out) == 1 and "failed in OpenNebula; nothing to do" in out[0]
    assert set(rig.env.held(vm)) == {0}


def test_real_74_payloads_decode_and_converge(rig):
    vm = rig.env.create(YES)
    rig.settle()
    assert vm == 0  # the VM ID in both samples; only that is taken from them
    pub = rig.env.public(vm)[0]
    state = base64.b64encode((SAMPLES / "hookarg-7.4-running.xml").read_bytes())
    api = base64.b64encode((SAMPLES / "api-7.4-one.vm.update-ok.xml").read_bytes())
    for stdin in (state, api + b" --call one.vm.update"):
        proc = run_hook(rig, stdin)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.decode() == f"ipfloater-hook: VM 0: NIC 0 {pub} (ACTIVE)\n"
    assert rig.env.public(vm) == {0: pub} and len(rig.env.updates(vm)) == 1


def test_show_and_sync_commands(rig, capsys):
    vm = rig.env.create(YES)
    rig.settle()
    capsys.readouterr()
    assert cli.main(["show", str(vm), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["in_sync"] and shown["phase"] == "hold" and shown["pending"] == []
    assert shown["actual"][0]["public_ip"] == rig.env.public(vm)[0]
    rig.env.sim.action(vm, "terminate-hard")  # no API call, and the DONE hook is paused
    rig.hem.pause()
    assert cli.main(["show", str(vm)]) == 0
    assert "pending: release NIC 0 (the VM is DONE)" in capsys.readouterr().out
    assert cli.main(["sync"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("converged 1 VM(s), released 1 address(es), 0 error(s)")
    assert rig.env.held(vm) == {}
    assert cli.main(["show", "4242"]) == 1
    assert capsys.readouterr().err == "ipfloater-one: VM 4242 does not exist\n"
    rig.hem.resume()


# --- ownership through the hooks -----------------------------------------------------------

def test_second_vm_claiming_a_private_address_gets_error_and_the_first_keeps_its_nat(rig):
    """Two VMs of different owners with one private address (a lease bug): the real hooks
    give the second FLOATING_IP_STATUS = "ERROR" with private_in_use, the first keeps its
    NAT; then the second's NIC moved onto it by an operator: the same, and its own
    address stays with it, unhooked from the old private address."""
    env, one = rig.env, rig.env.one
    first = rig.env.pyone("alice:alicepw").vm.allocate(YES)
    one.vm.deploy(first, 0)
    rig.settle()
    address, private = env.public(first)[0], env.sim.nics(first)[0]["IP"]
    nat = (IPv4Address(address), IPv4Address(private))
    second = rig.env.pyone("bob:bobpw").vm.allocate(YES)
    env.sim.set_nic_ip(second, 0, private, duplicate=True)
    rig.hem.clear_log()
    one.vm.deploy(second, 0)
    rig.settle()
    ut = env.ut(second)
    assert ut["FLOATING_IP_STATUS"] == "ERROR" and "(private_in_use)" in ut["FLOATING_IP_ERROR"]
    assert env.held(second) == {} and nat in env.svc.registry.associations()
    runs = [r for r in rig.runs() if r.hook_name == "ipfloater-running"]
    assert runs and all(r.exit_code == 1 and len(r.stderr.decode().splitlines()) == 1
                        and "(private_in_use)" in r.stderr.decode() for r in runs)
    # A third VM of bob's with its own address, whose NIC is then moved onto alice's.
    third = rig.env.pyone("bob:bobpw").vm.allocate(YES)
    one.vm.deploy(third, 0)
    rig.settle()
    own = env.public(third)[0]
    env.sim.set_nic_ip(third, 0, private, duplicate=True)
    one.vm.update(third, 'NOTE="poke"', 1)  # any event: the update hook converges it
    rig.settle()
    ut = env.ut(third)
    assert ut["FLOATING_IP_STATUS"] == "ERROR" and "(private_in_use)" in ut["FLOATING_IP_ERROR"]
    assert nat in env.svc.registry.associations()
    assert str(env.held(third)[0].public_ip) == own and env.held(third)[0].private_ip is None


def test_allocation_of_another_user_under_the_vms_ref_is_not_adopted_by_the_hook(rig):
    env, one = rig.env, rig.env.one
    vm = rig.env.pyone("alice:alicepw").vm.allocate(YES)
    planted = env.daemon.allocate(private_ip="10.77.0.250", ref=f"one:vm:{vm}:nic:0",
                                  owner=f"one:uid:{env.sim.uid_of('bob')}")
    one.vm.deploy(vm, 0)
    rig.settle()
    ut = env.ut(vm)
    assert ut["FLOATING_IP_STATUS"] == "ERROR" and "(owner_mismatch)" in ut["FLOATING_IP_ERROR"]
    assert ut.get("FLOATING_IP_ADDRESS", "") == ""
    held = env.held(vm)[0]
    assert (str(held.public_ip), str(held.private_ip)) == (planted["public_ip"], "10.77.0.250")
    one.vm.action("terminate-hard", vm)
    rig.settle()
    assert str(env.held(vm)[0].public_ip) == planted["public_ip"]  # not released either
