"""`ipfloaterd check` says what `run` will do, creates nothing, and both warn about what
silently breaks floating IPs (issue 10, part 5; and part 1's paths). Everything runs in
the lab's router namespace: a daemon that wrongly got past its checks would otherwise
write rules into the root namespace."""

import json
import os
import sys

import pytest

from tests.support.daemonproc import DaemonProcess
from tests.support.netlab import ROUTER_PUB_IP, Lab

pytestmark = pytest.mark.netns

FORWARD_WARNING = "net.ipv4.ip_forward = 0 in this network namespace"


@pytest.fixture(scope="module")
def lab():
    with Lab(vms=0) as lab:
        yield lab


def tree(path):
    return sorted(os.path.relpath(os.path.join(d, n), path) for d, dirs, files in os.walk(path)
                  for n in dirs + files)


def write_config(path, **settings):
    base = {"IP_POOL": "198.51.100.10-198.51.100.40", "PRIVATE_IP_RANGES": "10.77.0.0/24",
            "PUBLIC_INTERFACE": "pub0", "DB": f"{path.parent}/lib/state.db",
            "TOKEN_FILE": f"{path.parent}/lib/token", "XTABLES_LOCK": f"{path.parent}/xtables.lock",
            "REST_PORT": "7003", "NAT_BACKEND": "iptables", **settings}
    path.write_text("[IPFLOATER]\n" + "".join(f"{k} = {v}\n" for k, v in base.items()))
    return path


def ipfloaterd(lab, config, command, env=None):
    argv = [sys.executable, "-m", "one_ipfloater.daemon", "--config", str(config), command]
    if env is not None:
        argv = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
    return lab.run(lab.ns_router, argv, check=False, timeout=60)


def ours_in_kernel(lab) -> list[str]:
    save = lab.run(lab.ns_router, ["iptables-legacy-save"]).stdout
    return [line for line in save.splitlines() if "IPFLOATER" in line]


@pytest.mark.parametrize("settings, line", [
    ({"IP_POOL": f"{ROUTER_PUB_IP}, 198.51.100.10"}, f"IP_POOL: {ROUTER_PUB_IP} is an address of the router itself"),
    ({"PUBLIC_INTERFACE": "nosuch0"}, "PUBLIC_INTERFACE: 'nosuch0' does not exist"),
    ({"REST_IP": "192.0.2.1"}, "REST_IP: 192.0.2.1 is not an address of this host (the API could not listen on it)"),
])
def test_check_refuses_what_run_refuses_with_the_same_line(lab, tmp_path, settings, line):
    rules = ours_in_kernel(lab)
    config = write_config(tmp_path / "ipfloaterd.conf", **settings)
    checked = ipfloaterd(lab, config, "check")
    assert checked.returncode == 1 and checked.stderr == f"ipfloaterd: {line}\n", checked.stderr
    assert json.loads(checked.stdout)["errors"] == [line]
    assert tree(tmp_path) == ["ipfloaterd.conf"]  # check created nothing
    ran = ipfloaterd(lab, config, "run")
    assert ran.returncode == 1 and ran.stderr.splitlines()[-1] == f"ipfloaterd: {line}", ran.stderr
    assert ours_in_kernel(lab) == rules  # refused before any rule changed


def test_check_of_a_good_config_passes_and_creates_nothing(lab, tmp_path):
    """The negative control of the refusals: the same files, a host that fits."""
    rules = ours_in_kernel(lab)
    config = write_config(tmp_path / "ipfloaterd.conf")
    checked = ipfloaterd(lab, config, "check")
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["errors"] == [] and report["backend"] == "iptables" and report["pool_size"] == 31
    assert report["history_days"] == 400  # (the default: HISTORY_DAYS left out)
    assert tree(tmp_path) == ["ipfloaterd.conf"]  # no state directory, token or lock
    assert ours_in_kernel(lab) == rules


