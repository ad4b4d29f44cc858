"""NAT backend on nftables: one table of our own, two maps, one transaction per change.

Layout (everything lives in `table ip ipfloater`; no other table is ever read or written):

    map fip_dnat { type ipv4_addr : ipv4_addr }      public  -> private
    map fip_snat { type ipv4_addr : ipv4_addr }      private -> public
    chain prerouting  { type nat hook prerouting priority dstnat - 10
                        dnat to ip daddr map @fip_dnat }                  IPFLOATER-PRE
    chain output      { type nat hook output priority dstnat - 10
                        dnat to ip daddr map @fip_dnat }                  IPFLOATER-OUT
    chain postrouting { type nat hook postrouting priority srcnat - 10    IPFLOATER-POST
                        ip saddr R1 ip daddr R2 ct status dnat masquerade   (hairpin, per R1, R2)
                        ip saddr R1 ip daddr R2 return                      (private-to-private)
                        snat to ip saddr map @fip_snat }
    chain input       { type filter hook input priority filter            IPFLOATER-IN, only
                        ip daddr POOLNET drop }                              with BLOCK_PUBLIC_IPS
    chain forward     { type filter hook forward priority filter          IPFLOATER-FWD
                        ip daddr POOLNET drop }                              (untranslated strays)

Each base chain stands for one of ruleset.py's chains and each map element for one
association; `sync()` reports repairs in this table's own terms ("created table ip
ipfloater", "added 3 elements to map fip_dnat", "rewrote chain postrouting: 2 rules -> 3").
The NAT chains sit 10 below the standard dstnat/srcnat priorities: the kernel asks NAT
chains in priority order and the first that binds a connection wins, so our mappings take
precedence over a catch-all MASQUERADE in another table (iptables-nft's `ip nat`, say), as
the iptables backend's jump at the top of the built-in chain does. At equal priority the
table that hooked in last would go first, and a host MASQUERADE loaded after us would send
VMs out with the router's address (tests/integration/test_nftables_backend.py shows it).

Associating or releasing an address is one element per map, added or deleted in one
batch (one kernel transaction: all of it or none of it), without reading the table: its
cost does not depend on the map size. A batch that fails (an element already gone, the
table deleted by hand) changes nothing and raises NatError; the service then converges in
full with `sync()`, which reads the table, compares it with the desired state and, if
anything differs, deletes and recreates the table with every element in one batch.

How we talk to nftables: one mechanism, libnftables (libnftables.so.1, Debian
`libnftables1`, which the `nft` binary itself links, so it is there wherever nftables is)
through ctypes, with its JSON API: one context per backend, JSON commands in, JSON
listings out. This is the library the Debian `python3-nftables` module (not importable
from a virtualenv) wraps. An `nft` process per change would cost many times the change
itself, under the service's lock inside an open DB transaction, and raw netlink would
mean encoding nf_tables expressions by hand (the README, "Rules it installs", has the figures).
Where the library cannot be loaded the backend raises NatUnavailable.

One exception: a full sync towards more than BULK_ELEMENTS map elements (a region's /16)
reads the table and rebuilds it through a child `nft -j -f` with the same JSON, as the
iptables backend runs iptables-restore. libnftables' parse of such a batch, or its
listing of such a table, holds about 100 MB at its peak, which would otherwise be the
daemon's for good (benchmarks/ANALYSIS.md, 65,536); a child returns it when it exits.
Changes (one element each) stay in-process.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import threading
from collections import namedtuple
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

from ..addresses import ipv4_from_text
from .base import NatBackend, NatError, NatUnavailable, Repairs
from .ruleset import CHAIN_FWD, CHAIN_IN, CHAIN_OUT, CHAIN_POST, CHAIN_PRE, NatSpec, Rule

log = logging.getLogger(__name__)

FAMILY = "ip"
TABLE = "ipfloater"
MAP_DNAT = "fip_dnat"
MAP_SNAT = "fip_snat"
MAP_TYPE = ("ipv4_addr", "ipv4_addr")
PRIO_DSTNAT, PRIO_SRCNAT, PRIO_FILTER = -100, 100, 0

# our canonical chain -> (nft base chain, type, hook, priority)
BASE_CHAINS = {
    CHAIN_PRE: ("prerouting", "nat", "prerouting", PRIO_DSTNAT - 10),
    CHAIN_OUT: ("output", "nat", "output", PRIO_DSTNAT - 10),
    CHAIN_POST: ("postrouting", "nat", "postrouting", PRIO_SRCNAT - 10),
    CHAIN_IN: ("input", "filter", "input", PRIO_FILTER),
    CHAIN_FWD: ("forward", "filter", "forward", PRIO_FILTER),
}
FILTER_BASES = {base for base, ctype, _hook, _prio in BASE_CHAINS.values() if ctype == "filter"}
# chains whose association rules are map elements: chain -> (map, nat kind, key field)
MAPPED = {
    CHAIN_PRE: (MAP_DNAT, "dnat", "daddr"),
    CHAIN_OUT: (MAP_DNAT, "dnat", "daddr"),
    CHAIN_POST: (MAP_SNAT, "snat", "saddr"),
}
TABLE_NAME = f"{FAMILY} {TABLE}"
# a rebuild with more map elements than this runs in a child `nft` (module docstring)
BULK_ELEMENTS = 16384
CHILD_TIMEOUT = 120.0


# -- talking to nftables -------------------------------------------------------------

class LibNftables:
    """libnftables.so.1 through ctypes: one context, JSON in and out, output captured."""

    OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON: also makes 1.0.x parse the input as JSON

    def __init__(self, soname: str = "libnftables.so.1"):
        lib = ctypes.CDLL(soname)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_output_set_flags(ctx, self.OUTPUT_JSON)
        if lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
            lib.nft_ctx_free(ctx)
            raise OSError("cannot buffer libnftables output")
        self._lib, self._ctx = lib, ctx

    def run(self, text: str) -> tuple[int, str, str]:
        """Run one JSON document (one batch); (rc, output, error message)."""
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
        out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
        err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return rc, out.decode(), err.decode()

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


def nft_binary() -> str | None:
    """The `nft` program on PATH (or /usr/sbin, /sbin), None without one. (A PATH walk of
    our own: importing `shutil` would lengthen the start before the rules.)"""
    path = os.environ.get("PATH", os.defpath).split(os.pathsep) + ["/usr/sbin", "/sbin"]
    for directory in path:
        candidate = os.path.join(directory, "nft")
        if directory and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_in_child(program: str, text: str) -> tuple[int, str, str]:
    """One JSON document (one batch) through a child `nft -j -f`: (rc, output, error).
    The document goes in as an in-memory file, not through a pipe (see iptables._restore)."""
    with open(os.memfd_create("ipfloater-nft"), "w+b") as batch:
        batch.write(text.encode())
        batch.seek(0)
        try:
            proc = subprocess.run([program, "-j", "-f", "/dev/stdin"], stdin=batch, capture_output=True,
                                  timeout=CHILD_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return 1, "", f"{program} did not finish in {CHILD_TIMEOUT:.0f} s"
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def element_count(state: TableState) -> int:
    return sum(len(elems) for elems in state.elements.values())


def open_runner() -> LibNftables:
    """A libnftables context; NatUnavailable where the library cannot be loaded."""
    try:
        return LibNftables()
    except OSError as exc:
        raise NatUnavailable(f"nftables: libnftables.so.1 is not usable here ({exc}); "
                             "install the nftables package") from None


# -- the table as data -----------------------------------------------------------------

class MapRule(namedtuple("MapRule", "kind key map")):
    """`dnat to ip daddr map @fip_dnat` / `snat to ip saddr map @fip_snat`: kind is
    dnat | snat, key daddr | saddr, map the map's name."""

    __slots__ = ()


