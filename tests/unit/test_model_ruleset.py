"""Registry transitions and the desired rule set (pure)."""

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings, strategies as st

from one_ipfloater.model import Allocation, Change, FipError, Registry
from one_ipfloater.nat.ruleset import (CHAIN_IN, CHAIN_OUT, CHAIN_POST, CHAIN_PRE, Rule, association_rules,
                                   desired_spec, rule_delta)

A = IPv4Address
POOL = [A(f"198.51.100.{i}") for i in range(10, 14)]
RANGES = (IPv4Network("10.77.0.0/24"),)


def commit(reg, planned):
    alloc, change = planned
    reg.apply(change)
    return alloc


def test_allocate_takes_lowest_free_then_exhausts():
    reg = Registry(POOL)
    got = [commit(reg, reg.plan_allocate(None, "u1", None)).public_ip for _ in POOL]
    assert got == POOL
    with pytest.raises(FipError) as err:
        reg.plan_allocate(None, "u1", None)
    assert err.value.code == "pool_exhausted" and err.value.status == 409


def test_allocate_specific_address_checks_pool_and_use():
    reg = Registry(POOL)
    commit(reg, reg.plan_allocate(A("198.51.100.12"), None, None))
    with pytest.raises(FipError, match="already allocated") as err:
        reg.plan_allocate(A("198.51.100.12"), None, None)
    assert err.value.code == "address_in_use"
    with pytest.raises(FipError) as err:
        reg.plan_allocate(A("203.0.113.1"), None, None)
    assert err.value.code == "not_in_pool"


def test_ref_makes_allocation_idempotent_and_owned():
    reg = Registry(POOL)
    first = commit(reg, reg.plan_allocate(None, "uid:5", "one:vm:1:nic:0"))
    again, change = reg.plan_allocate(None, "uid:5", "one:vm:1:nic:0")
    assert again == first and change.noop
    with pytest.raises(FipError) as err:
        reg.plan_allocate(None, "uid:6", "one:vm:1:nic:0")
    assert err.value.code == "owner_mismatch" and err.value.status == 403
    with pytest.raises(FipError) as err:
        reg.plan_allocate(A("198.51.100.13"), "uid:5", "one:vm:1:nic:0")
    assert err.value.code == "ref_conflict"


def test_associate_is_idempotent_and_moves_only_when_asked():
    reg = Registry(POOL)
    pub = commit(reg, reg.plan_allocate(None, None, None)).public_ip
    commit(reg, reg.plan_associate(pub, A("10.77.0.11"), RANGES))
    same, change = reg.plan_associate(pub, A("10.77.0.11"), RANGES)
    assert change.noop
    with pytest.raises(FipError) as err:
        reg.plan_associate(pub, A("10.77.0.12"), RANGES)
    assert err.value.code == "address_in_use"
    moved, change = reg.plan_associate(pub, A("10.77.0.12"), RANGES, allow_move=True)
    assert change.moved_addresses() == {pub}
    reg.apply(change)
    assert reg.by_private(A("10.77.0.12")).public_ip == pub and reg.by_private(A("10.77.0.11")) is None


def test_private_served_twice_needs_move_and_then_steals():
    reg = Registry(POOL)
    p1 = commit(reg, reg.plan_allocate(None, None, None)).public_ip
    p2 = commit(reg, reg.plan_allocate(None, None, None)).public_ip
    commit(reg, reg.plan_associate(p1, A("10.77.0.11"), RANGES))
    with pytest.raises(FipError) as err:
        reg.plan_associate(p2, A("10.77.0.11"), RANGES)
    assert err.value.code == "private_in_use"
    commit(reg, reg.plan_associate(p2, A("10.77.0.11"), RANGES, allow_move=True))
    assert reg.get(p1).private_ip is None and reg.get(p2).private_ip == A("10.77.0.11")


@pytest.mark.parametrize("private, fragment", [
    ("10.99.0.5", "outside PRIVATE_IP_RANGES"), ("10.77.0.0", "network or broadcast"),
    ("10.77.0.255", "network or broadcast"), ("10.77.0.1", "router itself")])
def test_private_targets_refused(private, fragment):
    reg = Registry(POOL, router_addresses=[A("10.77.0.1")])
    pub = commit(reg, reg.plan_allocate(None, None, None)).public_ip
    with pytest.raises(FipError, match=fragment) as err:
        reg.plan_associate(pub, A(private), RANGES)
    assert err.value.code == "private_not_allowed" and err.value.status == 422


