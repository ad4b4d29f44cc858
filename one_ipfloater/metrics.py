"""Every metric of the daemon, in the Prometheus text format (the official client library).

The service and the API report through the small `Observer` interface below, so that
service.py does not import prometheus_client and the tests of the service need no
metrics at all (the no-op `Observer` is the default). `PrometheusMetrics` is the real
one. It counts in plain integers under one lock (a few additions per change, next to
milliseconds of SQLite and netfilter work) and hands them to prometheus_client only
when somebody scrapes: the library (with the HTTP, SSL and e-mail modules its package
loads) is imported at the first scrape, so a daemon nobody scrapes does not carry it.
The pool figures, too, are computed at the scrape from the service's current state:
they cost nothing per change and cannot drift from it.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
from collections.abc import Callable

from . import __version__
from .model import FipError

log = logging.getLogger(__name__)

KINDS = ("allocate", "associate", "move", "disassociate", "release")
RESULTS = ("ok", "refused", "failed")
ROLE = "single"  # a router without keepalived; in a pair: master, backup, fault or stop (hastate.py)
CHANGE_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = (.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1.0)


def outcome(exc: BaseException) -> str:
    """The `result` label of a change that raised: `refused` for the client's mistakes
    and conflicts (4xx), `failed` for ours (5xx, anything unforeseen)."""
    if isinstance(exc, FipError) and exc.status < 500:
        return "refused"
    return "failed"


def pool_figures(registry, allocations) -> dict[str | None, dict[str, int]]:
    """size, free, allocated (held, associated or not) and associated, per pool name
    (Registry.pool_of). Allocations outside every pool (a pool shrunk under them) are
    counted under the key None."""
    figures = {name: {"size": len(members), "free": len(members), "allocated": 0, "associated": 0}
               for name, members in registry.pools.items()}
    for alloc in allocations:
        name = registry.pool_of(alloc.public_ip)
        row = figures.setdefault(name, {"size": 0, "free": 0, "allocated": 0, "associated": 0})
        row["allocated"] += 1
        row["associated"] += alloc.private_ip is not None
        if name is not None:
            row["free"] -= 1
    return figures


class _Histogram:
    """Bucket counts and a sum, in plain numbers (the caller holds the lock)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf only)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1  # `le` is inclusive
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        running, out = 0, []
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class Observer:
    """What the service and the API report; this one ignores everything (the default)."""

    def change(self, kind: str, result: str, seconds: float) -> None:
        """A change of `kind` (KINDS) ended with `result` (RESULTS) after `seconds`."""

    def refused(self, code: str) -> None:
        """The API answered an error with this code."""

    def reconciled(self, repairs: int | None) -> None:
        """A reconcile round made `repairs` repairs (None: it failed)."""

    def store_commit(self, seconds: float) -> None:
        """One state-file COMMIT took `seconds` (the fsync, with DB_SYNC = full)."""

    def exposition(self) -> tuple[str, bytes]:
        """(content type, body) of a scrape."""
        raise FipError("metrics_unavailable", "metrics: not collected by this process", 503)


