"""The HA lab scenario: a router pair (routed pool) under keepalived, failed over with
real traffic, once per advertisement interval asked for; prints what it measured.

    bash lab/ha                       # advert_int 0.2 (tuned) and 1 (keepalived's default)
    bash lab/ha --advert-int 0.3 --json
    bash lab/ha --onlink              # on-link pool: the floating /32s follow the master

For each interval: two routers, each running ipfloaterd with the same floating IP, keepalived
moving the public next hop and the VMs' gateway; from the client a long-lived TCP stream
and a ping train (every 50 ms) through the floating IP. Then: (1) the master's cables are
pulled, (2) the new master's daemon is killed -9, (3) the old master comes back (it stays
backup: nopreempt), (4) the new master's cables are pulled (fail-back to the old one).
Every namespace and process is removed at the end, also on failure or Ctrl-C. Run as root.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/support lives with the tests

from tests.support.halab import FLOW_BOUND, Flows, HaLab, PRIVATE_VIP, PUBLIC_VIP, FIP  # noqa: E402


def scenario(advert_int: float, unicast: bool, say, onlink: bool = False) -> dict:
    figures = {"advert_int": advert_int, "vrrp": "unicast" if unicast else "multicast",
               "pool": "onlink" if onlink else "routed"}
    with HaLab(advert_int=advert_int, unicast=unicast, onlink=onlink) as lab:
        say(f"routers up: r1 master, r2 backup (public VIP {PUBLIC_VIP}, gateway VIP {PRIVATE_VIP}); "
            f"{FIP} -> vm1 on both")
        lab.wait_ha_state("r1", "master")
        flows = Flows(lab)
        say("stream and ping train flowing through r1")

        cut = time.time()
        lab.cut_links("r1")
        figures["failover_addresses_moved_s"] = round(lab.wait_master("r2") - cut, 3)
        if flows.wait_flowing(cut) != (True, True):
            raise SystemExit("traffic did not flow again through r2")
        figures["failover_ping_gap_s"] = flows.ping.outage(cut)
        figures["failover_tcp_gap_s"] = flows.stream.outage(cut)
        say(f"(1) r1's cables pulled: r2 master after {figures['failover_addresses_moved_s']} s, "
            f"ping gap {figures['failover_ping_gap_s']} s, TCP gap {figures['failover_tcp_gap_s']} s")
        if onlink:  # the floating /32s follow the master (HA_MODE onlink)
            say(f"    floating addresses held by {lab.floating_holders()}")

        killed = time.time()
        lost_before = flows.ping.lost()
        lab.daemons["r2"].kill()
        flows.wait_flowing(killed, count=40)
        figures["daemon_killed_ping_lost"] = flows.ping.lost() - lost_before
        figures["daemon_killed_tcp_gap_s"] = flows.stream.outage(killed)
        lab.start_daemon("r2")
        say(f"(2) r2's daemon killed -9: {figures['daemon_killed_ping_lost']} echo requests lost, "
            f"longest TCP gap {figures['daemon_killed_tcp_gap_s']} s; restarted, it says "
            f"{lab.ha_state('r2')!r}")

        back = time.time()
        backups = lab.entered("r1", "BACKUP")
        lab.restore_links("r1")
        figures["rejoin_backup_after_s"] = round(lab.wait_entered("r1", "BACKUP", backups + 1) - back, 3)
        say(f"(3) r1 back on the wire: backup after {figures['rejoin_backup_after_s']} s, "
            f"VIPs held by {lab.holders()}")
        if onlink:
            lab.wait_ha_state("r1", "backup")
            figures["rejoin_floating_holders"] = lab.floating_holders()
            say(f"    floating addresses held by {figures['rejoin_floating_holders']}")

        failback = time.time()
        lab.cut_links("r2")
        figures["failback_addresses_moved_s"] = round(lab.wait_master("r1") - failback, 3)
        if flows.wait_flowing(failback) != (True, True):
            raise SystemExit("traffic did not flow again through r1 after the fail-back")
        figures["failback_ping_gap_s"] = flows.ping.outage(failback)
        figures["failback_tcp_gap_s"] = flows.stream.outage(failback)
        end = flows.stop()
        figures["tcp_connection_survived"] = end["error"] is None and flows.stream.in_order()
        say(f"(4) r2's cables pulled, fail-back to r1: ping gap {figures['failback_ping_gap_s']} s, "
            f"TCP gap {figures['failback_tcp_gap_s']} s; one TCP connection throughout: "
            f"{figures['tcp_connection_survived']}")
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lab/ha", description=__doc__.split("\n\n")[0])
    parser.add_argument("--advert-int", type=float, nargs="+", default=[0.2, 1.0],
                        help="keepalived advert_int values to run the scenario with (default 0.2 1)")
    parser.add_argument("--multicast", action="store_true", help="multicast VRRP (default unicast)")
    parser.add_argument("--json", action="store_true", help="one JSON object per interval, nothing else")
    parser.add_argument("--onlink", action="store_true",
                        help="on-link pool: the upstream ARPs for the floating addresses, which follow "
                             "the master with gratuitous ARP (HA_MODE onlink; default: routed pool)")
    args = parser.parse_args(argv)
    for value in args.advert_int:
        if not 0.05 <= value <= 10:
            parser.error(f"--advert-int: {value!r} is not between 0.05 and 10 seconds")
    say = (lambda text: None) if args.json else (lambda text: print(text, flush=True))
    for value in args.advert_int:
        say(f"== advert_int {value} (bound for traffic to flow again: {FLOW_BOUND:g} s)")
        figures = scenario(value, not args.multicast, say, args.onlink)
        print(json.dumps(figures, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
