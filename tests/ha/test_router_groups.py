"""Two router groups on the lab's one etcd (HaLab(groups=True): r1 alone is group a with the
pool `default`, r2 alone group b with the pool `pb`; the upstream routes each pool to its
group's router). A change made through either daemon's API is applied by the owning
group's kernel only, with real traffic from the client through the floating IP.

The figure goes to the run's summary; the assertions hold whatever the machine's speed
(bounded polls on real conditions)."""

import json
import time

import pytest

from tests.support.halab import GROUP_POOLS, HaLab

pytestmark = [pytest.mark.netns, pytest.mark.ha, pytest.mark.xdist_group("ha")]

FIP_A, FIP_B = "203.0.113.10", "203.0.113.33"  # of the pools `default` (group a) and `pb` (group b)
PORT = 8080
BOUND = 15.0  # seconds for a change to reach the owning group's kernel (a bound; measured: well under 1)


def health(lab, name):
    proc = lab.daemons[name].cli("--json", "health", timeout=10)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_warning(lab, name, text, present=True, bound=BOUND):
    """Until router `name`'s /v1/health warnings do (or no longer) hold a line with `text`."""
    deadline = time.monotonic() + bound
    while True:
        found = health(lab, name)["warnings"]
        if any(text in w for w in found) == present:
            return found
        assert time.monotonic() < deadline, f"{name}'s warnings: {found}"
        time.sleep(0.1)


def wait_no_warnings(lab, name, bound=BOUND):
    """Until router `name`'s /v1/health has no warning at all."""
    deadline = time.monotonic() + bound
    while found := health(lab, name)["warnings"]:
        assert time.monotonic() < deadline, f"{name}'s warnings: {found}"
        time.sleep(0.1)


def through_other_group(lab, via, fip, vm):
    """Associate `fip` with vm `vm` through router `via`'s API; the seconds from its answer
    (the change is committed in etcd) until the client's ping train through `fip` is
    answered (the owning group's kernel forwards). The train starts after the answer: an
    echo sent to the address before it was associated leaves an un-NATed conntrack entry
    on the owning router that the same train would keep using."""
    proc = lab.daemons[via].cli("redirect", fip, lab.vm_ip(vm))
    assert proc.returncode == 0, proc.stderr
    committed = time.time()
    ping = lab.start_ping(fip)
    try:
        assert ping.wait_reply_after(committed, 3, BOUND), f"no answer through {fip} after a change through {via}"
        return round(min(t for t in ping.replies if t > committed) - committed, 3)
    finally:
        ping.stop()


def test_each_group_applies_its_own_pools_whichever_daemon_took_the_change(figures):
    assert GROUP_POOLS["pb"][2] == "b" and GROUP_POOLS["default"][2] == "a"
    with HaLab(groups=True) as lab:
        servers = [lab.start_server(lab.vm_ns(i), f"vm{i}", tcp_port=PORT) for i in (1, 2)]
        try:
            assert health(lab, "r1")["router_group"] == {"name": "a", "pools": ["default"]}
            assert health(lab, "r2")["router_group"] == {"name": "b", "pools": ["pb"]}
            # pool b's address through group a's daemon: group b's kernel forwards it ...
            figures("router groups: a change through group a until group b forwards (s)",
                    through_other_group(lab, "r1", FIP_B, 2))
            probe = lab.tcp_probe(lab.ns_client, FIP_B, PORT)
            assert probe["ok"], probe
            assert (FIP_B, lab.vm_ip(2)) in lab.live_pairs("r2")
            # ... and group a's kernel holds no rule for it
            assert lab.live_pairs("r1") == set()
            # the reverse: pool a's address through group b's daemon
            figures("router groups: a change through group b until group a forwards (s)",
                    through_other_group(lab, "r2", FIP_A, 1))
            assert lab.tcp_probe(lab.ns_client, FIP_A, PORT)["ok"]
            assert lab.live_pairs("r1") == {(FIP_A, lab.vm_ip(1))}
            assert lab.live_pairs("r2") == {(FIP_B, lab.vm_ip(2))}
            # no warning once both have read each other's registration (a daemon warns that
            # a pool has no live router until the others have published: up to a refresh)
            for name in ("r1", "r2"):
                wait_no_warnings(lab, name)

            # the guard: r1 stops, so no live router serves pool `default` (r2 says so) ...
            r1 = lab.daemons["r1"]
            r1.stop()
            wait_warning(lab, "r2", "pool 'default': no live router of group 'a' serves it")
            # ... negative control: r1 back without its group keys applies every pool: its
            # kernel holds pool b's rule (the assertion above can fail), and the drift shows
            lab.set_group("r1", None)
            r1.start()
            assert lab.live_pairs("r1") == {(FIP_A, lab.vm_ip(1)), (FIP_B, lab.vm_ip(2))}
            found = wait_warning(lab, "r2", "pool 'pb': router 'r1' (group None) has no ROUTER_GROUP")
            assert not any("no live router" in w for w in found), found
            wait_warning(lab, "r1", "pool 'pb': router 'r2' (group 'b') says its group is 'b'")
            # r1 in group a again: pool b's rule leaves its kernel at the start, the warnings go
            r1.stop()
            lab.set_group("r1", "a")
            r1.start()
            assert lab.live_pairs("r1") == {(FIP_A, lab.vm_ip(1))}
            wait_warning(lab, "r2", "pool '", present=False)
        finally:
            for server in servers:
                server.stop()
