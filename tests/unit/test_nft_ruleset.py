"""The nftables backend's pure half: the JSON batches it writes for a NatSpec and for a
delta, how it reads our table back, the repairs it reports, and NAT_BACKEND selection."""

import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings, strategies as st

from one_ipfloater.config import ConfigError, parse_config_text
from one_ipfloater.nat import (NatError, NatUnavailable, choose_backend, live_pairs_everywhere, make_backend,
                               nftables as nft, remove_other_backends)
from one_ipfloater.nat.iptables import IptablesBackend
from one_ipfloater.nat.ruleset import Rule, desired_spec, pair_delta

A, N = IPv4Address, IPv4Network
RANGES = (N("10.77.0.0/24"),)
POOL = [A(f"198.51.100.{i}") for i in range(10, 14)]
P1, P2, V1, V2 = A("198.51.100.10"), A("198.51.100.11"), A("10.77.0.11"), A("10.77.0.12")
T = {"family": "ip", "table": "ipfloater"}
DADDR = {"payload": {"protocol": "ip", "field": "daddr"}}
SADDR = {"payload": {"protocol": "ip", "field": "saddr"}}
PREFIX = {"prefix": {"addr": "10.77.0.0", "len": 24}}


def cmds_of(kind, batch):
    return [c["add"][kind] for c in batch if "add" in c and kind in c["add"]]


# -- a NatSpec as one rebuild batch -------------------------------------------------------