Entry = Rule | MapRule | None  # None: a rule shape we never write


class TableState:
    """Our table: chains (name -> (type, hook, prio, policy, entries)), maps' declarations
    (name -> (key type, value type)) and elements (name -> {key: value}, dotted quads);
    `foreign` counts objects we never create (they force a rebuild)."""

    def __init__(self, chains: dict | None = None, maps: dict | None = None,
                 elements: dict | None = None, foreign: int = 0):
        self.chains = chains if chains is not None else {}
        self.maps = maps if maps is not None else {}
        self.elements = elements if elements is not None else {}
        self.foreign = foreign

    def __repr__(self) -> str:
        return f"TableState(chains={self.chains!r}, maps={self.maps!r}, elements={self.elements!r}, foreign={self.foreign})"

    def __eq__(self, other):
        return isinstance(other, TableState) and (self.chains, self.maps, self.elements, self.foreign) == \
            (other.chains, other.maps, other.elements, other.foreign)

    __hash__ = None


def _host(addr: IPv4Address) -> IPv4Network:
    return IPv4Network(addr)


def element_rule(entry: MapRule, key: IPv4Address, value: IPv4Address) -> Rule | None:
    """The canonical association rule one map element stands for."""
    if entry.kind == "dnat" and entry.key == "daddr":
        return Rule(dst=_host(key), target="DNAT", to=value)
    if entry.kind == "snat" and entry.key == "saddr":
        return Rule(src=_host(key), target="SNAT", to=value)
    return None


