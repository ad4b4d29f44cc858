"""The quota race, end to end: twenty RUNNING hooks of one user, real hook processes run
twenty at a time by the hook-manager emulation, against the real ipfloaterd in the router
namespace. The user's template says FLOATING_IP_QUOTA = "3": exactly three VMs get an
address, the other seventeen show ERROR with the quota and the count, and the daemon
holds three allocations. (Before quotas, all twenty got one: the control below.)"""

import pytest

from tests.support.frontend import Frontend
from tests.support.nsforward import PortForward

pytestmark = pytest.mark.netns

VMS, QUOTA = 20, 3
TEMPLATE = 'NAME="race{i}" MEMORY="64" CPU="0.1" NIC=[NETWORK="priv"] FLOATING_IP="YES"'


@pytest.fixture
def frontend(lab, daemon, tmp_path):
    with PortForward(lab.ns_router, daemon.port) as forward, \
            Frontend(tmp_path / "frontend", f"http://127.0.0.1:{forward.port}", daemon.token,
                     max_parallel=VMS) as fe:
        yield fe


def burst(fe, first=0):
    """Queue one RUNNING hook per VM, then let them all go at once."""
    fe.hem.pause()
    vms = [fe.instantiate(TEMPLATE.format(i=i)) for i in range(first, first + VMS)]
    fe.hem.resume()
    fe.settle(timeout=300)
    return vms


@pytest.mark.parametrize("daemon", ["iptables"], indirect=True)  # the count is not the NAT's
def test_twenty_racing_hooks_of_one_user_with_quota_three_get_exactly_three(lab, daemon, frontend):
    fe = frontend
    fe.sim.set_user_template("alice", f'FLOATING_IP_QUOTA="{QUOTA}"')
    vms = burst(fe)
    peak = fe.hem.peak_running
    print(f"quota race: {VMS} RUNNING hooks, {peak} at once at the peak")
    assert peak > 1  # the hooks really overlapped
    failed = fe.failed_hooks()  # the refused runs exit 1, saying why, and only those
    assert failed and all("over quota" in stderr for _, _, stderr in failed), failed
    got = {vm: fe.address(vm) for vm in vms if fe.address(vm)}
    assert len(got) == QUOTA and len(set(got.values())) == QUOTA
    stored = daemon.cli_json("status")["floatingips"]
    assert sorted(f["public_ip"] for f in stored) == sorted(got.values())
    uid = fe.sim.uid_of("alice")
    refused = [vm for vm in vms if vm not in got]
    for vm in refused:
        ut = fe.user_template(vm)
        assert ut["FLOATING_IP_STATUS"] == "ERROR"
        assert ut["FLOATING_IP_ERROR"] == (f"NIC 0: no floating IP, over quota: quota: one:uid:{uid} "
                                           f"already holds {QUOTA} floating IP(s) in all pools; "
                                           f"its limit is {QUOTA}")
    # lowering the quota takes nothing away: the holders keep their addresses through a sync
    fe.sim.set_user_template("alice", 'FLOATING_IP_QUOTA="1"')
    assert fe.ipfloater_one("sync", "--json").returncode == 1  # the refused VMs stay in ERROR
    assert {vm: fe.address(vm) for vm in got} == got
    assert len(daemon.cli_json("status")["floatingips"]) == QUOTA


@pytest.mark.parametrize("daemon", ["iptables"], indirect=True)
def test_control_without_a_quota_the_same_burst_takes_twenty(lab, daemon, frontend):
    """The race test's negative control: the same burst, no limit, twenty addresses."""
    vms = burst(frontend)
    assert frontend.failed_hooks() == []
    assert len({frontend.address(vm) for vm in vms} - {None}) == VMS
    assert len(daemon.cli_json("status")["floatingips"]) == VMS
