"""HA and etcd benchmarks of issue 12, each figure beside a baseline of the same run
(`bash benchmarks/run.sh --only-ha [--reps N] [--quick]`; hafigures.py computes and prints):

- E1, one change at 4,096 live: a daemon on the HA lab's three-member etcd
  (tests/support/halab.py, `HaLab(routers=False, etcd=True)`: a deployment's cluster, each
  member in a namespace of its own, so a commit pays the quorum's round trip and fsyncs)
  against a daemon on SQLite in a fresh namespace; nftables, PUBLIC_INTERFACE unset (the
  store's cost, not the addresses'). Both daemons run under change_timeline.py, which
  times the steps of each change in-process ("where the time goes").
- E2, throughput: 10 clients (associate + release, each on its own address) split over
  two daemons in the lab's router namespaces sharing the etcd state, the client
  processes started together; against 10 clients on the SQLite daemon. Conflicts:
  `503 store_conflict` answers (the client counts them and calls again) and the daemons'
  re-plans (their "catching up and planning again" log lines). For information also
  10 clients on one daemon on etcd (the store's cost without a second router).
- F, failover: the lab's router pair under keepalived (routed pool), a TCP stream and a
  ping train through a floating IP, the master's cables pulled; the time until ping and
  TCP flow again, against keepalived's own takeover (when the VRRP addresses appear on
  the backup, from `ip -ts monitor address` in its namespace), the daemon's HA state
  time (notify -> daemon) and VRRP's master-down interval beside.

Every etcd repetition uses its own ETCD_PREFIX on the same cluster (a fresh state);
every failover repetition a fresh lab. Results go into results.json's "ha" part (the
rest of the file is kept) and RESULTS.md is rendered again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

from . import figures, hafigures, report
from .common import PYTHON, SCALE, Namespace, free_private, free_public, machine, run, start_daemon
from tests.support import halab
from tests.support.daemonproc import DaemonProcess

ETCD_URLS = ",".join(f"http://{halab.etcd_ip(k)}:2379" for k in (1, 2, 3))
REPLAN = "catching up and planning again"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class LabNamespace:
    """A lab router's namespace, as common.Namespace looks to start_daemon and figures."""

    public_if = None

    def __init__(self, name: str):
        self.name = name

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


class TimedDaemon(DaemonProcess):
    """ipfloaterd under benchmarks/change_timeline.py (each change's steps in its log)."""

    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *self.wrapper, sys.executable, "-m", "benchmarks.change_timeline",
                "--config", str(self.config_path), *args]


def timed_change(daemon, cycles: int, warmup: int = 5) -> tuple[dict, dict]:
    """figures.one_change, and the median split of its changes (the warm-up's left out)."""
    before = len(hafigures.parse_changes(daemon.proc.log()))
    result = figures.one_change(daemon, cycles, warmup)
    records = hafigures.parse_changes(daemon.proc.log())[before + 2 * warmup:]
    return result, hafigures.split_medians(records)


