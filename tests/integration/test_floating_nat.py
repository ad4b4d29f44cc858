"""ipfloaterd in a router namespace, driven by the ipfloater CLI, proven with real packets.

Topology (see tests/support/netlab.py): an internet client 198.51.100.2 with no
route to 10.0.0.0/8, a router with pub0 198.51.100.1/24 and priv0 10.77.0.1/24, and VMs
10.77.0.11, 10.77.0.12 behind a bridge in a namespace of its own.
"""

import pytest

from tests.integration.conftest import (TCP, UDP, backend_of, break_hairpin, break_jump, foreign_iptables,
                                        jump_repair, our_rules, wipe_nat)

pytestmark = pytest.mark.netns

VM1, VM2 = "10.77.0.11", "10.77.0.12"


def getip(daemon, private_ip):
    proc = daemon.cli("getip", private_ip)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def assert_reaches(lab, fip, vm_name, ns=None):
    """TCP, UDP and ICMP from `ns` (the client by default) to `fip` end at `vm_name`."""
    ns = ns or lab.ns_client
    tcp = lab.tcp_probe(ns, fip, TCP)
    assert tcp["ok"], tcp
    assert tcp["reply"]["name"] == vm_name
    udp = lab.udp_probe(ns, fip, UDP)
    assert udp["ok"], udp
    assert udp["reply"]["name"] == vm_name
    assert lab.ping(ns, fip)
    return tcp["reply"]


def assert_unreachable(lab, fip, ns=None):
    ns = ns or lab.ns_client
    tcp = lab.tcp_probe(ns, fip, TCP, timeout=1.5)
    assert not tcp["ok"], tcp
    udp = lab.udp_probe(ns, fip, UDP, timeout=1.5)
    assert not udp["ok"], udp
    assert not lab.ping(ns, fip)


def test_client_reaches_vm_through_floating_ip_and_not_before(lab, daemon, servers):
    fip = "198.51.100.10"
    assert_unreachable(lab, fip)
    assert getip(daemon, VM1) == fip
    reply = assert_reaches(lab, fip, "vm1")
    assert reply["peer"] == lab.client_ip  # 1:1 NAT: the VM sees the real client address
    assert reply["local"] == VM1
    assert lab.tcp_probe(lab.ns_client, "198.51.100.11", TCP, timeout=1.5)["ok"] is False


def test_vm_leaves_with_its_floating_ip(lab, daemon, servers):
    fip = getip(daemon, VM1)
    with lab.start_server(lab.ns_client, "client", tcp_port=TCP, udp_port=UDP):
        tcp = lab.tcp_probe(lab.vm_ns(1), lab.client_ip, TCP)
        assert tcp["ok"] and tcp["reply"]["peer"] == fip, tcp
        udp = lab.udp_probe(lab.vm_ns(1), lab.client_ip, UDP)
        assert udp["ok"] and udp["reply"]["peer"] == fip, udp
        assert lab.ping(lab.vm_ns(1), lab.client_ip)
        # vm2 has no floating IP: the client cannot answer 10.77.0.12
        assert not lab.tcp_probe(lab.vm_ns(2), lab.client_ip, TCP, timeout=1.5)["ok"]


def test_hairpin_other_vm_reaches_vm_by_floating_ip(lab, daemon, servers):
    fip = getip(daemon, VM1)
    assert_reaches(lab, fip, "vm1", ns=lab.vm_ns(2))
    assert_reaches(lab, fip, "vm1", ns=lab.ns_router)  # the router itself (OUTPUT DNAT)
    # Negative control: without our hairpin rule the reply bypasses the router and the
    # connection fails, so the test above proves the rule, not the topology.
    break_hairpin(lab, daemon)
    assert not lab.tcp_probe(lab.vm_ns(2), fip, TCP, timeout=1.5)["ok"]
    repairs = daemon.cli_json("reconcile")["repairs"]
    assert repairs == {"iptables": ["rewrote nat/IPFLOATER-POST: 2 rules -> 3"],  # each backend's words
                       "nftables": ["rewrote chain postrouting: 2 rules -> 3"]}[backend_of(daemon)]
    assert lab.tcp_probe(lab.vm_ns(2), fip, TCP)["ok"]


