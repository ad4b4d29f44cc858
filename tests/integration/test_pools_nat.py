"""Two pools in the router namespace: addresses of both carry real traffic to their VMs.

The client routes 203.0.113.0/24 through the router (tests/support/netlab.py), so a pool
there is as reachable as the on-link 198.51.100.0/24 one."""

import pytest

from tests.integration.test_floating_nat import VM1, VM2, assert_reaches, assert_unreachable
from tests.support.daemonproc import DaemonProcess

pytestmark = pytest.mark.netns

CAMPUS = "\n[POOL campus]\nIP_POOL = 203.0.113.20-203.0.113.21\n"


@pytest.fixture
def pools_daemon(lab, tmp_path, nat_backend):
    proc = DaemonProcess(lab.ns_router, tmp_path / "daemon", NAT_BACKEND=nat_backend,
                         IP_POOL="198.51.100.10-198.51.100.11")
    proc.extra_config = CAMPUS
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        if proc.proc.returncode not in (0, None):
            print(proc.log())


def test_addresses_of_two_pools_reach_their_vms(lab, pools_daemon, servers):
    campus = "203.0.113.20"
    assert_unreachable(lab, campus)  # negative control: nothing before the allocation
    got = pools_daemon.cli("getip", VM1, "--pool", "campus")
    assert got.returncode == 0 and got.stdout.strip() == campus, got.stderr
    got = pools_daemon.cli("getip", VM2)
    assert got.returncode == 0 and got.stdout.strip() == "198.51.100.10", got.stderr
    assert assert_reaches(lab, campus, "vm1")["peer"] == lab.client_ip
    assert assert_reaches(lab, "198.51.100.10", "vm2")["peer"] == lab.client_ip
    pools = {p["name"]: p for p in pools_daemon.cli_json("ippool")["pools"]}
    assert (pools["campus"]["associated"], pools["campus"]["free"]) == (1, 1)
    assert (pools["default"]["associated"], pools["default"]["free"]) == (1, 1)
    listed = pools_daemon.cli_json("status")["floatingips"]
    assert {a["public_ip"]: a["pool"] for a in listed} == {campus: "campus", "198.51.100.10": "default"}
    # an unknown pool: one line, exit 1, nothing taken
    bad = pools_daemon.cli("getip", "10.77.0.13", "--pool", "nope")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "'nope'" in bad.stderr
    # released: the campus address stops answering, the other pool's keeps working
    assert pools_daemon.cli("releaseip", campus).returncode == 0
    assert_unreachable(lab, campus)
    assert_reaches(lab, "198.51.100.10", "vm2")