def throughput_over(daemons: list, clients: int, cycles: int) -> dict:
    """`clients` clients spread over `daemons` (client k on daemon k mod n, in its namespace,
    on loopback), all starting at one moment; conflicts counted, not fatal."""
    start_at = time.perf_counter() + 3.0  # the client processes start and warm up first
    procs = []
    for j, d in enumerate(daemons):
        mine = range(j, clients, len(daemons))
        argv = [PYTHON, "-m", "benchmarks.client", "throughput", "--port", str(d.port), "--token-file",
                str(d.token_file), "--clients", str(len(mine)), "--count", str(cycles), "--max-seconds", "240",
                "--retry-conflicts", "--start-at", repr(start_at)]
        for k in mine:
            argv += ["--public", str(free_public(k)), "--private", str(free_private(k))]
        procs.append(subprocess.Popen(d.ns.argv(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    finished = [(p, *p.communicate(timeout=600)) for p in procs]  # all of them, even when one failed
    failed = [f"exit {p.returncode}: {err.strip()[-400:]}" for p, _out, err in finished if p.returncode != 0]
    if failed:
        raise RuntimeError(f"throughput client: {'; '.join(failed)}")
    return hafigures.combine_throughput([json.loads(out) for _p, out, _err in finished])


def sqlite_side(cfg, work: Path, rep: int) -> dict:
    """The baselines: a daemon on SQLite with 4,096 associations, one change, 10 clients."""
    with Namespace(public_if=False) as ns:
        d = start_daemon(ns, work / f"sqlite-{rep}", "nftables", SCALE, factory=TimedDaemon)
        try:
            out = {"start_rules_seconds": d.rules_seconds}
            out["change"], out["split"] = timed_change(d, cfg.change_cycles)
            out["throughput"] = figures.throughput(d, cfg.clients, cfg.cycles_per_client)
        finally:
            d.stop()
    return out


def etcd_side(cfg, work: Path, lab, rep: int) -> dict:
    """The same on the lab's etcd: one daemon (r1) for the change, then two (r1, r2)."""
    prefix = f"/ipfloater-bench-{os.getpid()}-{rep}"
    r1, r2 = LabNamespace(lab.ns("r1")), LabNamespace(lab.ns("r2"))
    run(r1.argv([PYTHON, "-m", "benchmarks.etcd_store", "--prefill", "--live", str(SCALE),
                 "--url", f"http://{halab.etcd_ip(1)}:2379", "--prefix", prefix]), timeout=300)
    settings = {"STATE_STORE": "etcd", "ETCD_ENDPOINTS": ETCD_URLS, "ETCD_PREFIX": prefix}
    daemons = []
    try:
        d1 = start_daemon(r1, work / f"etcd-r1-{rep}", "nftables", 0, factory=TimedDaemon, **settings)
        daemons.append(d1)
        out = {"start_rules_seconds": d1.rules_seconds}
        out["change"], out["split"] = timed_change(d1, cfg.change_cycles)
        out["throughput_one"] = figures.throughput(d1, cfg.clients, cfg.cycles_per_client)
        daemons.append(start_daemon(r2, work / f"etcd-r2-{rep}", "nftables", 0, factory=TimedDaemon, **settings))
        replans = sum(d.proc.log().count(REPLAN) for d in daemons)
        caught = [len(hafigures.catch_ups(d.proc.log())) for d in daemons]
        two = out["throughput_two"] = throughput_over(daemons, cfg.clients, cfg.cycles_per_client)
        two["replans"] = sum(d.proc.log().count(REPLAN) for d in daemons) - replans
        two.update(hafigures.sum_catch_ups([c for d, n in zip(daemons, caught)
                                            for c in hafigures.catch_ups(d.proc.log())[n:]]))
    finally:
        for d in daemons:
            d.stop()
            d.proc.run_command("flush")  # (the next repetition's start loads its rules again)
    return out


def etcd_pass(cfg, work: Path) -> list[dict]:
    runs = []
    log("etcd: the HA lab's network and three etcd members")
    with halab.HaLab(routers=False, etcd=True, vms=0) as lab:
        for rep in range(cfg.reps):
            for attempt in (1, 2):
                try:
                    log(f"etcd repetition {rep + 1}/{cfg.reps}: SQLite baselines")
                    sqlite = sqlite_side(cfg, work, rep)
                    log(f"etcd repetition {rep + 1}/{cfg.reps}: etcd, one router then two")
                    etcd = etcd_side(cfg, work, lab, rep if attempt == 1 else rep + 1000)
                    break
                except RuntimeError as exc:  # e.g. a store timeout under the shared machine's load
                    if attempt == 2:
                        raise
                    log(f"repetition failed ({str(exc)[-300:]}); repeating it once")
            runs.append({"rep": rep, "sqlite": sqlite, "etcd": etcd})
            log(f"  one change {etcd['change']['median_seconds'] * 1000:.1f} ms (etcd) vs "
                f"{sqlite['change']['median_seconds'] * 1000:.1f} ms (SQLite); "
                f"{etcd['throughput_two']['calls_per_second']:.0f} calls/s over two routers "
                f"({etcd['throughput_two']['conflicts']} conflicts, {etcd['throughput_two']['replans']} re-plans) "
                f"vs {sqlite['throughput']['calls_per_second']:.0f} (SQLite, one router)")
    return runs


# -- failover ---------------------------------------------------------------------------------

class AddressWatch:
    """`ip -ts monitor address` in one namespace, into a file: when an address appeared."""

    def __init__(self, lab, ns: str, path: Path):
        self.lab, self.path = lab, path
        with open(path, "wb") as out:
            self.proc = lab.popen(ns, ["ip", "-ts", "monitor", "address"], stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.lab._stop_proc(self.proc, terminate=True)

    def appeared(self, address: str) -> Optional[float]:
        """time.time() of the first event adding `address`, None if none was seen."""
        for line in self.path.read_text(errors="replace").splitlines():
            if line.startswith("[") and f" inet {address}/" in line and "Deleted" not in line:
                return datetime.fromisoformat(line[1:line.index("]")]).timestamp()
        return None


def backup_priority(advert_int: float) -> int:
    """The priority of the lab's second router (the shipped example's "B:" value)."""
    return int(re.search(r"^\s*priority\s+(\d+)", halab.keepalived_conf("r2", advert_int), re.M).group(1))


def failover_rep(advert_int: float, work: Path) -> dict:
    with halab.HaLab(advert_int=advert_int) as lab:
        lab.wait_ha_state("r1", "master")
        watch = AddressWatch(lab, lab.ns("r2"), work / f"monitor-{advert_int}-{time.time():.0f}.txt")
        flows = halab.Flows(lab)  # (>= 10 answers: the monitor is listening long before the cut)
        try:
            cut = time.time()
            lab.cut_links("r1")
            polled = lab.wait_master("r2")
            flowing = flows.wait_flowing(cut)
            lab.wait_ha_state("r2", "master")
            since = lab.daemons["r2"].cli_json("health")["ha_state"]["since"]
        finally:
            end = flows.stop()
            watch.stop()
        if flowing != (True, True):
            raise RuntimeError(f"traffic did not flow again through r2 (stream, ping: {flowing})")
        seen = [watch.appeared(vip) for vip in (halab.PUBLIC_VIP, halab.PRIVATE_VIP)]
    ping, tcp = flows.ping.replies, [t for _n, t in flows.stream.replies]
    takeover = (max(seen) if all(seen) else polled) - cut
    return {"advert_int": advert_int, "backup_priority": backup_priority(advert_int),
            "takeover_s": round(takeover, 3), "takeover_from": "ip monitor" if all(seen) else "polled",
            "takeover_polled_s": round(polled - cut, 3), "daemon_told_s": round(since - cut, 3),
            "ping_resumed_s": hafigures.resumed_after(ping, cut), "ping_gap_s": halab.outage(ping, cut),
            "tcp_resumed_s": hafigures.resumed_after(tcp, cut), "tcp_gap_s": halab.outage(tcp, cut),
            "tcp_survived": end is not None and end.get("error") is None and flows.stream.in_order()}


def failover_pass(cfg, work: Path) -> list[dict]:
    runs = []
    for rep in range(cfg.reps):
        for advert in cfg.advert_ints:  # interleaved, so drift hits both alike
            log(f"failover repetition {rep + 1}/{cfg.reps}, advert_int {advert:g}")
            try:
                r = failover_rep(advert, work)
            except (RuntimeError, AssertionError) as exc:
                log(f"repetition failed ({str(exc)[-300:]}); repeating it once")
                r = failover_rep(advert, work)
            runs.append({"rep": rep, **r})
            log(f"  takeover {r['takeover_s']:.3f} s, daemon told {r['daemon_told_s']:.3f} s, ping flows "
                f"{r['ping_resumed_s']} s, TCP {r['tcp_resumed_s']} s after the cut")
    return runs


# -- the command ------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ha", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only-ha", action="store_true", help="(what run.sh passes: this module's figures)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each part (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer cycles per measurement, failover at advert_int 0.2 only (smoke run)")
    parser.add_argument("--advert-int", type=float, nargs="+", default=None,
                        help="keepalived advert_int values of the failover (default 0.2 1; --quick: 0.2)")
    parser.add_argument("--part", choices=("all", "etcd", "failover"), default="all")
    parser.add_argument("--results", default=str(Path(__file__).resolve().parent / "results.json"))
    parser.add_argument("--markdown", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps: {args.reps} is not at least 1")
    for value in args.advert_int or ():
        if not 0.05 <= value <= 10:
            parser.error(f"--advert-int: {value!r} is not between 0.05 and 10 seconds")
    cfg = argparse.Namespace(reps=args.reps, change_cycles=12 if args.quick else 100, clients=10,
                             cycles_per_client=5 if args.quick else 50,
                             advert_ints=args.advert_int or ([0.2] if args.quick else [0.2, 1.0]))
    started = time.time()
    ha = {"machine": machine(), "settings": {**vars(cfg), "quick": args.quick, "part": args.part},
          "code": {"commit": os.environ.get("BENCH_COMMIT", "unknown"), "package": figures.package_path()}}
    work = Path(tempfile.mkdtemp(prefix="ipfloater-habench-"))
    try:
        if args.part in ("all", "etcd"):
            ha["etcd_runs"] = etcd_pass(cfg, work)
        if args.part in ("all", "failover"):
            ha["failover_runs"] = failover_pass(cfg, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ha["elapsed_seconds"] = time.time() - started
    path = Path(args.results)
    full = json.loads(path.read_text()) if path.exists() else {}
    full["ha"] = ha
    path.write_text(json.dumps(full, indent=1) + "\n")
    Path(args.markdown).write_text(report.render(full) if "runs" in full else "\n".join(hafigures.markdown(full)))
    print(hafigures.table(ha))
    return 0


if __name__ == "__main__":
    sys.exit(main())