def test_owner_protects_disassociate_release_and_move():
    reg = Registry(POOL)
    pub = commit(reg, reg.plan_allocate(None, "uid:5", None)).public_ip
    for plan in (lambda: reg.plan_disassociate(pub, "uid:6"), lambda: reg.plan_release(pub, "uid:6"),
                 lambda: reg.plan_associate(pub, A("10.77.0.9"), RANGES, "uid:6")):
        with pytest.raises(FipError) as err:
            plan()
        assert err.value.code == "owner_mismatch"
    _alloc, change = reg.plan_release(pub, "uid:6", operator=True)
    assert not change.noop


def test_release_returns_address_to_pool():
    reg = Registry(POOL[:1])
    pub = commit(reg, reg.plan_allocate(None, None, "r")).public_ip
    commit(reg, reg.plan_release(pub))
    assert reg.free_count() == 1 and reg.by_ref("r") is None
    with pytest.raises(FipError) as err:
        reg.plan_release(pub)
    assert err.value.code == "not_allocated" and err.value.status == 404


def test_change_composition():
    a = Allocation(A("198.51.100.10"))
    b = Allocation(A("198.51.100.10"), private_ip=A("10.77.0.5"))
    composed = Change(after=(a,)).then(Change(before=(a,), after=(b,)))
    assert composed == Change(before=(), after=(b,))
    assert Change(before=(b,)).moved_addresses() == {A("198.51.100.10")}  # released
    # newly associated: nothing to cut (the FORWARD drop left no entry without NAT)
    assert Change(before=(a,), after=(b,)).moved_addresses() == set()
    assert Change(before=(b,), after=(b,)).moved_addresses() == set()


def test_desired_spec_shape():
    rs = desired_spec([(A("198.51.100.10"), A("10.77.0.11"))], RANGES, POOL, block_public_ips=True)
    assert rs.ordered(CHAIN_PRE) == [Rule(dst=IPv4Network("198.51.100.10/32"), target="DNAT", to=A("10.77.0.11"))]
    assert rs.ordered(CHAIN_OUT) == rs.ordered(CHAIN_PRE)
    post = rs.ordered(CHAIN_POST)
    assert [r.target for r in post] == ["MASQUERADE", "RETURN", "SNAT"]
    assert post[0].ctstate_dnat and post[2].iptables_args() == [
        "-s", "10.77.0.11/32", "-j", "SNAT", "--to-source", "198.51.100.10"]
    assert [str(r.dst) for r in rs.ordered(CHAIN_IN)] == ["198.51.100.10/31", "198.51.100.12/31"]
    assert CHAIN_IN not in desired_spec([], RANGES, POOL).chains()


pairs = st.dictionaries(st.integers(10, 60), st.integers(2, 250), max_size=30)


@settings(max_examples=200)
@given(pairs, pairs)
def test_delta_takes_one_rule_set_to_the_other(before, after):
    """Applying rule_delta to the rules of `before` yields exactly the rules of `after`."""
    def assoc(d):
        return {(A(f"198.51.100.{p}"), A(f"10.77.0.{v}")) for p, v in d.items()}

    def rules(d):
        return {(c, r) for pub, priv in assoc(d) for c, r in association_rules(pub, priv).items()}

    removed, added = rule_delta(assoc(before), assoc(after))
    flat_removed = {(c, r) for c, rs in removed.items() for r in rs}
    flat_added = {(c, r) for c, rs in added.items() for r in rs}
    assert (rules(before) - flat_removed) | flat_added == rules(after)
    assert flat_removed <= rules(before) and not (flat_added & (rules(before) - flat_removed))


@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "assoc", "move", "disassoc", "release"]),
                          st.integers(0, 5), st.integers(2, 8)), max_size=40))
def test_registry_invariants_under_random_operations(ops):
    """Whatever the sequence: no public address twice, no private address served twice,
    every allocation in the pool, free + allocated == pool."""
    pool = [A(f"198.51.100.{i}") for i in range(10, 15)]
    reg = Registry(pool)
    for op, pub_i, priv_i in ops:
        pub = A(f"198.51.100.{10 + pub_i}")
        priv = A(f"10.77.0.{priv_i}")
        try:
            if op == "alloc":
                commit(reg, reg.plan_allocate(None, None, None))
            elif op == "assoc":
                commit(reg, reg.plan_associate(pub, priv, RANGES))
            elif op == "move":
                commit(reg, reg.plan_associate(pub, priv, RANGES, allow_move=True))
            elif op == "disassoc":
                commit(reg, reg.plan_disassociate(pub))
            else:
                commit(reg, reg.plan_release(pub))
        except FipError as exc:
            assert exc.status in (403, 404, 409, 422) and "\n" not in exc.message
    allocs = list(reg)
    assert len({a.public_ip for a in allocs}) == len(allocs)
    privs = [a.private_ip for a in allocs if a.private_ip]
    assert len(privs) == len(set(privs))
    assert all(a.public_ip in reg.pool for a in allocs)
    assert reg.free_count() + len(allocs) == len(pool)


