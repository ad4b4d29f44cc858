"""Crash and reboot: kill -9 the daemon in the middle of a burst, destroy the router.

After every restart: each acknowledged change is there, the one call in flight per worker
is either fully applied or not at all, no address is held twice, the kernel's rules
equal the stored state, and traffic flows for every live association.
"""

import random
import subprocess
import sys
import time

import pytest

from tests.support.daemonproc import DaemonProcess
from tests.support.netlab import Lab
from tests.integration.conftest import TCP
from tests.reliability.conftest import assert_kernel_matches_state, read_json_lines

pytestmark = pytest.mark.netns

WORKERS, PER_WORKER, OPS_PER_WORKER, ROUNDS = 4, 2, 125, 10  # 500 calls per burst


def replay(expected: dict, record: dict) -> None:
    """Apply one acknowledged call to the expected public -> private map."""
    if record["status"] not in (200, 201):
        return
    if record["op"] == "associate":
        for pub, priv in list(expected.items()):  # allow_move takes the private IP over
            if priv == record["private_ip"]:
                del expected[pub]
        expected[record["public_ip"]] = record["private_ip"]
    else:
        expected.pop(record["public_ip"], None)


def possible_states(expected: dict, inflight: list) -> list[dict]:
    """The state is `expected` plus any subset of the in-flight calls (one per worker)."""
    states = [dict(expected)]
    for record in inflight:
        grown = []
        for state in states:
            applied = dict(state)
            replay(applied, {**record, "status": 200})
            grown.append(applied)
        states += grown
    return states


@pytest.fixture
def big_lab():
    with Lab(vms=WORKERS * PER_WORKER) as lab:
        servers = [lab.start_server(lab.vm_ns(i), f"vm{i}", tcp_port=TCP) for i in range(1, lab.vm_count + 1)]
        yield lab
        for server in servers:
            server.stop()


@pytest.mark.slow  # 10 rounds of 500 calls per DB_SYNC: the longest tests of the suite
@pytest.mark.parametrize("db_sync", ["full", "normal"])
def test_kill_9_during_bursts(big_lab, tmp_path, figures, db_sync):
    lab = big_lab
    vm_by_ip = {lab.vm_ip(i): f"vm{i}" for i in range(1, lab.vm_count + 1)}
    daemon = DaemonProcess(lab.ns_router, tmp_path / "d", LOG_LEVEL="INFO", DB_SYNC=db_sync).start()
    rng = random.Random(20261125)
    expected: dict = {}
    acked_total = inflight_total = inflight_applied = 0
    recoveries = []
    try:
        for round_no in range(ROUNDS):
            kill_after = rng.randint(20, WORKERS * OPS_PER_WORKER - 20)
            gen = lab.popen(lab.ns_router, [sys.executable, "-m", "tests.reliability.loadgen", "burst",
                                            "--port", str(daemon.port), "--token-file", str(tmp_path / "d" / "token"),
                                            "--threads", str(WORKERS), "--per-worker", str(PER_WORKER),
                                            "--ops", str(OPS_PER_WORKER), "--seed", str(round_no)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            lines, killed = [], False
            for line in gen.stdout:
                lines.append(line)
                if not killed and len(lines) >= kill_after:
                    daemon.kill()
                    killed = True
            gen.wait(30)
            records = [r for r in read_json_lines("".join(lines)) if "worker" in r]
            acked = sorted((r for r in records if r["status"] is not None), key=lambda r: (r["worker"], r["seq"]))
            inflight = [r for r in records if r["status"] is None]
            for record in acked:
                replay(expected, record)
            started = time.monotonic()
            daemon.start()
            recoveries.append(time.monotonic() - started)
            stored = assert_kernel_matches_state(lab, daemon)
            candidates = possible_states(expected, inflight)
            assert stored in candidates, (round_no, stored, expected, inflight)
            assert len(set(stored.values())) == len(stored), "a private address served twice"
            inflight_applied += sum(1 for r in inflight if stored.get(r["public_ip"]) ==
                                    (r.get("private_ip") if r["op"] == "associate" else None)
                                    and expected.get(r["public_ip"]) != stored.get(r["public_ip"]))
            acked_total += len(acked)
            inflight_total += len(inflight)
            for public, private in stored.items():
                reply = lab.tcp_probe(lab.ns_client, public, TCP)
                assert reply["ok"] and reply["reply"]["name"] == vm_by_ip[private], (round_no, public, reply)
            expected = stored
    finally:
        daemon.stop()
    figures(f"crash DB_SYNC={db_sync}", "rounds of kill -9 during a 500-call burst", ROUNDS)
    figures(f"crash DB_SYNC={db_sync}", "acknowledged calls, all found after restart", acked_total)
    figures(f"crash DB_SYNC={db_sync}", "calls in flight at the kill (applied / not applied)",
            f"{inflight_applied} / {inflight_total - inflight_applied}")
    figures(f"crash DB_SYNC={db_sync}", "restart to ready, median / max (s)",
            f"{sorted(recoveries)[len(recoveries) // 2]:.2f} / {max(recoveries):.2f}")


def test_reboot_restores_every_association(tmp_path, figures):
    with Lab(vms=3) as lab:
        servers = [lab.start_server(lab.vm_ns(i), f"vm{i}", tcp_port=TCP) for i in (1, 2, 3)]
        daemon = DaemonProcess(lab.ns_router, tmp_path / "d").start()
        try:
            for i in (1, 2, 3):
                assert daemon.cli("getip", lab.vm_ip(i)).returncode == 0
            before = assert_kernel_matches_state(lab, daemon)
            daemon.kill()
            lab.destroy_router()  # rules, addresses and conntrack are gone
            lab.rebuild_router()
            started = time.monotonic()
            daemon.start()
            restored = time.monotonic() - started
            assert assert_kernel_matches_state(lab, daemon) == before
            for public, private in before.items():
                reply = lab.tcp_probe(lab.ns_client, public, TCP)
                assert reply["ok"] and reply["reply"]["local"] == private, reply
        finally:
            daemon.stop()
            for server in servers:
                server.stop()
    figures("reboot", "associations restored after the router namespace was rebuilt", f"{len(before)} of {len(before)}")
    figures("reboot", "start to all rules in place (s)", f"{restored:.2f}")
