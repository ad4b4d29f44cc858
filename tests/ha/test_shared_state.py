"""Both routers' daemons share their state in the lab's three etcd members (STATE_STORE =
etcd): changes through either API at once, each router's kernel fed by the follower, fail
static when etcd loses quorum, and a router that was down converging before it is used.

The figures go to the run's summary; the assertions hold whatever the machine's speed
(bounded polls on real conditions)."""

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.halab import FIP, ROUTERS, HaLab

pytestmark = [pytest.mark.netns, pytest.mark.ha, pytest.mark.xdist_group("ha")]

STORM = Path(__file__).resolve().parent.parent / "support" / "allocstorm.py"
BIG_POOL = {"IP_POOL": "203.0.113.10-203.0.113.159", "PRIVATE_IP_RANGES": "10.77.0.0/16"}  # 150 addresses
CONVERGE_BOUND = 15.0  # seconds for a change to reach the other router (a bound; measured: well under 1)
QUORUM_BOUND = 30.0  # seconds for two members to elect a leader again


def store_pairs(lab, name="r1"):
    return {(f["public_ip"], f["private_ip"]) for f in lab.daemons[name].cli_json("status")["floatingips"]
            if f["private_ip"]}


def wait_pairs(lab, name, want, bound=CONVERGE_BOUND):
    """Until router `name`'s kernel holds exactly `want`; the seconds it took."""
    started, deadline = time.monotonic(), time.monotonic() + bound
    while (have := lab.live_pairs(name)) != want:
        assert time.monotonic() < deadline, f"{name}'s kernel: {sorted(have ^ want)[:5]} differ from the store"
        time.sleep(0.05)
    return round(time.monotonic() - started, 3)


def test_twenty_clients_through_both_routers_never_take_an_address_twice(figures):
    with HaLab(etcd=True, store="etcd", daemon_settings=BIG_POOL) as lab:
        started = time.monotonic()
        storms = [lab.popen(lab.ns(name), [sys.executable, str(STORM), f"http://127.0.0.1:{lab.daemons[name].port}",
                                            lab.daemons[name].token, str(i), "10"],
                            stdout=-1, stderr=-1, text=True) for i, name in enumerate(ROUTERS)]
        results = [json.loads(p.communicate(timeout=300)[0]) for p in storms]
        elapsed = time.monotonic() - started
        got = [tuple(pair) for r in results for pair in r["allocated"]]
        assert [r["errors"] for r in results] == [[], []]
        publics = [pub for pub, _priv in got]
        assert len(publics) == 150 and len(set(publics)) == 150, "an address was handed out twice"
        assert all(r["allocated"] for r in results), "one router allocated nothing: no concurrency"
        assert store_pairs(lab, "r2") == set(got) == store_pairs(lab, "r1")
        for name in ROUTERS:
            wait_pairs(lab, name, set(got))
        figures("etcd store: 20 clients, 2 routers, pool of 150: allocations a second",
                round(150 / elapsed, 1))
        figures("etcd store: requests that gave up on conflicts (retried by the client)",
                sum(r["gave_up_on_conflicts"] for r in results))


def test_one_member_down_nothing_quorum_lost_fail_static_then_recovery(figures):
    with HaLab(etcd=True, store="etcd") as lab:
        r1, r2 = lab.daemons["r1"], lab.daemons["r2"]
        assert r1.cli("redirect", FIP, lab.vm_ip(1)).returncode == 0  # through r1 only
        figures("etcd store: a change through r1 in r2's kernel after (s)",
                wait_pairs(lab, "r2", {(FIP, lab.vm_ip(1))}))
        server = lab.start_server(lab.vm_ns(1), "vm1", tcp_port=8080)
        ping = lab.start_ping(FIP)
        try:
            assert ping.wait_reply_after(time.time(), 5)
            lab.stop_etcd_member(3)  # one member down: no effect
            proc = r2.cli("--json", "getip", lab.vm_ip(2))
            assert proc.returncode == 0, proc.stderr
            both = {(FIP, lab.vm_ip(1)), (json.loads(proc.stdout)["public_ip"], lab.vm_ip(2))}
            wait_pairs(lab, "r1", both)
            lost = time.time()
            lab.stop_etcd_member(2)  # quorum lost
            for d in (r1, r2):
                proc = d.cli("getip", "10.77.0.13")
                assert proc.returncode == 1 and "etcd unavailable" in proc.stderr, proc
                assert proc.stderr.count("\n") == 1  # one line
            status = r1.cli("status")  # reads answer, from the last known state
            assert status.returncode == 0 and status.stdout.startswith("state store: etcd UNAVAILABLE"), status
            assert FIP in status.stdout
            assert ping.wait_reply_after(lost, 20), "traffic stopped when etcd lost quorum"
            assert lab.live_pairs("r1") == both == lab.live_pairs("r2"), "a rule was withdrawn"
            # r2's daemon restarts meanwhile: it waits for etcd and leaves its kernel alone
            r2.stop()
            starting = threading.Thread(target=r2.start, kwargs={"timeout": 120.0})
            starting.start()
            deadline = time.monotonic() + CONVERGE_BOUND
            while "the kernel is left as it is, retrying" not in r2.log():
                assert time.monotonic() < deadline and starting.is_alive(), r2.log()[-2000:]
                time.sleep(0.1)
            assert r2.ready_at is None and lab.live_pairs("r2") == both
            lab.start_etcd_member(2)
            back, deadline = time.monotonic(), time.monotonic() + QUORUM_BOUND
            while (proc := r1.cli("--json", "getip", "10.77.0.13")).returncode != 0:
                assert time.monotonic() < deadline, f"no change after quorum came back: {proc.stderr}"
                time.sleep(0.2)
            figures("etcd store: quorum back, first change accepted after (s)", round(time.monotonic() - back, 2))
            both.add((json.loads(proc.stdout)["public_ip"], "10.77.0.13"))
            starting.join(120.0)
            assert r2.running() and r2.ready_at is not None, r2.log()[-2000:]
            wait_pairs(lab, "r2", both)
            assert ping.wait_reply_after(time.time(), 5)
        finally:
            ping.stop()
            server.stop()


def test_a_router_down_during_changes_converges_before_it_is_used(figures):
    with HaLab(etcd=True, store="etcd") as lab:
        r1, r2 = lab.daemons["r1"], lab.daemons["r2"]
        old = "203.0.113.20"
        assert r1.cli("redirect", old, lab.vm_ip(1)).returncode == 0
        wait_pairs(lab, "r2", {(old, lab.vm_ip(1))})
        lab.stop_keepalived("r2")
        r2.stop()
        assert r1.cli("releaseip", old).returncode == 0
        assert r1.cli("redirect", FIP, lab.vm_ip(1)).returncode == 0
        assert r1.cli("redirect", "203.0.113.11", lab.vm_ip(2)).returncode == 0
        want = store_pairs(lab, "r1")
        assert want == {(FIP, lab.vm_ip(1)), ("203.0.113.11", lab.vm_ip(2))}
        assert lab.live_pairs("r2") == {(old, lab.vm_ip(1))}  # the control: r2's kernel is stale
        r2.start()  # ready: its rules are in place; keepalived starts only after
        assert lab.live_pairs("r2") == want
        figures("etcd store: a router back after changes, its rules in place after (s)",
                round(r2.rules_at - r2.started_at, 3))
        lab.start_keepalived("r2")
        lab.wait_entered("r2", "BACKUP", 2)