def _consistent(rows) -> bool:
    """As the state file holds them: public, private and ref each unique."""
    privates = [v for _p, v, _r in rows if v is not None]
    refs = [r for _p, _v, r in rows if r is not None]
    return len(privates) == len(set(privates)) and len(refs) == len(set(refs))


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(5, 20), st.none() | st.integers(2, 9), st.none() | st.sampled_from("abcd")),
                max_size=12, unique_by=lambda row: row[0]).filter(_consistent))
def test_registry_built_in_bulk_equals_one_by_one(rows):
    """__init__ indexes the allocations by public address and builds the other indexes and
    the free list when first used; the result is what `_add` per allocation gave
    (addresses outside the pool take nothing from it)."""
    pool = [A(f"198.51.100.{i}") for i in range(10, 16)]
    allocs = [Allocation(A(f"198.51.100.{p}"), ref=ref,
                         private_ip=A(f"10.77.0.{v}") if v is not None else None) for p, v, ref in rows]
    bulk = Registry(pool, allocs)
    one_by_one = Registry(pool)
    for alloc in allocs:
        one_by_one._add(alloc)
    assert (bulk._by_public, bulk._by_private, bulk._by_ref, bulk._free) == \
        (one_by_one._by_public, one_by_one._by_private, one_by_one._by_ref, one_by_one._free)
    assert bulk.free_count() == len(set(pool) - {a.public_ip for a in allocs})


@settings(max_examples=100)
@given(st.lists(st.tuples(st.integers(5, 20), st.none() | st.integers(2, 9), st.none() | st.sampled_from("abcd")),
                min_size=1, max_size=12, unique_by=lambda row: row[0]).filter(_consistent), st.booleans())
def test_indexes_built_after_a_change_include_it(rows, remove):
    # the lazy indexes may first be built in the middle of _add/_remove: still right
    pool = [A(f"198.51.100.{i}") for i in range(10, 16)]
    allocs = [Allocation(A(f"198.51.100.{p}"), ref=ref,
                         private_ip=A(f"10.77.0.{v}") if v is not None else None) for p, v, ref in rows]
    if remove:
        changed = Registry(pool, allocs)
        changed._remove(allocs[-1].public_ip)
        expected = Registry(pool, allocs[:-1])
    else:
        changed = Registry(pool, allocs[:-1])
        changed._add(allocs[-1])
        expected = Registry(pool, allocs)
    assert (changed._by_private, changed._by_ref, changed._free) == \
        (expected._by_private, expected._by_ref, expected._free)


def test_forward_drops_are_always_there_one_per_pool_block_and_remembered_per_frozenset():
    from one_ipfloater.nat.ruleset import CHAIN_FWD, pool_drops
    pool = frozenset(A(f"198.51.100.{i}") for i in range(10, 14))
    spec = desired_spec([], RANGES, pool)  # BLOCK_PUBLIC_IPS off: the forward drops all the same
    assert [str(r.dst) for r in spec.ordered(CHAIN_FWD)] == ["198.51.100.10/31", "198.51.100.12/31"]
    assert {r.target for r in spec.ordered(CHAIN_FWD)} == {"DROP"}
    assert pool_drops(pool) is pool_drops(pool)  # the same frozenset: not collapsed again
    other = frozenset(pool | {A("198.51.100.14")})
    assert [str(r.dst) for r in pool_drops(other)] == ["198.51.100.10/31", "198.51.100.12/31", "198.51.100.14/32"]
    assert [str(r.dst) for r in pool_drops(list(pool))] == ["198.51.100.10/31", "198.51.100.12/31"]
    assert desired_spec([], RANGES).ordered(CHAIN_FWD) == []  # no pool: the chain, no rule


@given(st.sets(st.integers(0, 300), max_size=120))
def test_collapse_is_ipaddress_collapse_addresses(offsets):
    import ipaddress

    from one_ipfloater.addresses import collapse
    addrs = [A(int(A("198.51.100.0")) + i) for i in offsets]
    assert collapse(addrs) == list(ipaddress.collapse_addresses(IPv4Network(a) for a in addrs))