def test_release_cuts_inbound_and_outbound(lab, daemon, servers):
    fip = getip(daemon, VM1)
    assert_reaches(lab, fip, "vm1")
    proc = daemon.cli("releaseip", fip)
    assert proc.returncode == 0 and proc.stdout.strip() == f"released {fip}"
    assert_unreachable(lab, fip)
    with lab.start_server(lab.ns_client, "client", tcp_port=TCP):
        assert not lab.tcp_probe(lab.vm_ns(1), lab.client_ip, TCP, timeout=1.5)["ok"]
    # no rule of ours names it but the pool's FORWARD drop (a prefix of the pool)
    assert not [line for line in our_rules(lab, daemon).splitlines() if fip in line and
                "IPFLOATER-FWD" not in line and not line.startswith("rule forward ")]
    assert daemon.cli_json("status") == {"floatingips": []}


def test_release_by_private_address(lab, daemon, servers):
    fip = getip(daemon, VM2)
    assert daemon.cli("releaseip", VM2).stdout.strip() == f"released {fip}"
    assert_unreachable(lab, fip)


def test_move_cuts_established_connection_to_old_vm(lab, daemon, servers):
    fip = getip(daemon, VM1)
    with lab.tcp_session(lab.ns_client, fip, TCP) as session:
        assert session.connected["ok"], session.connected
        first = session.send("before")
        assert first["ok"] and first["reply"]["name"] == "vm1"
        moved = daemon.cli("redirect", fip, VM2)
        assert moved.returncode == 0 and moved.stdout.strip() == f"{fip} -> {VM2}"
        after = session.send("after-move")
        assert not (after.get("ok") and after["reply"]["name"] == "vm1"), after
        assert after.get("errno") == "ECONNRESET", after  # vm2 knows no such connection
    assert servers[0].wait_event(lambda e: e.get("data") == "after-move", timeout=1.0) is None
    assert_reaches(lab, fip, "vm2")


def test_without_conntrack_flush_the_old_flow_survives(lab, tmp_path, servers, nat_backend):
    """Negative control for the test above: it fails when the flush is switched off."""
    from tests.support.daemonproc import DaemonProcess
    with DaemonProcess(lab.ns_router, tmp_path / "d", CONNTRACK_FLUSH="no", NAT_BACKEND=nat_backend) as daemon:
        fip = getip(daemon, VM1)
        with lab.tcp_session(lab.ns_client, fip, TCP) as session:
            assert session.send("before")["reply"]["name"] == "vm1"
            assert daemon.cli("redirect", fip, VM2).returncode == 0
            after = session.send("after-move")
            assert after["ok"] and after["reply"]["name"] == "vm1", after


def test_new_flows_follow_the_move(lab, daemon, servers):
    fip = getip(daemon, VM1)
    assert lab.udp_probe(lab.ns_client, fip, UDP)["reply"]["name"] == "vm1"
    assert daemon.cli("redirect", fip, VM2).returncode == 0
    assert_reaches(lab, fip, "vm2")
    with lab.start_server(lab.ns_client, "client", tcp_port=TCP):
        assert not lab.tcp_probe(lab.vm_ns(1), lab.client_ip, TCP, timeout=1.5)["ok"]
        assert lab.tcp_probe(lab.vm_ns(2), lab.client_ip, TCP)["reply"]["peer"] == fip


def test_rules_survive_daemon_stop_and_restart(lab, daemon, servers):
    fip = getip(daemon, VM1)
    rules_before = our_rules(lab, daemon)
    assert daemon.stop() == 0
    assert our_rules(lab, daemon) == rules_before  # floating IPs stay up while the daemon is down
    assert_reaches(lab, fip, "vm1")
    daemon.start()
    assert our_rules(lab, daemon) == rules_before
    assert_reaches(lab, fip, "vm1")
    assert daemon.cli_json("show", fip)["private_ip"] == VM1


def test_hand_flushed_nat_table_comes_back_on_restart(lab, daemon, servers):
    fip = getip(daemon, VM1)
    rules_before = our_rules(lab, daemon)
    daemon.stop()
    wipe_nat(lab, daemon)
    lab.run(lab.ns_router, ["ip", "addr", "del", f"{fip}/32", "dev", "pub0"])
    assert_unreachable(lab, fip)
    daemon.start()
    assert our_rules(lab, daemon) == rules_before
    # nothing of ours was left in the kernel: the start installs (as after a reboot)
    assert "installed rules for 1 associations" in daemon.log()
    assert "installed: added 198.51.100.10/32 to pub0" in daemon.log()
    assert_reaches(lab, fip, "vm1")


