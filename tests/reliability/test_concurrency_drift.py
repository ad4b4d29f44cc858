"""Concurrency, drift repair and coexistence with other users of netfilter."""

import subprocess
import sys
import time

import pytest

from tests.support.daemonproc import DaemonProcess
from tests.integration.conftest import TCP
from tests.reliability.conftest import assert_kernel_matches_state, read_json_lines

pytestmark = pytest.mark.netns


def loadgen(lab, daemon, *args, timeout=120):
    proc = lab.run(lab.ns_router, [sys.executable, "-m", "tests.reliability.loadgen", *args,
                                   "--port", str(daemon.port), "--token-file", str(daemon.workdir / "token")],
                   timeout=timeout)
    return read_json_lines(proc.stdout)


def test_twenty_clients_two_hundred_requests_pool_of_150(lab, tmp_path, figures):
    with DaemonProcess(lab.ns_router, tmp_path / "d", IP_POOL="198.51.100.10-198.51.100.159",
                       PRIVATE_IP_RANGES="10.77.0.0/16", LOG_LEVEL="WARNING") as daemon:
        started = time.monotonic()
        results = [r for r in loadgen(lab, daemon, "race", "--clients", "20", "--requests", "200") if "client" in r]
        elapsed = time.monotonic() - started
        ok = [r for r in results if r["status"] == 201]
        exhausted = [r for r in results if r["code"] == "pool_exhausted"]
        assert len(results) == 200
        odd = [(r["status"], r["code"], r.get("exception")) for r in results
               if r["status"] != 201 and r["code"] != "pool_exhausted"]
        assert len(ok) == 150 and len(exhausted) == 50, odd
        assert len({r["public_ip"] for r in ok}) == 150
        stored = assert_kernel_matches_state(lab, daemon)
        assert len(stored) == 150 and set(stored.values()) == {r["private_ip"] for r in ok}
        assert daemon.cli_json("ippool")["free"] == 0
    figures("concurrency", "20 clients x 200 requests on 150 addresses: ok / exhausted / duplicates",
            f"{len(ok)} / {len(exhausted)} / 0")
    figures("concurrency", "200 requests incl. process start (req/s)", f"{200 / elapsed:.0f}")