def test_rebuild_batch_for_a_ruleset():
    desired = desired_spec([(P1, V1), (P2, V2)], RANGES, POOL, block_public_ips=True)
    batch = nft.rebuild_batch(nft.desired_state(desired))
    table = {"table": {"family": "ip", "name": "ipfloater"}}
    assert batch[:3] == [{"add": table}, {"delete": table}, {"add": table}]  # delete cannot fail
    assert cmds_of("map", batch) == [{**T, "name": "fip_dnat", "type": "ipv4_addr", "map": "ipv4_addr"},
                                     {**T, "name": "fip_snat", "type": "ipv4_addr", "map": "ipv4_addr"}]
    assert cmds_of("element", batch) == [
        {**T, "name": "fip_dnat", "elem": [["198.51.100.10", "10.77.0.11"], ["198.51.100.11", "10.77.0.12"]]},
        {**T, "name": "fip_snat", "elem": [["10.77.0.11", "198.51.100.10"], ["10.77.0.12", "198.51.100.11"]]}]
    assert [(c["name"], c["type"], c["hook"], c["prio"], c["policy"]) for c in cmds_of("chain", batch)] == [
        ("prerouting", "nat", "prerouting", -110, "accept"), ("output", "nat", "output", -110, "accept"),
        ("postrouting", "nat", "postrouting", 90, "accept"), ("input", "filter", "input", 0, "accept"),
        ("forward", "filter", "forward", 0, "accept")]
    dnat_map = [{"dnat": {"addr": {"map": {"key": DADDR, "data": "@fip_dnat"}}}}]
    assert [r["expr"] for r in cmds_of("rule", batch)] == [
        dnat_map,
        dnat_map,
        [{"match": {"op": "==", "left": SADDR, "right": PREFIX}},
         {"match": {"op": "==", "left": DADDR, "right": PREFIX}},
         {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
         {"masquerade": None}],
        [{"match": {"op": "==", "left": SADDR, "right": PREFIX}},
         {"match": {"op": "==", "left": DADDR, "right": PREFIX}},
         {"return": None}],
        [{"snat": {"addr": {"map": {"key": SADDR, "data": "@fip_snat"}}}}],
        [{"match": {"op": "==", "left": DADDR, "right": {"prefix": {"addr": "198.51.100.10", "len": 31}}}},
         {"drop": None}],
        [{"match": {"op": "==", "left": DADDR, "right": {"prefix": {"addr": "198.51.100.12", "len": 31}}}},
         {"drop": None}],
    ] + [  # the same drops in forward: always there, BLOCK_PUBLIC_IPS or not
        [{"match": {"op": "==", "left": DADDR, "right": {"prefix": {"addr": "198.51.100.10", "len": 31}}}},
         {"drop": None}],
        [{"match": {"op": "==", "left": DADDR, "right": {"prefix": {"addr": "198.51.100.12", "len": 31}}}},
         {"drop": None}],
    ]
    assert [r["chain"] for r in cmds_of("rule", batch)] == \
        ["prerouting", "output", "postrouting", "postrouting", "postrouting", "input", "input", "forward", "forward"]
    json.loads(nft.document(batch))  # one JSON document: one libnftables call, one transaction


def test_rule_count_does_not_grow_with_associations():
    few = nft.rebuild_batch(nft.desired_state(desired_spec([(P1, V1)], RANGES)))
    many = nft.rebuild_batch(nft.desired_state(desired_spec(
        [(A(int(A("100.64.0.0")) + i), A(int(A("10.0.0.0")) + i)) for i in range(4096)], RANGES)))
    assert len(few) == len(many)
    assert [len(e["elem"]) for e in cmds_of("element", many)] == [4096, 4096]


def test_no_block_public_ips_means_no_input_chain_but_forward_and_empty_maps_have_no_elements():
    batch = nft.rebuild_batch(nft.desired_state(desired_spec([], RANGES, POOL)))
    assert [c["name"] for c in cmds_of("chain", batch)] == ["prerouting", "output", "postrouting", "forward"]
    assert cmds_of("element", batch) == []
    # 2 dnat map rules, hairpin, return, snat map rule; 2 forward drops (198.51.100.10/31, .12/31)
    assert len(cmds_of("rule", batch)) == 7


def test_single_host_ranges_are_plain_addresses():
    expr = nft.rule_expr(Rule(src=N("10.1.2.3/32"), dst=N("10.0.0.0/8"), target="RETURN"))
    assert expr[0]["match"]["right"] == "10.1.2.3"
    assert expr[1]["match"]["right"] == {"prefix": {"addr": "10.0.0.0", "len": 8}}


@pytest.mark.parametrize("pairs, message", [
    ([(P1, V1), (P2, V1)], "private address 10.77.0.11 is in two associations"),
    ([(P1, V1), (P1, V2)], "public address 198.51.100.10 is in two associations"),
])
def test_an_address_in_two_associations_is_refused(pairs, message):
    # one map element per address: such a pair cannot be NATed, and the registry never
    # holds one (its indexes are unique); the rule set refuses it rather than pick one
    with pytest.raises(ValueError, match=message):
        desired_spec(pairs, RANGES)


def test_maps_are_built_from_the_pairs_in_public_order():
    state = nft.desired_state(desired_spec([(P2, V2), (P1, V1)], RANGES))
    assert list(state.elements["fip_dnat"].items()) == [(str(P1), str(V1)), (str(P2), str(V2))]
    assert state.elements["fip_snat"] == {str(V1): str(P1), str(V2): str(P2)}


# -- a delta as element changes ---------------------------------------------------------------

def test_associate_is_one_element_per_map():
    removed, added = pair_delta([], [(P1, V1)])
    assert nft.element_batch(removed, added) == [
        {"add": {"element": {**T, "name": "fip_dnat", "elem": [["198.51.100.10", "10.77.0.11"]]}}},
        {"add": {"element": {**T, "name": "fip_snat", "elem": [["10.77.0.11", "198.51.100.10"]]}}}]


def test_release_is_one_element_per_map():
    removed, added = pair_delta([(P1, V1)], [])
    assert nft.element_batch(removed, added) == [
        {"delete": {"element": {**T, "name": "fip_dnat", "elem": ["198.51.100.10"]}}},
        {"delete": {"element": {**T, "name": "fip_snat", "elem": ["10.77.0.11"]}}}]


def test_move_deletes_before_it_adds_in_one_batch():
    removed, added = pair_delta([(P1, V1)], [(P1, V2)])
    assert nft.element_batch(removed, added) == [
        {"delete": {"element": {**T, "name": "fip_dnat", "elem": ["198.51.100.10"]}}},
        {"delete": {"element": {**T, "name": "fip_snat", "elem": ["10.77.0.11"]}}},
        {"add": {"element": {**T, "name": "fip_dnat", "elem": [["198.51.100.10", "10.77.0.12"]]}}},
        {"add": {"element": {**T, "name": "fip_snat", "elem": [["10.77.0.12", "198.51.100.10"]]}}}]


def test_delta_batch_is_independent_of_how_many_associations_exist():
    live = [(A(int(A("100.64.0.0")) + i), A(int(A("10.0.0.0")) + i)) for i in range(4096)]
    small = nft.element_batch(*pair_delta(live[:16], live[:16] + [(P1, V1)]))
    large = nft.element_batch(*pair_delta(live, live + [(P1, V1)]))
    assert small == large and len(large) == 2


def test_empty_delta_is_no_batch():
    assert nft.element_batch(set(), set()) == []


def test_one_address_given_two_values_in_one_change_is_refused():
    with pytest.raises(NatError, match="fip_dnat 198.51.100.10 given two values"):
        nft.element_batch(set(), {(P1, V1), (P1, V2)})
    with pytest.raises(NatError, match="fip_snat 10.77.0.11 given two values"):
        nft.element_batch(set(), {(P1, V1), (P2, V1)})


pairs = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=12).map(
    lambda ps: sorted({(A(int(P1) + p), A(int(V1) + v)) for p, v in dict(reversed(ps)).items()}))


