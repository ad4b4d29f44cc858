"""Run the real `ipfloaterd` with the steps of every change timed (for benchmarks/ha.py,
"where the time goes"): the same argv as `python -m one_ipfloater.daemon`, but a few
functions of the change pipeline are wrapped with perf_counter, and when a change ends
(the metrics observer hears of it) its steps go to stderr, the daemon's log, as one JSON
line: `{"change": KIND, "total": s, "commit_step": s, "apply": s, "store_commit": s,
"flush": s}`. Steps are summed per thread, so a change re-planned after a conflict counts
all its rounds. A follower's catch-up (another daemon changed the shared state: read it
all, converge the kernel) writes `{"catch_up": s, "store_read": s, "reconcile": s}`; one
from the changes since `{"catch_up": s, "store_delta": s, "apply_delta": s, "take_delta": s,
"flush": s}` (take_delta: under the service lock). No profiler: a perf_counter pair and
one short write per change.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from .timing import wrap_timed

_local = threading.local()


def _add(step: str, seconds: float) -> None:
    steps = getattr(_local, "steps", None)
    if steps is None:
        steps = _local.steps = {}
    steps[step] = steps.get(step, 0.0) + seconds


def _wrap(owner, name: str, step: str) -> None:
    wrap_timed(owner, name, lambda start, end: _add(step, end - start))


def install() -> None:
    """Wrap the change pipeline's steps (the NAT backends, the service, the observer)."""
    from one_ipfloater import etcdstore, metrics, service
    from one_ipfloater.nat import iptables, nftables
    _wrap(service.FloatingIPService, "_commit", "commit_step")
    _wrap(service.FloatingIPService, "_flush_conntrack", "flush")
    _wrap(nftables.NftablesBackend, "apply", "apply")
    _wrap(iptables.IptablesBackend, "apply", "apply")
    _wrap(service.FloatingIPService, "_reconcile", "reconcile")  # (a catch-up's kernel step)
    _wrap(etcdstore.EtcdStore, "read", "store_read")  # (a catch-up's read of every allocation)
    _wrap(etcdstore.EtcdStore, "changes_since", "store_delta")  # (a follow's watch of the changes)
    _wrap(service.FloatingIPService, "apply_delta", "apply_delta")  # (taking them in, lock wait included)
    _wrap(service.FloatingIPService, "_take_delta", "take_delta")  # (its part under the lock)
    store_commit = metrics.PrometheusMetrics.store_commit
    change = metrics.PrometheusMetrics.change

    def timed_store_commit(self, seconds: float) -> None:
        _add("store_commit", seconds)
        store_commit(self, seconds)

    def timed_change(self, kind: str, result: str, seconds: float) -> None:
        steps, _local.steps = getattr(_local, "steps", None) or {}, {}
        print(json.dumps({"change": kind, "result": result, "total": seconds, **steps}), file=sys.stderr,
              flush=True)
        change(self, kind, result, seconds)

    metrics.PrometheusMetrics.store_commit = timed_store_commit
    metrics.PrometheusMetrics.change = timed_change
    follow = service.FloatingIPService.follow

    def timed_follow(self) -> bool:
        _local.steps = {}
        start = time.perf_counter()
        caught_up = follow(self)
        steps, _local.steps = _local.steps, {}
        if caught_up:
            print(json.dumps({"catch_up": time.perf_counter() - start, **steps}), file=sys.stderr, flush=True)
        return caught_up

    service.FloatingIPService.follow = timed_follow


def main() -> int:
    install()
    from one_ipfloater import daemon
    return daemon.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
