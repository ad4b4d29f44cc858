"""What both NAT backends need to know, computed from the associations (pure).

The rules are written here in iptables' terms, which the iptables backend renders as
they are; the nftables backend renders the same NAT as base chains of its own table and
two maps (nftables.py). All our rules live in chains of our own, reached by one jump rule each from the
built-in chains; nothing else in the tables is ours, so reconcile can rewrite our chains
freely and never touch anybody else's rules. Rules per association (public P, private V):

    nat  IPFLOATER-PRE   -d P/32 -j DNAT --to-destination V    (inbound, from PREROUTING)
    nat  IPFLOATER-OUT   -d P/32 -j DNAT --to-destination V    (the router itself, from OUTPUT)
    nat  IPFLOATER-POST  -s V/32 -j SNAT --to-source P         (the VM leaves with P)

and, once per pair of private ranges R1, R2, at the head of IPFLOATER-POST:

    -s R1 -d R2 -m conntrack --ctstate DNAT -j MASQUERADE   (hairpin: VM2 -> P -> V must
                                                             come back through the router)
    -s R1 -d R2 -j RETURN                                   (private-to-private traffic
                                                             keeps its addresses)

With BLOCK_PUBLIC_IPS, filter IPFLOATER-IN drops whatever reaches the router itself on a
pool address (associated traffic is DNATed before INPUT, so only strays hit it).

Always, filter IPFLOATER-FWD (from FORWARD) drops forwarded packets still addressed to a
pool address: an associated address was DNATed in PREROUTING, so only an unassociated one
gets there, and it has nowhere to go. On a routed pool the default route would send it
back upstream, which routes it to the router again until its TTL runs out (a loop anyone
can trigger); dropped before POSTROUTING, its conntrack entry is never confirmed, so no
entry without NAT outlives the association that follows (tests/ha/test_routed_pool.py).
"""

from __future__ import annotations

import socket
from collections import namedtuple
from collections.abc import Iterable, Sequence
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network

from ..addresses import collapse

CHAIN_PRE = "IPFLOATER-PRE"
CHAIN_OUT = "IPFLOATER-OUT"
CHAIN_POST = "IPFLOATER-POST"
CHAIN_IN = "IPFLOATER-IN"
CHAIN_FWD = "IPFLOATER-FWD"

# (table, our chain, built-in chain that jumps to it)
NAT_CHAINS = (("nat", CHAIN_PRE, "PREROUTING"), ("nat", CHAIN_OUT, "OUTPUT"), ("nat", CHAIN_POST, "POSTROUTING"))
FILTER_CHAINS = (("filter", CHAIN_IN, "INPUT"), ("filter", CHAIN_FWD, "FORWARD"))
ALL_CHAINS = NAT_CHAINS + FILTER_CHAINS
ASSOCIATION_CHAINS = (CHAIN_PRE, CHAIN_OUT, CHAIN_POST)  # one rule per association each


class Rule(namedtuple("Rule", "src dst ctstate_dnat target to", defaults=(None, None, False, "RETURN", None))):
    """One rule in one of our chains, in a canonical form both backends can compare:
    src, dst (IPv4Network or None), ctstate_dnat (bool), target (DNAT | SNAT |
    MASQUERADE | RETURN | DROP) and to (IPv4Address or None).

    Named tuples, not dataclasses, for this and the other records the daemon needs
    before its rules are in place: `dataclasses` imports `inspect` and generates code
    per class, a measurable share of the start (benchmarks/ANALYSIS.md)."""

    __slots__ = ()

    def iptables_args(self) -> list[str]:
        """The rule as iptables arguments, for logs, `iptables-restore` and tests."""
        args: list[str] = []
        if self.src is not None:
            args += ["-s", str(self.src)]
        if self.dst is not None:
            args += ["-d", str(self.dst)]
        if self.ctstate_dnat:
            args += ["-m", "conntrack", "--ctstate", "DNAT"]
        args += ["-j", self.target]
        if self.target == "DNAT":
            args += ["--to-destination", str(self.to)]
        elif self.target == "SNAT":
            args += ["--to-source", str(self.to)]
        return args


def _host(addr: IPv4Address) -> IPv4Network:
    """addr/32; built from the integer, not from the address (which the ipaddress
    module would format and parse again): it matters at thousands of rules."""
    return IPv4Network((int(addr), 32))


def association_rules(public_ip: IPv4Address, private_ip: IPv4Address) -> dict[str, Rule]:
    """The three rules one association owns, by chain."""
    inbound = Rule(dst=_host(public_ip), target="DNAT", to=private_ip)
    return {
        CHAIN_PRE: inbound,
        CHAIN_OUT: inbound,  # the same rule, in the chain the router's own traffic takes
        CHAIN_POST: Rule(src=_host(private_ip), target="SNAT", to=public_ip),
    }