def one_to_one(ps):
    seen, out = set(), []
    for pub, priv in ps:
        if priv not in seen:
            seen.add(priv)
            out.append((pub, priv))
    return out


@settings(max_examples=200, deadline=None)
@given(pairs, pairs)
def test_delta_batch_takes_the_maps_from_before_to_after(before, after):
    """Applied to the maps of `before` with the kernel's rules (a deletion needs the
    element, an addition must not find its key), the batch yields the maps of `after`."""
    before, after = one_to_one(before), one_to_one(after)
    maps = {k: dict(v) for k, v in nft.desired_state(desired_spec(before, RANGES)).elements.items()}
    for cmd in nft.element_batch(*pair_delta(before, after)):
        (verb, body), = cmd.items()
        elems = maps[body["element"]["name"]]
        for item in body["element"]["elem"]:
            if verb == "delete":
                del elems[item]
            else:
                assert item[0] not in elems
                elems[item[0]] = item[1]
    assert maps == nft.desired_state(desired_spec(after, RANGES)).elements


# -- reading our table back -----------------------------------------------------------------

def kernel_listing(state):
    """What `nft -j list table ip ipfloater` prints for a table built from `state` (shape
    as nftables 1.0.6 prints it: handles, metainfo, elements inside the map)."""
    out = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
           {"table": {"family": "ip", "name": "ipfloater", "handle": 7}}]
    handle = iter(range(1, 1000))
    batch = nft.table_commands(state)
    elems = {e["name"]: e["elem"] for e in cmds_of("element", batch)}
    for m in cmds_of("map", batch):
        out.append({"map": {**m, "handle": next(handle), **({"elem": elems[m["name"]]} if m["name"] in elems else {})}})
    for c in cmds_of("chain", batch):
        out.append({"chain": {**c, "handle": next(handle)}})
    for r in cmds_of("rule", batch):
        out.append({"rule": {**r, "handle": next(handle)}})
    return out


def test_listing_round_trips_to_the_same_state_and_canonical_rules():
    desired = desired_spec([(P1, V1), (P2, V2)], RANGES, POOL, block_public_ips=True)
    state = nft.desired_state(desired)
    read = nft.parse_table(kernel_listing(state))
    assert nft.same_table(read, state)
    assert nft.canonical(read) == {c: desired.ordered(c) for c in desired.chains()}  # canonical Rule lists per chain
    assert nft.describe_repairs(read, state) == ["rebuilt table ip ipfloater: layout differed"]


def test_missing_table_reads_as_none():
    assert nft.parse_table([{"metainfo": {}}]) is None
    assert nft.canonical(None) == {}


rules = st.builds(
    Rule,
    src=st.none() | st.builds(lambda a, p: N((a, p), strict=False), st.integers(0, 2**32 - 1), st.integers(1, 32)),
    dst=st.none() | st.builds(lambda a, p: N((a, p), strict=False), st.integers(0, 2**32 - 1), st.integers(1, 32)),
    ctstate_dnat=st.booleans(),
    target=st.sampled_from(["MASQUERADE", "RETURN", "DROP"]))