def desired_state(desired: NatSpec) -> TableState:
    """The table that implements `desired`: heads as rules, then one map lookup in each
    NAT chain, and the associations as the maps' elements (made straight from the pairs:
    linear in their number, no Rule objects)."""
    dnat = dict(desired.text_pairs)
    snat = {private: public for public, private in desired.text_pairs}
    state = TableState(maps={MAP_DNAT: MAP_TYPE, MAP_SNAT: MAP_TYPE}, elements={MAP_DNAT: dnat, MAP_SNAT: snat})
    for chain, (base, ctype, hook, prio) in BASE_CHAINS.items():
        if chain not in desired.heads:
            continue
        entries = list(desired.heads[chain])
        if chain in MAPPED:
            name, kind, key = MAPPED[chain]
            entries.append(MapRule(kind, key, name))
        state.chains[base] = (ctype, hook, prio, "accept", tuple(entries))
    return state


def canonical(state: TableState | None) -> dict[str, list[Rule | None]]:
    """Our chains as canonical Rule lists (canonical `Rule` lists per chain, as ruleset.py defines them)."""
    out: dict[str, list[Rule | None]] = {}
    if state is None:
        return out
    for chain, (base, _ctype, _hook, _prio) in BASE_CHAINS.items():
        if base not in state.chains:
            continue
        rules: list[Rule | None] = []
        for entry in state.chains[base][4]:
            if isinstance(entry, MapRule):
                elems = [(IPv4Address(k), IPv4Address(v)) for k, v in state.elements.get(entry.map, {}).items()]
                public = 1 if entry.kind == "snat" else 0  # RuleSet.body's order: by public address
                elems.sort(key=lambda kv: int(kv[public]))
                rules.extend(element_rule(entry, k, v) for k, v in elems)
            else:
                rules.append(entry)
        out[chain] = rules
    return out


# -- JSON we write ---------------------------------------------------------------------

def _addr(net: IPv4Network):
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _payload(field_name: str) -> dict:
    return {"payload": {"protocol": "ip", "field": field_name}}


def rule_expr(entry: Rule | MapRule) -> list[dict]:
    """nft JSON expressions for one canonical rule or map rule."""
    if isinstance(entry, MapRule):
        return [{entry.kind: {"addr": {"map": {"key": _payload(entry.key), "data": "@" + entry.map}}}}]
    expr: list[dict] = []
    for field_name, net in (("saddr", entry.src), ("daddr", entry.dst)):
        if net is not None and net.prefixlen:
            expr.append({"match": {"op": "==", "left": _payload(field_name), "right": _addr(net)}})
    if entry.ctstate_dnat:
        expr.append({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}})
    if entry.target in ("DNAT", "SNAT"):
        expr.append({entry.target.lower(): {"addr": str(entry.to)}})
    elif entry.target in ("MASQUERADE", "RETURN", "DROP", "ACCEPT"):
        expr.append({entry.target.lower(): None})
    else:
        raise NatError(f"nftables: no translation for target {entry.target}")
    return expr


