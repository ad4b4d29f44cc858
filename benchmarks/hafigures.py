"""The HA and etcd figures of issue 12 (benchmarks/ha.py measures, this module computes
and prints): pure functions of the raw numbers in results.json's "ha" part.

Each figure stands beside a baseline measured in the same run: the etcd store's one
change beside SQLite's, 10 clients over two routers on etcd beside 10 on one router with
SQLite, and the failover's "traffic flows again" beside keepalived's own takeover (the
moment the VRRP address appears on the backup) with VRRP's theoretical master-down
interval printed beside it. Min / median / max over the repetitions.
"""

from __future__ import annotations

import json
import statistics
from typing import Optional

from .report import _fmt, _mmm

STEPS = ("total", "store_commit", "apply", "flush", "store_write", "plan")
STEP_NAMES = {
    "total": "whole change (daemon)",
    "store_commit": "store commit (etcd: txn round trip; SQLite: COMMIT + fsync)",
    "apply": "kernel apply (NAT delta)",
    "flush": "conntrack flush",
    "store_write": "store writes and the rest of the commit step",
    "plan": "planning, lock, registry",
}


# -- VRRP -------------------------------------------------------------------------------------

def master_down_interval(advert_int: float, priority: int = 100) -> float:
    """VRRPv3 (RFC 5798): a backup declares the master down after 3 x advert_int + skew,
    skew = (256 - priority) / 256 x advert_int, counted from the last advert it heard."""
    if not 0 < priority < 256:
        raise ValueError(f"priority: {priority!r} is not between 1 and 255")
    return 3 * advert_int + (256 - priority) / 256 * advert_int


# -- gaps in a probe's answers ----------------------------------------------------------------

def resumed_after(times: list[float], t: float) -> Optional[float]:
    """Seconds from `t` (the cable pull) to the answer that ended the longest silence
    ending after `t` (halab.outage's gap): when the traffic flowed again. None when
    nothing answered after `t`."""
    times = sorted(times)
    gaps = [(b - a, b) for a, b in zip(times, times[1:]) if b > t]
    if not gaps:
        return None
    return round(max(gaps)[1] - t, 3)


# -- where a change's time goes ---------------------------------------------------------------

def _json_lines(log_text: str, key: str) -> list[dict]:
    """The JSON lines of a daemon's log that begin with `{"key"`, in order."""
    out = []
    for line in log_text.splitlines():
        if line.startswith('{"%s"' % key):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def parse_changes(log_text: str) -> list[dict]:
    """The change_timeline.py lines (`{"change": ...}`) of a daemon's log, in order."""
    return _json_lines(log_text, "change")


def catch_ups(log_text: str) -> list[dict]:
    """The follower catch-ups change_timeline.py logged (`{"catch_up": s, "store_read": s,
    "reconcile": s}`), in order."""
    return _json_lines(log_text, "catch_up")


def sum_catch_ups(records: list[dict]) -> dict:
    """Count and seconds in all (whole, reading the store, converging the kernel; those
    made from the watch's delta: how many, watching, applying it)."""
    return {"catch_ups": len(records),
            "catch_up_seconds": round(sum(r.get("catch_up", 0.0) for r in records), 3),
            "catch_up_read_seconds": round(sum(r.get("store_read", 0.0) for r in records), 3),
            "catch_up_reconcile_seconds": round(sum(r.get("reconcile", 0.0) for r in records), 3),
            "catch_up_deltas": sum(1 for r in records if "apply_delta" in r),
            "catch_up_watch_seconds": round(sum(r.get("store_delta", 0.0) for r in records), 3),
            "catch_up_apply_delta_seconds": round(sum(r.get("apply_delta", 0.0) for r in records), 3),
            "catch_up_locked_delta_seconds": round(sum(r.get("take_delta", 0.0) for r in records), 3),
            "catch_up_flush_seconds": round(sum(r.get("flush", 0.0) for r in records), 3)}


