"""Summaries of benchmarks/results.json: the console table and RESULTS.md.

`python -m benchmarks.report [results.json]` re-renders both without re-running.
Each figure is computed per repetition (a ratio against the baseline of the same
repetition) and reported as min / median / max over the repetitions. start_table() is
the console table of `python -m benchmarks.scale --only-start`.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
BACKENDS = ("iptables", "nftables")


def _mmm(values: list) -> Optional[tuple]:
    return (min(values), statistics.median(values), max(values)) if values else None


def _fmt(triple: Optional[tuple], fmt: str) -> str:
    if triple is None:
        return "not measured"
    return " / ".join(format(v, fmt) for v in triple)


def _runs(data: dict, backend: str, public_if: bool) -> list[dict]:
    return [r for r in data["runs"] if r["backend"] == backend and r["public_if"] == public_if]


# Each figure: (number, name, value of one repetition -> ratio or figure, format, target text,
# target check on the median (None: no target for this backend), absolute values text)

def _bulk(r):
    """Figure 1: the daemon's start -> "rules" line against the stock tool's rules."""
    return r["large"]["rules_seconds"] / r["baseline"]["rules_seconds"]


def _baseline_total(r) -> float:
    """The stock tools' whole job: the rules, and with PUBLIC_INTERFACE the `ip -batch` addresses."""
    b = r["baseline"]
    return b["rules_seconds"] + b.get("addresses_seconds", 0.0)


def _ready(r):
    """Info: the daemon's start -> "ready" line (rules, addresses, listening) against the
    stock tools doing their part of that."""
    return r["large"]["ready_seconds"] / _baseline_total(r)


def _change(r):
    return r["large"]["change"]["median_seconds"] / r["small"]["change"]["median_seconds"]


def _tput(r):
    return r["large"]["throughput"]["calls_per_second"]


def _tput_ratio(r):
    return r["large"]["throughput"]["calls_per_second"] / r["small"]["throughput"]["calls_per_second"]


def _hook(r):
    h = r["large"].get("hook")
    return h["hook_median_seconds"] / h["baseline_median_seconds"] if h else None


def _mem(r):
    return r["large"]["hwm_kib"] / 1024