def _obj(**fields) -> dict:
    return {"family": FAMILY, "table": TABLE, **fields}


def table_commands(state: TableState) -> list[dict]:
    """Commands that create our table as `state` describes (after it was deleted)."""
    cmds: list[dict] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    for name, (key_type, value_type) in sorted(state.maps.items()):
        cmds.append({"add": {"map": _obj(name=name, type=key_type, map=value_type)}})
        elems = state.elements.get(name) or {}
        if elems:  # in the order they were made (by public address), for a stable batch
            cmds.append({"add": {"element": _obj(name=name, elem=[[k, v] for k, v in elems.items()])}})
    for base, (ctype, hook, prio, policy, entries) in state.chains.items():
        cmds.append({"add": {"chain": _obj(name=base, type=ctype, hook=hook, prio=prio, policy=policy)}})
        for entry in entries:
            cmds.append({"add": {"rule": _obj(chain=base, expr=rule_expr(entry))}})
    return cmds


def rebuild_batch(state: TableState) -> list[dict]:
    """One batch: drop whatever our table holds (`add` first so that delete cannot fail)
    and create it anew with every element."""
    table = {"table": {"family": FAMILY, "name": TABLE}}
    return [{"add": table}, {"delete": table}] + table_commands(state)


def delete_batch() -> list[dict]:
    table = {"table": {"family": FAMILY, "name": TABLE}}
    return [{"add": table}, {"delete": table}]


def element_batch(removed: Iterable[tuple[IPv4Address, IPv4Address]],
                  added: Iterable[tuple[IPv4Address, IPv4Address]]) -> list[dict]:
    """Element deletions then additions for one change of (public, private) pairs: the
    public address out of/into fip_dnat, the private one out of/into fip_snat."""
    gone: set[tuple[str, IPv4Address]] = set()
    for public, private in removed:
        gone |= {(MAP_DNAT, public), (MAP_SNAT, private)}
    new: dict[tuple[str, IPv4Address], IPv4Address] = {}
    for public, private in added:
        for key, value in (((MAP_DNAT, public), private), ((MAP_SNAT, private), public)):
            if new.setdefault(key, value) != value:
                raise NatError(f"nftables: {key[0]} {key[1]} given two values in one change")
    cmds: list[dict] = []
    for verb, elems in (("delete", {key: None for key in gone}), ("add", new)):
        by_map: dict[str, list] = {}
        for (name, key), value in sorted(elems.items()):
            by_map.setdefault(name, []).append(str(key) if verb == "delete" else [str(key), str(value)])
        for name, items in sorted(by_map.items()):
            cmds.append({verb: {"element": _obj(name=name, elem=items)}})
    return cmds


def document(cmds: list[dict]) -> str:
    return json.dumps({"nftables": cmds}, separators=(",", ":"))


# -- JSON we read ----------------------------------------------------------------------

def _net(value) -> IPv4Network | None:
    if isinstance(value, str):
        return IPv4Network(value)
    if isinstance(value, dict) and set(value) == {"prefix"}:
        prefix = value["prefix"]
        net = IPv4Network(f"{prefix['addr']}/{prefix['len']}")
        return net if net.prefixlen else None
    raise ValueError(value)


