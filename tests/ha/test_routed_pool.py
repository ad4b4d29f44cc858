"""A routed pool (the upstream routes it to the router, whose default route points back
upstream) and packets for a pool address without an association.

Without our FORWARD drop (ruleset.CHAIN_FWD) the router sends such a packet back
upstream untranslated, the upstream routes it to the router again, and so on until its
TTL runs out: one packet from anywhere crosses the router-upstream link dozens of times.
And conntrack confirms that flow without NAT: a client that keeps sending (a ping train,
a UDP peer on one port) never reaches the VM once the address is associated, since each
packet renews the entry. With the drop the packet dies in the router's FORWARD hook,
before conntrack confirms anything. The controls delete our drop rule by hand in r1's
namespace and show both faults. The netlab single router cannot show this: its pool is
on-link and an unanswered ARP leaves no entry."""

import time

import pytest

from tests.support.halab import CLIENT_IP, FIP, HaLab

pytestmark = [pytest.mark.netns, pytest.mark.ha, pytest.mark.xdist_group("ha")]

STRAY = "203.0.113.30"  # in the pool (IP_POOL .10-.40), never associated
BACKENDS = ("nftables", "iptables")


def delete_forward_drop(lab, backend):
    """Our FORWARD drop rules out of r1's kernel, by hand (the daemon's next reconcile
    would put them back: the lab runs none)."""
    if backend == "nftables":
        lab.run(lab.ns("r1"), ["nft", "flush", "chain", "ip", "ipfloater", "forward"])
    else:
        lab.run(lab.ns("r1"), ["iptables-legacy", "-w", "5", "-F", "IPFLOATER-FWD"])


def forward_drops(lab, backend):
    """The rules of our forward chain in r1, as text (a sanity check of the set-up)."""
    if backend == "nftables":
        out = lab.run(lab.ns("r1"), ["nft", "list", "chain", "ip", "ipfloater", "forward"]).stdout
        return [line.strip() for line in out.splitlines() if line.strip().endswith("drop")]
    out = lab.run(lab.ns("r1"), ["iptables-legacy-save", "-t", "filter"]).stdout
    return [line for line in out.splitlines() if line.startswith("-A IPFLOATER-FWD")]


def early_flow_reaches_the_vm(backend: str, with_drop: bool) -> bool:
    with HaLab(nat_backend=backend) as lab:
        r1 = lab.daemons["r1"]
        # another association first: a namespace without NAT rules tracks nothing
        assert r1.cli("redirect", "203.0.113.11", lab.vm_ip(2)).returncode == 0
        assert forward_drops(lab, backend), "no FORWARD drop installed"
        if not with_drop:
            delete_forward_drop(lab, backend)
            assert forward_drops(lab, backend) == []
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_flow_begun_before_the_association_reaches_the_vm_after_it(backend):
    assert early_flow_reaches_the_vm(backend, with_drop=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_control_without_the_forward_drop_the_early_flow_never_arrives(backend):
    assert not early_flow_reaches_the_vm(backend, with_drop=False)


PROBE = """table ip probe {
    chain forward {
        type filter hook forward priority 0; policy accept;
        ip saddr %s ip daddr %s icmp type echo-request counter
    }
}
""" % (CLIENT_IP, STRAY)


def crossings_of_one_echo(backend: str, with_drop: bool) -> int:
    """How often the upstream forwarded one echo request to an unassociated pool address
    (an nft counter in the upstream's namespace: each time is one trip to the router)."""
    with HaLab(nat_backend=backend) as lab:
        up = lab.ns("upstream")
        lab.run(up, ["nft", "-f", "-"], input=PROBE)
        if not with_drop:
            delete_forward_drop(lab, backend)
        ping = lab.run(lab.ns_client, ["ping", "-n", "-c", "1", "-W", "1", STRAY], check=False)
        assert ping.returncode != 0  # nobody answers an unassociated address
        out = lab.run(up, ["nft", "list", "chain", "ip", "probe", "forward"]).stdout
        count = int(out.split("counter packets ")[1].split()[0])
        print(f"{backend}, {'with' if with_drop else 'without'} the FORWARD drop: "
              f"one echo request crossed upstream -> router {count} times")
        return count


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_packet_to_an_unassociated_address_crosses_to_the_router_once(backend):
    assert crossings_of_one_echo(backend, with_drop=True) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_control_without_the_forward_drop_it_loops_until_its_ttl_runs_out(backend):
    assert crossings_of_one_echo(backend, with_drop=False) >= 20
