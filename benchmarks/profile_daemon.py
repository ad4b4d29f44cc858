"""Where the daemon's time goes at 4,096 associations (the hot spots named in RESULTS.md):

    python -m benchmarks.profile_daemon timeline --backend B [--public-if] [--reps N] [--live N]
    python -m benchmarks.profile_daemon start    --backend B [--public-if]
    python -m benchmarks.profile_daemon requests --backend B [--public-if] [--py-spy PATH]

`timeline`: the real daemon started N times in fresh namespaces under
benchmarks/start_timeline.py, which times the phases of its start up to "rules in place"
with perf_counter (no profiler overhead); prints the median of each phase, next to the
stock tool's load of the same rules and the bare interpreter's start.

`start`: the real daemon under cProfile (`python -m cProfile -o FILE -m one_ipfloater.daemon`)
in a fresh namespace, stopped with SIGTERM once ready, so the profile is the start-up
(config, state, full reconcile, listen). Prints the top functions by own and by cumulative
time, as shares of the whole start.

`requests`: py-spy (`pip install py-spy`; not a project dependency) samples the daemon,
idle threads included, while the 10-client throughput load runs. Each sample is one
thread's stack; the samples whose stack holds `FloatingIPService._commit` are the work
done under the service lock, which serialises every change, so their breakdown is where
the per-change time goes. Prints the share of those samples per leaf function and per
frame (inclusive).
"""

from __future__ import annotations

import argparse
import collections
import json
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import figures
from .common import SCALE, Namespace, start_daemon, timed
from tests.support.daemonproc import DaemonProcess


class _ProfiledDaemon(DaemonProcess):
    def __init__(self, *args, profile_out: str, **kw):
        super().__init__(*args, **kw)
        self.profile_out = profile_out

    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, sys.executable, "-m", "cProfile", "-o", self.profile_out,
                "-m", "one_ipfloater.daemon", "--config", str(self.config_path), *args]


def profile_start(backend: str, public_if: bool, top: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    out = str(work / "start.pstats")
    with Namespace(public_if=public_if) as ns:
        daemon = start_daemon(ns, work / "d", backend, SCALE,
                              factory=lambda *a, **kw: _ProfiledDaemon(*a, profile_out=out, **kw))
        print(f"start -> rules {daemon.rules_seconds:.2f} s, -> ready {daemon.ready_seconds:.2f} s "
              "under cProfile (adds overhead)")
        daemon.stop()
        for label, code in (("interpreter start (python -c pass)", "pass"),
                            ("+ the daemon's imports", "import one_ipfloater.daemon, one_ipfloater.api, "
                             "one_ipfloater.service, one_ipfloater.nat"),
                            ("+ iptc (iptables backend, at its first change)", "import iptc")):
            runs = sorted(timed(ns.argv([sys.executable, "-c", code])) for _ in range(5))
            print(f"{label}: {runs[2] * 1000:.0f} ms (median of 5)")
    stats = pstats.Stats(out)
    # the time after the ready line (serving, idle until SIGTERM) is not start-up
    serving = {"serve", "poll2", "select", "<method 'poll' of 'select.poll' objects>", "shutdown"}
    idle = sum(ct for (_f, _l, func), (_cc, _nc, _tt, ct, _c) in stats.stats.items() if func == "serve")
    total = stats.total_tt - idle
    rows = [(key, tt, ct, nc) for key, (cc, nc, tt, ct, _callers) in stats.stats.items()
            if key[2] not in serving]
    for title, index in (("own time", 1), ("cumulative time", 2)):
        print(f"\ntop {top} by {title} (share of {total:.2f} s of start-up profiled):")
        def share(row) -> float:  # callers of the serving loop: minus the time spent serving
            t = row[1] if index == 1 else row[2] - (idle if row[2] > total else 0)
            return 100 * min(t, total) / total

        for row in sorted(rows, key=lambda r: -share(r))[:top]:
            (file, line, func), _tt, _ct, nc = row
            where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if file != "~" else "builtin"
            print(f"  {share(row):5.1f}%  {func:40} {where:48} calls={nc}")
    shutil.rmtree(work, ignore_errors=True)


class _TimelineDaemon(DaemonProcess):
    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *self.wrapper, "env", f"TIMELINE_BACKEND={self.settings['NAT_BACKEND']}",
                sys.executable, "-m", "benchmarks.start_timeline", "--config", str(self.config_path), *args]


def start_timeline(backend: str, public_if: bool, reps: int, live: int = SCALE) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    phases: dict[str, list] = collections.defaultdict(list)
    memory: dict[str, list] = collections.defaultdict(list)
    order: dict[str, float] = {}
    totals, baselines, interpreter = [], [], []
    for _ in range(reps):
        baselines.append(figures.bulk_load_baseline(backend, live, work / "baseline", public_if)["rules_seconds"])
        with Namespace(public_if=public_if) as ns:
            daemon = start_daemon(ns, work / "d", backend, live, factory=_TimelineDaemon)
            memory["after the ready line"].append((daemon.vm_hwm_kib() / 1024, daemon.vm_rss_kib() / 1024))
            daemon.stop()
            interpreter.append(timed(ns.argv([sys.executable, "-c", "pass"])))
        totals.append(daemon.rules_seconds)
        line = next(l for l in daemon.proc.log().splitlines() if l.startswith('{"timeline"'))
        for label, start, duration, *hwm_rss in json.loads(line)["timeline"]:
            phases[label].append(duration if label != "rules in place" else start)
            order.setdefault(label, start)
            if hwm_rss:
                memory[label].append(tuple(hwm_rss))
        shutil.rmtree(work / "d", ignore_errors=True)
    med = statistics.median
    print(f"{backend}, PUBLIC_INTERFACE {'set' if public_if else 'unset'}, {live:,} associations, "
          f"median of {reps} starts (ms):")
    print(f"  stock tool loading the same rules        {med(baselines) * 1000:6.1f}")
    print(f"  daemon, process start -> rules in place  {med(totals) * 1000:6.1f}  "
          f"({med(totals) / med(baselines):.2f}x)")
    print(f"  `ip netns exec` + bare interpreter start {med(interpreter) * 1000:6.1f}  (python -c pass)")
    print("  inside the daemon, from its first line (phases nest: 'sync in all' holds the backend's steps;"
          " then VmHWM / VmRSS in MB as the phase ended):")
    for label in sorted(phases, key=order.get):
        mem = memory.get(label)
        print(f"    {label:42} {med(phases[label]):6.1f}" + ("  (time since the first line)"
                                                              if label == "rules in place" else "")
              + (f"   {med(m[0] for m in mem):6.1f} / {med(m[1] for m in mem):6.1f}" if mem else ""))
    ready = memory["after the ready line"]
    print(f"    {'after the ready line (API listening)':42} {'':6}   {med(m[0] for m in ready):6.1f} / "
          f"{med(m[1] for m in ready):6.1f}")
    shutil.rmtree(work, ignore_errors=True)