def parse_expr(expr: list) -> Entry:
    """The canonical form of one rule read from the kernel; None for shapes we never write."""
    try:
        if len(expr) == 1 and isinstance(expr[0], dict) and len(expr[0]) == 1:
            (kind, stmt), = expr[0].items()
            if kind in ("dnat", "snat") and isinstance(stmt, dict) and set(stmt) == {"addr"} \
                    and isinstance(stmt["addr"], dict) and set(stmt["addr"]) == {"map"}:
                lookup = stmt["addr"]["map"]
                payload = lookup.get("key", {}).get("payload", {})
                data = lookup.get("data")
                if set(lookup) == {"key", "data"} and payload.get("protocol") == "ip" and \
                        set(payload) == {"protocol", "field"} and isinstance(data, str) and \
                        data.startswith("@"):
                    return MapRule(kind, payload["field"], data[1:])
                return None
        src = dst = None
        ctstate = False
        for i, item in enumerate(expr):
            if not isinstance(item, dict) or len(item) != 1:
                return None
            (kind, stmt), = item.items()
            if kind == "match":
                left, right, op = stmt.get("left"), stmt.get("right"), stmt.get("op")
                if left in (_payload("saddr"), _payload("daddr")) and op == "==":
                    net = _net(right)
                    if left == _payload("saddr") and src is None:
                        src = net
                    elif left == _payload("daddr") and dst is None:
                        dst = net
                    else:
                        return None
                elif left == {"ct": {"key": "status"}} and op in ("in", "==") and \
                        right in ("dnat", ["dnat"]) and not ctstate:
                    ctstate = True
                else:
                    return None
                continue
            if i != len(expr) - 1:
                return None  # a statement that is not last: not ours
            if kind in ("dnat", "snat") and isinstance(stmt, dict) and set(stmt) == {"addr"} \
                    and isinstance(stmt["addr"], str):
                return Rule(src=src, dst=dst, ctstate_dnat=ctstate, target=kind.upper(),
                            to=IPv4Address(stmt["addr"]))
            if kind in ("masquerade", "return", "drop", "accept") and stmt is None:
                return Rule(src=src, dst=dst, ctstate_dnat=ctstate, target=kind.upper())
            return None
        return None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _of_our_table(obj) -> bool:
    """A `list ruleset` JSON object that belongs to our table (the metainfo passes too;
    anything malformed is kept for parse_table to count as foreign)."""
    if not isinstance(obj, dict) or len(obj) != 1:
        return True
    (kind, body), = obj.items()
    if kind == "metainfo" or not isinstance(body, dict):
        return True
    name = body.get("name") if kind == "table" else body.get("table")
    return body.get("family") == FAMILY and name == TABLE


def parse_table(objects: Iterable[dict]) -> TableState | None:
    """Our table from `list table` JSON objects; None when it does not exist."""
    state = TableState()
    found = False
    rules: dict[str, list] = {}
    for obj in objects:
        if not isinstance(obj, dict) or len(obj) != 1:
            state.foreign += 1
            continue
        (kind, body), = obj.items()
        if kind == "metainfo":
            continue
        if not isinstance(body, dict) or body.get("family") != FAMILY or \
                body.get("table", body.get("name") if kind == "table" else None) != TABLE:
            state.foreign += 1
            continue
        if kind == "table":
            found = True
        elif kind == "chain":
            if "hook" not in body:
                state.foreign += 1  # a regular chain: we never create one
                state.chains[body["name"]] = (None, None, None, None, ())
            else:
                state.chains[body["name"]] = (body.get("type"), body.get("hook"), body.get("prio"),
                                              body.get("policy", "accept"), ())
        elif kind == "map":
            name = body.get("name")
            flags = body.get("flags")
            state.maps[name] = (body.get("type"), body.get("map")) if not flags else ("flags", str(flags))
            elems = {}
            for item in body.get("elem", ()):
                if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
                    elems[item[0]] = item[1]  # the map's type makes them IPv4 addresses
                else:
                    state.foreign += 1  # an element with a timeout, interval, comment...
            state.elements[name] = elems
        elif kind == "rule":
            rules.setdefault(body.get("chain"), []).append(parse_expr(body.get("expr", [])))
        else:
            state.foreign += 1  # sets, counters, flowtables...: nothing of ours
    if not found:
        return None
    for name, entries in rules.items():
        if name in state.chains:
            ctype, hook, prio, policy, _ = state.chains[name]
            state.chains[name] = (ctype, hook, prio, policy, tuple(entries))
    return state


