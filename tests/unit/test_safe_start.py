"""Safe starts without root: the start's refusal, adopt's plan, the state file's history,
one instance per namespace, side effects of committed changes, the first start's log."""

import logging
import os
import socket
import sqlite3
from ipaddress import IPv4Address, IPv4Network

import pytest

from one_ipfloater import instance
from one_ipfloater.hostnet import HostNetError
from one_ipfloater.livestate import AdoptError, LiveState, plan_adopt, start_refusal
from one_ipfloater.model import Allocation
from one_ipfloater.nat.iptables import pairs_from_save
from one_ipfloater.nat.nftables import TableState, state_pairs
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.fakes import FakeBackend, FakeHost, fake_config

A = IPv4Address
POOL = [A(f"198.51.100.{i}") for i in range(10, 13)]
RANGES = [IPv4Network("10.77.0.0/24")]


def live(pairs=(), addresses=()):
    return LiveState(frozenset(pairs), frozenset(addresses), "pub0")


# -- the start's refusal (pure) ----------------------------------------------------------

def test_new_state_with_live_associations_is_refused_with_one_line():
    state = live({(A("198.51.100.10"), A("10.77.0.11")), (A("198.51.100.11"), A("10.77.0.12"))},
                 {A("198.51.100.10"), A("198.51.100.11"), A("198.51.100.12")})
    reason = start_refusal(state, 0, False, "/var/lib/x.db", "/etc/f.conf")
    assert "\n" not in reason
    assert "/var/lib/x.db is new or empty" in reason and "3 live associations" in reason
    assert "2 NAT pairs, 3 pool addresses on pub0" in reason
    assert "ipfloaterd --config /etc/f.conf adopt" in reason and "ipfloaterd --config /etc/f.conf flush" in reason
    assert start_refusal(live(addresses={A("198.51.100.12")}), 0, False, "d", "c")  # an address alone


@pytest.mark.parametrize("stored, history, state", [
    (1, False, live({(A("198.51.100.10"), A("10.77.0.11"))})),   # the file holds allocations
    (0, True, live({(A("198.51.100.10"), A("10.77.0.11"))})),    # emptied by releases: the truth
    (0, False, live()),                                          # nothing of ours live
])
def test_start_goes_on(stored, history, state):
    assert start_refusal(state, stored, history, "d", "c") is None


# -- adopt's plan (pure) -------------------------------------------------------------------

def test_adopt_takes_every_pair_as_operator_owned():
    pairs = {(A("198.51.100.11"), A("10.77.0.12")), (A("198.51.100.10"), A("10.77.0.11"))}
    assert plan_adopt(live(pairs), POOL, RANGES, []) == [
        Allocation(A("198.51.100.10"), None, None, A("10.77.0.11")),
        Allocation(A("198.51.100.11"), None, None, A("10.77.0.12"))]


def test_adopt_skips_pairs_already_stored():
    pairs = {(A("198.51.100.11"), A("10.77.0.12")), (A("198.51.100.10"), A("10.77.0.11"))}
    stored = [Allocation(A("198.51.100.10"), "uid:1", "r1", A("10.77.0.11")), Allocation(A("198.51.100.12"))]
    assert plan_adopt(live(pairs), POOL, RANGES, stored) == [
        Allocation(A("198.51.100.11"), None, None, A("10.77.0.12"))]