def figures(data: dict, backend: str, public_if: bool) -> list[dict]:
    runs = _runs(data, backend, public_if)

    def collect(fn: Callable) -> list:
        return [v for v in (fn(r) for r in runs) if v is not None]

    def med(path: Callable) -> float:
        return statistics.median([path(r) for r in runs]) if runs else float("nan")

    rows = []
    bulk = _mmm(collect(_bulk))
    rows.append({
        "figure": "1. bulk load, 4,096 (start -> rules in place)", "value": _fmt(bulk, ".1f") + " x",
        "target": "<= 3x", "ok": bulk and bulk[1] <= 3,
        "detail": f"daemon {med(lambda r: r['large']['rules_seconds']):.3f} s vs `{_tool(backend)}` "
                  f"{med(lambda r: r['baseline']['rules_seconds']):.3f} s"})
    ready = _mmm(collect(_ready))
    rows.append({
        "figure": ("1b. start -> ready vs rules + `ip -batch` addresses" if public_if
                   else "1b. start -> ready (listening) vs the rules"),
        "value": _fmt(ready, ".1f") + " x", "target": "(info)", "ok": None,
        "detail": f"daemon {med(lambda r: r['large']['ready_seconds']):.3f} s"
                  + (f"; `ip -batch` of 4,096 addresses {med(lambda r: r['baseline']['addresses_seconds']):.3f} s"
                     if public_if else "")})
    change = _mmm(collect(_change))
    rows.append({
        "figure": "2. one change at 4,096 vs 16", "value": _fmt(change, ".2f") + " x",
        "target": "<= 1.5x" if backend == "nftables" else "(report)",
        "ok": (change and change[1] <= 1.5) if backend == "nftables" else None,
        "detail": f"associate+release {med(lambda r: r['large']['change']['median_seconds']) * 1000:.1f} ms "
                  f"vs {med(lambda r: r['small']['change']['median_seconds']) * 1000:.1f} ms; per repetition at "
                  f"4,096: " + ", ".join(f"{r['large']['change']['median_seconds'] * 1000:.0f}" for r in runs)
                  + " ms"})
    tput = _mmm(collect(_tput))
    rows.append({
        "figure": "3. API throughput at 4,096, 10 clients", "value": _fmt(tput, ".0f") + " calls/s",
        "target": ">= 300/s" if backend == "nftables" else "(report)",
        "ok": (tput and tput[1] >= 300) if backend == "nftables" else None,
        "detail": (f"= {tput[1] / 2:.0f} associate+release cycles/s (the target is read here as REST calls); "
                   if tput else "") +
                  f"vs 16 live: {_fmt(_mmm(collect(_tput_ratio)), '.2f')} x "
                  f"({med(lambda r: r['small']['throughput']['calls_per_second']):.0f} calls/s at 16)"})
    if public_if:
        hook = _mmm(collect(_hook))
        hook_runs = [r["large"]["hook"] for r in runs if r["large"].get("hook")]
        rows.append({
            "figure": "4. hook: start -> rules live + write-back", "value": _fmt(hook, ".2f") + " x",
            "target": "<= 1.5x", "ok": (hook and hook[1] <= 1.5) if hook else None,
            "detail": (f"hook {statistics.median(h['hook_median_seconds'] for h in hook_runs) * 1000:.0f} ms vs "
                       f"`python3 -c \"import pyone, requests\"` "
                       f"{statistics.median(h['baseline_median_seconds'] for h in hook_runs) * 1000:.0f} ms")
            if hook_runs else "hook not available (placeholder)"})
    mem = _mmm(collect(_mem))
    rows.append({
        "figure": "5. peak RSS (VmHWM) at 4,096", "value": _fmt(mem, ".1f") + " MB",
        "target": "< 60 MB", "ok": mem and mem[2] < 60,
        "detail": f"after start {med(lambda r: r['large']['hwm_after_start_kib']) / 1024:.1f} MB; "
                  f"at 16: {med(lambda r: r['small']['hwm_kib']) / 1024:.1f} MB"})
    return rows


def _tool(backend: str) -> str:
    return "iptables-legacy-restore -n" if backend == "iptables" else "nft -f"


def _verdict(ok) -> str:
    return "" if ok is None else ("met" if ok else "MISSED")


def table(data: dict) -> str:
    lines = []
    for public_if in (True, False):
        n = len(_runs(data, BACKENDS[0], public_if))
        if not n:
            continue
        lines.append(f"\nPUBLIC_INTERFACE {'set' if public_if else 'unset'} ({n} repetitions; min / median / max)")
        for backend in BACKENDS:
            for row in figures(data, backend, public_if):
                lines.append(f"  {backend:9} {row['figure']:52} {row['value']:28} {row['target']:9} "
                             f"{_verdict(row['ok']):7} {row['detail']}")
    return "\n".join(lines)


def start_table(data: dict) -> str:
    """Figure 1 alone (`--only-start`): seconds and ratios, min / median / max."""
    lines = []
    for public_if in (True, False):
        n = len(_runs(data, BACKENDS[0], public_if))
        if not n:
            continue
        lines.append(f"\nPUBLIC_INTERFACE {'set' if public_if else 'unset'}, {n} repetitions, "
                     f"4,096 associations (min / median / max)")
        for backend in BACKENDS:
            runs = _runs(data, backend, public_if)
            cols = [("stock tool rules", [r["baseline"]["rules_seconds"] for r in runs], " s", ".3f")]
            if public_if:
                cols.append(("+ ip -batch addresses", [_baseline_total(r) for r in runs], " s", ".3f"))
            cols += [("daemon start -> rules", [r["large"]["rules_seconds"] for r in runs], " s", ".3f"),
                     ("daemon start -> ready", [r["large"]["ready_seconds"] for r in runs], " s", ".3f"),
                     ("1. rules / stock rules (<= 3x)", [_bulk(r) for r in runs], " x", ".2f"),
                     ("1b. ready / stock " + ("rules + addresses" if public_if else "rules"),
                      [_ready(r) for r in runs], " x", ".2f")]
            lines.append(f"  {backend} (baseline `{_tool(backend)}`)")
            for label, values, unit, fmt in cols:
                lines.append(f"    {label:36} {_fmt(_mmm(values), fmt)}{unit}")
    return "\n".join(lines)