def test_router_reboot_restores_every_association(lab, daemon, servers):
    fips = [getip(daemon, VM1), getip(daemon, VM2)]
    daemon.kill()
    lab.destroy_router()
    lab.rebuild_router()
    assert our_rules(lab, daemon) == ""
    daemon.start()
    assert_reaches(lab, fips[0], "vm1")
    assert_reaches(lab, fips[1], "vm2")


def test_flush_command_removes_everything_of_ours_and_nothing_else(lab, daemon, servers):
    fip = getip(daemon, VM1)
    refused = daemon.run_command("flush")
    assert refused.returncode == 1 and \
        f"flush: refused, ipfloaterd (pid {daemon.proc.pid}) runs in this network namespace" in refused.stderr
    iptables, iptables_save = foreign_iptables(daemon)
    lab.run(lab.ns_router, [iptables, "-w", "5", "-t", "nat", "-A", "POSTROUTING",
                            "-s", "10.99.0.0/16", "-o", "pub0", "-j", "MASQUERADE"])
    daemon.stop()
    done = daemon.run_command("flush")
    assert done.returncode == 0, done.stderr
    assert our_rules(lab, daemon) == ""
    assert "-A POSTROUTING -s 10.99.0.0/16 -o pub0 -j MASQUERADE" in \
        lab.run(lab.ns_router, [iptables_save, "-t", "nat"]).stdout
    assert_unreachable(lab, fip)
    daemon.start()  # the state was kept: the next start puts it back
    assert_reaches(lab, fip, "vm1")


def test_foreign_rules_survive_operations_and_reconcile(lab, daemon, servers):
    foreign = [["-t", "nat", "-A", "POSTROUTING", "-s", "10.99.0.0/16", "-o", "pub0", "-j", "MASQUERADE"],
               ["-t", "nat", "-I", "PREROUTING", "-d", "203.0.113.99/32", "-p", "tcp", "--dport", "22",
                "-j", "DNAT", "--to-destination", "10.77.0.99"],
               ["-t", "filter", "-A", "FORWARD", "-s", "10.66.0.0/16", "-j", "DROP"]]
    iptables, iptables_save = foreign_iptables(daemon)
    for rule in foreign:
        lab.run(lab.ns_router, [iptables, "-w", "5", *rule])

    def foreign_lines():
        save = lab.run(lab.ns_router, [iptables_save]).stdout
        return sorted(l for l in save.splitlines() if l.startswith("-A") and "IPFLOATER" not in l)

    before = foreign_lines()
    assert len(before) == 3
    fip = getip(daemon, VM1)
    daemon.cli("redirect", fip, VM2)
    daemon.cli_json("reconcile")
    daemon.cli("releaseip", fip)
    break_jump(lab, daemon)
    assert jump_repair(daemon) in daemon.cli_json("reconcile")["repairs"]
    assert foreign_lines() == before


def test_arp_lookup_in_router_neighbour_table(lab, daemon, servers):
    fip = getip(daemon, VM1)
    assert_reaches(lab, fip, "vm1")  # the router has now resolved vm1
    mac = next(e["lladdr"] for e in lab.neigh(lab.ns_router) if e["dst"] == VM1)
    proc = daemon.cli("arp", mac.upper())
    assert proc.returncode == 0 and proc.stdout.strip() == VM1
    missing = daemon.cli("arp", "02:00:00:00:00:99")
    assert missing.returncode == 1 and "not in the router's neighbour table" in missing.stderr


def test_pool_exhaustion_and_refusals_leave_rules_untouched(lab, tmp_path, servers, nat_backend):
    from tests.support.daemonproc import DaemonProcess
    with DaemonProcess(lab.ns_router, tmp_path / "d", IP_POOL="198.51.100.10-198.51.100.11",
                       NAT_BACKEND=nat_backend) as daemon:
        assert getip(daemon, VM1) == "198.51.100.10"
        assert getip(daemon, VM2) == "198.51.100.11"
        rules = our_rules(lab, daemon)
        for args, fragment in ((("getip", "10.77.0.13"), "all 2 addresses of pool 'default' are allocated"),
                               (("getip", "10.99.0.1"), "outside PRIVATE_IP_RANGES"),
                               (("getip", "10.77.0.1"), "address of the router itself"),
                               (("redirect", "203.0.113.7", VM1), "not in the pool"),
                               (("releaseip", "198.51.100.12"), "neither an allocated floating IP")):
            proc = daemon.cli(*args)
            assert proc.returncode == 1 and fragment in proc.stderr, (args, proc.stderr)
            assert proc.stderr.count("\n") == 1
        assert our_rules(lab, daemon) == rules