@settings(max_examples=300, deadline=None)
@given(rules, st.integers(0, 2**32 - 1), st.sampled_from(["DNAT", "SNAT", None]))
def test_rule_expressions_round_trip(rule, to, nat):
    if nat:
        rule = Rule(src=rule.src, dst=rule.dst, ctstate_dnat=rule.ctstate_dnat, target=nat, to=A(to))
    assert nft.parse_expr(json.loads(json.dumps(nft.rule_expr(rule)))) == rule


@pytest.mark.parametrize("expr", [
    [{"counter": {"packets": 0, "bytes": 0}}, {"masquerade": None}],
    [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "pub0"}}, {"masquerade": None}],
    [{"match": {"op": "!=", "left": SADDR, "right": "10.0.0.1"}}, {"return": None}],
    [{"masquerade": None}, {"return": None}],
    [{"dnat": {"addr": "10.0.0.1", "port": 80}}],
    [{"dnat": {"addr": {"map": {"key": {"payload": {"protocol": "tcp", "field": "dport"}}, "data": "@m"}}}}],
    [{"jump": {"target": "x"}}],
    [],
])
def test_shapes_we_never_write_read_as_none(expr):
    assert nft.parse_expr(expr) is None


def test_map_rule_is_recognised():
    assert nft.parse_expr([{"snat": {"addr": {"map": {"key": SADDR, "data": "@fip_snat"}}}}]) == \
        nft.MapRule("snat", "saddr", "fip_snat")


# -- repairs, in the words of our table (no iptables chains or jumps) -----------------------------------------------

def drifted(state, **changes):
    listing = kernel_listing(state)
    return nft.parse_table(changes.get("edit", lambda x: x)(listing))


def test_missing_hairpin_rule_is_a_rewritten_chain():
    desired = desired_spec([(P1, V1)], RANGES)
    state = nft.desired_state(desired)

    def drop_masquerade(listing):
        return [o for o in listing if not ("rule" in o and {"masquerade": None} in o["rule"]["expr"])]

    current = drifted(state, edit=drop_masquerade)
    assert not nft.same_table(current, state)
    assert nft.describe_repairs(current, state) == ["rewrote chain postrouting: 2 rules -> 3"]


def test_missing_base_chain_is_a_created_chain():
    state = nft.desired_state(desired_spec([(P1, V1)], RANGES))

    def drop_prerouting(listing):
        return [o for o in listing if not ("chain" in o and o["chain"]["name"] == "prerouting")
                and not ("rule" in o and o["rule"]["chain"] == "prerouting")]

    assert nft.describe_repairs(drifted(state, edit=drop_prerouting), state) == [
        "created chain prerouting (type nat hook prerouting priority -110 policy accept)"]


def test_wrong_priority_and_lost_element_and_first_creation():
    state = nft.desired_state(desired_spec([(P1, V1)], RANGES))

    def edit(listing):
        for o in listing:
            if "chain" in o and o["chain"]["name"] == "postrouting":
                o["chain"]["prio"] = 100
            if "map" in o and o["map"]["name"] == "fip_dnat":
                o["map"].pop("elem")
        return listing

    assert nft.describe_repairs(drifted(state, edit=edit), state) == [
        "restored chain postrouting (type nat hook postrouting priority 90 policy accept)",
        "added 1 element to map fip_dnat"]
    assert nft.describe_repairs(None, state) == [
        "created table ip ipfloater", "added 1 element to map fip_dnat", "added 1 element to map fip_snat"]


def test_objects_we_never_create_force_a_rebuild():
    state = nft.desired_state(desired_spec([(P1, V1)], RANGES))
    listing = kernel_listing(state) + [{"set": {**T, "name": "extra", "type": "ipv4_addr", "handle": 99}}]
    current = nft.parse_table(listing)
    assert not nft.same_table(current, state)
    assert nft.describe_repairs(current, state) == ["removed 1 object we never create from table ip ipfloater"]