@pytest.mark.parametrize("pairs, stored, message", [
    ({(A("198.51.100.10"), A("10.77.0.11")), (A("198.51.100.10"), A("10.77.0.12"))}, [],
     "public address 198.51.100.10 is in two live associations"),
    ({(A("198.51.100.10"), A("10.77.0.11")), (A("198.51.100.11"), A("10.77.0.11"))}, [],
     "private address 10.77.0.11 is in two live associations"),
    ({(A("203.0.113.5"), A("10.77.0.11"))}, [], "IP_POOL: live association 203.0.113.5 -> 10.77.0.11"),
    ({(A("198.51.100.10"), A("10.99.0.1"))}, [], "PRIVATE_IP_RANGES: live association 198.51.100.10 -> 10.99.0.1"),
    ({(A("198.51.100.10"), A("10.77.0.11"))}, [Allocation(A("198.51.100.10"), None, None, A("10.77.0.12"))],
     "DB: 198.51.100.10 is stored as associated with 10.77.0.12 but the kernel maps it to 10.77.0.11"),
    ({(A("198.51.100.10"), A("10.77.0.11"))}, [Allocation(A("198.51.100.10"))],
     "DB: 198.51.100.10 is stored as not associated"),
    ({(A("198.51.100.10"), A("10.77.0.11"))}, [Allocation(A("198.51.100.12"), None, None, A("10.77.0.11"))],
     "DB: 10.77.0.11 is stored behind 198.51.100.12"),
])
def test_adopt_refuses_conflicts_with_one_line(pairs, stored, message):
    with pytest.raises(AdoptError) as err:
        plan_adopt(live(pairs), POOL, RANGES, stored)
    assert message in str(err.value) and "\n" not in str(err.value)


# -- reading pairs back from each backend's listing (pure) ---------------------------------

def test_iptables_save_text_gives_pairs():
    text = "\n".join([
        "*nat", ":IPFLOATER-PRE - [0:0]",
        "-A PREROUTING -j IPFLOATER-PRE",
        "-A IPFLOATER-PRE -d 198.51.100.10/32 -j DNAT --to-destination 10.77.0.11",
        "-A IPFLOATER-OUT -d 198.51.100.10/32 -j DNAT --to-destination 10.77.0.11",
        "-A IPFLOATER-POST -s 10.77.0.0/24 -d 10.77.0.0/24 -j RETURN",
        "-A IPFLOATER-POST -s 10.77.0.11/32 -j SNAT --to-source 198.51.100.10",
        "-A IPFLOATER-POST -s 10.77.0.12/32 -j SNAT --to-source 198.51.100.11",  # disagrees: kept
        "-A OTHER -d 198.51.100.20/32 -j DNAT --to-destination 10.77.0.20",      # not our chain
        "-A IPFLOATER-PRE -d 198.51.100.21/32 -j DNAT --to-destination 10.77.0.21:80",  # not our shape
        "COMMIT"])
    assert pairs_from_save(text) == {(A("198.51.100.10"), A("10.77.0.11")), (A("198.51.100.11"), A("10.77.0.12"))}


def test_nftables_maps_give_pairs():
    state = TableState(maps={"fip_dnat": ("ipv4_addr", "ipv4_addr"), "fip_snat": ("ipv4_addr", "ipv4_addr")},
                       elements={"fip_dnat": {"198.51.100.10": "10.77.0.11"},
                                 "fip_snat": {"10.77.0.11": "198.51.100.10", "10.77.0.12": "198.51.100.11"}})
    assert state_pairs(state) == {(A("198.51.100.10"), A("10.77.0.11")), (A("198.51.100.11"), A("10.77.0.12"))}
    assert state_pairs(None) == set()


# -- the state file's history ----------------------------------------------------------------

@pytest.fixture
def make(tmp_path):
    def factory(backend=None, host=None):
        config = fake_config(tmp_path / "state.db", public_interface="pub0")
        svc = FloatingIPService(config, Store(config.db_path), backend or FakeBackend(), host or FakeHost())
        svc.start()
        return svc
    return factory


def test_history_tells_new_from_emptied_by_releases(make, tmp_path):
    svc = make()
    assert not svc.store.has_history()
    alloc, _ = svc.allocate(private_ip=A("10.77.0.11"))
    svc.release(alloc.public_ip)
    svc.store.close()
    reopened = Store(tmp_path / "state.db")
    assert reopened.allocations() == [] and reopened.has_history()


def test_a_rolled_back_first_change_leaves_no_history(make):
    backend = FakeBackend()
    svc = make(backend)
    backend.fail_update = backend.fail_sync = True
    with pytest.raises(Exception):
        svc.allocate(private_ip=A("10.77.0.11"))
    assert not svc.store.has_history()