def test_check_reports_a_nat_backend_that_cannot_run(lab, tmp_path):
    config = write_config(tmp_path / "ipfloaterd.conf")
    checked = ipfloaterd(lab, config, "check", env={"PATH": str(tmp_path / "empty")})
    assert checked.returncode == 1, checked.stderr
    assert checked.stderr == "ipfloaterd: NAT_BACKEND: iptables-save: command not found (install the iptables package)\n"
    assert ipfloaterd(lab, config, "check", env={"PATH": os.environ["PATH"]}).returncode == 0


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_bad_token_directory_is_refused_before_anything_is_created(lab, tmp_path, command):
    """The state directory is fine, the token's is not: `run` used to create the state
    directory, its lock and the state file, then the token, and start."""
    rules = ours_in_kernel(lab)
    (tmp_path / "secret").mkdir()
    os.chmod(tmp_path / "secret", 0o777)
    config = write_config(tmp_path / "ipfloaterd.conf", TOKEN_FILE=f"{tmp_path}/secret/token")
    proc = ipfloaterd(lab, config, command)
    line = (f"ipfloaterd: TOKEN_FILE: directory {tmp_path}/secret is writable by group and others (mode 0777): "
            "chmod go-w it or choose another path")
    assert proc.returncode == 1 and proc.stderr.splitlines()[-1] == line, proc.stderr
    assert tree(tmp_path) == ["ipfloaterd.conf", "secret"]
    assert ours_in_kernel(lab) == rules


@pytest.mark.parametrize("forward", [0, 1])
def test_ip_forward_off_is_warned_by_check_and_at_start(lab, tmp_path, forward):
    lab.run(lab.ns_router, ["sysctl", "-q", "-w", f"net.ipv4.ip_forward={forward}"])
    daemon = DaemonProcess(lab.ns_router, tmp_path / "d")
    try:
        checked = daemon.run_command("check")
        assert checked.returncode == 0, checked.stderr
        warnings = json.loads(checked.stdout)["warnings"]
        with daemon:
            logged = [line for line in daemon.log().splitlines() if " WARNING " in line]
        if forward == 0:
            assert [w for w in warnings if w.startswith(FORWARD_WARNING)] == warnings and len(warnings) == 1
            assert any(FORWARD_WARNING in line for line in logged), daemon.log()
        else:  # negative control: a forwarding router gets no such warning
            assert warnings == [] and not any(FORWARD_WARNING in line for line in logged), daemon.log()
    finally:
        lab.run(lab.ns_router, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        daemon.run_command("flush")  # the lab is shared by this module: leave its kernel clean


def test_an_api_off_loopback_is_warned(lab, tmp_path):
    daemon = DaemonProcess(lab.ns_router, tmp_path / "d", REST_IP=ROUTER_PUB_IP)
    warnings = json.loads(daemon.run_command("check").stdout)["warnings"]
    assert [w.split(":")[0] for w in warnings] == ["REST_IP"] and "TLS" in warnings[0]
    loopback = DaemonProcess(lab.ns_router, tmp_path / "e", REST_IP="127.0.0.1")
    assert json.loads(loopback.run_command("check").stdout)["warnings"] == []


def test_the_first_start_logs_what_it_installed_not_repairs(lab, tmp_path):
    daemon = DaemonProcess(lab.ns_router, tmp_path / "d", LOG_LEVEL="INFO")
    assert daemon.run_command("flush").returncode == 0  # a clean kernel: the lab is shared by this module
    with daemon:
        first = daemon.log()
    assert "installed rules for 0 associations" in first, first
    assert "started on a new state file" in first and "created API token file" in first
    assert " WARNING " not in first and "repair" not in first, first
    # negative control: the next start finds our rules in place and installs nothing
    with daemon:
        second = daemon.log()[len(first):]
    assert "installed rules" not in second, second
    assert "started: 31 addresses in the pool, 0 allocated, 0 repairs" in second, second
    assert daemon.run_command("flush").returncode == 0
