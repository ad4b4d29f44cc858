"""Scale benchmarks for issue 6 ("Scale: thousands of floating IPs"):
`python -m benchmarks.scale [--reps N] [--quick] [--only-start]` (run.sh is the one command).

For each backend and each repetition, in fresh namespaces:
  - the stock tool loads the equivalent rules (figure 1's baseline);
  - a daemon with 16 stored associations: one change, throughput (baselines of 2 and 3);
  - a daemon with 4,096 stored associations: its start (figure 1: process start -> its
    "rules" line, every NAT rule in place; and, for information, -> its "ready" line,
    addresses added and API listening; rule and address counts verified after that),
    one change (2), throughput (3), the hook (4), then its VmHWM (5).
That is done with PUBLIC_INTERFACE set (the main figures) and again without it.
A last, single-repetition pass ("where the time goes") restarts the daemons with
one cost removed at a time through its config (CONNTRACK_FLUSH=no, GRATUITOUS_ARP=no,
DB_SYNC=normal) or environment (MALLOC_ARENA_MAX=2).

The 65,536 pass (`--live 65536`, a region's /16; common.Layout): per backend and
repetition, the stock tool's load of the same rules, the daemon's start with 65,536
stored associations and PUBLIC_INTERFACE unset (a routed pool: see large_pass)
(figure 1 at 65,536: until its "rules" line, at most 3x the stock tool), its VmHWM after the start, then 16 associations released and one change measured
at 65,520 live, and its VmHWM after that (figure 5 at 65,536: at most 120 MB); then it is
restarted on its rules (its start reads and compares the whole table, as every periodic
reconcile does): that start's time and VmHWM.
`--only-65536` runs that pass alone and merges it into the existing results files.

Results: benchmarks/results.json (raw) and benchmarks/RESULTS.md (report.py).
`--only-start` (for development) measures figure 1 alone, `--reps` times with and
without PUBLIC_INTERFACE, prints its table and writes no file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import figures, report
from .common import LARGE, SCALE, SMALL, Namespace, count_rules, expected_counts, machine, start_daemon

HERE = Path(__file__).resolve().parent
BACKENDS = ("iptables", "nftables")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Settings:
    def __init__(self, args):
        self.reps = args.reps
        self.change_cycles = 12 if args.quick else 100
        self.clients = 10
        self.cycles_per_client = 5 if args.quick else 50
        self.hook_runs = 3 if args.quick else 10
        self.only_start = args.only_start
        self.breakdown = not args.no_breakdown and not args.only_start and not args.only_large
        self.large = args.live if args.live > SCALE else None
        self.large_reps = args.large_reps


def daemon_run(backend: str, live: int, public_if: bool, cfg: Settings, work: Path,
               hook: bool = False, env: dict = None, start_only: bool = False, restart: bool = False,
               **extra: str) -> dict:
    """One daemon in a fresh namespace: start, verify, one change, throughput, hook, memory
    (`start_only`: start and verify, nothing else). `env`: environment variables the
    daemon process gets on top of ours. `restart`: then stopped and started again on its
    rules (the start reads the table and compares it, as a periodic reconcile does)."""
    out: dict = {"backend": backend, "live": live, "public_if": public_if}
    with Namespace(public_if=public_if) as ns:
        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})  # DaemonProcess passes our environment on
        try:
            daemon = start_daemon(ns, work / f"{backend}-{live}-{int(public_if)}", backend, live, **extra)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        try:
            out["rules_seconds"] = daemon.rules_seconds
            out["ready_seconds"] = daemon.ready_seconds
            counts = count_rules(ns, backend)
            want = expected_counts(backend, live, public_if)
            if counts != want:
                raise RuntimeError(f"{backend} at {live}: kernel holds {counts}, expected {want}")
            out["counts"] = counts
            out["hwm_after_start_kib"] = daemon.vm_hwm_kib()
            out["rss_after_start_kib"] = daemon.vm_rss_kib()
            if start_only:
                return out
            out["released_first"] = figures.release_first(daemon)  # (a full pool: 16 freed)
            # (beyond 4,096 an iptables change takes a second: 20 cycles are enough for a median)
            out["change"] = figures.one_change(daemon, cfg.change_cycles if live <= SCALE else
                                               min(cfg.change_cycles, 20))
            if live <= SCALE:  # (the 65,536 pass: start, one change and memory)
                out["throughput"] = figures.throughput(daemon, cfg.clients, cfg.cycles_per_client)
            if hook:
                out["hook"] = figures.hook_latency(daemon, backend, cfg.hook_runs)
            out["hwm_kib"] = daemon.vm_hwm_kib()
            if restart:
                daemon.stop()
                daemon = start_daemon(ns, work / f"{backend}-{live}-{int(public_if)}", backend, live, **extra)
                out["restart"] = {"rules_seconds": daemon.rules_seconds, "ready_seconds": daemon.ready_seconds,
                                  "hwm_after_start_kib": daemon.vm_hwm_kib(), "counts": count_rules(ns, backend)}
                if out["restart"]["counts"] != want:
                    raise RuntimeError(f"{backend} at {live}, restarted: kernel holds {out['restart']['counts']}")
        finally:
            daemon.stop()
            shutil.rmtree(work / f"{backend}-{live}-{int(public_if)}", ignore_errors=True)
    return out


def repetition(backend: str, public_if: bool, cfg: Settings, work: Path) -> dict:
    tag = f"{backend}, PUBLIC_INTERFACE {'set' if public_if else 'unset'}"
    log(f"{tag}: stock-tool baseline ({SCALE} associations)")
    base = figures.bulk_load_baseline(backend, SCALE, work / "baseline", public_if)
    if base["counts"] != expected_counts(backend, SCALE, public_if):
        raise RuntimeError(f"baseline load of {backend}: {base['counts']}")
    if cfg.only_start:
        log(f"{tag}: daemon start with {SCALE} associations")
        large = daemon_run(backend, SCALE, public_if, cfg, work, start_only=True)
        log(f"{tag}: rules {large['rules_seconds']:.3f} s, ready {large['ready_seconds']:.3f} s "
            f"vs {base['rules_seconds']:.3f} s")
        return {"baseline": base, "large": large}
    log(f"{tag}: daemon with {SMALL} associations")
    small = daemon_run(backend, SMALL, public_if, cfg, work)
    log(f"{tag}: daemon with {SCALE} associations")
    large = daemon_run(backend, SCALE, public_if, cfg, work,
                       hook=public_if and figures.hook_available())
    log(f"{tag}: rules {large['rules_seconds']:.3f} s (ready {large['ready_seconds']:.3f} s) vs "
        f"{base['rules_seconds']:.3f} s; change "
        f"{large['change']['median_seconds'] * 1000:.1f} vs {small['change']['median_seconds'] * 1000:.1f} ms; "
        f"{large['throughput']['calls_per_second']:.0f} calls/s")
    return {"baseline": base, "small": small, "large": large}


def large_pass(cfg: Settings, work: Path, live: int) -> list[dict]:
    """Figures 1 and 5 at `live` (65,536) associations, both backends interleaved; the one
    change for information. PUBLIC_INTERFACE unset: a /16 is a routed pool (the upstream
    router routes it to the router), since the kernel adds /32s to one interface in
    quadratic time (`ip -batch` of 65,536 took more than 120 s here)."""
    runs = []
    for rep in range(cfg.large_reps):
        for backend in BACKENDS:
            log(f"{live} pass, repetition {rep + 1}/{cfg.large_reps}: {backend} stock-tool baseline")
            base = figures.bulk_load_baseline(backend, live, work / "baseline", False)
            if base["counts"] != expected_counts(backend, live, False):
                raise RuntimeError(f"baseline load of {backend} at {live}: {base['counts']}")
            log(f"{live} pass: {backend} daemon")
            large = daemon_run(backend, live, False, cfg, work, restart=True)
            log(f"{live} pass: {backend}: rules {large['rules_seconds']:.3f} s vs {base['rules_seconds']:.3f} s "
                f"({large['rules_seconds'] / base['rules_seconds']:.2f}x), ready {large['ready_seconds']:.3f} s; "
                f"VmHWM {large['hwm_after_start_kib'] / 1024:.0f} MB after the start, "
                f"{large['hwm_kib'] / 1024:.0f} MB in all; change {large['change']['median_seconds'] * 1000:.1f} ms; "
                f"restart on its rules {large['restart']['rules_seconds']:.3f} s, "
                f"VmHWM {large['restart']['hwm_after_start_kib'] / 1024:.0f} MB")
            runs.append({"backend": backend, "public_if": False, "rep": rep, "live": live,
                         "baseline": base, "large": large})
    return runs


def breakdown(cfg: Settings, work: Path) -> list[dict]:
    """Single runs with one cost removed at a time (the change and throughput figures)."""
    arena = {"MALLOC_ARENA_MAX": "2"}
    variants = [  # (label, PUBLIC_INTERFACE, daemon environment, config)
        ("as shipped", False, {}, {}),
        ("CONNTRACK_FLUSH=no", False, {}, {"CONNTRACK_FLUSH": "no"}),
        ("DB_SYNC=normal", False, {}, {"DB_SYNC": "normal"}),
        ("CONNTRACK_FLUSH=no + DB_SYNC=normal", False, {}, {"CONNTRACK_FLUSH": "no", "DB_SYNC": "normal"}),
        ("MALLOC_ARENA_MAX=2 in the daemon's environment", False, arena, {}),
        ("PUBLIC_INTERFACE, GRATUITOUS_ARP=no", True, {}, {"GRATUITOUS_ARP": "no"}),
        ("PUBLIC_INTERFACE, GRATUITOUS_ARP=no + CONNTRACK_FLUSH=no", True, {},
         {"GRATUITOUS_ARP": "no", "CONNTRACK_FLUSH": "no"}),
    ]
    rows = []
    for backend in BACKENDS:
        for label, public_if, env, extra in variants:
            row = {"backend": backend, "variant": label}
            for live in (SMALL, SCALE):
                log(f"breakdown {backend} {label} at {live}")
                r = daemon_run(backend, live, public_if, cfg, work, env=env, **extra)
                row[str(live)] = {"rules_seconds": r["rules_seconds"], "ready_seconds": r["ready_seconds"],
                                  "change_ms": r["change"]["median_seconds"] * 1000,
                                  "change_p10_ms": r["change"]["p10_seconds"] * 1000,
                                  "change_p90_ms": r["change"]["p90_seconds"] * 1000,
                                  "calls_per_second": r["throughput"]["calls_per_second"],
                                  "hwm_mb": r["hwm_kib"] / 1024}
            rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument("--reps", type=int, default=5, help="repetitions with PUBLIC_INTERFACE (default 5)")
    parser.add_argument("--reps-without", type=int, default=3,
                        help="repetitions without PUBLIC_INTERFACE (default 3)")
    parser.add_argument("--quick", action="store_true", help="fewer cycles per measurement (smoke run)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the 'where the time goes' pass")
    parser.add_argument("--only-start", action="store_true",
                        help="figure 1 only (stock tool and daemon start at 4,096, --reps times with "
                             "and without PUBLIC_INTERFACE); prints a table, writes no file")
    parser.add_argument("--live", type=int, default=LARGE, choices=(SCALE, LARGE),
                        help=f"also measure figures 1 and 5 at this many associations ({LARGE}: a /16; "
                             f"{SCALE}: skip that pass)")
    parser.add_argument("--large-reps", type=int, default=3, help="repetitions of the --live pass (default 3)")
    parser.add_argument("--only-65536", dest="only_large", action="store_true",
                        help="the --live 65536 pass alone; merged into the existing results files")
    parser.add_argument("--results", default=str(HERE / "results.json"))
    parser.add_argument("--markdown", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args(argv)
    cfg = Settings(args)
    started = time.time()
    # paths inside the repository are recorded relative to it: the results are committed
    where = {key: os.path.relpath(getattr(args, key), HERE.parent)
             for key in ("results", "markdown")}
    data: dict = {"machine": machine(), "settings": vars(args) | where | {
        "change_cycles": cfg.change_cycles, "clients": cfg.clients,
        "cycles_per_client": cfg.cycles_per_client, "hook_runs": cfg.hook_runs},
        "hook_available": figures.hook_available(), "runs": [],
        "code": {"commit": os.environ.get("BENCH_COMMIT", "unknown"), "package": figures.package_path()}}
    work = Path(tempfile.mkdtemp(prefix="ipfloater-bench-"))
    if args.only_large:
        return only_large(args, cfg, data, work, started)
    try:
        reps_without = args.reps if args.only_start else args.reps_without
        for public_if, reps in ((True, args.reps), (False, reps_without)):
            for rep in range(reps):
                for backend in BACKENDS:  # interleaved, so drift hits both backends alike
                    log(f"repetition {rep + 1}/{reps}")
                    try:
                        result = repetition(backend, public_if, cfg, work)
                    except RuntimeError as exc:  # e.g. a namespace removed under us: once more
                        log(f"repetition failed ({exc}); repeating it once")
                        data.setdefault("retried", []).append(str(exc)[-300:])
                        result = repetition(backend, public_if, cfg, work)
                    data["runs"].append({"backend": backend, "public_if": public_if, "rep": rep, **result})
        if cfg.large and not args.only_start:
            data["large_runs"] = large_pass(cfg, work, cfg.large)
        if cfg.breakdown:
            data["breakdown"] = breakdown(cfg, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data["elapsed_seconds"] = time.time() - started
    if args.only_start:  # a development run: nothing written
        print(report.start_table(data))
        return 0
    try:  # the HA figures are measured separately (benchmarks/ha.py): kept from the last file
        data["ha"] = json.loads(Path(args.results).read_text())["ha"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    Path(args.results).write_text(json.dumps(data, indent=1) + "\n")
    markdown = report.render(data)
    Path(args.markdown).write_text(markdown)
    print(report.table(data))
    print(report.large_table(data))
    return 0


def only_large(args, cfg: Settings, data: dict, work: Path, started: float) -> int:
    """`--only-65536`: the large pass alone, put into the results files of the last full
    run (the rest of them unchanged; a missing file gets this pass only)."""
    try:
        runs = large_pass(cfg, work, LARGE)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = Path(args.results)
    full = json.loads(path.read_text()) if path.exists() else {**data, "elapsed_seconds": 0.0}
    full["large_runs"] = runs
    full["large_pass"] = {"machine": data["machine"], "code": data["code"], "reps": cfg.large_reps,
                          "change_cycles": min(cfg.change_cycles, 20), "elapsed_seconds": time.time() - started}
    path.write_text(json.dumps(full, indent=1) + "\n")
    Path(args.markdown).write_text(report.render(full))
    print(report.large_table(full))
    return 0


if __name__ == "__main__":
    sys.exit(main())
