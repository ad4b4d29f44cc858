"""The front-end side as an attacker or a careless operator would try it, with figures:
unsafe lock directories, a token lured to a redirect target or an environment proxy,
malformed endpoints, and two VMs fighting over one private address. The same cases are
asserted one by one in tests/one and tests/unit; here they run as sweeps and count."""

from __future__ import annotations

import os
from ipaddress import IPv4Address

from one_ipfloater.client import ApiError, IpfloaterClient
from one_ipfloater.one.driver import converge_vm
from tests.unit.test_cli_input import IPFLOATER_CASES, ONE_CASES, run
from tests.unit.test_client import PROXY_VARS, TOKEN, Recorder, daemon_reply

YES = 'NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="YES"'


def _layouts(base):
    """(name, lock_dir) of every unsafe LOCK_DIR this sweep plants."""
    def mode(name, bits):
        d = base / name
        d.mkdir()
        os.chmod(d, bits)
        return d

    def private(name):
        d = base / name
        d.mkdir(mode=0o700)
        return d
    out = [(f"dir {m:04o}", mode(f"m{m:o}", m)) for m in (0o777, 0o1777, 0o775, 0o770, 0o702)]
    d = private("foreign")
    os.chown(d, 65534, 65534)
    out.append(("dir of another user", d))
    real = private("real")
    (base / "link").symlink_to(real)
    out.append(("symlinked dir", base / "link"))
    (base / "file").write_text("")
    out.append(("a file", base / "file"))
    return out


def _planted(base, vm_id):
    """Lock directories that are fine but whose lock file for ``vm_id`` is not."""
    out = []
    for name in ("to-file", "dangling", "fifo", "foreign-file"):
        d = base / f"planted-{name}"
        d.mkdir(mode=0o700)
        lock = d / f"vm-{vm_id}.lock"
        if name == "to-file":
            (base / "victim").write_text("precious\n")
            lock.symlink_to(base / "victim")
        elif name == "dangling":
            lock.symlink_to(base / "would-be-created")
        elif name == "fifo":
            os.mkfifo(lock)
        else:
            lock.write_text("")
            os.chown(lock, 65534, 65534)
        out.append((f"lock file {name}", d))
    return out


def test_unsafe_lock_dirs_are_refused(env, tmp_path, figures):
    vm = env.create(YES)
    cases = _layouts(tmp_path) + _planted(tmp_path, vm)
    refused = 0
    for name, lock_dir in cases:
        r = converge_vm(vm, env.client, env.daemon, lock_dir=str(lock_dir), lock_timeout=5)
        assert not r.ok and "LOCK_DIR: " in r.message and "\n" not in r.message, (name, r.message)
        assert env.held(vm) == {} and env.updates(vm) == [], name
        refused += 1
    assert (tmp_path / "victim").read_text() == "precious\n"
    assert not (tmp_path / "would-be-created").exists()
    assert converge_vm(vm, env.client, env.daemon, lock_dir=str(tmp_path / "new" / "locks")).ok
    figures("front-end", "unsafe LOCK_DIR / lock files refused, nothing allocated or written",
            f"{refused} of {len(cases)}")


def test_the_token_goes_nowhere_else(monkeypatch, figures):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    target, proxy = Recorder(daemon_reply), Recorder(daemon_reply)
    movers = []
    try:
        calls = 0
        for status in (301, 302, 303, 307, 308):
            for location in (f"{target.url}/v1/x", f"http://localhost:{target.port}/v1/x",
                             "/v1/elsewhere"):
                moved = Recorder(lambda p, s=status, loc=location: (s, {"Location": loc}, {}))
                movers.append(moved)
                client = IpfloaterClient(moved.url, TOKEN, timeout=5)
                for call in (client.list, lambda: client.allocate(private_ip="10.0.0.5"),
                             lambda: client.release("198.51.100.9")):
                    try:
                        call()
                    except ApiError as exc:
                        assert exc.code == "redirect", exc.message
                    else:
                        raise AssertionError("a redirect was followed")
                    calls += 1
                assert len(moved.requests) == 3  # one hop each, never a second
        for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(var, proxy.url)
        direct = IpfloaterClient(target.url, TOKEN, timeout=5)
        for _ in range(10):
            direct.list()
        assert proxy.requests == [] and len(target.requests) == 10
        via = IpfloaterClient(target.url, TOKEN, timeout=5, use_env_proxy=True)
        via.list()  # the control: asked to, it does use the proxy
        assert len(proxy.requests) == 1
    finally:
        for r in [target, proxy, *movers]:
            r.close()
    figures("front-end", "redirects (5 codes x 3 targets x 3 methods) not followed, "
            "requests reaching the target", f"{calls} refused, 0 reached")
    figures("front-end", "requests through an environment proxy (10 calls, default)", "0")


