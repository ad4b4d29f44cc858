"""A routed pool (the upstream routes it to the router) and a flow that begins before
its address is associated: the router, with no rule yet, sends its packets back
upstream untranslated, and conntrack records that flow without NAT. Unless the
association deletes that entry, the flow never reaches the VM for as long as the client
keeps sending (each packet renews it). The netlab single router cannot show this: its
pool is on-link and an unanswered ARP leaves no entry."""

import time

import pytest

from tests.support.halab import FIP, HaLab

pytestmark = [pytest.mark.netns, pytest.mark.ha, pytest.mark.xdist_group("ha")]


def early_flow_reaches_the_vm(flush: str) -> bool:
    with HaLab(daemon_settings={"CONNTRACK_FLUSH": flush}) as lab:
        r1 = lab.daemons["r1"]
        # another association first: a namespace without NAT rules tracks nothing
        assert r1.cli("redirect", "203.0.113.11", lab.vm_ip(2)).returncode == 0
        ping = lab.start_ping(FIP, interval=0.1)
        try:
            deadline = time.monotonic() + 10
            while len(ping.unanswered) < 3:  # the early packets went out, unanswered
                assert time.monotonic() < deadline and ping._read(1.0) != "eof", "ping sent nothing"
            assert not ping.replies
            assert r1.cli("redirect", FIP, lab.vm_ip(1)).returncode == 0
            return ping.wait_reply_after(time.time(), 3, timeout=8)
        finally:
            ping.stop()


def test_a_flow_begun_before_the_association_reaches_the_vm_after_it():
    assert early_flow_reaches_the_vm("yes")


def test_control_without_the_conntrack_flush_the_early_flow_never_arrives():
    assert not early_flow_reaches_the_vm("no")
