"""End to end: OpenNebula (simulated oned + emulated onehem running the real hooks) ->
ipfloaterd in the router namespace -> real packets from the internet client.

The simulator's network hands out leases from 10.77.0.11, so the first VMs it creates
have the addresses of the lab's VM namespaces vm1 (10.77.0.11) and vm2 (10.77.0.12).
"""

import pytest

from tests.support.frontend import Frontend
from tests.support.nsforward import PortForward
from tests.integration.conftest import TCP

pytestmark = pytest.mark.netns

YES = 'NAME="web" MEMORY="64" CPU="0.1" NIC=[NETWORK="priv"] FLOATING_IP="YES"'


@pytest.fixture
def frontend(lab, daemon, tmp_path):
    with PortForward(lab.ns_router, daemon.port) as forward, \
            Frontend(tmp_path / "frontend", f"http://127.0.0.1:{forward.port}", daemon.token) as fe:
        yield fe


def reaches(lab, fip, name):
    reply = lab.tcp_probe(lab.ns_client, fip, TCP)
    return reply["ok"] and reply["reply"]["name"] == name


def test_vm_with_floating_ip_yes_becomes_reachable_and_follows_updates(lab, daemon, servers, frontend):
    fe = frontend
    vm = fe.instantiate(YES)
    fe.settle()
    assert fe.failed_hooks() == []
    fip = fe.address(vm)
    assert fip and fe.user_template(vm)["FLOATING_IP_STATUS"] == "ACTIVE"
    assert reaches(lab, fip, "vm1")
    with lab.start_server(lab.ns_client, "client", tcp_port=TCP):  # the VM leaves with it
        assert lab.tcp_probe(lab.vm_ns(1), lab.client_ip, TCP)["reply"]["peer"] == fip

    # onevm update (replace) without the attribute: released, the route is cut
    fe.pyone("alice").vm.update(vm, 'DESCRIPTION="no more public"', 0)
    fe.settle()
    assert fe.address(vm) is None and fe.user_template(vm).get("FLOATING_IP_STATUS") in (None, "")
    assert not lab.tcp_probe(lab.ns_client, fip, TCP, timeout=1.5)["ok"]
    assert daemon.cli_json("status") == {"floatingips": []}

    # onevm update --append FLOATING_IP="YES": restored
    fe.pyone("alice").vm.update(vm, 'FLOATING_IP="YES"', 1)
    fe.settle()
    again = fe.address(vm)
    assert again and reaches(lab, again, "vm1")

    # terminate: released at DONE
    fe.pyone("alice").vm.action("terminate-hard", vm)
    fe.settle()
    assert not lab.tcp_probe(lab.ns_client, again, TCP, timeout=1.5)["ok"]
    assert daemon.cli_json("status") == {"floatingips": []}
    assert fe.failed_hooks() == []


def test_specific_address_and_poweroff_keeps_it(lab, daemon, servers, frontend):
    fe = frontend
    vm = fe.instantiate(YES.replace('"YES"', '"198.51.100.33"'))
    fe.settle()
    assert fe.address(vm) == "198.51.100.33" and reaches(lab, "198.51.100.33", "vm1")
    fe.pyone("alice").vm.action("poweroff-hard", vm)
    fe.settle()
    assert fe.user_template(vm)["FLOATING_IP_STATUS"] == "DOWN"
    assert daemon.cli_json("show", "198.51.100.33")["private_ip"] == lab.vm_ip(1)
    fe.pyone("alice").vm.action("resume", vm)
    fe.settle()
    assert fe.user_template(vm)["FLOATING_IP_STATUS"] == "ACTIVE" and reaches(lab, "198.51.100.33", "vm1")


def test_twenty_vms_at_once_get_distinct_addresses(lab, daemon, servers, frontend):
    fe = frontend
    fe.hem.pause()  # queue every hook, then release them as one burst
    vms = [fe.instantiate(YES.replace('"web"', f'"web{i}"')) for i in range(20)]
    fe.hem.resume()
    fe.settle()
    assert fe.failed_hooks() == []
    addresses = [fe.address(vm) for vm in vms]
    assert None not in addresses and len(set(addresses)) == 20
    stored = {f["public_ip"]: f["private_ip"] for f in daemon.cli_json("status")["floatingips"]}
    assert set(stored) == set(addresses) and len(set(stored.values())) == 20
    assert reaches(lab, addresses[0], "vm1") and reaches(lab, addresses[1], "vm2")


def test_sync_repairs_missed_hooks(lab, daemon, servers, frontend):
    fe = frontend
    gone = fe.instantiate(YES)  # 10.77.0.11 with an address
    fe.settle()
    stale = fe.address(gone)
    fe.hem.stop()  # the hook system is down: nothing reacts from here on
    fe.pyone("alice").vm.action("terminate-hard", gone)
    new = fe.instantiate(YES.replace('"web"', '"late"'))  # 10.77.0.12, nobody allocates
    assert fe.address(new) is None
    assert daemon.cli_json("show", stale)["private_ip"] == lab.vm_ip(1)  # leaked, for now

    proc = fe.ipfloater_one("sync", "--json")
    assert proc.returncode == 0, proc.stderr
    assert fe.address(new) and reaches(lab, fe.address(new), "vm2")
    stored = {f["public_ip"]: f["private_ip"] for f in daemon.cli_json("status")["floatingips"]}
    assert stored == {fe.address(new): lab.vm_ip(2)}
    assert not lab.tcp_probe(lab.ns_client, stale, TCP, timeout=1.5)["ok"] or stale == fe.address(new)
    again = fe.ipfloater_one("sync", "--json")  # safe to repeat
    assert again.returncode == 0 and {f["public_ip"] for f in daemon.cli_json("status")["floatingips"]} == set(stored)
