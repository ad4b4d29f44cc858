"""The lab itself: is it wired right, and can a NAT test built on it fail?

Every NAT rule here is written by hand with iptables-legacy inside the router namespace only,
so these tests do not depend on the daemon.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.support import netlab
from tests.support.netlab import Lab, list_netns

pytestmark = pytest.mark.netns

FLOAT = "198.51.100.50"
ROUTED_FLOAT = "203.0.113.10"
TCP, UDP = 8080, 8081


@pytest.fixture(scope="module", autouse=True)
def _no_leftovers():
    netlab.cleanup_stale()  # crashed earlier runs only; live parallel labs hold their lock
    yield


@pytest.fixture
def lab():
    with Lab(vms=2) as lab:
        yield lab


def ipt(lab, *args):
    lab.run(lab.ns_router, ["iptables-legacy", "-w", "5", "-t", "nat"] + list(args))


def float_1to1(lab, public, private, add_address=True):
    """What the daemon will do for one floating IP: DNAT in, SNAT out, /32 on pub0, GARP."""
    ipt(lab, "-A", "PREROUTING", "-d", public, "-j", "DNAT", "--to-destination", private)
    ipt(lab, "-A", "POSTROUTING", "-s", private, "-j", "SNAT", "--to-source", public)
    if add_address:
        lab.run(lab.ns_router, ["ip", "addr", "add", public + "/32", "dev", lab.router_pub_if])
        lab.garp(public)


def test_client_cannot_reach_private_addresses(lab):
    assert lab.run(lab.ns_client, ["ip", "route", "get", lab.vm_ip(1)], check=False).returncode != 0
    with lab.start_server(lab.vm_ns(1), "vm1", tcp_port=TCP):
        r = lab.tcp_probe(lab.ns_client, lab.vm_ip(1), TCP, timeout=1)
    assert not r["ok"] and r["errno"] == "ENETUNREACH", r
    assert not lab.ping(lab.ns_client, lab.vm_ip(1))


def test_vm_reaches_router_and_other_vm(lab):
    vm1 = lab.vm_ns(1)
    assert lab.ping(vm1, lab.router_priv_ip)
    assert lab.ping(vm1, lab.vm_ip(2))  # over the bridge in the switch namespace
    with lab.start_server(lab.ns_router, "router", tcp_port=TCP):
        r = lab.tcp_probe(vm1, lab.router_priv_ip, TCP)
    assert r["ok"] and r["reply"]["name"] == "router" and r["reply"]["peer"] == lab.vm_ip(1), r
    # forwarding works in both directions between the router's links
    assert lab.ping(vm1, lab.router_pub_ip)


def test_vm_packets_are_forwarded_to_client_but_unanswerable_without_nat(lab):
    """Forwarding works, but the client has no way back to 10.x: only SNAT makes it work."""
    with lab.start_server(lab.ns_client, "client", tcp_port=TCP, udp_port=UDP) as srv:
        r = lab.udp_probe(lab.vm_ns(1), lab.client_ip, UDP, timeout=1)
        assert not r["ok"], r
        got = srv.wait_event(lambda e: e.get("event") == "udp", timeout=2)
        assert got and got["peer"] == lab.vm_ip(1), got  # it did arrive, unNATed
        err = srv.wait_event(lambda e: e.get("event") == "udp-reply-error", timeout=2)
        assert err and err["errno"] == "ENETUNREACH", err
        assert not lab.tcp_probe(lab.vm_ns(1), lab.client_ip, TCP, timeout=1)["ok"]
        assert not lab.ping(lab.vm_ns(1), lab.client_ip)


def test_floating_address_fails_without_each_piece(lab):
    """Each half of the setup alone is not enough: NAT tests on this lab can fail."""
    c = lab.ns_client
    with lab.start_server(lab.vm_ns(1), "vm1", tcp_port=TCP):
        r = lab.tcp_probe(c, FLOAT, TCP, timeout=1)  # nobody answers ARP for it
        assert not r["ok"], r
        ipt(lab, "-A", "PREROUTING", "-d", FLOAT, "-j", "DNAT", "--to-destination", lab.vm_ip(1))
        assert not lab.tcp_probe(c, FLOAT, TCP, timeout=1)["ok"]  # DNAT but still no ARP
        ipt(lab, "-F", "PREROUTING")
        lab.run(lab.ns_router, ["ip", "addr", "add", FLOAT + "/32", "dev", lab.router_pub_if])
        # Without this the client's FAILED neighbour entry gives EHOSTUNREACH for a while.
        lab.garp(FLOAT)
        r = lab.tcp_probe(c, FLOAT, TCP, timeout=1)  # address but no DNAT: the router itself
        assert not r["ok"] and r["errno"] == "ECONNREFUSED", r


def test_hand_made_floating_ip(lab):
    c, vm1 = lab.ns_client, lab.vm_ns(1)
    with lab.start_server(vm1, "vm1", tcp_port=TCP, udp_port=UDP), \
            lab.start_server(lab.vm_ns(2), "vm2", tcp_port=TCP, udp_port=UDP), \
            lab.start_server(c, "client", tcp_port=TCP) as client_srv:
        float_1to1(lab, FLOAT, lab.vm_ip(1))
        r = lab.tcp_probe(c, FLOAT, TCP)
        assert r["ok"], r
        assert r["reply"]["name"] == "vm1" and r["reply"]["peer"] == lab.client_ip, r
        u = lab.udp_probe(c, FLOAT, UDP)
        assert u["ok"] and u["reply"]["name"] == "vm1" and u["reply"]["peer"] == lab.client_ip, u
        assert lab.ping(c, FLOAT)
        # outgoing: the VM's connection leaves under its floating address
        o = lab.tcp_probe(vm1, lab.client_ip, TCP)
        assert o["ok"] and o["reply"]["name"] == "client" and o["reply"]["peer"] == FLOAT, o
        assert client_srv.wait_event(lambda e: e.get("peer") == FLOAT, timeout=2)
        assert lab.ping(vm1, lab.client_ip)
        # vm2 has no floating address: still unreachable from its side
        assert not lab.tcp_probe(lab.vm_ns(2), lab.client_ip, TCP, timeout=1)["ok"]


def test_routed_pool_needs_no_address_on_pub0(lab):
    with lab.start_server(lab.vm_ns(2), "vm2", tcp_port=TCP):
        assert not lab.tcp_probe(lab.ns_client, ROUTED_FLOAT, TCP, timeout=1)["ok"]
        float_1to1(lab, ROUTED_FLOAT, lab.vm_ip(2), add_address=False)
        r = lab.tcp_probe(lab.ns_client, ROUTED_FLOAT, TCP)
    assert r["ok"] and r["reply"]["name"] == "vm2" and r["reply"]["peer"] == lab.client_ip, r


def test_held_session_sees_conntrack_binding_and_reset(lab):
    """A held connection keeps its NAT binding after a rule change until conntrack forgets it."""
    with lab.start_server(lab.vm_ns(1), "vm1", tcp_port=TCP), \
            lab.start_server(lab.vm_ns(2), "vm2", tcp_port=TCP):
        float_1to1(lab, FLOAT, lab.vm_ip(1))
        with lab.tcp_session(lab.ns_client, FLOAT, TCP) as s:
            assert s.connected["ok"], s.connected
            assert s.send("one")["reply"]["name"] == "vm1"
            ipt(lab, "-F", "PREROUTING")
            ipt(lab, "-A", "PREROUTING", "-d", FLOAT, "-j", "DNAT", "--to-destination", lab.vm_ip(2))
            assert s.send("two")["reply"]["name"] == "vm1"  # conntrack binding survives
            lab.run(lab.ns_router, ["conntrack", "-D", "-d", FLOAT], check=False)
            r = s.send("three")  # now picked up as new, DNATed to vm2, which resets it
            assert not r["ok"] and r["errno"] in ("ECONNRESET", "EOF"), r
        assert lab.tcp_probe(lab.ns_client, FLOAT, TCP)["reply"]["name"] == "vm2"


def test_destroy_and_rebuild_router(lab):
    r = lab.ns_router
    with lab.start_server(lab.vm_ns(1), "vm1", tcp_port=TCP):
        float_1to1(lab, FLOAT, lab.vm_ip(1))
        assert lab.tcp_probe(lab.ns_client, FLOAT, TCP)["ok"]
        lab.destroy_router()
        assert r not in list_netns()
        assert not lab.ping(lab.vm_ns(1), lab.router_priv_ip)
        assert not lab.tcp_probe(lab.ns_client, FLOAT, TCP, timeout=1)["ok"]
        lab.rebuild_router()
        assert lab.ping(lab.vm_ns(1), lab.router_priv_ip)
        assert lab.ping(lab.ns_client, lab.router_pub_ip)
        addrs = lab.run(r, ["ip", "-br", "addr", "show", "dev", lab.router_pub_if]).stdout
        assert FLOAT not in addrs and lab.router_pub_ip in addrs
        assert "DNAT" not in lab.run(r, ["iptables-legacy-save", "-t", "nat"]).stdout
        assert not lab.tcp_probe(lab.ns_client, FLOAT, TCP, timeout=1)["ok"]
        float_1to1(lab, FLOAT, lab.vm_ip(1))  # the VM's server outlived the router
        assert lab.tcp_probe(lab.ns_client, FLOAT, TCP)["reply"]["name"] == "vm1"


def test_add_vm_later(lab):
    i = lab.add_vm()
    assert i == 3 and lab.vm_ip(3) == "10.77.0.13"
    assert lab.ping(lab.vm_ns(3), lab.router_priv_ip)
    assert any(n["dst"] == lab.vm_ip(3) for n in lab.neigh(lab.ns_router))


def test_close_removes_everything_even_when_the_test_fails():
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(vms=1) as lab:
            names = [lab.ns_client, lab.ns_router, lab.ns_switch, lab.vm_ns(1)]
            assert set(names) <= set(list_netns())
            lab.start_server(lab.vm_ns(1), "vm1", tcp_port=TCP)
            raise RuntimeError("boom")
    left = list_netns()
    assert not [n for n in left if n.startswith(lab.prefix)], left
    assert not os.path.exists(os.path.join(netlab.LOCK_DIR, lab.prefix + ".lock"))


def _child_lab(code_after):
    """A separate process that builds a lab, prints its prefix, then runs `code_after`."""
    code = textwrap.dedent("""
        import sys, time
        from tests.support.netlab import Lab
        lab = Lab(vms=1)
        print(lab.prefix, flush=True)
    """) + code_after
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True)


def test_atexit_cleans_up_when_close_is_forgotten():
    p = _child_lab("")
    out, _ = p.communicate(timeout=30)
    prefix = out.strip()
    assert p.returncode == 0 and prefix.startswith(netlab.MARKER)
    assert not [n for n in list_netns() if n.startswith(prefix)]


def test_cleanup_stale_removes_crashed_runs_only(lab):
    p = _child_lab("sys.stdin.read()\n")
    try:
        prefix = p.stdout.readline().strip()
        assert [n for n in list_netns() if n.startswith(prefix)]
        assert not [n for n in netlab.cleanup_stale() if n.startswith(prefix)]  # still alive
    finally:
        p.kill()  # a crash: no atexit
        p.wait(10)
    assert [n for n in list_netns() if n.startswith(prefix)]  # leftovers
    removed = netlab.cleanup_stale()
    assert [n for n in removed if n.startswith(prefix)]
    assert not [n for n in removed if n.startswith(lab.prefix)]
    names = list_netns()
    assert not [n for n in names if n.startswith(prefix)]
    assert lab.ns_router in names and lab.ping(lab.vm_ns(1), lab.router_priv_ip)  # ours is alive
