"""Failover of a router pair with an on-link pool: the floating /32s follow the master.

The upstream router has the pool on the shared public segment and ARPs for each floating
address (no route to a VRRP address): only the master may hold the addresses, and a new
master must announce them (gratuitous ARP), or the upstream keeps sending to the old
master's MAC until its neighbour entry expires. Figures (seconds) go to the run's
summary; the assertions hold whatever the machine's speed.
"""

import time

import pytest

from tests.support.halab import FIP, Flows, HaLab

pytestmark = [pytest.mark.netns, pytest.mark.ha, pytest.mark.xdist_group("ha")]

ADVERT = 0.2
# Without the announcement the upstream keeps sending to the old master's MAC while its
# neighbour entry lasts: the flows created it a few seconds before the cut, so it is
# REACHABLE (15-45 s from its creation), then STALE, DELAY 5 s and 3 unicast probes 1 s
# apart before the upstream asks again: far more than this window. With it, the takeover
# is keepalived's (under 1 s) plus the notify script. The same window judges both: flows
# within it with the GARP, none without.
GARP_WINDOW = 8.0
ARP_RECOVERY_BOUND = 30.0  # the control waits this long for traffic once the upstream re-asks
REJOIN_BOUND = 15.0  # a router back on the wire is backup within this (measured: a few s)
WATCH = 20  # advertisement intervals watched: one holder, no flapping
ONE = {"r1": [FIP]}
TWO = {"r2": [FIP]}


def watch_holders(lab, expected, intervals=WATCH):
    """Sample both routers' floating addresses for `intervals` adverts (a window, not a wait)."""
    samples, deadline = [], time.monotonic() + intervals * ADVERT
    while time.monotonic() < deadline:
        samples.append(lab.floating_holders())
        time.sleep(ADVERT / 4)
    assert all(s == expected for s in samples), f"floating addresses moved or doubled: {samples}"


def _flows_through_the_master(lab):
    """Once r1 is master and r2 backup, both daemons told: the stream and the ping train
    through the floating address, which r1 alone holds."""
    lab.wait_master("r1")
    lab.wait_ha_state("r1", "master")
    lab.wait_ha_state("r2", "backup")
    flows = Flows(lab)
    lab.wait_floating(ONE)
    return flows


@pytest.mark.parametrize("garp", [True, False], ids=["garp", "no-garp-negative-control"])
def test_onlink_master_links_down_backup_takes_the_addresses_and_announces_them(figures, garp):
    with HaLab(advert_int=ADVERT, onlink=True, garp=garp) as lab:
        flows = _flows_through_the_master(lab)
        watch_holders(lab, ONE, intervals=5)  # the backup took nothing for the association
        cut = time.time()
        lab.cut_links("r1")
        took_over = lab.wait_master("r2")
        held = lab.wait_floating(TWO)  # r2 took it; r1 (fault) gave it up
        flowing = flows.wait_flowing(cut, count=5, timeout=GARP_WINDOW)
        if not garp:
            assert flowing == (False, False), \
                f"traffic came back without the gratuitous ARP: this control proves nothing ({flowing})"
            assert lab.floating_holders() == TWO, "the control must differ only in the announcement"
            # the path through r2 is sound: traffic comes back once the upstream asks again
            # (made to ask now: its neighbour entries flushed, instead of waiting tens of
            # seconds for them to fail on their own)
            lab.run(lab.ns("upstream"), ["ip", "neigh", "flush", "dev", "pub0"])
            assert flows.ping.wait_reply_after(cut, 5, ARP_RECOVERY_BOUND), "no path through r2 at all"
            flows.stop()
            figures(f"on-link, no gratuitous ARP: no traffic within {GARP_WINDOW:g} s; ping gap (s)",
                    flows.ping.outage(cut))
            return
        assert flowing == (True, True), "traffic did not flow again through r2 after its announcement"
        lab.wait_ha_state("r1", "fault")
        watch_holders(lab, TWO)
        stream_gap, ping_gap = flows.stream.outage(cut), flows.ping.outage(cut)
        figures(f"on-link, links down, advert_int {ADVERT}: VRRP addresses moved after (s)",
                round(took_over - cut, 3))
        figures(f"on-link, links down, advert_int {ADVERT}: floating /32 on the new master after (s)",
                round(held - cut, 3))
        figures(f"on-link, links down, advert_int {ADVERT}: ping gap (s)", ping_gap)
        figures(f"on-link, links down, advert_int {ADVERT}: TCP stream gap (s), same connection", stream_gap)
        # the old master comes back: backup (nopreempt), holds nothing, no flapping
        backups, masters = lab.entered("r1", "BACKUP"), lab.entered("r1", "MASTER")
        back = time.time()
        lab.restore_links("r1")
        lab.wait_entered("r1", "BACKUP", backups + 1, timeout=REJOIN_BOUND)
        lab.wait_ha_state("r1", "backup")
        settled = lab.wait_floating(TWO)
        watch_holders(lab, TWO)
        assert lab.entered("r1", "MASTER") == masters, "the old master took over again (flapping)"
        assert flows.wait_flowing(time.time(), count=20) == (True, True)
        end = flows.stop()
        assert end["error"] is None and flows.stream.in_order(), f"the TCP flow broke: {end}"
        figures("on-link, old master back: backup, the new master still the one holder, after (s)",
                round(settled - back, 3))