def state_pairs(state: TableState | None) -> set[tuple[IPv4Address, IPv4Address]]:
    """The (public, private) pairs our maps hold (pure): every DNAT element (public ->
    private) and every SNAT element (private -> public); maps that disagree give two pairs."""
    pairs: set[tuple[IPv4Address, IPv4Address]] = set()
    if state is None:
        return pairs
    for name, public_first in ((MAP_DNAT, True), (MAP_SNAT, False)):
        if state.maps.get(name) != MAP_TYPE:
            continue
        for key, value in state.elements.get(name, {}).items():
            try:
                a, b = ipv4_from_text(key), ipv4_from_text(value)
            except ValueError:
                continue
            pairs.add((a, b) if public_first else (b, a))
    return pairs


def same_table(a: TableState | None, b: TableState | None) -> bool:
    if a is None or b is None:
        return a is b
    return (not a.foreign and not b.foreign and a.chains == b.chains and a.maps == b.maps and
            {k: v for k, v in a.elements.items() if k in a.maps} ==
            {k: v for k, v in b.elements.items() if k in b.maps})


def _chain_words(base: str, chain: tuple) -> str:
    ctype, hook, prio, policy, _entries = chain
    return f"chain {base} (type {ctype} hook {hook} priority {prio} policy {policy})"


def describe_repairs(current: TableState | None, wanted: TableState) -> list[str]:
    """What a rebuild changes, in this table's terms: the table, its base chains and
    their rules, its maps and their elements (compared element by element: linear in
    the map size)."""
    repairs = [f"created table {TABLE_NAME}"] if current is None else []
    have = current if current is not None else TableState()
    if have.foreign:
        repairs.append(f"removed {have.foreign} object{'s' * (have.foreign != 1)} we never create "
                       f"from table {TABLE_NAME}")
    for base, chain in wanted.chains.items():
        old = have.chains.get(base)
        if old is None:
            if current is not None:
                repairs.append(f"created {_chain_words(base, chain)}")
        elif old[:4] != chain[:4]:
            repairs.append(f"restored {_chain_words(base, chain)}")
        if old is not None and old[4] != chain[4]:
            repairs.append(f"rewrote chain {base}: {len(old[4])} rules -> {len(chain[4])}")
    for base in have.chains:
        if base not in wanted.chains:
            repairs.append(f"removed chain {base}")
    for name, decl in wanted.maps.items():
        if name in have.maps and have.maps[name] != decl:
            repairs.append(f"recreated map {name}")
        old, new = have.elements.get(name, {}) if name in have.maps else {}, wanted.elements.get(name, {})
        added = sum(1 for k in new if k not in old)
        removed = sum(1 for k in old if k not in new)
        changed = sum(1 for k, v in new.items() if k in old and old[k] != v)
        for count, verb, prep in ((added, "added", "to"), (removed, "removed", "from"), (changed, "changed", "of")):
            if count:
                repairs.append(f"{verb} {count} element{'s' * (count != 1)} {prep} map {name}")
    for name in have.maps:
        if name not in wanted.maps:
            repairs.append(f"removed map {name}")
    if not repairs:
        repairs.append(f"rebuilt table {TABLE_NAME}: layout differed")
    return repairs


# -- the backend -------------------------------------------------------------------------

