"""The table of a paired run (benchmarks/paired.sh): `python -m benchmarks.paired DIR`.

DIR holds base-N.json and head-N.json (benchmarks.scale results, one per round); each
figure is printed per round, base beside head, and as the median of the rounds."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from .report import BACKENDS


def _figures(data: dict, backend: str) -> dict:
    """The figures of one result file for one backend (medians over its repetitions)."""
    out: dict = {}
    med = statistics.median
    runs = [r for r in data.get("runs", []) if r["backend"] == backend and r["public_if"]]
    if runs:
        out["4,096: 1. rules / stock tool (x)"] = med(r["large"]["rules_seconds"] / r["baseline"]["rules_seconds"]
                                                      for r in runs)
        if all("change" in r["large"] for r in runs):
            out["4,096: 2. one change (ms)"] = med(r["large"]["change"]["median_seconds"] * 1000 for r in runs)
            out["4,096: 2. ratio to 16 live (x)"] = med(r["large"]["change"]["median_seconds"] /
                                                        r["small"]["change"]["median_seconds"] for r in runs)
            out["4,096: 3. calls/s, 10 clients"] = med(r["large"]["throughput"]["calls_per_second"] for r in runs)
            out["4,096: 5. VmHWM (MB)"] = med(r["large"]["hwm_kib"] / 1024 for r in runs)
    large = [r for r in data.get("large_runs", []) if r["backend"] == backend]
    if large:
        out["65,536: 1. rules / stock tool (x)"] = med(r["large"]["rules_seconds"] / r["baseline"]["rules_seconds"]
                                                       for r in large)
        out["65,536: 1. daemon start -> rules (s)"] = med(r["large"]["rules_seconds"] for r in large)
        out["65,536: 1. stock tool (s)"] = med(r["baseline"]["rules_seconds"] for r in large)
        out["65,536: 2. one change at 65,520 (ms)"] = med(r["large"]["change"]["median_seconds"] * 1000
                                                          for r in large)
        out["65,536: 5. VmHWM after the start (MB)"] = med(r["large"]["hwm_after_start_kib"] / 1024 for r in large)
        out["65,536: 5. VmHWM in all (MB)"] = med(r["large"]["hwm_kib"] / 1024 for r in large)
        if all("restart" in r["large"] for r in large):
            out["65,536: 5b. restart: VmHWM (MB)"] = med(r["large"]["restart"]["hwm_after_start_kib"] / 1024
                                                         for r in large)
            out["65,536: 5b. restart: start -> rules (s)"] = med(r["large"]["restart"]["rules_seconds"]
                                                                 for r in large)
    return out


def table(directory: Path) -> str:
    rounds = sorted({int(p.stem.split("-")[1]) for p in directory.glob("head-*.json")})
    lines = []
    for backend in BACKENDS:
        rows: dict = {}
        for side in ("base", "head"):
            for n in rounds:
                path = directory / f"{side}-{n}.json"
                if not path.exists():
                    continue
                data = json.loads(path.read_text())
                for name, value in _figures(data, backend).items():
                    rows.setdefault(name, {"base": [], "head": []})[side].append(value)
        lines.append(f"\n{backend} (per round: base, then head; then the medians)")
        for name, sides in rows.items():
            per = "  ".join(f"{b:8.2f} {h:8.2f}" for b, h in zip(sides["base"], sides["head"]))
            lines.append(f"  {name:40} {per}   | median base {statistics.median(sides['base']):8.2f}  "
                         f"head {statistics.median(sides['head']):8.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
