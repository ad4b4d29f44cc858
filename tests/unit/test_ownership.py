"""Ownership rules of the registry (pure): leaving `owner` out never widens rights,
unowned allocations are for operator tokens, and `allow_move` never displaces another
owner's association. Each refusal has its allowed twin next to it (the control)."""

from ipaddress import IPv4Address, IPv4Network

import pytest

from one_ipfloater.model import FipError, Registry

A = IPv4Address
POOL = [A(f"198.51.100.{i}") for i in range(10, 14)]
RANGES = (IPv4Network("10.77.0.0/24"),)
P1, P2 = A("10.77.0.11"), A("10.77.0.12")


def commit(reg, planned):
    alloc, change = planned
    reg.apply(change)
    return alloc


def refused(plan, code="owner_mismatch"):
    with pytest.raises(FipError) as err:
        plan()
    assert err.value.code == code, err.value.message
    assert "\n" not in err.value.message
    return err.value


def registry_with(owner, private=None):
    reg = Registry(POOL)
    alloc = commit(reg, reg.plan_allocate(None, owner, "ref-a"))
    if private:
        alloc = commit(reg, reg.plan_associate(alloc.public_ip, private, RANGES, owner))
    return reg, alloc.public_ip


@pytest.mark.parametrize("plan", [
    lambda reg, pub, **kw: reg.plan_associate(pub, P2, RANGES, allow_move=True, **kw),
    lambda reg, pub, **kw: reg.plan_disassociate(pub, **kw),
    lambda reg, pub, **kw: reg.plan_release(pub, **kw),
    lambda reg, pub, **kw: reg.plan_allocate(None, kw.get("owner"), "ref-a", kw.get("operator", False),
                                             kw.get("unowned_ok", True)),
], ids=["associate", "disassociate", "release", "allocate-by-ref"])
def test_owned_allocation_needs_its_owner_or_an_explicit_operator(plan):
    reg, pub = registry_with("alice", P1)
    err = refused(lambda: plan(reg, pub, owner=None))  # leaving owner out: no wildcard
    assert "name that owner" in err.message
    refused(lambda: plan(reg, pub, owner="bob"))
    refused(lambda: plan(reg, pub, owner="bob", unowned_ok=True))  # an operator token is not enough
    plan(reg, pub, owner="alice")  # the owner: allowed
    plan(reg, pub, owner=None, operator=True)  # explicit operator: allowed
    plan(reg, pub, owner="bob", operator=True)


@pytest.mark.parametrize("plan", [
    lambda reg, pub, **kw: reg.plan_associate(pub, P2, RANGES, allow_move=True, **kw),
    lambda reg, pub, **kw: reg.plan_disassociate(pub, **kw),
    lambda reg, pub, **kw: reg.plan_release(pub, **kw),
], ids=["associate", "disassociate", "release"])
def test_unowned_allocation_is_for_operator_tokens_only(plan):
    reg, pub = registry_with(None, P1)
    err = refused(lambda: plan(reg, pub, owner="alice", unowned_ok=False))
    assert "has no owner" in err.message
    refused(lambda: plan(reg, pub, owner=None, unowned_ok=False))
    plan(reg, pub, owner=None, unowned_ok=True)
    plan(reg, pub, owner="alice", unowned_ok=True)


def test_allow_move_never_takes_another_owners_private_address():
    reg = Registry(POOL)
    alice = commit(reg, reg.plan_allocate(None, "alice", "a"))
    commit(reg, reg.plan_associate(alice.public_ip, P1, RANGES, "alice"))
    bob = commit(reg, reg.plan_allocate(None, "bob", "b"))
    err = refused(lambda: reg.plan_associate(bob.public_ip, P1, RANGES, "bob", allow_move=True), "private_in_use")
    assert "another owner" in err.message and err.status == 409
    # the explicit operator request may; moving one's own stays allowed
    _a, change = reg.plan_associate(bob.public_ip, P1, RANGES, None, allow_move=True, operator=True)
    assert not change.noop
    alice2 = commit(reg, reg.plan_allocate(None, "alice", "a2"))
    moved, change = reg.plan_associate(alice2.public_ip, P1, RANGES, "alice", allow_move=True)
    assert moved.private_ip == P1 and reg.get(alice.public_ip) in change.before


def test_allow_move_of_an_unowned_association_needs_an_operator_token():
    reg = Registry(POOL)
    loose = commit(reg, reg.plan_allocate(None, None, "x"))
    commit(reg, reg.plan_associate(loose.public_ip, P1, RANGES))
    mine = commit(reg, reg.plan_allocate(None, "alice", "a"))
    refused(lambda: reg.plan_associate(mine.public_ip, P1, RANGES, "alice", allow_move=True,
                                       unowned_ok=False), "private_in_use")
    reg.plan_associate(mine.public_ip, P1, RANGES, "alice", allow_move=True, unowned_ok=True)


def test_idempotent_allocate_by_ref_hands_nothing_over():
    reg, pub = registry_with("alice")
    refused(lambda: reg.plan_allocate(None, "bob", "ref-a"))
    refused(lambda: reg.plan_allocate(None, None, "ref-a"))
    again, change = reg.plan_allocate(None, "alice", "ref-a")
    assert again.public_ip == pub and change.noop