def split_change(record: dict) -> dict:
    """One change's seconds per step (STEPS); steps it did not go through count 0."""
    g = {k: record.get(k, 0.0) for k in ("total", "commit_step", "apply", "store_commit", "flush")}
    return {"total": g["total"], "store_commit": g["store_commit"], "apply": g["apply"], "flush": g["flush"],
            "store_write": max(0.0, g["commit_step"] - g["apply"] - g["store_commit"]),
            "plan": max(0.0, g["total"] - g["commit_step"] - g["flush"])}


def split_medians(records: list[dict]) -> dict:
    """Median milliseconds per step over the changes that succeeded."""
    parts = [split_change(r) for r in records if r.get("result", "ok") == "ok"]
    if not parts:
        return {}
    return {k: round(statistics.median(p[k] for p in parts) * 1000, 3) for k in STEPS} | {"changes": len(parts)}


# -- throughput over several client processes -------------------------------------------------

def combine_throughput(outs: list[dict]) -> dict:
    """Client processes run at once (benchmarks.client throughput, each its own share of
    the clients): calls over the span from the first start to the last end."""
    start, end = min(o["start"] for o in outs), max(o["end"] for o in outs)
    calls = sum(o["calls"] for o in outs)
    return {"calls": calls, "seconds": end - start, "calls_per_second": calls / (end - start),
            "clients": sum(o["clients"] for o in outs), "conflicts": sum(o.get("conflicts", 0) for o in outs),
            "per_process_calls_per_second": [round(o["calls_per_second"], 1) for o in outs]}


# -- the report -------------------------------------------------------------------------------

def _collect(runs: list[dict], fn) -> list:
    out = []
    for r in runs:
        try:
            v = fn(r)
        except (KeyError, TypeError, ZeroDivisionError):
            continue
        if v is not None:
            out.append(v)
    return out


