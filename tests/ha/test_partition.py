"""A router cut off from etcd for a long while (a partition, not a death): it keeps
forwarding with the rules it has, refuses changes, and when the partition heals it
converges to everything changed meanwhile, so that it is right when it becomes master."""

import time

import pytest

from tests.ha.test_shared_state import CONVERGE_BOUND, store_pairs, wait_pairs
from tests.support.halab import FIP, HaLab

pytestmark = [pytest.mark.netns, pytest.mark.ha, pytest.mark.xdist_group("ha")]

MOVED_FIP = "203.0.113.11"


def test_a_router_cut_off_from_etcd_forwards_and_converges_when_the_partition_heals(figures):
    with HaLab(etcd=True, store="etcd") as lab:
        r1, r2 = lab.daemons["r1"], lab.daemons["r2"]
        assert r1.cli("redirect", FIP, lab.vm_ip(1)).returncode == 0
        wait_pairs(lab, "r2", {(FIP, lab.vm_ip(1))})
        lab.cut_store_link("r2")
        deadline = time.monotonic() + CONVERGE_BOUND  # until r2's poll has noticed
        while r2.cli_json("status").get("store", {}).get("ok", True):
            assert time.monotonic() < deadline, "r2 still says its store is healthy"
            time.sleep(0.1)
        proc = r2.cli("getip", lab.vm_ip(2))
        assert proc.returncode == 1 and "etcd unavailable" in proc.stderr, proc
        # meanwhile, through r1: a release, a new association, and an address moved
        assert r1.cli("releaseip", FIP).returncode == 0
        assert r1.cli("redirect", MOVED_FIP, lab.vm_ip(1)).returncode == 0
        assert r1.cli("redirect", MOVED_FIP, lab.vm_ip(2)).returncode == 0
        want = store_pairs(lab, "r1")
        assert want == {(MOVED_FIP, lab.vm_ip(2))}
        assert lab.live_pairs("r2") == {(FIP, lab.vm_ip(1))}  # the control: r2 is stale, and kept its rules
        lab.restore_store_link("r2")
        figures("etcd store: a router back from a partition, converged after (s)", wait_pairs(lab, "r2", want))
        assert r2.cli_json("status")["store"]["ok"] is True
        # r2 becomes master: the address moved meanwhile reaches its new VM through r2
        server = lab.start_server(lab.vm_ns(2), "vm2", tcp_port=8080)
        ping = lab.start_ping(MOVED_FIP)
        try:
            assert ping.wait_reply_after(time.time(), 5)
            lab.cut_links("r1")
            lab.wait_master("r2")
            assert ping.wait_reply_after(time.time(), 5), "no traffic through r2 after the partition"
        finally:
            ping.stop()
            server.stop()