def test_no_repair_line_speaks_of_iptables_chains_or_jumps():
    state = nft.desired_state(desired_spec([(P1, V1)], RANGES, POOL, block_public_ips=True))

    def wreck(listing):
        return [o for o in listing if not ("chain" in o or "rule" in o or "map" in o)]

    lines = nft.describe_repairs(drifted(state, edit=wreck), state) + nft.describe_repairs(None, state)
    assert lines and not [l for l in lines if "jump" in l or "IPFLOATER" in l or "nat/" in l]


def test_block_public_ips_switched_off_removes_the_input_chain():
    before = nft.desired_state(desired_spec([], RANGES, POOL, block_public_ips=True))
    after = nft.desired_state(desired_spec([], RANGES, POOL))
    assert nft.describe_repairs(nft.parse_table(kernel_listing(before)), after) == \
        ["removed chain input"]


# -- the backend against a scripted runner ----------------------------------------------------

class ScriptedRunner:
    """Answers like libnftables; records each batch (one call = one transaction)."""

    def __init__(self, listing=None):
        self.listing, self.batches = listing, []

    def run(self, text):
        cmds = json.loads(text)["nftables"]
        self.batches.append(cmds)
        if "list" in cmds[0]:
            if "tables" in cmds[0]["list"]:
                tables = [] if self.listing is None else [{"table": {"family": "ip", "name": "ipfloater"}}]
                return 0, json.dumps({"nftables": [{"metainfo": {}}] + tables}), ""
            if self.listing is None:
                return 1, "", "Error: No such file or directory\n"
            return 0, json.dumps({"nftables": self.listing}), ""
        return 0, "", ""

    def close(self):
        pass


def test_sync_writes_nothing_when_the_table_matches():
    desired = desired_spec([(P1, V1)], RANGES)
    runner = ScriptedRunner(kernel_listing(nft.desired_state(desired)))
    repairs = nft.NftablesBackend(runner).sync(desired)
    assert repairs == [] and not repairs.installed_afresh
    assert len(runner.batches) == 2  # the reads: is our table there, then the table


def test_sync_rebuilds_in_one_batch_and_update_does_not_read():
    desired = desired_spec([(P1, V1)], RANGES)
    runner = ScriptedRunner(None)
    backend = nft.NftablesBackend(runner)
    repairs = backend.sync(desired)
    assert repairs[0] == "created table ip ipfloater" and repairs.installed_afresh
    assert len(runner.batches) == 2 and runner.batches[1] == nft.rebuild_batch(nft.desired_state(desired))
    backend.apply(*pair_delta([(P1, V1)], [(P1, V2)]))
    assert len(runner.batches) == 3 and all("element" in next(iter(c.values())) for c in runner.batches[2])
    assert backend.flush() == [] and len(runner.batches) == 4  # no table: nothing deleted


def test_failed_batch_raises_nat_error():
    class Refusing(ScriptedRunner):
        def run(self, text):
            return 1, "", "internal:0:0-0: Error: Could not process rule: No such file or directory\n\n"
    with pytest.raises(NatError, match="nftables update: .*No such file"):
        nft.NftablesBackend(Refusing()).apply(*pair_delta([(P1, V1)], []))


# -- NAT_BACKEND ---------------------------------------------------------------------------

@pytest.mark.parametrize("setting,variant,legacy_ok,expected", [
    ("iptables", "nf_tables", True, "iptables"),
    ("nftables", "legacy", True, "nftables"),
    ("auto", "nf_tables", True, "nftables"),
    ("auto", "legacy", True, "iptables"),
    ("auto", "legacy", False, "nftables"),
    ("auto", None, True, "nftables"),
])
def test_choose_backend(setting, variant, legacy_ok, expected):
    assert choose_backend(setting, variant, legacy_ok) == expected


@pytest.mark.parametrize("value", ["iptables", "nftables", "auto", " NFTables "])
def test_config_accepts_backends(value):
    config = parse_config_text(f"[IPFLOATER]\nIP_POOL = 198.51.100.10\nPRIVATE_IP_RANGES = 10.77.0.0/24\n"
                               f"NAT_BACKEND = {value}\n")
    assert config.nat_backend == value.strip().lower()