def test_malformed_endpoints_are_one_line_exit_2(tmp_path, figures):
    ok = tracebacks = 0
    for argv, extra, fragment in IPFLOATER_CASES:
        proc = run("ipfloater", argv, extra)
        tracebacks += "Traceback" in proc.stderr
        ok += (proc.returncode == 2 and proc.stderr.count("\n") == 1 and fragment in proc.stderr)
    auth = tmp_path / "auth"
    auth.write_text("oneadmin:pw\n")
    for i, (lines, extra, argv, fragment) in enumerate(ONE_CASES):
        conf = tmp_path / f"c{i}.conf"
        conf.write_text(f"[ONE_IPFLOATER]\nONE_AUTH = {auth}\nLOCK_DIR = {tmp_path}/l\n{lines}\n")
        proc = run("ipfloater-one", ["--config", str(conf), *argv], extra)
        tracebacks += "Traceback" in proc.stderr
        ok += (proc.returncode == 2 and proc.stderr.count("\n") == 1 and fragment in proc.stderr)
    total = len(IPFLOATER_CASES) + len(ONE_CASES)
    assert ok == total and tracebacks == 0
    figures("front-end", "malformed --url/-i/-p/--timeout/config URLs/VMID: exit 2, one line",
            f"{ok} of {total}, 0 tracebacks")


def test_two_vms_claiming_one_private_address(env, figures):
    kept = refused = 0
    scenarios = [("fresh", "bob"), ("fresh", "alice"), ("moved", "bob"), ("moved", "alice")]
    for how, owner in scenarios:
        first = env.create(YES, owner="alice")
        env.converge(first)
        nat = (IPv4Address(env.public(first)[0]), IPv4Address(env.sim.nics(first)[0]["IP"]))
        second = env.create(YES, owner=owner, deploy=how == "moved")
        if how == "moved":
            env.converge(second)
        env.sim.set_nic_ip(second, 0, str(nat[1]), duplicate=True)
        if how == "fresh":
            env.sim.deploy(second)
        r = env.converge(second)
        refused += (not r.ok and "(private_in_use)" in r.message
                    and env.ut(second)["FLOATING_IP_STATUS"] == "ERROR")
        kept += nat in env.svc.registry.associations()
        for vm in (first, second):
            env.sim.action(vm, "terminate-hard")
            env.converge(vm)
    foreign = 0
    for owner in ("bob", None):
        vm = env.create(YES)
        env.daemon.allocate(ref=f"one:vm:{vm}:nic:0", private_ip="10.77.0.250",
                            owner=f"one:uid:{env.sim.uid_of(owner)}" if owner else None)
        before = {(a.public_ip, a.private_ip, a.owner) for a in env.svc.list()}
        r = env.converge(vm)
        env.sim.action(vm, "terminate-hard")
        r2 = env.converge(vm)
        foreign += ("(owner_mismatch)" in r.message and "(owner_mismatch)" in r2.message
                    and {(a.public_ip, a.private_ip, a.owner) for a in env.svc.list()} == before)
        env.svc.release(IPv4Address(env.public(vm)[0]), operator=True)  # the test cleans up
    assert refused == kept == len(scenarios) and foreign == 2
    figures("front-end", "second VM on a served private address: ERROR private_in_use, "
            "first VM's NAT kept", f"{refused} of {len(scenarios)}, {kept} kept")
    figures("front-end", "another owner's allocation under a VM's ref: not adopted, moved "
            "or released (running and DONE)", f"{foreign} of 2")