def rows(ha: dict) -> list[tuple[str, str, str]]:
    """(figure, min / median / max, against what) for the console table and RESULTS.md."""
    out = []
    runs = ha.get("etcd_runs", [])
    if runs:
        def med(fn, scale=1.0):
            vals = _collect(runs, fn)
            return statistics.median(vals) * scale if vals else float("nan")
        ratio = _mmm(_collect(runs, lambda r: r["etcd"]["change"]["median_seconds"]
                              / r["sqlite"]["change"]["median_seconds"]))
        out.append(("E1. one change at 4,096 live, etcd (3 members) vs SQLite", _fmt(ratio, ".2f") + " x",
                    f"associate+release {med(lambda r: r['etcd']['change']['median_seconds'], 1000):.1f} ms vs "
                    f"{med(lambda r: r['sqlite']['change']['median_seconds'], 1000):.1f} ms (SQLite, same run); "
                    "per repetition: " + ", ".join(f"{r['etcd']['change']['median_seconds'] * 1000:.0f}/"
                                                    f"{r['sqlite']['change']['median_seconds'] * 1000:.0f}"
                                                    for r in runs) + " ms"))
        two = _mmm(_collect(runs, lambda r: r["etcd"]["throughput_two"]["calls_per_second"]
                            / r["sqlite"]["throughput"]["calls_per_second"]))
        one = _mmm(_collect(runs, lambda r: r["etcd"]["throughput_one"]["calls_per_second"]
                            / r["sqlite"]["throughput"]["calls_per_second"]))
        out.append(("E2. throughput, 10 clients over two routers on etcd vs 10 on one router with SQLite",
                    _fmt(two, ".2f") + " x",
                    f"{med(lambda r: r['etcd']['throughput_two']['calls_per_second']):.0f} vs "
                    f"{med(lambda r: r['sqlite']['throughput']['calls_per_second']):.0f} REST calls/s; "
                    f"conflicts: {', '.join(str(r['etcd']['throughput_two']['conflicts']) for r in runs)} "
                    f"`store_conflict` answers and "
                    f"{', '.join(str(r['etcd']['throughput_two']['replans']) for r in runs)} re-plans of "
                    f"{', '.join(str(r['etcd']['throughput_two']['calls']) for r in runs)} calls; the followers "
                    f"caught up with the other router {med(lambda r: r['etcd']['throughput_two']['catch_ups']):.0f} "
                    f"times, {med(lambda r: r['etcd']['throughput_two']['catch_up_seconds']):.1f} s in all over "
                    f"{med(lambda r: r['etcd']['throughput_two']['seconds']):.1f} s (medians)"
                    + (f": reading the store {med(lambda r: r['etcd']['throughput_two']['catch_up_read_seconds']):.1f}"
                       f" s, converging the kernel (under the service lock) "
                       f"{med(lambda r: r['etcd']['throughput_two']['catch_up_reconcile_seconds']):.1f} s, the rest "
                       "waiting for the service lock and rebuilding the registry"
                       if all("catch_up_read_seconds" in r["etcd"]["throughput_two"] for r in runs) else "")
                    + (f"; from the changes since: {med(lambda r: r['etcd']['throughput_two']['catch_up_deltas']):.0f}"
                       f" of them, reading them {med(lambda r: r['etcd']['throughput_two']['catch_up_watch_seconds']):.2f}"
                       f" s, applying them "
                       f"{med(lambda r: r['etcd']['throughput_two']['catch_up_apply_delta_seconds']):.2f} s: under "
                       f"the lock {med(lambda r: r['etcd']['throughput_two']['catch_up_locked_delta_seconds']):.2f}"
                       f" s, conntrack {med(lambda r: r['etcd']['throughput_two']['catch_up_flush_seconds']):.2f}"
                       " s, the rest waiting for the lock"
                       if all("catch_up_locked_delta_seconds" in r["etcd"]["throughput_two"] for r in runs) else "")))
        out.append(("E2b. (info) 10 clients on one router on etcd vs SQLite", _fmt(one, ".2f") + " x",
                    f"{med(lambda r: r['etcd']['throughput_one']['calls_per_second']):.0f} REST calls/s"))
        starts = _mmm(_collect(runs, lambda r: r["etcd"]["start_rules_seconds"]))
        out.append(("E3. (info) start with 4,096 in etcd until the rules are in place", _fmt(starts, ".2f") + " s",
                    f"SQLite: {_fmt(_mmm(_collect(runs, lambda r: r['sqlite']['start_rules_seconds'])), '.2f')} s"))
    fails = ha.get("failover_runs", [])
    for advert in sorted({f["advert_int"] for f in fails}):
        fr = [f for f in fails if f["advert_int"] == advert]
        mdi = master_down_interval(advert, fr[0].get("backup_priority", 100))
        take = _mmm(_collect(fr, lambda f: f["takeover_s"]))
        ping = _mmm(_collect(fr, lambda f: f["ping_resumed_s"]))
        tcp = _mmm(_collect(fr, lambda f: f["tcp_resumed_s"]))
        out.append((f"F. advert_int {advert:g}: master's cables pulled -> ping flows again",
                    _fmt(ping, ".2f") + " s",
                    f"keepalived's own takeover (VRRP address on the backup) {_fmt(take, '.2f')} s; added by "
                    f"the rest: {_fmt(_mmm(_collect(fr, lambda f: f['ping_resumed_s'] - f['takeover_s'])), '.2f')} s; "
                    f"master-down interval {mdi:.2f} s (3 x {advert:g} + skew), expected takeover "
                    f"{mdi - advert:.2f}-{mdi:.2f} s after the cut"))
        out.append((f"F. advert_int {advert:g}: -> TCP flows again (same connection)", _fmt(tcp, ".2f") + " s",
                    f"added to the takeover: "
                    f"{_fmt(_mmm(_collect(fr, lambda f: f['tcp_resumed_s'] - f['takeover_s'])), '.2f')} s; "
                    f"connection survived in {sum(1 for f in fr if f.get('tcp_survived'))} of {len(fr)}"))
        out.append((f"F. advert_int {advert:g}: where the time goes",
                    _fmt(_mmm(_collect(fr, lambda f: f["daemon_told_s"] - f["takeover_s"])), ".3f") + " s",
                    "notify -> daemon (the daemon's HA `since` minus the VRRP address's appearance); "
                    f"detection (cut -> takeover) {_fmt(take, '.2f')} s; ping gap "
                    f"{_fmt(_mmm(_collect(fr, lambda f: f['ping_gap_s'])), '.2f')} s, TCP gap "
                    f"{_fmt(_mmm(_collect(fr, lambda f: f['tcp_gap_s'])), '.2f')} s"))
    return out