class NatSpec:
    """What the kernel should hold, the one input of every backend's `sync`: the
    associations as (public, private) pairs, the private ranges (hairpin and
    private-to-private rules), the pool (forwarded strays dropped, always) and the block
    flag (strays to the router itself dropped too).

    `heads` is the fixed part both backends render (the iptables backend as the head of
    its chains, the nftables backend as the rules of its base chains before the map
    lookup), by our chain name; each association owns one rule in each NAT chain
    (`association_rules`), which the backends render straight from the pairs into
    `iptables-restore` lines or map elements, without building three Rule objects per
    association. `NatSpec.none()` is "nothing of ours at all" (a flush).
    """

    def __init__(self, associations: tuple = (), private_ranges: Sequence[IPv4Network] = (),
                 pool: Iterable[IPv4Address] = (), block_public_ips: bool = False, *, ours: bool = True):
        self.associations = associations    # (public, private), sorted by public; each address once
        self.private_ranges = tuple(private_ranges)
        self.block_public_ips = block_public_ips
        self.heads: dict = {}               # chain -> tuple of Rules; every chain we want
        if ours:
            drops = pool_drops(pool)
            self.heads = {CHAIN_PRE: (), CHAIN_OUT: (), CHAIN_POST: tuple(head_rules(self.private_ranges)),
                          CHAIN_FWD: drops}
            if block_public_ips:
                self.heads[CHAIN_IN] = drops

    @classmethod
    def none(cls) -> NatSpec:
        """Nothing of ours in the kernel: what `flush` converges to."""
        return cls(ours=False)

    def chains(self) -> list[str]:
        return sorted(self.heads)

    @cached_property
    def text_pairs(self) -> list[tuple[str, str]]:
        """The associations as dotted quads, formatted once for both backends' text
        (inet_ntoa is faster than str() of an IPv4Address)."""
        ntoa = socket.inet_ntoa
        return [(ntoa(pub.packed), ntoa(priv.packed)) for pub, priv in self.associations]

    def body(self, chain: str) -> list[Rule]:
        """The association rules of `chain`, in the order of the associations (by public
        address: a stable output; the rules never overlap, so their order has no effect)."""
        if chain not in self.heads or chain not in ASSOCIATION_CHAINS:
            return []
        return [association_rules(pub, priv)[chain] for pub, priv in self.associations]

    def ordered(self, chain: str) -> list[Rule]:
        """Head in order, then the body."""
        return list(self.heads.get(chain, ())) + self.body(chain)

    __hash__ = None  # mutable cache (text_pairs): not hashable

    def __eq__(self, other):
        return isinstance(other, NatSpec) and \
            {c: tuple(h) for c, h in self.heads.items()} == {c: tuple(h) for c, h in other.heads.items()} and \
            set(self.associations) == set(other.associations)


_last_drops: tuple = (None, ())  # (pool, its drops), replaced whole (threads read it at once)


def pool_drops(pool: Iterable[IPv4Address]) -> tuple[Rule, ...]:
    """One DROP rule per CIDR block of the pool. Remembered for the last frozenset it was
    asked for (immutable, so the answer cannot go stale): a /16 takes tens of ms to
    collapse, and every reconcile asks again for the same pool (Registry.pool)."""
    global _last_drops
    last_pool, last = _last_drops
    if isinstance(pool, frozenset) and pool is last_pool:
        return last
    drops = tuple(Rule(dst=net, target="DROP") for net in collapse(pool))
    if isinstance(pool, frozenset):
        _last_drops = (pool, drops)
    return drops


def head_rules(private_ranges: Sequence[IPv4Network]) -> list[Rule]:
    """Hairpin and private-to-private rules that precede the SNAT rules."""
    hairpin = [Rule(src=r1, dst=r2, ctstate_dnat=True, target="MASQUERADE")
               for r1 in private_ranges for r2 in private_ranges]
    internal = [Rule(src=r1, dst=r2, target="RETURN") for r1 in private_ranges for r2 in private_ranges]
    return hairpin + internal


def desired_spec(associations: Iterable[tuple[IPv4Address, IPv4Address]],
                 private_ranges: Sequence[IPv4Network],
                 pool: Iterable[IPv4Address] = (), block_public_ips: bool = False) -> NatSpec:
    """The NatSpec for these (public, private) associations.

    A public or private address in two associations is refused (ValueError): one
    address cannot be NATed two ways, and the registry never holds such a pair."""
    pairs = tuple(sorted(associations, key=lambda pair: int(pair[0])))
    for side, name in ((0, "public"), (1, "private")):
        if len({int(pair[side]) for pair in pairs}) != len(pairs):  # ints: IPv4Address hashes slowly
            seen: set = set()
            for pair in pairs:
                if pair[side] in seen:
                    raise ValueError(f"{name} address {pair[side]} is in two associations")
                seen.add(pair[side])
    return NatSpec(pairs, private_ranges, pool, block_public_ips)


def table_of(chain: str) -> str:
    for table, ours, _builtin in ALL_CHAINS:
        if ours == chain:
            return table
    raise KeyError(chain)


def pair_delta(before: Iterable[tuple[IPv4Address, IPv4Address]],
               after: Iterable[tuple[IPv4Address, IPv4Address]]) -> tuple[set, set]:
    """Pairs to remove and to add when associations go from `before` to `after`: what a
    backend's `apply` takes."""
    old, new = set(before), set(after)
    return old - new, new - old


def rules_by_chain(pairs: Iterable[tuple[IPv4Address, IPv4Address]]) -> dict[str, set]:
    """The association rules of `pairs`, by chain (for the iptables backend's per-rule
    changes and for tests)."""
    out: dict[str, set] = {}
    for public_ip, private_ip in pairs:
        for chain, rule in association_rules(public_ip, private_ip).items():
            out.setdefault(chain, set()).add(rule)
    return out


def rule_delta(before: Iterable[tuple[IPv4Address, IPv4Address]],
               after: Iterable[tuple[IPv4Address, IPv4Address]]) -> tuple[dict, dict]:
    """Rules to remove and to add, by chain, when associations go from `before` to `after`."""
    removed, added = pair_delta(before, after)
    return rules_by_chain(removed), rules_by_chain(added)
