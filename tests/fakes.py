"""In-memory stand-ins for the kernel side (NAT backend, host networking)."""

from ipaddress import IPv4Address

from one_ipfloater.config import parse_config_text
from one_ipfloater.nat import NatBackend, NatError, Repairs
from one_ipfloater.nat.ruleset import CHAIN_FWD, CHAIN_IN, rules_by_chain

A = IPv4Address


def fake_config(db, pool="198.51.100.10-198.51.100.12", public_interface=None, extra=""):
    """The daemon config the in-memory tests share: a small pool, 10.77.0.0/24 private
    (`extra`: more config text after [IPFLOATER], e.g. [POOL <name>] sections)."""
    text = f"[IPFLOATER]\nIP_POOL = {pool}\nPRIVATE_IP_RANGES = 10.77.0.0/24\nDB = {db}\n"
    if public_interface:
        text += f"PUBLIC_INTERFACE = {public_interface}\n"
    return parse_config_text(text + extra)


class FakeBackend(NatBackend):
    """Holds 'kernel' rules per chain; can be told to fail."""

    name = "fake"

    def __init__(self):
        self.chains = {}
        self.fail_update = self.fail_sync = False

    def sync(self, desired):
        if self.fail_sync:
            raise NatError("sync refused")
        new = {c: list(desired.ordered(c)) for c in desired.chains()}
        repairs = [f"created chain {c}" if c not in self.chains else f"rewrote {c}"
                   for c in new if self.chains.get(c) != new[c]]
        afresh = bool(new) and not (set(new) & set(self.chains))
        # a filter chain absent altogether is installed, not repaired (as both real backends say)
        installed = [f"created chain {c}" for c in (CHAIN_IN, CHAIN_FWD) if c in new and c not in self.chains]
        self.chains = new
        return Repairs(repairs, installed_afresh=afresh, installed=installed)

    def apply(self, removed, added):
        if self.fail_update:
            raise NatError("update refused")
        removed, added = rules_by_chain(removed), rules_by_chain(added)
        for chain, rules in removed.items():
            self.chains[chain] = [r for r in self.chains[chain] if r not in rules]
        for chain, rules in added.items():
            self.chains[chain] = self.chains.get(chain, []) + sorted(rules)

    def live_pairs(self):
        """(public, private) of every association rule held (DNAT and SNAT chains)."""
        pairs = set()
        for chain, rules in self.chains.items():
            for r in rules:
                if r.target == "DNAT" and r.dst is not None:
                    pairs.add((r.dst.network_address, r.to))
                elif r.target == "SNAT" and r.src is not None:
                    pairs.add((r.to, r.src.network_address))
        return pairs

    def rule_count(self):
        return sum(len(v) for v in self.chains.values())


class FakeHost:
    """`fail[step] = exception` makes that step raise it: add, del, arp, conntrack."""

    def __init__(self):
        self.addresses = set()
        self.flushed = []
        self.arps = []
        self.fail = {}

    def _maybe_fail(self, step):
        if step in self.fail:
            raise self.fail[step]

    def interface_exists(self, iface):
        return iface == "pub0"

    def all_local_addresses(self):
        return {A("10.77.0.1"), A("198.51.100.1")} | self.addresses

    def host_addresses(self, iface):
        return set(self.addresses)

    def add_addresses(self, iface, addrs):
        self._maybe_fail("add")
        self.addresses.update(addrs)

    def del_address(self, iface, addr):
        self._maybe_fail("del")
        self.addresses.discard(addr)

    def gratuitous_arp(self, iface, addr):
        self._maybe_fail("arp")
        self.arps.append(addr)

    def flush_conntrack(self, addrs):
        self._maybe_fail("conntrack")
        self.flushed.extend(sorted(addrs))
        return dict.fromkeys(addrs, 0)
