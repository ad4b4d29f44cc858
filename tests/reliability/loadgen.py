"""Load generator that runs INSIDE the router namespace (the daemon listens on its
loopback): `python -m tests.reliability.loadgen MODE --port P --token-file F ...`.

It prints one JSON line per finished request, so the test that drives it knows exactly
which calls were acknowledged before it killed the daemon.

Modes:
- `burst`: each of --threads workers owns a disjoint slice of public and private
  addresses and runs --ops random associate/release calls on it, one after another, so
  that the acknowledged calls of one worker are totally ordered.
- `race`: --clients workers fire --requests allocate+associate calls in total, each for
  a distinct private address, as fast as they can.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
from pathlib import Path

import requests

print_lock = threading.Lock()


def emit(record: dict) -> None:
    with print_lock:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


def call(session, url, method, path, body):
    try:
        resp = session.request(method, url + path, json=body, timeout=10)
    except requests.RequestException as exc:
        return None, f"{type(exc).__name__}: {exc}"
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, None


def burst_worker(index: int, args, url: str, token: str) -> None:
    rng = random.Random(args.seed * 1000 + index)
    publics = [f"198.51.100.{10 + index * args.per_worker + i}" for i in range(args.per_worker)]
    privates = [f"10.77.0.{11 + index * args.per_worker + i}" for i in range(args.per_worker)]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    for seq in range(args.ops):
        public = rng.choice(publics)
        if rng.random() < 0.6:
            op = {"op": "associate", "public_ip": public, "private_ip": rng.choice(privates)}
            status, body = call(session, url, "POST", "/v1/floatingips",
                                {"public_ip": public, "private_ip": op["private_ip"], "allow_move": True})
            if status == 409 and body and body["error"]["code"] == "address_in_use":
                status, body = call(session, url, "PUT", f"/v1/floatingips/{public}/association",
                                    {"private_ip": op["private_ip"], "allow_move": True})
        else:
            op = {"op": "release", "public_ip": public}
            status, body = call(session, url, "DELETE", f"/v1/floatingips/{public}", {})
        emit({"worker": index, "seq": seq, **op, "status": status,
              "code": body["error"]["code"] if isinstance(body, dict) and "error" in body else None})
        if status is None:  # the daemon is gone: this call is unacknowledged, stop here
            return


def race_worker(index: int, args, url: str, token: str, barrier: threading.Barrier) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    mine = range(index, args.requests, args.clients)
    barrier.wait()
    for n in mine:
        private = f"10.77.{n // 250}.{n % 250 + 2}"
        status, body = call(session, url, "POST", "/v1/floatingips",
                            {"private_ip": private, "ref": f"race:{n}", "owner": f"client:{index}"})
        emit({"client": index, "private_ip": private, "status": status,
              "public_ip": body.get("public_ip") if isinstance(body, dict) else None,
              "code": body["error"]["code"] if isinstance(body, dict) and "error" in body else None,
              "exception": body if status is None else None})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("burst", "race"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--per-worker", type=int, default=2)
    parser.add_argument("--ops", type=int, default=125)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    token = Path(args.token_file).read_text().strip()
    if args.mode == "burst":
        workers = [threading.Thread(target=burst_worker, args=(i, args, url, token)) for i in range(args.threads)]
    else:
        barrier = threading.Barrier(args.clients)
        workers = [threading.Thread(target=race_worker, args=(i, args, url, token, barrier))
                   for i in range(args.clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    emit({"done": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