class NftablesBackend(NatBackend):
    """Converges `table ip ipfloater` to a NatSpec; association changes are map elements."""

    name = "nftables"

    def __init__(self, runner=None, bulk_elements: int = BULK_ELEMENTS):
        self._runner = runner
        self._mutex = threading.Lock()  # a libnftables context is not thread-safe
        self.bulk_elements = bulk_elements  # (tests set it low to take the child path)

    def _run(self, cmds: list[dict], what: str, child: bool = False) -> list[dict]:
        """One batch (one kernel transaction); the parsed JSON objects it printed.
        `child`: through a child `nft` where there is one (a bulk rebuild)."""
        real = self._runner is None or isinstance(self._runner, LibNftables)  # (not a test double)
        program = nft_binary() if child and real else None
        if program is not None:
            rc, out, err = run_in_child(program, document(cmds))
        else:
            if self._runner is None:
                self._runner = open_runner()
            rc, out, err = self._runner.run(document(cmds))
        if rc != 0:
            message = " ".join(line for line in err.splitlines() if line.strip()) or f"rc={rc}"
            raise NatError(f"nftables {what}: {message}")
        if not out.strip():
            return []
        try:
            return json.loads(out).get("nftables", [])
        except ValueError:
            raise NatError(f"nftables {what}: unreadable JSON output") from None

    def _exists(self) -> bool:
        """Our table is in the kernel (asked first: listing a missing table is an error
        that only its message would tell from others)."""
        tables = self._run([{"list": {"tables": {"family": FAMILY}}}], "list tables")
        return any(isinstance(o, dict) and o.get("table", {}).get("name") == TABLE and
                   o["table"].get("family") == FAMILY for o in tables)

    def _read(self, child: bool = False) -> TableState | None:
        """Our table as it is; `child`: listed by a child `nft` (a bulk table, see
        BULK_ELEMENTS) in one go: the family's ruleset, which lists a missing table as
        absent instead of failing (asking first would cost a second child, and each fills
        its cache with every element), filtered to our table."""
        if child and nft_binary() is not None and (self._runner is None or isinstance(self._runner, LibNftables)):
            objects = self._run([{"list": {"ruleset": {"family": FAMILY}}}], "list", child)
            return parse_table(obj for obj in objects if _of_our_table(obj))
        if not self._exists():
            return None
        return parse_table(self._run([{"list": {"table": {"family": FAMILY, "name": TABLE}}}], "list"))

    # -- the backend interface -------------------------------------------------------

    def sync(self, desired: NatSpec) -> Repairs:
        """Full reconcile: rebuild our table in one batch if it differs from `desired`."""
        wanted = desired_state(desired)
        bulk = element_count(wanted) > self.bulk_elements
        with self._mutex:
            current = self._read(child=bulk)
            if same_table(current, wanted):
                return Repairs()
            repairs = describe_repairs(current, wanted)
            self._run(rebuild_batch(wanted), "rebuild", child=bulk)
        # a filter chain absent altogether: installed (an upgrade that adds it, or
        # BLOCK_PUBLIC_IPS turned on), not a repair of drift (Repairs.installed)
        installed = [] if current is None else [
            f"created {_chain_words(base, wanted.chains[base])}" for base in FILTER_BASES
            if base in wanted.chains and base not in current.chains]
        return Repairs(repairs, installed_afresh=current is None, installed=installed)

    def apply(self, removed: Iterable[tuple[IPv4Address, IPv4Address]],
              added: Iterable[tuple[IPv4Address, IPv4Address]]) -> None:
        """One change as element changes in one transaction, without reading the table."""
        cmds = element_batch(removed, added)
        if not cmds:
            return
        with self._mutex:
            self._run(cmds, "update")

    def flush(self) -> list[str]:
        """Delete our table (on purpose: `ipfloaterd flush`, or a switch to iptables)."""
        with self._mutex:
            if not self._exists():
                return []
            self._run(delete_batch(), "flush")
        return [f"removed table {TABLE_NAME}"]

    def live_pairs(self) -> set[tuple[IPv4Address, IPv4Address]]:
        """The (public, private) associations our table holds now, read back from the
        kernel (for the start's safety check and `adopt`); changes nothing."""
        with self._mutex:
            return state_pairs(self._read())

    def dump(self) -> dict[str, list[Rule | None]]:
        """Our chains as canonical rules (map elements expanded; None for foreign shapes)."""
        with self._mutex:
            return canonical(self._read())

    def close(self) -> None:
        with self._mutex:
            if self._runner is not None:
                self._runner.close()
                self._runner = None
