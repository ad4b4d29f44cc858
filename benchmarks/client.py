"""REST client of the benchmarks; runs INSIDE the daemon's namespace (the daemon listens
on that namespace's loopback): `python -m benchmarks.client MODE --port P ...`.
Prints one JSON document on stdout.

Modes:
- `latency`: one client, `--count` sequential cycles on one free address, each cycle
  POST /v1/floatingips {public_ip, private_ip} (allocate + associate, one change) then
  DELETE /v1/floatingips/<ip> (release, one change); the seconds of every cycle.
- `throughput`: `--clients` processes, each with its own keep-alive connection and its
  own free public/private address, start together and each run `--count` cycles (or
  until `--max-seconds`); total REST calls and wall-clock seconds.
- `release`: DELETE /v1/floatingips/<ip> for every `--public` (frees addresses of a full
  pool for the two modes above); how many were released.

`--retry-conflicts` (several daemons sharing etcd): a `503 store_conflict` answer (nothing
changed) is counted and the same call made again, up to 50 times; `--start-at T`
(throughput): the clients start at perf_counter time T, so that client processes in
several namespaces start together (CLOCK_MONOTONIC is one clock for the whole host).

http.client (standard library) keeps the client's own cost small next to the daemon's,
so the figures are the daemon's; every call must answer 200/201 or the run fails.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import sys
import time


CONFLICT_RETRIES = 50


class Api:
    def __init__(self, port: int, token: str, retry_conflicts: bool = False):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.retry_conflicts = retry_conflicts
        self.conflicts = 0  # `503 store_conflict` answers, each followed by the same call again

    def call(self, method: str, path: str, body: dict) -> int:
        data = json.dumps(body).encode()
        for _ in range(CONFLICT_RETRIES):
            self.conn.request(method, path, body=data, headers={**self.headers, "Content-Length": str(len(data))})
            resp = self.conn.getresponse()
            payload = resp.read()
            if not (self.retry_conflicts and resp.status == 503 and b'"store_conflict"' in payload):
                break
            self.conflicts += 1
        if resp.status not in (200, 201):
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {payload[:300]!r}")
        return resp.status

    def cycle(self, public: str, private: str) -> None:
        """Associate then release one address: two REST calls, two committed changes."""
        self.call("POST", "/v1/floatingips", {"public_ip": public, "private_ip": private, "owner": "bench"})
        self.call("DELETE", f"/v1/floatingips/{public}", {"owner": "bench"})


def latency(args, token: str) -> dict:
    api = Api(args.port, token)
    public, private = args.public[0], args.private[0]
    for _ in range(args.warmup):
        api.cycle(public, private)
    seconds = []
    deadline = time.monotonic() + args.max_seconds
    for _ in range(args.count):
        start = time.perf_counter()
        api.cycle(public, private)
        seconds.append(time.perf_counter() - start)
        if time.monotonic() > deadline:
            break
    return {"mode": "latency", "cycles": seconds}


def _worker(index: int, args, token: str, barrier, results) -> None:
    try:
        api = Api(args.port, token, args.retry_conflicts)
        public, private = args.public[index], args.private[index]
        api.cycle(public, private)  # warm the connection before the clock starts
        api.conflicts = 0
        barrier.wait(timeout=60)
        while args.start_at and time.perf_counter() < args.start_at:  # (bounded: --start-at's check)
            time.sleep(min(0.001, max(0.0, args.start_at - time.perf_counter())))
        start = time.perf_counter()
        deadline = time.monotonic() + args.max_seconds
        cycles = 0
        while cycles < args.count and time.monotonic() < deadline:
            api.cycle(public, private)
            cycles += 1
        results.put({"client": index, "calls": 2 * cycles, "start": start, "end": time.perf_counter(),
                     "conflicts": api.conflicts})
    except Exception as exc:  # reported, and the run fails
        results.put({"client": index, "error": f"{type(exc).__name__}: {exc}"})


def throughput(args, token: str) -> dict:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(args.clients)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, args, token, barrier, results)) for i in range(args.clients)]
    for p in procs:
        p.start()
    got = [results.get(timeout=args.max_seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    errors = [r["error"] for r in got if "error" in r]
    if errors:
        raise RuntimeError("; ".join(errors))
    start = min(r["start"] for r in got)
    end = max(r["end"] for r in got)
    calls = sum(r["calls"] for r in got)
    return {"mode": "throughput", "clients": args.clients, "calls": calls, "seconds": end - start,
            "calls_per_second": calls / (end - start), "start": start, "end": end,
            "conflicts": sum(r["conflicts"] for r in got)}


def release(args, token: str) -> dict:
    api = Api(args.port, token)
    for public in args.public:
        api.call("DELETE", f"/v1/floatingips/{public}", {"owner": "bench"})
    return {"mode": "release", "released": len(args.public)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.client")
    parser.add_argument("mode", choices=("latency", "throughput", "release"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--public", action="append", required=True)
    parser.add_argument("--private", action="append", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--retry-conflicts", action="store_true",
                        help="count 503 store_conflict answers and make the call again")
    parser.add_argument("--start-at", type=float, default=0.0,
                        help="throughput: start at this time.perf_counter() value (at most 60 s ahead)")
    args = parser.parse_args()
    if args.start_at and not 0 <= args.start_at - time.perf_counter() <= 60:
        parser.error(f"--start-at: {args.start_at!r} is not within the next 60 s")
    with open(args.token_file, encoding="utf-8") as f:
        token = f.read().strip()
    result = {"latency": latency, "throughput": throughput, "release": release}[args.mode](args, token)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