def split_rows(ha: dict) -> list[str]:
    """Markdown table: median ms per step of one change, etcd beside SQLite (medians over
    the repetitions of each repetition's medians)."""
    runs = [r for r in ha.get("etcd_runs", []) if r["etcd"].get("split") and r["sqlite"].get("split")]
    if not runs:
        return []
    out = ["| step of one change (median ms) | SQLite | etcd |", "| --- | --- | --- |"]
    for step in STEPS:
        s = statistics.median(r["sqlite"]["split"][step] for r in runs)
        e = statistics.median(r["etcd"]["split"][step] for r in runs)
        out.append(f"| {STEP_NAMES[step]} | {s:.2f} | {e:.2f} |")
    s = statistics.median(r["sqlite"]["change"]["median_seconds"] * 500 for r in runs)
    e = statistics.median(r["etcd"]["change"]["median_seconds"] * 500 for r in runs)
    out.append(f"| one REST call as the client sees it (half a cycle) | {s:.2f} | {e:.2f} |")
    return out


def table(ha: dict) -> str:
    lines = [f"\nHA and etcd (issue 12), {ha.get('settings', {}).get('reps', '?')} repetitions "
             "(min / median / max)"]
    for figure, value, detail in rows(ha):
        lines.append(f"  {figure:84} {value:22} {detail}")
    split = split_rows(ha)
    if split:
        lines.append("  where one change's time goes (medians, ms):")
        lines += ["    " + line for line in split if not line.startswith("| ---")]
    return "\n".join(lines)


def markdown(data: dict) -> list[str]:
    """The RESULTS.md section (empty when the run had no HA part)."""
    ha = data.get("ha")
    if not ha:
        return []
    st, code = ha.get("settings", {}), ha.get("code", {}).get("commit", "unknown")
    out = ["## High availability and etcd (issue 12, `bash benchmarks/run.sh --only-ha`)", "",
           f"Measured separately from the figures above (commit {code}, {ha.get('elapsed_seconds', 0) / 60:.1f} "
           f"min, {st.get('reps')} repetitions, {st.get('change_cycles')} cycles per one-change figure, "
           f"{st.get('clients')} clients x {st.get('cycles_per_client')} cycles for throughput, failover "
           f"at advert_int {', '.join(format(a, 'g') for a in st.get('advert_ints', []))}). "
           "etcd: the HA lab's three members (tests/support/halab.py, each in a namespace of its own on the "
           "management segment, fsync per commit), the daemons in the lab's router namespaces; SQLite: "
           "a fresh namespace, the same daemon settings (nftables, PUBLIC_INTERFACE unset, 4,096 stored "
           "associations). Failover: the lab's router pair (routed pool, unicast VRRP), probes every "
           "50 ms; the VRRP address's appearance on the backup is read from `ip -ts monitor address` "
           "in its namespace. The machine has 2 cores shared with other work: the ratios are what "
           "matter.", "",
           "| figure | min / median / max | against (same run) |", "| --- | --- | --- |"]
    out += [f"| {f} | {v} | {d} |" for f, v, d in rows(ha)]
    split = split_rows(ha)
    if split:
        out += ["", "Where one change's time goes (the daemon's steps timed in-process by "
                "benchmarks/change_timeline.py; medians over the changes, then over the repetitions):", "",
                *split]
    return out + [""]
