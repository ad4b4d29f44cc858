"""The service pipeline with an in-memory NAT backend and host: atomicity, persistence,
side effects (no root needed)."""

import logging
from ipaddress import IPv4Address

import pytest

from one_ipfloater.addresses import collapse
from one_ipfloater.model import FipError
from one_ipfloater.nat.ruleset import CHAIN_FWD
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.fakes import FakeBackend, FakeHost, fake_config

A = IPv4Address


@pytest.fixture
def make(tmp_path):
    def factory():
        config = fake_config(tmp_path / "state.db", public_interface="pub0")
        backend, host = FakeBackend(), FakeHost()
        svc = FloatingIPService(config, Store(config.db_path), backend, host)
        svc.start()
        return svc, backend, host
    return factory


def test_allocate_associate_persists_and_survives_restart(make):
    svc, backend, host = make()
    alloc, created = svc.allocate(private_ip=A("10.77.0.11"), owner="uid:1", ref="r1")
    assert created and alloc.public_ip == A("198.51.100.10")
    assert host.addresses == {A("198.51.100.10")} and host.arps == [A("198.51.100.10")]
    base_rules = backend.rule_count()
    again, created = svc.allocate(private_ip=A("10.77.0.11"), owner="uid:1", ref="r1")
    assert not created and again == alloc and backend.rule_count() == base_rules
    svc2, backend2, _host2 = make()  # a restart: same DB, empty kernel
    assert list(svc2.registry) == [alloc]
    assert backend2.chains == backend.chains


def test_failed_nat_change_rolls_back_everything(make):
    svc, backend, host = make()
    kernel_before = {c: list(r) for c, r in backend.chains.items()}
    backend.fail_update = backend.fail_sync = True
    with pytest.raises(FipError) as err:
        svc.allocate(private_ip=A("10.77.0.11"))
    assert err.value.status == 500 and "not applied" in err.value.message
    assert len(svc.registry) == 0 and svc.store.allocations() == []
    assert backend.chains == kernel_before and host.addresses == set()


def test_update_failure_falls_back_to_full_sync(make):
    svc, backend, _host = make()
    backend.fail_update = True
    svc.allocate(private_ip=A("10.77.0.11"))
    assert backend.chains == {c: list(svc.desired().ordered(c)) for c in svc.desired().chains()}


def test_refused_request_changes_nothing(make):
    svc, backend, host = make()
    svc.allocate(private_ip=A("10.77.0.11"))
    snapshot = (list(svc.registry), svc.store.allocations(), {c: list(r) for c, r in backend.chains.items()},
                set(host.addresses))
    for call in (lambda: svc.allocate(private_ip=A("10.99.0.1")),
                 lambda: svc.allocate(private_ip=A("10.77.0.1")),
                 lambda: svc.allocate(private_ip=A("10.77.0.11")),
                 lambda: svc.allocate(public_ip=A("203.0.113.5")),
                 lambda: svc.associate(A("198.51.100.10"), A("10.77.0.12")),
                 lambda: svc.release(A("198.51.100.11"))):
        with pytest.raises(FipError):
            call()
    assert snapshot == (list(svc.registry), svc.store.allocations(),
                        {c: list(r) for c, r in backend.chains.items()}, set(host.addresses))


def test_move_and_release_flush_conntrack_a_new_association_does_not(make):
    svc, _backend, host = make()
    alloc, _ = svc.allocate(private_ip=A("10.77.0.11"))
    assert host.flushed == []  # new: no entry without NAT to cut (the FORWARD drop, tests/ha/test_routed_pool.py)
    svc.associate(alloc.public_ip, A("10.77.0.12"), allow_move=True)
    assert host.flushed == [alloc.public_ip]
    svc.associate(alloc.public_ip, A("10.77.0.12"))  # the same: nothing to cut
    svc.allocate()  # an address without a target: nothing either
    assert host.flushed == [alloc.public_ip]
    svc.release(alloc.public_ip)
    assert host.flushed == [alloc.public_ip] * 2 and host.addresses == set()


def test_upgraded_router_gets_the_forward_chain_installed_not_repaired(tmp_path, caplog):
    """A start on a kernel whose rules came from a version without IPFLOATER-FWD: the
    chain is installed with one info line and no repair; a later loss of it is drift."""
    config = fake_config(tmp_path / "state.db", public_interface="pub0")
    backend, host = FakeBackend(), FakeHost()
    svc = FloatingIPService(config, Store(config.db_path), backend, host)
    svc.start()
    svc.allocate(private_ip=A("10.77.0.11"))
    assert [str(r.dst) for r in backend.chains[CHAIN_FWD]] == [str(n) for n in collapse(config.pool)]
    del backend.chains[CHAIN_FWD]  # what the older version left
    restarted = FloatingIPService(config, Store(config.db_path), backend, host)
    with caplog.at_level(logging.INFO, logger="one_ipfloater.service"):
        assert restarted.start() == []
    assert f"installed: created chain {CHAIN_FWD}" in caplog.text and "repaired" not in caplog.text
    del backend.chains[CHAIN_FWD]  # now it is drift
    assert restarted.reconcile() == [f"created chain {CHAIN_FWD}"]


def test_reconcile_restores_addresses_and_rules(make):
    svc, backend, host = make()
    svc.allocate(private_ip=A("10.77.0.11"))
    backend.chains = {}
    host.addresses.clear()
    host.addresses.add(A("198.51.100.12"))  # a stray pool address
    repairs = svc.reconcile()
    assert any("added 198.51.100.10/32" in r for r in repairs)
    assert any("removed 198.51.100.12/32" in r for r in repairs)
    assert host.addresses == {A("198.51.100.10")} and backend.rule_count() > 0
    assert svc.reconcile() == []


def test_pool_address_on_router_is_refused_at_start(tmp_path):
    config = fake_config(tmp_path / "s.db", pool="198.51.100.1-198.51.100.12", public_interface="pub0")
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
    with pytest.raises(FipError, match="198.51.100.1 is an address of the router itself"):
        svc.start()


def test_state_file_is_private(make, tmp_path):
    make()
    assert (tmp_path / "state.db").stat().st_mode & 0o777 == 0o600


def test_full_sync_fallback_when_the_last_address_goes(make):
    """The fallback converges to the registry AFTER the change, also when it is empty."""
    svc, backend, host = make()
    alloc, _ = svc.allocate(private_ip=A("10.77.0.11"))
    backend.fail_update = True
    svc.release(alloc.public_ip)
    assert backend.chains == {c: list(svc.desired().ordered(c)) for c in svc.desired().chains()}
    assert not any(r.target in ("DNAT", "SNAT") for rules in backend.chains.values() for r in rules)
