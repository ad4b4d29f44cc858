"""Every metric of the daemon, in the Prometheus text format (the official client library).

The service and the API report through the small `Observer` interface below, so that
service.py does not import prometheus_client and the tests of the service need no
metrics at all (the no-op `Observer` is the default). `PrometheusMetrics` is the real
one: counters and histograms move as the changes happen (a few dictionary look-ups and
additions per change, next to milliseconds of SQLite and netfilter work), and the pool
figures are computed only when somebody scrapes, from the service's current state, so
that they cost nothing per change and can never drift from it.
"""

from __future__ import annotations

import json
import logging
import platform
from typing import Optional

from . import __version__
from .model import FipError

log = logging.getLogger(__name__)

DEFAULT_POOL = "default"
KINDS = ("allocate", "associate", "move", "disassociate", "release")
RESULTS = ("ok", "refused", "failed")
ROLE = "single"  # the HA issue adds primary / standby
CHANGE_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = (.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1.0)


def outcome(exc: BaseException) -> str:
    """The `result` label of a change that raised: `refused` for the client's mistakes
    and conflicts (4xx), `failed` for ours (5xx, anything unforeseen)."""
    if isinstance(exc, FipError) and exc.status < 500:
        return "refused"
    return "failed"


def pool_figures(registry, allocations) -> dict[str, dict[str, int]]:
    """size, free, allocated (held, associated or not) and associated, per pool name.

    The ONE place that maps addresses to pools for the metrics: today every address of
    IP_POOL is the pool `default`; with named pools this becomes `Registry.pool_of`
    and their sizes. Allocations outside every pool (IP_POOL shrunk under them) are
    counted under the key None."""
    pools = {DEFAULT_POOL: registry.pool}

    def pool_of(address):
        return DEFAULT_POOL if address in registry.pool else None

    figures = {name: {"size": len(members), "free": len(members), "allocated": 0, "associated": 0}
               for name, members in pools.items()}
    for alloc in allocations:
        name = pool_of(alloc.public_ip)
        row = figures.setdefault(name, {"size": 0, "free": 0, "allocated": 0, "associated": 0})
        row["allocated"] += 1
        row["associated"] += alloc.private_ip is not None
        if name is not None:
            row["free"] -= 1
    return figures


class Observer:
    """What the service and the API report; this one ignores everything (the default)."""

    def change(self, kind: str, result: str, seconds: float) -> None:
        """A change of `kind` (KINDS) ended with `result` (RESULTS) after `seconds`."""

    def refused(self, code: str) -> None:
        """The API answered an error with this code."""

    def reconciled(self, repairs: Optional[int]) -> None:
        """A reconcile round made `repairs` repairs (None: it failed)."""

    def store_commit(self, seconds: float) -> None:
        """One state-file COMMIT took `seconds` (the fsync, with DB_SYNC = full)."""

    def exposition(self) -> tuple[str, bytes]:
        """(content type, body) of a scrape."""
        raise FipError("metrics_unavailable", "metrics: not collected by this process", 503)


class PrometheusMetrics(Observer):
    """The daemon's metrics, in a registry of their own (not the library's global one:
    tests make as many as they like, and nothing another library registers leaks in)."""

    def __init__(self, service, backend: str = "", role: str = ROLE):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
        from prometheus_client import ProcessCollector

        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # memory, CPU, descriptors: read at scrape time
        changes = Counter("ipfloater_changes", "Changes asked for, by kind and result",
                          ["kind", "result"], registry=self.registry)
        latency = Histogram("ipfloater_change_duration_seconds",
                            "Time from a change's start to its answer (lock, state file, rules, "
                            "addresses, conntrack flush), by kind", ["kind"],
                            buckets=CHANGE_BUCKETS, registry=self.registry)
        # children made once: a change then costs a dict look-up per metric, not labels()
        self._changes = {(k, r): changes.labels(k, r) for k in KINDS for r in RESULTS}
        self._latency = {k: latency.labels(k) for k in KINDS}
        self._refused = Counter("ipfloater_refused_requests", "Error answers of the API, by error code",
                                ["code"], registry=self.registry)
        self._reconcile_runs = Counter("ipfloater_reconcile_runs", "Reconcile rounds, by result",
                                       ["result"], registry=self.registry)
        self._reconcile_ok = self._reconcile_runs.labels("ok")
        self._reconcile_failed = self._reconcile_runs.labels("failed")
        self._repairs = Counter("ipfloater_reconcile_repairs", "Repairs made by reconcile rounds "
                                "(rules or addresses found not as the state file says)",
                                registry=self.registry)
        self._commit = Histogram("ipfloater_store_commit_seconds", "Time of one state-file commit",
                                 buckets=COMMIT_BUCKETS, registry=self.registry)
        Gauge("ipfloater_role", "The daemon's role (1 for the current one)", ["role"],
              registry=self.registry).labels(role).set(1)
        Info("ipfloater_build", "Version of the daemon and its NAT backend",
             registry=self.registry).info({"version": __version__, "backend": backend,
                                           "python": platform.python_version()})
        self.registry.register(_PoolCollector(service))

    # -- the observer ------------------------------------------------------------------

    def change(self, kind: str, result: str, seconds: float) -> None:
        self._changes[kind, result].inc()
        self._latency[kind].observe(seconds)

    def refused(self, code: str) -> None:
        self._refused.labels(code).inc()

    def reconciled(self, repairs: Optional[int]) -> None:
        if repairs is None:
            self._reconcile_failed.inc()
            return
        self._reconcile_ok.inc()
        if repairs:
            self._repairs.inc(repairs)

    def store_commit(self, seconds: float) -> None:
        self._commit.observe(seconds)

    def exposition(self) -> tuple[str, bytes]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return CONTENT_TYPE_LATEST, generate_latest(self.registry)


class _PoolCollector:
    """The pool gauges, computed from the service at each scrape."""

    def __init__(self, service):
        self.service = service

    def describe(self):
        return []  # (no describe-time scrape: the registry would call collect() on register)

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        families = {
            "size": GaugeMetricFamily("ipfloater_pool_size", "Addresses in the pool", labels=["pool"]),
            "free": GaugeMetricFamily("ipfloater_pool_free", "Addresses of the pool nobody holds",
                                      labels=["pool"]),
            "allocated": GaugeMetricFamily("ipfloater_pool_allocated", "Addresses of the pool held "
                                           "(associated or not)", labels=["pool"]),
            "associated": GaugeMetricFamily("ipfloater_pool_associated", "Addresses of the pool "
                                            "NATed to a private address", labels=["pool"]),
        }
        outside = GaugeMetricFamily("ipfloater_allocations_outside_pools", "Allocations whose "
                                    "address is in no configured pool (the pool shrank under them)")
        figures = pool_figures(self.service.registry, self.service.list())
        for name, row in sorted(figures.items(), key=lambda item: item[0] or ""):
            if name is None:
                outside.add_metric([], row["allocated"])
                continue
            for key, family in families.items():
                family.add_metric([name], row[key])
        if None not in figures:
            outside.add_metric([], 0)
        yield from families.values()
        yield outside


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