def profile_requests(backend: str, public_if: bool, py_spy: str, top: int, live: int = SCALE,
                     sequential: bool = False) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    raw = work / "requests.txt"
    with Namespace(public_if=public_if) as ns:
        daemon = start_daemon(ns, work / "d", backend, live)
        spy = subprocess.Popen([py_spy, "record", "--idle", "--format", "raw", "--rate", "200",
                                "--output", str(raw), "--pid", str(daemon.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # let py-spy attach before the load starts
        started = time.perf_counter()
        if sequential:
            result = figures.one_change(daemon, 60)
        else:
            result = figures.throughput(daemon, 10, 15)
        wall = time.perf_counter() - started
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        spy.wait(60)
        daemon.stop()
    if not raw.exists() or not raw.read_text().strip():
        raise SystemExit(f"py-spy wrote nothing: {spy.stderr.read().decode()[-500:]}")
    if sequential:
        print(f"one client, sequential: associate+release {result['median_seconds'] * 1000:.1f} ms (median) "
              f"at {live} live; {wall:.1f} s sampled")
    else:
        print(f"throughput while sampled: {result['calls_per_second']:.0f} calls/s ({result['calls']} calls)")
    # serialised sections: the service lock, and the conntrack netlink socket's lock
    sections = {"FloatingIPService._commit ": "FloatingIPService._commit (service lock held)",
                "flush_conntrack ": "hostnet.flush_conntrack (outside the service lock; one socket lock)"}
    leaf = {k: collections.Counter() for k in sections}
    inclusive = {k: collections.Counter() for k in sections}
    held = dict.fromkeys(sections, 0)
    waiting = reading = other = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        if frames[-1].startswith(("FloatingIPService.allocate ", "FloatingIPService._run ")):
            waiting += n  # a request thread blocked on `with self._lock`
        section = next((k for k in sections if any(f.startswith(k) for f in frames)), None)
        if "process_request_thread" in stack and section is None:
            if frames[-1].startswith("SocketIO.readinto "):
                reading += n
            else:
                other += n
        if section is None:
            continue
        held[section] += n
        leaf[section][_short(frames[-1])] += n
        for f in set(_short(f) for f in frames):
            if not f.split(" (")[-1].startswith(("threading.py", "socketserver.py", "server.py", "api.py")):
                inclusive[section][f] += n  # the request-thread plumbing above the service is left out
    locked = held["FloatingIPService._commit "]
    print(f"\n{waiting} samples of request threads waiting for the service lock")
    if sequential:  # one connection, one thread: its samples cover the whole wall time
        busy = reading + sum(held.values()) + other
        print(f"the request thread: {100 * locked / max(1, busy):.1f}% of its samples in _commit, "
              f"{100 * (busy - locked - reading) / max(1, busy):.1f}% elsewhere in a request, "
              f"{100 * reading / max(1, busy):.1f}% waiting for the next request "
              f"(the client has not sent it: includes the time the response spends in TCP)")
    for key, title in sections.items():
        print(f"\n== {title}: {held[key]} samples")
        for what, counter in (("leaf function", leaf[key]), ("inclusive, per frame", inclusive[key])):
            print(f"top {top} by {what}:")
            for name, n in counter.most_common(top):
                print(f"  {100 * n / max(held[key], 1):5.1f}%  {name}")
    shutil.rmtree(work, ignore_errors=True)


def _short(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (file.py:123)'."""
    func, _, where = frame.partition(" (")
    return f"{func} ({Path(where.rstrip(')')).name})" if where else func


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_daemon")
    parser.add_argument("what", choices=("timeline", "start", "requests"))
    parser.add_argument("--backend", choices=("iptables", "nftables"), default="nftables")
    parser.add_argument("--public-if", action="store_true")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--top", type=int, default=18)
    parser.add_argument("--reps", type=int, default=7, help="timeline: starts to take the median of")
    parser.add_argument("--live", type=int, default=SCALE, help="stored associations (requests and timeline)")
    parser.add_argument("--sequential", action="store_true",
                        help="requests: one client's sequential associate+release instead of 10 clients")
    args = parser.parse_args()
    if args.what == "timeline":
        start_timeline(args.backend, args.public_if, args.reps, args.live)
    elif args.what == "start":
        profile_start(args.backend, args.public_if, args.top)
    else:
        profile_requests(args.backend, args.public_if, args.py_spy, args.top, args.live, args.sequential)
    return 0


if __name__ == "__main__":
    sys.exit(main())
