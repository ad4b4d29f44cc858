"""Failover of a router pair (routed pool) under keepalived, with real traffic.

The figures (gaps in seconds) go to the run's summary; the assertions are on what must
hold whatever the machine's speed: traffic flows again, the same TCP connection carries
on, no echo request is lost while only a daemon dies, one router holds the addresses.
"""

import time

import pytest

from tests.support.halab import FLOW_BOUND, Flows, HaLab

pytestmark = [pytest.mark.netns, pytest.mark.ha, pytest.mark.xdist_group("ha")]

ADVERT = 0.2
REJOIN_BOUND = 15.0  # a router back on the wire is backup within this (measured: a few s)
WATCH = 20  # advertisement intervals watched for flapping after it rejoined
STALL_WINDOW = 10.0  # the negative control: no answer on the stream for this long


def test_master_links_down_backup_takes_over_and_the_tcp_flow_survives(figures):
    with HaLab(advert_int=ADVERT) as lab:
        lab.wait_master("r1")
        lab.wait_ha_state("r1", "master")
        flows = Flows(lab)
        cut = time.time()
        lab.cut_links("r1")
        took_over = lab.wait_master("r2")
        assert flows.wait_flowing(cut) == (True, True), "traffic did not flow again through r2"
        lab.wait_ha_state("r2", "master")
        lab.wait_ha_state("r1", "fault")
        status = lab.daemons["r2"].cli("status")
        assert status.returncode == 0 and status.stdout.startswith("HA state: master\n"), status
        assert lab.daemons["r1"].cli_json("status")["ha_state"]["state"] == "fault"
        stream_gap, ping_gap = flows.stream.outage(cut), flows.ping.outage(cut)
        end = flows.stop()
        assert end["error"] is None, f"the TCP flow broke: {end}"
        assert flows.stream.in_order(), "the stream's answers were not one ordered sequence"
        figures(f"links down, advert_int {ADVERT}: addresses moved after (s)", round(took_over - cut, 3))
        figures(f"links down, advert_int {ADVERT}: ping gap (s)", ping_gap)
        figures(f"links down, advert_int {ADVERT}: TCP stream gap (s), same connection", stream_gap)


def test_master_daemon_killed_nothing_is_interrupted(figures):
    with HaLab(advert_int=ADVERT) as lab:
        lab.wait_master("r1")
        lab.wait_ha_state("r1", "master")
        flows = Flows(lab)
        killed = time.time()
        lab.daemons["r1"].kill()
        assert flows.wait_flowing(killed, count=40) == (True, True)
        assert lab.holders() == {"r1": 2}, "keepalived moved the addresses for a dead daemon"
        lost, stream_gap = flows.ping.lost(), flows.stream.outage(killed)
        # a restarted daemon knows its state before keepalived says anything again
        lab.start_daemon("r1")
        assert lab.ha_state("r1") == "master"
        end = flows.stop()
        assert lost == 0, f"{lost} echo requests lost while only the daemon was dead"
        assert end["error"] is None and flows.stream.in_order()
        figures("daemon killed -9 on the master: echo requests lost", lost)
        figures("daemon killed -9 on the master: longest TCP stream gap (s)", stream_gap)


@pytest.mark.parametrize("flush", [True, False], ids=["conntrack-flush", "no-flush-negative-control"])
def test_old_master_returns_as_backup_and_a_failback_keeps_the_tcp_flow(figures, flush):
    """nopreempt: the old master comes back as backup (no flapping); when the new master
    fails in turn, the flows come back to the old one, whose conntrack still holds the
    flow as it was before: without the flush on becoming master the stream stalls."""
    with HaLab(advert_int=ADVERT, notify=flush) as lab:
        lab.wait_master("r1")
        flows = Flows(lab)
        cut = time.time()
        lab.cut_links("r1")
        lab.wait_master("r2")
        assert flows.wait_flowing(cut) == (True, True)
        backups = lab.entered("r1", "BACKUP")
        masters = lab.entered("r1", "MASTER")
        back = time.time()
        lab.restore_links("r1")
        rejoined = lab.wait_entered("r1", "BACKUP", backups + 1, timeout=REJOIN_BOUND)
        samples, deadline = [], time.monotonic() + WATCH * ADVERT
        while time.monotonic() < deadline:  # watching for flapping (a window, not a wait)
            samples.append(lab.holders())
            time.sleep(ADVERT / 4)
        assert all(s == {"r2": 2} for s in samples), f"VRRP addresses moved or doubled: {samples}"
        assert lab.entered("r1", "MASTER") == masters, "the old master took over again (flapping)"
        if flush:
            lab.wait_ha_state("r1", "backup")
        assert flows.wait_flowing(time.time(), count=20) == (True, True)
        figures("old master back on the wire: backup again after (s)", round(rejoined - back, 3))
        # fail-back: r2 fails, the flows return to r1 and its old conntrack entries
        failback = time.time()
        lab.cut_links("r2")
        lab.wait_master("r1")
        assert flows.ping.wait_reply_after(failback, 10, FLOW_BOUND), "no path through r1 after the fail-back"
        resumed = flows.stream.wait_reply_after(failback, 10, FLOW_BOUND if flush else STALL_WINDOW)
        end = flows.stop()
        if flush:
            lab.wait_ha_state("r1", "master")
            assert resumed and end["error"] is None and flows.stream.in_order(), \
                f"the TCP flow did not survive the fail-back: {end}"
            figures("fail-back with the conntrack flush: TCP stream gap (s)", flows.stream.outage(failback))
            figures("fail-back with the conntrack flush: ping gap (s)", flows.ping.outage(failback))
        else:
            assert not resumed, "the stream survived the fail-back without the flush: this control proves nothing"
            figures("fail-back without the flush: TCP stream stalled for at least (s)", STALL_WINDOW)


def test_failback_to_a_router_whose_daemon_is_dead_still_keeps_the_tcp_flow(figures):
    """The conntrack cleanup never depends on the daemon: with r1's daemon killed, its
    notify script's `ipfloaterd ha-state` finds nobody answering and does the cleanup
    itself; the restarted daemon then reports the state keepalived last gave."""
    with HaLab(advert_int=ADVERT) as lab:
        lab.wait_master("r1")
        flows = Flows(lab)
        lab.daemons["r1"].kill()
        cut = time.time()
        lab.cut_links("r1")
        lab.wait_master("r2")
        assert flows.wait_flowing(cut) == (True, True)
        backups = lab.entered("r1", "BACKUP")
        lab.restore_links("r1")
        lab.wait_entered("r1", "BACKUP", backups + 1, timeout=REJOIN_BOUND)
        assert flows.wait_flowing(time.time(), count=20) == (True, True)
        failback = time.time()
        lab.cut_links("r2")
        lab.wait_master("r1")
        resumed = flows.stream.wait_reply_after(failback, 10, FLOW_BOUND)
        end = flows.stop()
        assert resumed and end["error"] is None and flows.stream.in_order(), \
            f"the TCP flow did not survive a fail-back to a router without its daemon: {end}"
        deadline = time.monotonic() + FLOW_BOUND  # the notify script runs after the takeover

        def done_alone():
            return [e for e in lab.notify_events("r1") if e["state"] == "master" and e["by"] == "ha-state command"]
        while not done_alone() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done_alone() and "unreachable" in done_alone()[-1]["daemon"], lab.notify_log("r1")
        lab.start_daemon("r1")
        assert lab.ha_state("r1") == "master"
        figures("fail-back to a router whose daemon is dead: TCP stream gap (s)", flows.stream.outage(failback))
