"""Shared pieces of the scale benchmarks (issue 6): namespaces, the pre-filled state file,
the daemon under test, rule counting and the machine description.

Everything runs in network namespaces made here (`ip netns add bench-<hex>-<n>`) and
deleted afterwards; the root namespace's firewall and addresses are never touched.
Commands are argument lists, never a shell.

Addresses (see RESULTS.md): the public pool is shared address space (RFC 6598,
100.64.0.0/10, never routed on the internet): the 4,096 stored associations take
100.64.0.0/20 (100.64.0.0 - 100.64.15.255) and 100.64.16.0/28 holds 16 free addresses for
the changes the benchmarks make. Private side: 10.80.0.0/16.

Beyond 4,096 (the 65,536 pass, a region's /16): the pool is the whole /16 as a range,
100.64.0.0-100.64.255.255 (65,536 addresses, the most IP_POOL takes), every address of it
stored as an association; the changes use the last 16, released through the API first
(`Layout.release_first`). Private side 10.80.0.0/15, the changes' targets 10.81.128.1 + k.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Optional

from one_ipfloater import store as store_module
from one_ipfloater.nat.ruleset import desired_spec
from tests.support.daemonproc import DaemonProcess

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

SCALE = 4096            # associations "at scale"
SMALL = 16              # associations of the baseline daemon
LARGE = 65536           # a region's /16: the most associations one IP_POOL holds
FIRST_PUBLIC = IPv4Address("100.64.0.0")      # 100.64.0.0/20: the stored associations
FREE_PUBLIC = IPv4Network("100.64.16.0/28")   # 16 free addresses for the changes
POOL_SPEC = f"{FIRST_PUBLIC}-{FREE_PUBLIC.broadcast_address}"   # 4,112 addresses
PRIVATE_RANGE = IPv4Network("10.80.0.0/16")
FIRST_PRIVATE = IPv4Address("10.80.0.1")      # association i: 10.80.0.1 + i
FREE_PRIVATE = IPv4Address("10.80.128.1")     # targets of the changes: 10.80.128.1 + k
PUBLIC_IF = "pub0"
TOKEN = "bench-" + "t" * 26


def association(i: int) -> tuple[IPv4Address, IPv4Address]:
    """(public, private) of stored association number i (0-based)."""
    return FIRST_PUBLIC + i, FIRST_PRIVATE + i


def free_public(k: int) -> IPv4Address:
    return FREE_PUBLIC.network_address + k


def free_private(k: int) -> IPv4Address:
    return FREE_PRIVATE + k


class Layout:
    """Pool, private range and the changes' free addresses for a daemon with `live`
    stored associations (association(i) is the same in every layout): up to 4,096 the
    layout above; beyond, the /16 of the module docstring."""

    def __init__(self, live: int):
        if live > LARGE:
            raise ValueError(f"at most {LARGE} associations (one IP_POOL)")
        self.live = live
        self.large = live > SCALE
        if self.large:
            self.pool_spec = f"{FIRST_PUBLIC}-{FIRST_PUBLIC + LARGE - 1}"
            self.private_range = IPv4Network("10.80.0.0/15")
        else:
            self.pool_spec, self.private_range = POOL_SPEC, PRIVATE_RANGE
        # the pool is full at LARGE: the changes take 16 stored addresses, released first
        self.release_first = [association(live - 16 + k)[0] for k in range(16)] if self.large else []

    def free_public(self, k: int) -> IPv4Address:
        return self.release_first[k] if self.large else free_public(k)

    def free_private(self, k: int) -> IPv4Address:
        return IPv4Address("10.81.128.1") + k if self.large else free_private(k)


# -- commands and namespaces -------------------------------------------------------------

def run(argv: list[str], timeout: float = 120.0, check: bool = True,
        input: Optional[str] = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:8])}...: exit {proc.returncode}: {proc.stderr.strip()[-400:]}")
    return proc


_RUN_ID = secrets.token_hex(3)
_counter = 0
_live: list["Namespace"] = []


class Namespace:
    """A bare network namespace `bench-<run>-<n>` with lo up and, optionally, a veth
    pair (both ends inside it) whose `pub0` end stands for the public interface (this
    kernel has no dummy interfaces). Deleted by close() (and at exit)."""

    def __init__(self, public_if: bool = True):
        global _counter
        _counter += 1
        self.name = f"bench-{_RUN_ID}-{_counter}"
        run(["ip", "netns", "add", self.name])
        _live.append(self)
        self.exec(["ip", "link", "set", "lo", "up"])
        self.public_if = PUBLIC_IF if public_if else None
        if public_if:
            self.exec(["ip", "link", "add", PUBLIC_IF, "type", "veth", "peer", "name", "pub0-peer"])
            self.exec(["ip", "link", "set", "pub0-peer", "up"])
            self.exec(["ip", "link", "set", PUBLIC_IF, "up"])

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def exec(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return run(self.argv(argv), **kw)

    def close(self) -> None:
        if self in _live:
            run(["ip", "netns", "del", self.name], check=False)
            _live.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@atexit.register
def _delete_leftover_namespaces() -> None:
    for ns in list(_live):
        ns.close()


def timed(argv: list[str], timeout: float = 120.0) -> float:
    """Wall-clock seconds of one command (which must succeed)."""
    start = time.perf_counter()
    run(argv, timeout=timeout)
    return time.perf_counter() - start


# -- the state file --------------------------------------------------------------------------

def prefill_state(path: Path, live: int) -> None:
    """A state file holding `live` associations, written directly with store.py's schema
    (the daemon's Store is not used, so nothing of the daemon is timed here), as a
    daemon that ran before leaves it: in WAL mode."""
    if path.exists():
        path.unlink()
    db = sqlite3.connect(str(path))
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(store_module.SCHEMA)
        db.execute("INSERT INTO meta(key, value) VALUES('schema', ?)", (str(store_module.SCHEMA_VERSION),))
        if live:  # as a daemon that held allocations leaves it (no one-off mark at the start)
            db.execute("INSERT INTO meta(key, value) VALUES('history', ?)", (repr(time.time()),))
        now = time.time()
        db.executemany(
            "INSERT INTO allocations(public_ip, owner, ref, private_ip, created_at, updated_at) "
            "VALUES(?, ?, ?, ?, ?, ?)",
            ((str(pub), "bench", f"bench:{i}", str(priv), now, now)
             for i, (pub, priv) in (((i, association(i)) for i in range(live)))))
        db.commit()
    finally:
        db.close()
    os.chmod(path, 0o600)


def desired(live: int):
    """The NatSpec the daemon builds for `live` stored associations (for the baselines)."""
    return desired_spec([association(i) for i in range(live)], [Layout(live).private_range])


# -- the daemon under test -----------------------------------------------------------------

@dataclass
class Daemon:
    """A started daemon. `rules_seconds`: process start -> its "rules" line (every NAT
    rule in place: figure 1); `ready_seconds`: -> its "ready" line (the floating addresses
    added as well, and the API listening)."""

    ns: Namespace
    proc: DaemonProcess
    rules_seconds: float
    ready_seconds: float
    pid: int = 0
    live: int = SCALE

    @property
    def layout(self) -> "Layout":
        return Layout(self.live)

    @property
    def port(self) -> int:
        return self.proc.port

    @property
    def token_file(self) -> Path:
        return self.proc.workdir / "token"

    def vm_hwm_kib(self) -> int:
        """Peak resident set (VmHWM) of the daemon so far, KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def vm_rss_kib(self) -> int:
        """Resident set (VmRSS) of the daemon now, KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.proc.stop()


def start_daemon(ns: Namespace, workdir: Path, backend: str, live: int,
                 factory=None, **extra: str) -> Daemon:
    """Pre-fill the state with `live` associations, start ipfloaterd in `ns` and time
    from the process start (just before Popen) to its "rules" and "ready" lines."""
    workdir.mkdir(parents=True, exist_ok=True)
    prefill_state(workdir / "state.db", live)
    token = workdir / "token"
    token.write_text(TOKEN + "\n")
    os.chmod(token, 0o600)
    layout = Layout(live)
    settings = {
        "IP_POOL": layout.pool_spec, "PRIVATE_IP_RANGES": str(layout.private_range), "NAT_BACKEND": backend,
        "LOG_LEVEL": "INFO", "RECONCILE_INTERVAL": "86400", "PUBLIC_INTERFACE": ns.public_if or "",
        **extra,
    }
    factory = factory or DaemonProcess  # e.g. a subclass that runs it under cProfile
    proc = factory(ns.name, workdir, **settings)
    proc.start(timeout=300)
    if proc.rules_at is None:
        proc.stop()
        raise RuntimeError("the daemon became ready without reporting its rules (no \"rules\" line)")
    # `ip netns exec` execs the daemon in place, so the Popen pid is the daemon's
    return Daemon(ns, proc, proc.rules_at - proc.started_at, proc.ready_at - proc.started_at, proc.proc.pid,
                  live)


# -- what is in the kernel ------------------------------------------------------------------

def count_rules(ns: Namespace, backend: str) -> dict:
    """Association rules / map elements and /32 addresses actually in namespace `ns`."""
    out: dict = {}
    if backend == "iptables":
        save = ns.exec(["iptables-legacy-save", "-t", "nat"]).stdout.splitlines()
        out["dnat_pre"] = sum(1 for l in save if l.startswith("-A IPFLOATER-PRE ") and "-j DNAT" in l)
        out["dnat_out"] = sum(1 for l in save if l.startswith("-A IPFLOATER-OUT ") and "-j DNAT" in l)
        out["snat"] = sum(1 for l in save if l.startswith("-A IPFLOATER-POST ") and "-j SNAT" in l)
    else:
        for name, key in (("fip_dnat", "dnat"), ("fip_snat", "snat")):
            doc = json.loads(ns.exec(["nft", "-j", "list", "map", "ip", "ipfloater", name]).stdout)
            elems = [o["map"].get("elem", []) for o in doc["nftables"] if "map" in o]
            out[key] = sum(len(e) for e in elems)
    if ns.public_if:
        links = json.loads(ns.exec(["ip", "-j", "-4", "addr", "show", "dev", ns.public_if]).stdout or "[]")
        out["addresses"] = sum(1 for l in links for a in l.get("addr_info", []) if a.get("prefixlen") == 32)
    return out


def expected_counts(backend: str, live: int, public_if: bool) -> dict:
    out = ({"dnat_pre": live, "dnat_out": live, "snat": live} if backend == "iptables"
           else {"dnat": live, "snat": live})
    if public_if:
        out["addresses"] = live
    return out


# -- the machine ---------------------------------------------------------------------------

def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not available"


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "arch": platform.machine(), "cores": os.cpu_count(), "cpu": model,
        "kernel": platform.release(), "python": platform.python_version(),
        "iptables": _first_line([shutil.which("iptables-legacy") or "iptables", "--version"]),
        "nft": _first_line(["nft", "--version"]),
        "iproute2": _first_line(["ip", "-V"]),
    }
