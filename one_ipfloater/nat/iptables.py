"""NAT backend on legacy iptables: our chains IPFLOATER-*, one jump to each.

Only chains named IPFLOATER-* and the jump rules to them are ever modified. The
associations are rendered straight from the pairs as `iptables-save` lines and read back
from `iptables-save` output (`pairs_from_save`).

Two mechanisms, each where the other is slow (the README, "Rules it installs", and
benchmarks/RESULTS.md have the figures):
- full syncs (`sync`, `flush`) read the tables with `iptables-legacy-save` and write what
  differs with one `iptables-legacy-restore --noflush` per table: one atomic commit of
  thousands of rules, where libiptc's Python binding adds them one by one, many times
  slower at a start;
- one change (`apply`) goes through python-iptables (libiptc) in-process: a new
  `iptables-restore` process per request would cost more than the change itself.
libiptc commits a whole table at once and fails (EAGAIN) when another writer changed the
table since it was read, so every such write is: take /run/xtables.lock (as the iptables
tools do), refresh, change, commit once, retry the commit a bounded number of times.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterable
from contextlib import contextmanager

from ..locking import flock_exclusive
from ipaddress import IPv4Address

from ..addresses import ipv4_from_text
from .base import NatBackend, NatError, NatUnavailable, Repairs
from .ruleset import ALL_CHAINS, CHAIN_OUT, CHAIN_POST, CHAIN_PRE, NatSpec, Rule, rules_by_chain, table_of

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 8
COMMAND_TIMEOUT = 10.0
# Above this many associations a change goes through `iptables-restore --noflush` too:
# libiptc copies the whole nat table for every change, and in-process those copies stay
# in the daemon's heap (over 100 MB at 65,536; benchmarks/ANALYSIS.md); a child frees them.
BULK_ASSOCIATIONS = 16384


def _iptc():
    import iptc  # imported lazily: it loads libxtables, which only the daemon needs
    return iptc


@contextmanager
def xtables_lock(path: str, timeout: float = 10.0):
    """flock the xtables lock file like iptables(8) -w does, bounded by `timeout`."""
    if not path:
        yield
        return
    try:  # never through a symbolic link (preflight checks the path's owner and mode)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise NatError(f"XTABLES_LOCK: cannot open {path}: {exc.strerror}") from None
    try:
        if not flock_exclusive(fd, timeout):
            raise NatError(f"XTABLES_LOCK: {path} held by another process for {timeout:.0f}s")
        yield
    finally:
        os.close(fd)


def rule_line(chain: str, rule: Rule) -> str:
    """A rule exactly as iptables-save prints it (so text comparison is exact)."""
    return " ".join(["-A", chain, *rule.iptables_args()])


def body_lines(chain: str, desired: NatSpec) -> list[str]:
    """The association rules of `chain` as `-A` lines, formatted straight from the pairs
    (what `rule_line` makes of `desired.body(chain)`, line for line, without building
    12,288 Rule objects at 4,096 associations; tests hold the two to each other)."""
    if chain not in desired.heads:
        return []
    texts = desired.text_pairs
    if chain in (CHAIN_PRE, CHAIN_OUT):
        return [f"-A {chain} -d {pub}/32 -j DNAT --to-destination {priv}" for pub, priv in texts]
    if chain == CHAIN_POST:
        return [f"-A {chain} -s {priv}/32 -j SNAT --to-source {pub}" for pub, priv in texts]
    return []


def change_script(removed: dict[str, set[Rule]], added: dict[str, set[Rule]]) -> str:
    """One change as an `iptables-restore --noflush` script (pure): the deletions, then
    the additions, each table committed once; "" when nothing changes."""
    tables: dict[str, list[str]] = {}
    for verb, rules in (("-D", removed), ("-A", added)):
        for chain in sorted(rules):
            for rule in sorted(rules[chain], key=lambda r: r.iptables_args()):
                tables.setdefault(table_of(chain), []).append(" ".join([verb, chain, *rule.iptables_args()]))
    return "".join(f"*{table}\n" + "\n".join(lines) + "\nCOMMIT\n" for table, lines in sorted(tables.items()))


def _body_differs(have: list[str], chain: str, desired: NatSpec) -> bool:
    """The association rules `have` are not body_lines(chain, desired) in some order;
    the wanted lines are checked one by one, never held as a list or a set (a restart
    at 65,536 reads three chains of 65,536 rules)."""
    present = set(have)
    if len(present) != len(have):
        return True  # a rule twice: rewrite the chain
    wanted = 0
    for pub, priv in desired.text_pairs if chain in (CHAIN_PRE, CHAIN_OUT, CHAIN_POST) else ():
        line = (f"-A {chain} -s {priv}/32 -j SNAT --to-source {pub}" if chain == CHAIN_POST else
                f"-A {chain} -d {pub}/32 -j DNAT --to-destination {priv}")
        if line not in present:
            return True
        wanted += 1
    return wanted != len(present)


def body_text(chain: str, desired: NatSpec) -> str:
    """body_lines joined by newlines, without the list of one string per rule."""
    if chain not in desired.heads:
        return ""
    texts = desired.text_pairs
    if chain in (CHAIN_PRE, CHAIN_OUT):
        return "\n".join(f"-A {chain} -d {pub}/32 -j DNAT --to-destination {priv}" for pub, priv in texts)
    if chain == CHAIN_POST:
        return "\n".join(f"-A {chain} -s {priv}/32 -j SNAT --to-source {pub}" for pub, priv in texts)
    return ""


def parse_save(text: str) -> dict[str, list[str]]:
    """iptables-save output -> {chain: ["-A chain ..." lines in order]} (all chains)."""
    chains: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chains.setdefault(line.split()[1], []).append(line)
    return chains


def parse_save_tables(text: str) -> dict[str, dict[str, list[str]]]:
    """iptables-save output of several tables -> {table: parse_save of its part}, in one
    pass (no copy of each part: at 65,536 associations the nat part is megabytes)."""
    tables: dict[str, dict[str, list[str]]] = {}
    chains: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("*"):
            chains = tables.setdefault(line[1:].strip(), {})
        elif line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chains.setdefault(line.split()[1], []).append(line)
    return tables


def _absent_filter_chains(table: str, current: dict[str, list[str]]) -> set[str]:
    """The repair lines that install a filter chain of ours absent altogether (and its
    jump): a start after an upgrade that adds the chain, or after BLOCK_PUBLIC_IPS was
    turned on, installs it; nothing had drifted."""
    return {line for t, chain, builtin in ALL_CHAINS if t == table == "filter" and chain not in current
            for line in (f"created chain {table}/{chain}", f"restored jump {table}/{builtin} -> {chain}")}


def plan_restore(table: str, current: dict[str, list[str]], desired: NatSpec) -> tuple[str, list[str]]:
    """The iptables-restore --noflush script that takes `current` (parsed save output of
    `table`) to `desired`, touching only our chains and our jumps; plus the repairs."""
    pieces, repairs = plan_restore_pieces(table, current, desired)
    return "\n".join(pieces), repairs


def plan_restore_pieces(table: str, current: dict[str, list[str]], desired: NatSpec
                        ) -> tuple[list[str], list[str]]:
    """plan_restore's script as pieces to be joined by newlines: each chain's association
    rules are one piece, not one string per rule, and the whole script is never one
    string (at 65,536 associations the lines would hold ~40 MB at once; the daemon keeps
    its peak)."""
    lines: list[str] = []
    repairs: list[str] = []
    wanted = set(desired.chains())
    for t, chain, builtin in ALL_CHAINS:
        if t != table:
            continue
        jump = f"-A {builtin} -j {chain}"
        jumps = [i for i, line in enumerate(current.get(builtin, [])) if line == jump]
        if chain not in wanted:
            if chain in current:
                lines += [f"-D {builtin} -j {chain}"] * len(jumps) + [f":{chain} - [0:0]", f"-X {chain}"]
                repairs.append(f"removed chain {table}/{chain}")
            continue
        have = current.get(chain)
        want_head = [rule_line(chain, r) for r in desired.heads.get(chain, ())]
        if have is None:
            repairs.append(f"created chain {table}/{chain}")
        if have is None or have[:len(want_head)] != want_head or \
                _body_differs(have[len(want_head):], chain, desired):
            lines.append(f":{chain} - [0:0]")
            lines += want_head
            body = body_text(chain, desired)
            if body:
                lines.append(body)
            if have is not None:
                repairs.append(f"rewrote {table}/{chain}: {len(have)} rules -> "
                               f"{len(want_head) + body.count(chr(10)) + bool(body)}")
        if jumps != [0]:
            lines += [f"-D {builtin} -j {chain}"] * len(jumps) + [f"-I {builtin} 1 -j {chain}"]
            repairs.append(f"restored jump {table}/{builtin} -> {chain}")
    if not lines:
        return [], []
    return [f"*{table}", *lines, "COMMIT", ""], repairs


_DNAT_LINE = re.compile(r"-A (IPFLOATER-PRE|IPFLOATER-OUT) -d (\S+)/32 -j DNAT --to-destination (\S+)")
_SNAT_LINE = re.compile(r"-A IPFLOATER-POST -s (\S+)/32 -j SNAT --to-source (\S+)")


def pairs_from_save(text: str) -> set[tuple[IPv4Address, IPv4Address]]:
    """The (public, private) pairs our association rules in iptables-save text stand for:
    every DNAT of IPFLOATER-PRE/-OUT and every SNAT of IPFLOATER-POST (pure). Rules that
    disagree give two pairs, for the caller to refuse; other shapes are not associations."""
    pairs = set()
    for line in text.splitlines():
        try:
            if m := _DNAT_LINE.fullmatch(line):
                pairs.add((ipv4_from_text(m[2]), ipv4_from_text(m[3])))
            elif m := _SNAT_LINE.fullmatch(line):
                pairs.add((ipv4_from_text(m[2]), ipv4_from_text(m[1])))
        except ValueError:
            continue  # not an address of the shape we write (a port range, ...): not ours
    return pairs


class IptablesBackend(NatBackend):
    """Converges our iptables chains to a NatSpec, one change or in full."""

    name = "iptables"

    def __init__(self, lock_path: str = "/run/xtables.lock", bulk_associations: int = BULK_ASSOCIATIONS):
        self.lock_path = lock_path
        self._mutex = threading.Lock()  # python-iptables Table objects are not thread-safe
        self.bulk_associations = bulk_associations  # (tests set it low to take the restore path)
        self._associations = 0  # as of the last sync, counting the changes since

    # -- building blocks -------------------------------------------------------------

    def _to_iptc(self, rule: Rule):
        iptc = _iptc()
        r = iptc.Rule()
        if rule.src is not None:
            r.src = str(rule.src)
        if rule.dst is not None:
            r.dst = str(rule.dst)
        if rule.ctstate_dnat:
            m = r.create_match("conntrack")
            m.ctstate = "DNAT"
        target = r.create_target(rule.target)
        if rule.target == "DNAT":
            target.to_destination = str(rule.to)
        elif rule.target == "SNAT":
            target.to_source = str(rule.to)
        return r

    def _write(self, tables: Iterable[str], change: Callable[[dict], None]) -> None:
        """Run `change(tables)` and commit each touched table once, retrying on EAGAIN."""
        iptc = _iptc()
        names = sorted(set(tables))
        with self._mutex, xtables_lock(self.lock_path):
            for attempt in range(1, COMMIT_ATTEMPTS + 1):
                handles = {}
                committing = False
                try:
                    for name in names:
                        t = iptc.Table(name)
                        t.autocommit = False
                        t.refresh()
                        handles[name] = t
                    change(handles)
                    committing = True
                    for t in handles.values():
                        t.commit()
                    return
                except iptc.IPTCError as exc:
                    for t in handles.values():
                        t.refresh()  # drop the uncommitted edits
                    # a commit fails when another writer changed the table since our read
                    # (EAGAIN; python-iptables keeps no errno): read again and redo, bounded
                    if committing and attempt < COMMIT_ATTEMPTS:
                        log.debug("iptables commit failed (attempt %d: %s); retrying", attempt, exc)
                        continue
                    raise NatError(f"iptables: {exc}") from None
                finally:
                    for t in handles.values():
                        t.autocommit = True

    def sync(self, desired: NatSpec) -> Repairs:
        """Full reconcile: make our chains and jumps equal `desired`; the repairs, and
        whether none of the chains it wants existed before (installed afresh).

        Reads the tables with iptables-save and writes only what differs with one
        `iptables-restore --noflush` per table (one atomic commit, our chains only).
        """
        repairs: list[str] = []
        installed: list[str] = []
        existed = False
        present = self._present_tables()
        tables = {table_of(c) for c in desired.chains()} | present
        script: list[str] = []
        with self._mutex:
            # one save and one restore for both tables: each process costs a start
            saved = parse_save_tables(self._save(None)) if present else {}
            for table in sorted(tables):
                current = saved.get(table, {}) if table in present else {}
                # afresh: none of our NAT chains was there (the associations' rules; the
                # filter chains alone, left by an admin's `iptables -t nat -F -X`, are not them)
                existed = existed or table == "nat" and any(c in current for c in desired.chains())
                pieces, table_repairs = plan_restore_pieces(table, current, desired)
                script += pieces
                repairs += table_repairs
                absent = _absent_filter_chains(table, current)
                installed += [line for line in table_repairs if line in absent]
            if script:
                self._restore(script)
            self._associations = len(desired.associations)
        return Repairs(repairs, installed_afresh=bool(desired.chains()) and not existed, installed=installed)

    def _tool(self, kind: str) -> str:
        """iptables-legacy-save/-restore where both flavours exist (Debian), else plain.
        (A PATH walk of our own: importing `shutil` would lengthen the start before the rules.)"""
        path = os.environ.get("PATH", os.defpath).split(os.pathsep)
        for name in (f"iptables-legacy-{kind}", f"iptables-{kind}"):
            if any(os.access(os.path.join(directory, name), os.X_OK) for directory in path if directory):
                return name
        raise NatUnavailable(f"iptables-{kind}: command not found (install the iptables package)")

    def _save(self, table: str | None) -> str:
        """iptables-save of `table`, or of every table present (None)."""
        proc = subprocess.run([self._tool("save")] + (["-t", table] if table else []), capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT, check=False)
        if proc.returncode != 0:
            raise NatError(f"iptables-save{f' -t {table}' if table else ''}: {proc.stderr.strip()}")
        return proc.stdout

    def _restore(self, script: str | list[str]) -> None:
        """Run the script (or its pieces, joined by newlines); it is handed over as an
        in-memory file, not through a pipe: a script of thousands of associations would
        otherwise cross in 4 kB writes, each a poll and a wake-up of iptables-restore."""
        env = {**os.environ, "XTABLES_LOCKFILE": self.lock_path} if self.lock_path else None
        pieces = [script] if isinstance(script, str) else script
        with open(os.memfd_create("ipfloater-restore"), "w+b") as script_file:
            for i, piece in enumerate(pieces):
                if i:
                    script_file.write(b"\n")
                script_file.write(piece.encode())
            script_file.seek(0)
            proc = subprocess.run([self._tool("restore"), "--noflush", "-w", str(int(COMMAND_TIMEOUT))],
                                  stdin=script_file, capture_output=True, text=True, env=env,
                                  timeout=COMMAND_TIMEOUT * 2, check=False)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise NatError(f"iptables-restore: {reason}")

    @staticmethod
    def _present_tables() -> set[str]:
        """Legacy tables that exist in this namespace: they may hold a chain of ours.

        Opening a table that does not exist would create it (and make iptables-nft warn
        about legacy tables), so a table we never used stays untouched.
        """
        try:
            with open("/proc/net/ip_tables_names", encoding="ascii") as names:
                return {line.strip() for line in names} & {"nat", "filter"}
        except OSError:
            return set()

    def apply(self, removed: Iterable[tuple[IPv4Address, IPv4Address]],
              added: Iterable[tuple[IPv4Address, IPv4Address]]) -> None:
        """One change (pairs removed, pairs added) in one commit, without reading the chains
        (beyond `bulk_associations`: one `iptables-restore --noflush`, see BULK_ASSOCIATIONS;
        a rule to delete that is gone then fails the change, and the service converges in full)."""
        removed, added = list(removed), list(added)
        if self._associations > self.bulk_associations:
            self._restore_change(rules_by_chain(removed), rules_by_chain(added))
        else:
            self._apply_rules(rules_by_chain(removed), rules_by_chain(added))
        self._associations += len(added) - len(removed)

    def _restore_change(self, removed: dict[str, set[Rule]], added: dict[str, set[Rule]]) -> None:
        script = change_script(removed, added)
        if script:
            with self._mutex:
                self._restore(script)

    def _apply_rules(self, removed: dict[str, set[Rule]], added: dict[str, set[Rule]]) -> None:
        iptc = _iptc()
        tables = {table_of(c) for c in list(removed) + list(added) if removed.get(c) or added.get(c)}
        if not tables:
            return

        def change(handles):
            for chain, rules in removed.items():
                for rule in rules:
                    try:
                        iptc.Chain(handles[table_of(chain)], chain).delete_rule(self._to_iptc(rule))
                    except iptc.IPTCError:
                        log.warning("rule already gone from %s: %s", chain, " ".join(rule.iptables_args()))
            for chain, rules in added.items():
                for rule in rules:
                    iptc.Chain(handles[table_of(chain)], chain).append_rule(self._to_iptc(rule))

        self._write(tables, change)

    def flush(self) -> list[str]:
        """Remove every chain and jump of ours (on purpose: `ipfloaterd flush`)."""
        return list(self.sync(NatSpec.none()))

    def live_pairs(self) -> set[tuple[IPv4Address, IPv4Address]]:
        """The (public, private) associations our chains hold now, read back from the
        kernel (for the start's safety check and `adopt`); changes nothing."""
        if "nat" not in self._present_tables():
            return set()
        with self._mutex:
            return pairs_from_save(self._save("nat"))