def wait_for_log(daemon, text, since, timeout=15.0):
    """Bounded wait for the periodic reconcile to report a repair in the daemon log
    (only what was logged after offset `since` counts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in daemon.log()[since:]:
            return True
        time.sleep(0.05)  # polling an observable condition, bounded by the deadline
    return False


@pytest.mark.parametrize("label, damage, repair_line", [
    ("nat table flushed", ["iptables-legacy", "-w", "5", "-t", "nat", "-F"],
     "reconcile repaired: rewrote nat/IPFLOATER-PRE"),
    ("jump rule deleted", ["iptables-legacy", "-w", "5", "-t", "nat", "-D", "PREROUTING", "-j", "IPFLOATER-PRE"],
     "reconcile repaired: restored jump nat/PREROUTING -> IPFLOATER-PRE"),
    ("our chain deleted", ["sh-chain-delete"], "reconcile repaired: created chain nat/IPFLOATER-PRE"),
    ("floating address removed", ["ip", "addr", "del", "198.51.100.10/32", "dev", "pub0"],
     "reconcile repaired: added 198.51.100.10/32 to pub0"),
])
def test_periodic_reconcile_repairs_drift(lab, tmp_path, servers, label, damage, repair_line, figures):
    foreign = ["iptables-legacy", "-w", "5", "-t", "nat", "-A", "POSTROUTING", "-s", "10.99.0.0/16",
               "-o", "pub0", "-j", "MASQUERADE"]
    lab.run(lab.ns_router, foreign)
    with DaemonProcess(lab.ns_router, tmp_path / "d", RECONCILE_INTERVAL="1") as daemon:
        fip = daemon.cli("getip", lab.vm_ip(1)).stdout.strip()
        assert lab.tcp_probe(lab.ns_client, fip, TCP)["ok"]
        since = len(daemon.log())
        if damage == ["sh-chain-delete"]:  # remove the jump, then our chain itself
            lab.run(lab.ns_router, ["iptables-legacy", "-w", "5", "-t", "nat", "-D", "PREROUTING", "-j", "IPFLOATER-PRE"])
            lab.run(lab.ns_router, ["iptables-legacy", "-w", "5", "-t", "nat", "-F", "IPFLOATER-PRE"])
            lab.run(lab.ns_router, ["iptables-legacy", "-w", "5", "-t", "nat", "-X", "IPFLOATER-PRE"])
        else:
            lab.run(lab.ns_router, damage)
        started = time.monotonic()
        assert wait_for_log(daemon, repair_line, since), daemon.log()
        figures("drift", f"{label}: repaired by the periodic reconcile within (s)", f"{time.monotonic() - started:.2f}")
        assert_kernel_matches_state(lab, daemon)
        lab.garp(fip)  # the client may have cached a failed lookup while the address was gone
        reply = lab.tcp_probe(lab.ns_client, fip, TCP)
        assert reply["ok"] and reply["reply"]["name"] == "vm1", reply
        save = lab.run(lab.ns_router, ["iptables-legacy-save", "-t", "nat"]).stdout
        if damage[-1] != "-F":
            assert "-A POSTROUTING -s 10.99.0.0/16 -o pub0 -j MASQUERADE" in save


def test_concurrent_iptables_commands_never_lose_a_change(lab, tmp_path, figures):
    """Our commits and a loop of `iptables -w` commands share /run/xtables.lock."""
    with DaemonProcess(lab.ns_router, tmp_path / "d", XTABLES_LOCK="/run/xtables.lock",
                       LOG_LEVEL="WARNING") as daemon:
        script = ("for i in $(seq 1 60); do iptables-legacy -w 10 -t nat -A POSTROUTING "
                  "-s 10.99.$i.0/24 -o pub0 -j MASQUERADE; done")
        admin = lab.popen(lab.ns_router, ["bash", "-c", script], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
        results = [r for r in loadgen(lab, daemon, "burst", "--threads", "4", "--per-worker", "2",
                                      "--ops", "40") if "worker" in r]
        assert admin.wait(120) == 0, admin.stderr.read()
        assert all(r["status"] in (200, 201, 404) for r in results), {r["status"] for r in results}
        save = lab.run(lab.ns_router, ["iptables-legacy-save", "-t", "nat"]).stdout
        theirs = [l for l in save.splitlines() if l.startswith("-A POSTROUTING -s 10.99.")]
        assert len(theirs) == 60
        assert_kernel_matches_state(lab, daemon)
    figures("coexistence", "admin iptables rules added during a 160-call burst, all kept", f"{len(theirs)} of 60")


def test_docker_style_chains_survive_everything(lab, tmp_path, servers):
    docker = [["-t", "nat", "-N", "DOCKER"],
              ["-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
              ["-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE"],
              ["-t", "nat", "-A", "DOCKER", "-i", "docker0", "-j", "RETURN"],
              ["-t", "filter", "-N", "DOCKER-USER"], ["-t", "filter", "-A", "FORWARD", "-j", "DOCKER-USER"]]
    for rule in docker:
        lab.run(lab.ns_router, ["iptables-legacy", "-w", "5", *rule])

    def theirs():
        save = lab.run(lab.ns_router, ["iptables-legacy-save"]).stdout
        return sorted(l for l in save.splitlines() if "DOCKER" in l or "172.17" in l)

    before = theirs()
    with DaemonProcess(lab.ns_router, tmp_path / "d", BLOCK_PUBLIC_IPS="yes") as daemon:
        fip = daemon.cli("getip", lab.vm_ip(1)).stdout.strip()
        assert lab.tcp_probe(lab.ns_client, fip, TCP)["ok"]
        daemon.cli("redirect", fip, lab.vm_ip(2))
        daemon.cli_json("reconcile")
        daemon.cli("releaseip", fip)
    assert theirs() == before
    assert daemon.run_command("flush").returncode == 0
    assert theirs() == before