def test_config_refuses_other_backends():
    with pytest.raises(ConfigError, match="NAT_BACKEND: 'pf' is not supported"):
        parse_config_text("[IPFLOATER]\nIP_POOL = 198.51.100.10\nPRIVATE_IP_RANGES = 10.77.0.0/24\n"
                          "NAT_BACKEND = pf\n")


def test_make_backend_by_name():
    base = "[IPFLOATER]\nIP_POOL = 198.51.100.10\nPRIVATE_IP_RANGES = 10.77.0.0/24\n"
    assert make_backend(parse_config_text(base + "NAT_BACKEND = nftables\n")).name == "nftables"
    backend = make_backend(parse_config_text(base + "NAT_BACKEND = iptables\nXTABLES_LOCK = /tmp/x.lock\n"))
    assert isinstance(backend, IptablesBackend) and backend.lock_path == "/tmp/x.lock"


def test_remove_other_backends_ignores_test_doubles():
    class Fake:
        name = "fake"
    assert remove_other_backends(Fake()) == []


def test_canonical_rules_come_in_the_rule_sets_order_when_public_and_private_orders_differ():
    desired = desired_spec([(P1, V2), (P2, V1)], RANGES)
    assert nft.canonical(nft.desired_state(desired)) == {c: desired.ordered(c) for c in desired.chains()}


def test_a_drifted_table_is_repaired_not_installed_afresh():
    desired = desired_spec([(P1, V1)], RANGES)
    runner = ScriptedRunner(kernel_listing(nft.desired_state(desired_spec([], RANGES))))
    repairs = nft.NftablesBackend(runner).sync(desired)
    assert repairs == ["added 1 element to map fip_dnat", "added 1 element to map fip_snat"]
    assert not repairs.installed_afresh


def test_an_upgraded_table_gets_the_forward_chain_as_an_installation_not_a_repair():
    """A table written by a version without the forward chain: the start installs it
    (Repairs.installed, logged at info), while a forward chain emptied later is drift."""
    desired = desired_spec([(P1, V1)], RANGES, POOL)
    old = nft.desired_state(desired)
    del old.chains["forward"]
    repairs = nft.NftablesBackend(ScriptedRunner(kernel_listing(old))).sync(desired)
    line = "created chain forward (type filter hook forward priority 0 policy accept)"
    assert repairs == [line] and repairs.installed == [line] and not repairs.installed_afresh
    emptied = nft.desired_state(desired)
    emptied.chains["forward"] = emptied.chains["forward"][:4] + ((),)
    repairs = nft.NftablesBackend(ScriptedRunner(kernel_listing(emptied))).sync(desired)
    assert repairs == ["rewrote chain forward: 0 rules -> 2"] and repairs.installed == []


# -- a backend this host cannot drive: a fact, not a message ----------------------------------

def test_missing_libnftables_is_nat_unavailable(monkeypatch):
    def no_library(*args, **kwargs):
        raise OSError("libnftables.so.1: cannot open shared object file")
    monkeypatch.setattr(nft, "LibNftables", no_library)
    with pytest.raises(NatUnavailable, match="libnftables.so.1 is not usable here"):
        nft.open_runner()
    with pytest.raises(NatUnavailable):
        nft.NftablesBackend().live_pairs()


class _NoOwnRules(IptablesBackend):
    def live_pairs(self):
        return set()


def test_an_unavailable_other_backend_has_nothing_to_migrate(monkeypatch):
    monkeypatch.setattr(nft, "LibNftables", lambda *a, **k: (_ for _ in ()).throw(OSError("gone")))
    assert remove_other_backends(_NoOwnRules(lock_path="")) == []
    assert live_pairs_everywhere(_NoOwnRules(lock_path="")) == set()


def test_a_failing_other_backend_is_an_error_not_skipped(monkeypatch):
    """The negative control of the test above: only NatUnavailable is skipped."""
    class Failing(ScriptedRunner):
        def run(self, text):
            return 1, "", "Error: Operation not permitted\n"
    monkeypatch.setattr(nft, "LibNftables", Failing)
    with pytest.raises(NatError, match="Operation not permitted"):
        remove_other_backends(_NoOwnRules(lock_path=""))
    with pytest.raises(NatError, match="Operation not permitted"):
        live_pairs_everywhere(_NoOwnRules(lock_path=""))