def test_onlink_master_daemon_killed_and_restarted_keeps_the_addresses(figures):
    """The daemon dies -9 on the master: the kernel keeps the /32s and the NAT, nothing is
    interrupted; the restarted daemon reads "master" from its state file before it touches
    the kernel, so its start-up sync keeps the addresses (an unknown state would drop them)."""
    with HaLab(advert_int=ADVERT, onlink=True) as lab:
        lab.wait_master("r1")
        lab.wait_ha_state("r1", "master")
        flows = Flows(lab)
        lab.wait_floating(ONE)
        killed = time.time()
        lab.daemons["r1"].kill()
        assert flows.wait_flowing(killed, count=20) == (True, True)
        lab.start_daemon("r1")
        assert lab.ha_state("r1") == "master"
        watch_holders(lab, ONE)
        restarted = time.time()
        assert flows.wait_flowing(restarted, count=20) == (True, True)
        lost = flows.ping.lost()
        end = flows.stop()
        assert lost == 0, f"{lost} echo requests lost while the master's daemon died and restarted"
        assert end["error"] is None and flows.stream.in_order()
        figures("on-link, master's daemon killed -9 and restarted: echo requests lost", lost)


def test_onlink_control_without_onlink_mode_both_routers_hold_the_address():
    """Negative control of the one-holder check: with the /32s not following the state
    (HA_MODE routed on an on-link segment, which is today's behaviour) the backup holds
    the floating address too, and the poll of both namespaces sees it."""
    with HaLab(advert_int=ADVERT, onlink=True, ha_mode="routed") as lab:
        lab.wait_master("r1")
        lab.associate_everywhere(FIP, lab.vm_ip(1))
        assert lab.wait_floating({"r1": [FIP], "r2": [FIP]}), "the one-holder check cannot see two holders"


STOP_BOUND = 10.0  # the stopped router's notify has given the /32s up within this (measured: under 1 s)
BOTH = {"r1": [FIP], "r2": [FIP]}


def _after_the_master_s_keepalived_ended(lab, flows, ended, how, figures):
    """The checks both ways of losing keepalived share: the new master alone holds the /32,
    the old one says `stop` and keeps none, a restart of its daemon puts none back, and the
    TCP stream carried on (same connection, every reply in order)."""
    held = lab.wait_floating(TWO, timeout=STOP_BOUND)
    lab.wait_ha_state("r2", "master")
    lab.wait_ha_state("r1", "stop")
    watch_holders(lab, TWO)
    assert flows.wait_flowing(time.time(), count=20) == (True, True), "traffic did not flow through r2"
    lab.daemons["r1"].kill()  # the state file says stop: the restarted daemon takes nothing
    lab.start_daemon("r1")
    assert lab.ha_state("r1") == "stop"
    watch_holders(lab, TWO)
    assert flows.wait_flowing(time.time(), count=20) == (True, True)
    stream_gap, ping_gap = flows.stream.outage(ended), flows.ping.outage(ended)
    end = flows.stop()
    assert end["error"] is None and flows.stream.in_order(), f"the TCP flow broke: {end}"
    figures(f"on-link, master's keepalived {how}: floating /32 on the new master only, after (s)",
            round(held - ended, 3))
    figures(f"on-link, master's keepalived {how}: ping gap (s)", ping_gap)
    figures(f"on-link, master's keepalived {how}: TCP stream gap (s), same connection", stream_gap)


