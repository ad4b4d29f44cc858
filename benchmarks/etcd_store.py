"""The etcd store beside SQLite: one change (associate + release of one address) at 4,096
live associations, both daemons in the same run, as root:

    python -m benchmarks.etcd_store [--count N] [--live N]

A namespace of its own holds a one-member etcd (Debian etcd-server, fsync per commit as a
cluster member does; a three-member cluster adds a network round trip to two peers) and
the daemons, one after the other (nftables, no PUBLIC_INTERFACE: the store's cost, not
the addresses'). The etcd state is written directly (txns of 100 puts), as a group that
ran before leaves it. Prints one JSON object: the medians and the ratio etcd / SQLite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import PYTHON, SCALE, Namespace, association, run, start_daemon
from .figures import one_change

PREFIX = "/ipfloater"
URL = "http://127.0.0.1:2379"


def prefill(url: str, live: int, prefix: str = PREFIX) -> None:
    """(Inside the namespace.) Wait for etcd, then write `live` associations under `prefix`."""
    import requests

    from one_ipfloater.etcdstore import b64
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.post(url + "/v3/kv/put", json={"key": b64(prefix + "/meta/history"),
                                                       "value": b64(repr(time.time()))}, timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("etcd did not answer within 60 s")
        time.sleep(0.1)
    now = time.time()
    ops = []
    for i in range(live):
        pub, priv = association(i)
        value = json.dumps({"owner": "bench", "ref": f"bench:{i}", "private_ip": str(priv), "owner_group": None,
                            "created_at": now, "updated_at": now})
        ops.append({"request_put": {"key": b64(f"{prefix}/alloc/{pub}"), "value": b64(value)}})
    ops.append({"request_put": {"key": b64(prefix + "/rev"), "value": b64(repr(now))}})
    for i in range(0, len(ops), 100):
        answer = requests.post(url + "/v3/kv/txn", json={"success": ops[i:i + 100]}, timeout=30)
        answer.raise_for_status()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100, help="change cycles per daemon (default 100)")
    parser.add_argument("--live", type=int, default=SCALE, help="stored associations (default 4096)")
    parser.add_argument("--prefill", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", default=URL, help=argparse.SUPPRESS)  # (--prefill: benchmarks/ha.py)
    parser.add_argument("--prefix", default=PREFIX, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prefill:
        prefill(args.url, args.live, args.prefix)
        return 0
    work = Path(tempfile.mkdtemp(prefix="ipfloater-etcdbench-"))
    etcd = None
    try:
        with Namespace(public_if=False) as ns:
            sqlite = start_daemon(ns, work / "sqlite", "nftables", args.live)
            result = {"live": args.live, "sqlite": one_change(sqlite, args.count)}
            sqlite.stop()
            sqlite.proc.run_command("flush")
            log = open(work / "etcd.log", "wb")
            etcd = subprocess.Popen(ns.argv(["etcd", "--data-dir", str(work / "etcd-data"),
                                             "--listen-client-urls", URL, "--advertise-client-urls", URL,
                                             "--listen-peer-urls", "http://127.0.0.1:2380",
                                             "--listen-metrics-urls", ""]),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            run(ns.argv([PYTHON, "-m", "benchmarks.etcd_store", "--prefill", "--live", str(args.live)]),
                timeout=300)
            shared = start_daemon(ns, work / "etcd", "nftables", 0, STATE_STORE="etcd", ETCD_ENDPOINTS=URL)
            result["etcd"] = one_change(shared, args.count)
            result["etcd_start_rules_seconds"] = round(shared.rules_seconds, 3)
            shared.stop()
            shared.proc.run_command("flush")
            result["ratio_etcd_to_sqlite"] = round(result["etcd"]["median_seconds"]
                                                   / result["sqlite"]["median_seconds"], 2)
            print(json.dumps(result, indent=1))
    finally:
        if etcd is not None:
            etcd.terminate()
            try:
                etcd.wait(10)
            except subprocess.TimeoutExpired:
                etcd.kill()
                etcd.wait(5)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