def test_an_older_file_with_allocations_is_marked_at_its_first_check(tmp_path):
    path = tmp_path / "old.db"
    store = Store(path)
    store.replace_all([Allocation(A("198.51.100.10"), None, None, A("10.77.0.11"))])
    store.close()
    with sqlite3.connect(path) as db:  # as an older daemon left it: allocations, no mark
        db.execute("DELETE FROM meta WHERE key='history'")
    store = Store(path)
    assert store.has_history()
    store.replace_all([])  # all released later: still the state of record
    store.close()
    assert Store(path).has_history()


# -- one instance per network namespace ----------------------------------------------------

def test_second_claim_is_refused_naming_the_holder(request):
    name = f"ipfloaterd-test-{os.getpid()}-{request.node.name}"
    held = instance.claim("run", name)
    prober = instance.answer_probes(held)
    try:
        for _ in range(40):  # more than the backlog: probes are answered, the pid stays known
            with pytest.raises(instance.InstanceBusy) as err:
                instance.claim("flush", name)
            assert err.value.pid == os.getpid()
        assert str(err.value) == (f"flush: refused, ipfloaterd (pid {os.getpid()}) runs in this network "
                                  f"namespace (stop it first)")
    finally:
        instance.release(held, prober)
    instance.release(instance.claim("adopt", name))  # released with its holder


# -- side effects of a committed change ----------------------------------------------------

FAILURES = [HostNetError("adding 198.51.100.10/32 ... on pub0: timed out"), TimeoutError("netlink timed out"),
            socket.timeout("timed out"), OSError(105, "No buffer space available")]


@pytest.mark.parametrize("exc", FAILURES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("step", ["add", "arp", "conntrack", "del"])
def test_committed_change_stands_when_a_side_effect_fails(make, step, exc, caplog):
    host = FakeHost()
    svc = make(host=host)
    alloc, _ = svc.allocate(private_ip=A("10.77.0.11"))
    host.fail[step] = exc
    if step == "del":
        answer = svc.release(alloc.public_ip)
        expected_store, expected_addresses = [], set()
    elif step == "conntrack":
        answer = svc.associate(alloc.public_ip, A("10.77.0.12"), allow_move=True)
        expected_store, expected_addresses = [answer], {alloc.public_ip}
    else:
        answer, _ = svc.allocate(private_ip=A("10.77.0.12"))
        expected_store = sorted([svc.show(alloc.public_ip), answer])
        expected_addresses = {alloc.public_ip, answer.public_ip}
    assert answer is not None  # no FipError("change not applied"): it was committed
    assert sorted(svc.store.allocations()) == expected_store == sorted(svc.registry)
    assert any(r.levelno >= logging.WARNING and str(exc) in r.getMessage() for r in caplog.records)
    if step in ("add", "del"):
        assert svc.repair_wanted.is_set() and host.addresses != expected_addresses
    del host.fail[step]
    svc.reconcile()
    assert host.addresses == expected_addresses


class HalfwayBackend(FakeBackend):
    """Applies a change and then fails with something that is not a NatError (a timeout)."""

    def apply(self, removed, added):
        super().apply(removed, added)
        raise TimeoutError("iptables-restore timed out")


def test_a_failure_inside_the_transaction_puts_the_rules_back(make):
    backend = HalfwayBackend()
    svc = make(backend)
    before = {c: list(r) for c, r in backend.chains.items()}
    with pytest.raises(Exception) as err:
        svc.allocate(private_ip=A("10.77.0.11"))
    assert "not applied" in str(err.value)
    assert svc.store.allocations() == [] and len(svc.registry) == 0
    assert backend.chains == before


# -- the first start says what it installed ---------------------------------------------------

def test_first_start_logs_an_install_not_repairs(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = fake_config(tmp_path / "s.db", public_interface="pub0")
    backend, host = FakeBackend(), FakeHost()
    assert FloatingIPService(config, Store(config.db_path), backend, host).start() == []
    assert "installed rules for 0 associations" in caplog.text
    assert "repaired" not in caplog.text
    caplog.clear()
    backend.chains.pop("IPFLOATER-POST")  # drift while the daemon was down: a repair
    repairs = FloatingIPService(config, Store(config.db_path), backend, host).start()
    assert repairs and "reconcile repaired" in caplog.text