@pytest.mark.parametrize("notify_stop", [True, False], ids=["notify-stop", "no-notify-stop-negative-control"])
def test_onlink_keepalived_stopped_on_the_master_gives_the_addresses_up(figures, notify_stop):
    """SIGTERM to the master's keepalived (systemctl stop, an upgrade): it hands over at once
    (priority 0) and runs notify_stop; the /32s leave the old master, so the upstream's ARP
    has one answer. Without notify_stop nothing tells the daemon: both hold them."""
    with HaLab(advert_int=ADVERT, onlink=True, notify_stop=notify_stop) as lab:
        flows = _flows_through_the_master(lab)
        stopped = time.time()
        lab.stop_keepalived("r1")
        lab.wait_master("r2")  # keepalived removed its own addresses from r1
        if not notify_stop:
            return _control_both_keep_the_addresses(lab, flows, "notify_stop")
        _after_the_master_s_keepalived_ended(lab, flows, stopped, "stopped (SIGTERM)", figures)


RESET_TRIES = 3  # labs the control below may take to show one reset


def _stream_end_without_the_input_drop():
    """One lab: keepalived stopped on the master whose input drop was emptied by hand; the
    stream's end (None when it carried on)."""
    with HaLab(advert_int=ADVERT, onlink=True) as lab:
        flows = _flows_through_the_master(lab)
        lab.run(lab.ns("r1"), ["nft", "flush", "chain", "ip", "ipfloater", "input"])
        stopped = time.time()
        lab.stop_keepalived("r1")
        lab.wait_master("r2")
        carried = flows.stream.wait_reply_after(stopped, count=40)
        end = flows.stream.end
        flows.stop()
        return None if carried else (end or {})


def test_onlink_control_without_the_input_drop_the_old_master_resets_the_stream():
    """Why HA_MODE onlink implies BLOCK_PUBLIC_IPS (the test above passes with it): in the
    moment before notify_stop the VMs' answers already go through the new master, the
    client's next segments reach the old one out of its conntrack's window, untranslated,
    and its own stack answers them with a reset for the /32 it still holds. A race (a
    segment must arrive in that moment; most labs show it): up to RESET_TRIES labs, one
    reset proves the drop is what keeps the stream."""
    ends = []
    while len(ends) < RESET_TRIES and (not ends or ends[-1] is None):
        ends.append(_stream_end_without_the_input_drop())
    assert ends[-1] is not None, f"the stream carried on in {RESET_TRIES} labs: no control"
    assert "reset" in ends[-1].get("error", ""), f"not a reset: {ends[-1]}"


def _control_both_keep_the_addresses(lab, flows, left_out):
    """The negative controls: without `left_out` r1 still says master, so both routers
    hold the /32s once r2 is master too."""
    lab.wait_ha_state("r2", "master")
    lab.wait_floating(BOTH, timeout=STOP_BOUND)
    watch_holders(lab, BOTH)
    assert lab.ha_state("r1") == "master", f"the control must differ only in {left_out}"
    flows.stop()


@pytest.mark.parametrize("stop_post", [True, False], ids=["exec-stop-post", "no-exec-stop-post-negative-control"])
def test_onlink_keepalived_killed_on_the_master_exec_stop_post_gives_the_addresses_up(figures, stop_post):
    """kill -9 of every keepalived process on the master (a crash): no notify runs at all;
    the peer takes over when the adverts stop, and systemd runs the drop-in's ExecStopPost
    (the lab runs the same command when the processes are gone). Without it the old
    master keeps the /32s beside the new master's."""
    with HaLab(advert_int=ADVERT, onlink=True) as lab:
        flows = _flows_through_the_master(lab)
        masters = lab.entered("r2", "MASTER")
        killed = time.time()
        lab.kill_keepalived("r1")
        if stop_post:
            lab.exec_stop_post("r1")
        lab.wait_entered("r2", "MASTER", masters + 1)  # r1's VRRP addresses stay: a crash cleans nothing
        if not stop_post:
            return _control_both_keep_the_addresses(lab, flows, "ExecStopPost")
        assert lab.notify_events("r1")[-1]["state"] == "stop"
        assert lab.holds_vips("r1"), "keepalived killed -9 left its VRRP addresses (what the README says)"
        _after_the_master_s_keepalived_ended(lab, flows, killed, "killed -9 + ExecStopPost", figures)
        # keepalived started again (systemctl start): it removes its leftover addresses and is backup
        backups = lab.entered("r1", "BACKUP")
        lab.start_keepalived("r1")
        lab.wait_entered("r1", "BACKUP", backups + 1)
        lab.wait_master("r2")
        lab.wait_ha_state("r1", "backup")
        watch_holders(lab, TWO)