def large_rows(data: dict) -> list[dict]:
    """The 65,536 pass (scale.large_pass): per backend, figure 1 and 5 with their targets."""
    rows = []
    for backend in BACKENDS:
        runs = [r for r in data.get("large_runs", []) if r["backend"] == backend]
        if not runs:
            continue
        live = runs[0]["live"]

        def mmm(fn: Callable) -> Optional[tuple]:
            return _mmm([fn(r) for r in runs])

        bulk = mmm(_bulk)
        hwm = mmm(lambda r: r["large"]["hwm_kib"] / 1024)
        rows.append({"backend": backend, "live": live, "runs": len(runs),
                     "figures": [
            (f"1. start -> rules in place at {live:,}, vs `{_tool(backend)}`", _fmt(bulk, ".2f") + " x",
             "<= 3x", bulk[1] <= 3,
             f"daemon {_fmt(mmm(lambda r: r['large']['rules_seconds']), '.2f')} s vs "
             f"{_fmt(mmm(lambda r: r['baseline']['rules_seconds']), '.2f')} s"),
            (f"1b. start -> ready at {live:,} (API listening) vs the rules",
             _fmt(mmm(_ready), ".2f") + " x", "(info)", None,
             f"daemon {_fmt(mmm(lambda r: r['large']['ready_seconds']), '.2f')} s"),
            (f"2. one change at {live - 16:,} live (info)",
             _fmt(mmm(lambda r: r["large"]["change"]["median_seconds"] * 1000), ".1f") + " ms", "(info)", None,
             "associate+release, after 16 of the full pool were released"),
            (f"5. peak RSS (VmHWM) at {live:,}", _fmt(hwm, ".1f") + " MB", "<= 120 MB", hwm[2] <= 120,
             f"after the start {_fmt(mmm(lambda r: r['large']['hwm_after_start_kib'] / 1024), '.1f')} MB; "
             f"resident after the start {_fmt(mmm(lambda r: r['large']['rss_after_start_kib'] / 1024), '.1f')} MB"),
        ] + [
            (f"5b. restart on its rules at {live:,}: VmHWM (the table read and compared, as by a reconcile)",
             _fmt(mmm(lambda r: r["large"]["restart"]["hwm_after_start_kib"] / 1024), ".1f") + " MB",
             "<= 120 MB", mmm(lambda r: r["large"]["restart"]["hwm_after_start_kib"] / 1024)[2] <= 120,
             f"start -> rules {_fmt(mmm(lambda r: r['large']['restart']['rules_seconds']), '.2f')} s"),
        ] if all("restart" in r["large"] for r in runs) else []})
    return rows


def large_table(data: dict) -> str:
    lines = []
    for row in large_rows(data):
        lines.append(f"\n{row['backend']}, {row['live']:,} associations, PUBLIC_INTERFACE unset, "
                     f"{row['runs']} repetitions (min / median / max)")
        for figure, value, target, ok, detail in row["figures"]:
            lines.append(f"  {figure:62} {value:26} {target:9} {_verdict(ok):7} {detail}")
    return "\n".join(lines)


