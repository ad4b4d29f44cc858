"""The measurements of issue 6, one function per figure (each returns plain numbers).

Every figure is a ratio against a baseline measured in the same run, in a fresh
namespace; scale.py repeats them and report.py summarises them.

1. bulk_load_baseline(): the equivalent rules loaded by the stock tool
   (`iptables-legacy-restore -n`, resp. `nft -f`), and the /32 addresses by `ip -batch`;
   the daemon's side is the 4,096-association daemon's start until its "rules" line
   (common.start_daemon; its "ready" line, addresses added too, against rules + `ip -batch`).
2. one_change(): the REST round trip of one associate + release, sequentially.
3. throughput(): 10 concurrent clients doing associate + release.
4. hook_latency(): benchmarks/hookbench.py (the real hook against the oned simulator).
5. memory: Daemon.vm_hwm_kib() after everything above ran at scale.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from one_ipfloater.nat.iptables import plan_restore
from one_ipfloater.nat.nftables import BASE_CHAINS, MAP_DNAT, MAP_SNAT
from one_ipfloater.nat.ruleset import CHAIN_OUT, CHAIN_POST, CHAIN_PRE

from .common import (PUBLIC_IF, PYTHON, Daemon, Layout, Namespace, association, count_rules, desired,
                     run, timed)

# -- 1. bulk load ----------------------------------------------------------------------------


def iptables_restore_text(live: int) -> str:
    """The nat table of `live` associations (DNAT + DNAT(OUTPUT) + SNAT each, the hairpin
    head and the three jumps) as one `iptables-restore` script."""
    script, _repairs = plan_restore("nat", {}, desired(live))
    return script


def nft_text(live: int) -> str:
    """The same in `nft -f` syntax, in the layout the nftables backend uses (one table,
    two maps with one element per association, three NAT base chains)."""
    pairs = [association(i) for i in range(live)]
    dnat = ", ".join(f"{pub} : {priv}" for pub, priv in pairs)
    snat = ", ".join(f"{priv} : {pub}" for pub, priv in pairs)
    r = Layout(live).private_range

    def chain(ours: str, body: str) -> str:
        base, ctype, hook, prio = BASE_CHAINS[ours]
        return f"  chain {base} {{\n    type {ctype} hook {hook} priority {prio}; policy accept;\n{body}  }}\n"

    return ("table ip ipfloater {\n"
            f"  map {MAP_DNAT} {{\n    type ipv4_addr : ipv4_addr\n    elements = {{ {dnat} }}\n  }}\n"
            f"  map {MAP_SNAT} {{\n    type ipv4_addr : ipv4_addr\n    elements = {{ {snat} }}\n  }}\n"
            + chain(CHAIN_PRE, f"    dnat to ip daddr map @{MAP_DNAT}\n")
            + chain(CHAIN_OUT, f"    dnat to ip daddr map @{MAP_DNAT}\n")
            + chain(CHAIN_POST, f"    ip saddr {r} ip daddr {r} ct status dnat masquerade\n"
                                f"    ip saddr {r} ip daddr {r} return\n"
                                f"    snat to ip saddr map @{MAP_SNAT}\n")
            + "}\n")


def address_batch_text(live: int) -> str:
    return "".join(f"address add {association(i)[0]}/32 dev {PUBLIC_IF}\n" for i in range(live))


def bulk_load_baseline(backend: str, live: int, workdir: Path, public_if: bool) -> dict:
    """Seconds to load the equivalent rules with the stock tool in a fresh namespace (and,
    with a public interface, the /32 addresses with `ip -batch`); counts verified."""
    workdir.mkdir(parents=True, exist_ok=True)
    rules = workdir / f"rules-{backend}.txt"
    if backend == "iptables":
        rules.write_text(iptables_restore_text(live))
        argv = ["iptables-legacy-restore", "-n", str(rules)]
    else:
        rules.write_text(nft_text(live))
        argv = ["nft", "-f", str(rules)]
    out: dict = {}
    with Namespace(public_if=public_if) as ns:
        out["rules_seconds"] = timed(ns.argv(argv))
        if public_if:
            batch = workdir / "addresses.batch"
            batch.write_text(address_batch_text(live))
            out["addresses_seconds"] = timed(ns.argv(["ip", "-batch", str(batch)]))
        out["counts"] = count_rules(ns, backend)
    return out


# -- 2. one change ---------------------------------------------------------------------------

def one_change(daemon: Daemon, count: int, warmup: int = 5) -> dict:
    """`count` sequential associate+release cycles on one free address; seconds each."""
    layout = daemon.layout
    argv = daemon.ns.argv([PYTHON, "-m", "benchmarks.client", "latency", "--port", str(daemon.port),
                           "--token-file", str(daemon.token_file), "--public", str(layout.free_public(0)),
                           "--private", str(layout.free_private(0)), "--count", str(count),
                           "--warmup", str(warmup), "--max-seconds", "240"])
    cycles = sorted(json.loads(run(argv, timeout=600).stdout)["cycles"])
    return {"median_seconds": statistics.median(cycles), "cycles": len(cycles),
            "p10_seconds": cycles[len(cycles) // 10], "p90_seconds": cycles[len(cycles) * 9 // 10]}


# -- 3. throughput ---------------------------------------------------------------------------

def throughput(daemon: Daemon, clients: int, cycles_per_client: int) -> dict:
    """`clients` processes, each with its own free address, `cycles_per_client` cycles
    of associate + release; REST calls per second over the whole run."""
    argv = [PYTHON, "-m", "benchmarks.client", "throughput", "--port", str(daemon.port),
            "--token-file", str(daemon.token_file), "--clients", str(clients),
            "--count", str(cycles_per_client), "--max-seconds", "240"]
    for k in range(clients):
        argv += ["--public", str(daemon.layout.free_public(k)), "--private", str(daemon.layout.free_private(k))]
    return json.loads(run(daemon.ns.argv(argv), timeout=600).stdout)


def release_first(daemon: Daemon) -> int:
    """Release the stored associations the changes of a full pool use (Layout.release_first)."""
    addresses = daemon.layout.release_first
    if not addresses:
        return 0
    argv = [PYTHON, "-m", "benchmarks.client", "release", "--port", str(daemon.port),
            "--token-file", str(daemon.token_file)]
    for addr in addresses:
        argv += ["--public", str(addr), "--private", "-"]
    return json.loads(run(daemon.ns.argv(argv), timeout=600).stdout)["released"]


# -- 4. hook latency -------------------------------------------------------------------------

def hook_latency(daemon: Daemon, backend: str, count: int) -> dict:
    """The real hook against the oned simulator, and its baseline (see hookbench.py)."""
    argv = daemon.ns.argv([PYTHON, "-m", "benchmarks.hookbench", "--port", str(daemon.port),
                           "--token-file", str(daemon.token_file), "--backend", backend,
                           "--count", str(count)])
    result = json.loads(run(argv, timeout=900).stdout)
    return {"hook_median_seconds": statistics.median(result["hook"]),
            "baseline_median_seconds": statistics.median(result["baseline"]),
            "runs": len(result["hook"])}


def package_path() -> str:
    """Where the measured one_ipfloater comes from (run.sh: a `git archive` of HEAD)."""
    import one_ipfloater
    return str(Path(one_ipfloater.__file__).resolve().parent)


def hook_available() -> bool:
    """Figure 4 needs the hook module, the simulator and the hook template."""
    root = Path(__file__).resolve().parents[1]
    return all(p.exists() for p in (root / "one_ipfloater" / "one" / "hook.py",
                                    root / "tests" / "support" / "onesim.py",
                                    root / "tests" / "support" / "hem.py",
                                    root / "hooks" / "ipfloater-running.hook",
                                    root / "remotes" / "hooks" / "ipfloater" / "ipfloater-hook"))