class PrometheusMetrics(Observer):
    """The daemon's metrics: counted here, exposed through prometheus_client."""

    def __init__(self, service, backend: str = "", role: Callable[[], str] = lambda: ROLE):
        self.service = service
        self.backend = backend
        self.role = role
        self._lock = threading.Lock()  # changes end on the API's worker threads
        self.changes = dict.fromkeys(((k, r) for k in KINDS for r in RESULTS), 0)
        self.latency = {k: _Histogram(CHANGE_BUCKETS) for k in KINDS}
        self.refusals: dict[str, int] = {}
        self.reconcile_runs = {"ok": 0, "failed": 0}
        self.repairs = 0
        self.commits = _Histogram(COMMIT_BUCKETS)
        self._registry = None  # made at the first scrape

    # -- the observer ------------------------------------------------------------------

    def change(self, kind: str, result: str, seconds: float) -> None:
        with self._lock:
            self.changes[kind, result] += 1
            self.latency[kind].observe(seconds)

    def refused(self, code: str) -> None:
        with self._lock:
            self.refusals[code] = self.refusals.get(code, 0) + 1

    def reconciled(self, repairs: int | None) -> None:
        with self._lock:
            self.reconcile_runs["failed" if repairs is None else "ok"] += 1
            self.repairs += repairs or 0

    def store_commit(self, seconds: float) -> None:
        with self._lock:  # (under the service lock too: never contended by another commit)
            self.commits.observe(seconds)

    # -- the scrape --------------------------------------------------------------------

    def exposition(self) -> tuple[str, bytes]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        if self._registry is None:
            from prometheus_client import CollectorRegistry, ProcessCollector
            registry = CollectorRegistry(auto_describe=False)  # ours alone, not the library's global one
            ProcessCollector(registry=registry)  # memory, CPU, descriptors: read at each scrape
            registry.register(self)
            self._registry = registry
        return CONTENT_TYPE_LATEST, generate_latest(self._registry)

    def collect(self):
        """prometheus_client's collector interface: every family, from a copy taken
        under the lock (the pool figures under the service's own)."""
        import platform
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            InfoMetricFamily)
        with self._lock:
            changes = dict(self.changes)
            latency = {k: (h.cumulative(), h.total) for k, h in self.latency.items()}
            refusals = dict(self.refusals)
            runs, repairs = dict(self.reconcile_runs), self.repairs
            commits = (self.commits.cumulative(), self.commits.total)
        family = CounterMetricFamily("ipfloater_changes", "Changes asked for, by kind and result",
                                     labels=["kind", "result"])
        for (kind, result), count in changes.items():
            family.add_metric([kind, result], count)
        yield family
        family = HistogramMetricFamily("ipfloater_change_duration_seconds", "Time from a change's start "
                                       "to its answer (lock, state file, rules, addresses, conntrack "
                                       "flush), by kind", labels=["kind"])
        for kind, (buckets, total) in latency.items():
            family.add_metric([kind], buckets, total)
        yield family
        family = CounterMetricFamily("ipfloater_refused_requests", "Error answers of the API, by error code",
                                     labels=["code"])
        for code, count in sorted(refusals.items()):
            family.add_metric([code], count)
        yield family
        family = CounterMetricFamily("ipfloater_reconcile_runs", "Reconcile rounds, by result",
                                     labels=["result"])
        for result, count in runs.items():
            family.add_metric([result], count)
        yield family
        yield CounterMetricFamily("ipfloater_reconcile_repairs", "Repairs made by reconcile rounds (rules "
                                  "or addresses found not as the state file says)", value=repairs)
        yield HistogramMetricFamily("ipfloater_store_commit_seconds", "Time of one state-file commit",
                                    buckets=commits[0], sum_value=commits[1])
        family = GaugeMetricFamily("ipfloater_role", "The daemon's role (1 for the current one)",
                                   labels=["role"])
        family.add_metric([self.role()], 1)
        yield family
        yield InfoMetricFamily("ipfloater_build", "Version of the daemon and its NAT backend",
                               value={"version": __version__, "backend": self.backend,
                                      "python": platform.python_version()})
        yield from self._pool_families(GaugeMetricFamily)

    def _pool_families(self, gauge):
        families = {
            "size": gauge("ipfloater_pool_size", "Addresses in the pool", labels=["pool"]),
            "free": gauge("ipfloater_pool_free", "Addresses of the pool nobody holds", labels=["pool"]),
            "allocated": gauge("ipfloater_pool_allocated", "Addresses of the pool held (associated or not)",
                               labels=["pool"]),
            "associated": gauge("ipfloater_pool_associated", "Addresses of the pool NATed to a private "
                                "address", labels=["pool"]),
        }
        figures = pool_figures(self.service.registry, self.service.list())
        outside = figures.pop(None, {"allocated": 0})["allocated"]
        for name, row in sorted(figures.items()):
            for key, family in families.items():
                family.add_metric([name], row[key])
        yield from families.values()
        yield gauge("ipfloater_allocations_outside_pools", "Allocations whose address is in no configured "
                    "pool (the pool shrank under them)", value=outside)


class MetricsApp:
    """The WSGI application of METRICS_ADDRESS: GET /metrics, nothing else (no token: the
    operator chooses who reaches the address; the API's /v1/metrics needs one)."""

    def __init__(self, observer: Observer):
        self.observer = observer

    def __call__(self, environ: dict, start_response) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        if path != "/metrics":
            status, ctype, body = "404 Not Found", "application/json", _error("not_found",
                                                                            f"path: {path[:80]!r} is not /metrics")
        elif method not in ("GET", "HEAD"):
            status, ctype, body = "405 Method Not Allowed", "application/json", _error(
                "method_not_allowed", f"method: {method[:20]!r} is not allowed here (use GET)")
        else:
            try:
                ctype, body = self.observer.exposition()
                status = "200 OK"
            except Exception:  # a bug: answer, log, keep serving
                log.exception("metrics exposition failed")
                status, ctype, body = "500 Internal Server Error", "application/json", _error(
                    "internal_error", "internal error (see the daemon log)")
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [] if method == "HEAD" else [body]


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}, sort_keys=True).encode() + b"\n"