def _md_large(data: dict) -> list[str]:
    rows = large_rows(data)
    if not rows:
        return []
    info = data.get("large_pass", {})
    commit = info.get("code", {}).get("commit")
    out = [f"## Figures at {rows[0]['live']:,} associations (a /16), PUBLIC_INTERFACE unset", "",
           "IP_POOL = 100.64.0.0-100.64.255.255 (65,536 addresses, the most one pool takes), every "
           "address stored as an association (private 10.80.0.1 + i in 10.80.0.0/15); the stock tool "
           "loads the same rules in a fresh namespace in the same repetition. PUBLIC_INTERFACE is "
           "unset (a routed pool): the kernel adds /32 addresses to one interface in quadratic time, "
           "`ip -batch` of 65,536 of them did not finish in 120 s. The one change runs "
           "after 16 associations were released through the API (the pool is full)."
           + (f" Measured separately (`--only-65536`), commit {commit}, "
              f"{info.get('elapsed_seconds', 0) / 60:.1f} min." if commit else ""), "",
           "| backend | figure | min / median / max | target | verdict | absolute |",
           "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        for figure, value, target, ok, detail in row["figures"]:
            out.append(f"| {row['backend']} | {figure} | {value} | {target} | {_verdict(ok)} | {detail} |")
    return out + [""]


def _md_figures(data: dict, public_if: bool) -> list[str]:
    out = ["| backend | figure | min / median / max | target | verdict | absolute (medians) |",
           "| --- | --- | --- | --- | --- | --- |"]
    for backend in BACKENDS:
        for row in figures(data, backend, public_if):
            out.append(f"| {backend} | {row['figure']} | {row['value']} | {row['target']} | "
                       f"{_verdict(row['ok'])} | {row['detail']} |")
    return out


def _md_breakdown(data: dict) -> list[str]:
    rows = data.get("breakdown")
    if not rows:
        return []
    out = ["| backend | daemon variant | one change, 16 live | one change, 4,096 live (p10-p90) | ratio | "
           "calls/s, 16 live | calls/s, 4,096 live | start at 4,096: rules / ready | VmHWM at 4,096 |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        s, l = r["16"], r["4096"]
        spread = f" ({l['change_p10_ms']:.0f}-{l['change_p90_ms']:.0f})" if "change_p10_ms" in l else ""
        hwm = f"{l['hwm_mb']:.0f} MB" if "hwm_mb" in l else ""
        out.append(f"| {r['backend']} | {r['variant']} | {s['change_ms']:.1f} ms | {l['change_ms']:.1f} ms{spread} | "
                   f"{l['change_ms'] / s['change_ms']:.2f} x | {s['calls_per_second']:.0f} | "
                   f"{l['calls_per_second']:.0f} | {l['rules_seconds']:.2f} / {l['ready_seconds']:.2f} s | {hwm} |")
    return out


def render(data: dict, analysis: str = "") -> str:
    m = data["machine"]
    st = data["settings"]
    commit = data.get("code", {}).get("commit", "unknown")
    analysis_path = HERE / "ANALYSIS.md"
    if not analysis and analysis_path.exists():
        analysis = analysis_path.read_text()
    lines = [
        "# Scale benchmarks (issue 6): results of the last run",
        "",
        "Written by `bash benchmarks/run.sh` (raw numbers: `benchmarks/results.json`; re-render "
        "with `python -m benchmarks.report`). Every figure is a ratio against a baseline measured in "
        "the same run, in a fresh network namespace, per repetition; min / median / max over the "
        "repetitions. Targets are judged on the median (memory: on the max).",
        "",
        "## Machine",
        "",
        f"- `uname -m`: {m['arch']}, {m['cores']} cores ({m['cpu']}), kernel {m['kernel']}",
        f"- Python {m['python']}; {m['iptables']}; {m['nft']}; {m['iproute2']}",
        f"- code measured: commit {commit} " + ("(the work tree as it was, BENCH_WORKTREE=1)"
                                                 if "work tree" in commit else
                                                 "(exported with `git archive`, so edits in progress "
                                                 "in the work tree are not part of it)"),
        f"- run took {data['elapsed_seconds'] / 60:.1f} min; {st['reps']} repetitions with "
        f"PUBLIC_INTERFACE, {st['reps_without']} without; {st['change_cycles']} sequential cycles per "
        f"one-change figure; {st['clients']} clients x {st['cycles_per_client']} cycles for throughput; "
        f"{st['hook_runs']} hook runs per repetition",
        "",
        "## Set-up",
        "",
        "- Public pool: shared address space (RFC 6598, never routed on the internet), because "
        "this project's tests may use only 198.51.100.0/24 and 203.0.113.0/24 as public addresses "
        "and those hold 512: the 4,096 stored associations are 100.64.0.0/20 "
        "(100.64.0.0 - 100.64.15.255), and 100.64.16.0/28 holds 16 free addresses for the changes "
        "(IP_POOL = 100.64.0.0-100.64.16.15, 4,112 addresses, the same for the 16-live baseline). "
        "Private side: 10.80.0.0/16 (association i -> 10.80.0.1 + i).",
        "- The state file is pre-filled directly with store.py's schema; the daemon (real "
        "`ipfloaterd`, `--ready-fd`) starts in a fresh namespace per run. Figure 1 is the issue's "
        "\"daemon start until all rules are in place\": process start (just before the fork) to the "
        "daemon's \"rules\" line, which it writes once every NAT rule is in place, before it adds the "
        "floating addresses and starts the API. Row 1b, for information, runs to its \"ready\" line "
        "(addresses added, API listening), against the stock tool's rules plus, with PUBLIC_INTERFACE, "
        "`ip -batch` adding the 4,096 /32 addresses. The rule count (and address count) is verified "
        "after the ready line.",
        "- The daemon runs as an installed package would: under the interpreter of a throw-away "
        "virtualenv (`python -m venv --without-pip`) whose site-packages reaches the project venv's "
        "through a plain path in a `.pth` file, so its dependencies are there but the project venv's "
        "editable-install hook (a `.pth` that imports a finder at every interpreter start, ~10 ms) "
        "is not run; the package comes from the `git archive` copy through PYTHONPATH. The clients, "
        "the hook and the hook's `python3 -c \"import pyone, requests\"` baseline use the same "
        "interpreter.",
        "- Daemon settings: defaults (CONNTRACK_FLUSH and GRATUITOUS_ARP on, DB_SYNC full) except LOG_LEVEL=INFO "
        "and RECONCILE_INTERVAL=86400 (no periodic reconcile during the measurements). "
        "PUBLIC_INTERFACE is `pub0`, one end of a veth pair inside the namespace.",
        "- One change = `POST /v1/floatingips {public_ip, private_ip}` (allocate + associate) then "
        "`DELETE /v1/floatingips/<ip>` (release), sequential, from a client inside the namespace "
        "(http.client, keep-alive); median over the cycles. Throughput counts REST calls (each one "
        "committed change; a cycle is 2 calls) of 10 client processes, each on its own address.",
        "- Hook: the real `remotes/hooks/ipfloater/ipfloater-hook` run by the HookExecutionManager "
        "emulation for the `ipfloater-running` template against the oned simulator, one VM "
        "(FLOATING_IP=\"YES\") deployed per run; its process time start -> exit (it exits after the "
        "daemon answered and the address was written back; both checked).",
        "",
        "## Figures, PUBLIC_INTERFACE set",
        "",
        *_md_figures(data, True),
        "",
        "## Figures, PUBLIC_INTERFACE unset",
        "",
        *_md_figures(data, False),
        "",
    ]
    lines += _md_large(data)
    from .hafigures import markdown as _md_ha  # (hafigures uses this module's helpers)
    lines += _md_ha(data)
    bd = _md_breakdown(data)
    if bd:
        lines += ["## Where the time goes: one cost removed at a time (single runs)", "",
                  "Same measurements, one repetition each, the daemon unmodified with one setting "
                  "changed (its config, or its environment for MALLOC_ARENA_MAX); PUBLIC_INTERFACE "
                  "unset unless named.", "",
                  *bd, ""]
    if analysis:
        lines += [analysis.rstrip(), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else HERE / "results.json"
    data = json.loads(path.read_text())
    (HERE / "RESULTS.md").write_text(render(data))
    print(table(data))
    print(large_table(data))
    if data.get("ha"):
        from .hafigures import table as ha_table
        print(ha_table(data["ha"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
