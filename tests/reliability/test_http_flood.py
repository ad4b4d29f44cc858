"""The API under connection floods, against a real daemon in a lab namespace: hundreds
of slow clients cost bounded threads and memory and are cut at the request deadline
while a well-behaved client keeps getting answers; running out of descriptors never
makes the daemon spin."""

import json
import sys
from pathlib import Path

import pytest

from one_ipfloater import httpserver
from tests.support.daemonproc import DaemonProcess

pytestmark = pytest.mark.netns

FLOOD = str(Path(__file__).with_name("httpflood.py"))
SLOW_CLIENTS = 300
DEADLINE = 2


def flood(lab, daemon, mode, count, seconds):
    proc = lab.run(lab.ns_router, [sys.executable, FLOOD, str(daemon.port), daemon.token, str(daemon.proc.pid),
                                   mode, str(count), str(seconds)], timeout=seconds + 120)
    return json.loads(proc.stdout)


def test_slow_clients_cost_bounded_threads_and_are_cut_at_the_deadline(lab, tmp_path, figures):
    with DaemonProcess(lab.ns_router, tmp_path / "d", REQUEST_TIMEOUT=str(DEADLINE), LOG_LEVEL="INFO") as daemon:
        out = flood(lab, daemon, "slow", SLOW_CLIENTS, DEADLINE * 3)
        assert daemon.running()
    assert out["opened"] == SLOW_CLIENTS
    # the well-behaved client got every answer (its latency is reported, not asserted)
    assert out["answers"] and set(out["answers"]) == {200}, out["answers"]
    # http.server: a thread per connection (302 threads here); waitress' pool is fixed
    assert out["peak"]["threads"] <= out["before"]["threads"] + httpserver.THREADS + 2, out
    # the deadline cut every slow client within the run (a per-read timeout cut 150 of 300:
    # never the trickling ones)
    assert out["closed_by_server"] == SLOW_CLIENTS, out
    grown_mb = (out["peak"]["rss_kb"] - out["before"]["rss_kb"]) / 1024
    assert grown_mb < 64, out
    figures("http", f"{SLOW_CLIENTS} slow clients: worst latency of a good client (s)", out["worst_latency_s"])
    figures("http", f"{SLOW_CLIENTS} slow clients: daemon threads before/peak",
            f"{out['before']['threads']}/{out['peak']['threads']}")
    figures("http", f"{SLOW_CLIENTS} slow clients: memory growth (MB)", round(grown_mb, 1))
    assert "Traceback" not in daemon.log()


def test_descriptor_exhaustion_does_not_make_the_daemon_spin(lab, tmp_path, figures):
    nofile = 96
    wrapper = ("prlimit", f"--nofile={nofile}:{nofile}", "--")
    with DaemonProcess(lab.ns_router, tmp_path / "d", wrapper=wrapper, REQUEST_TIMEOUT=str(DEADLINE),
                       LOG_LEVEL="INFO") as daemon:
        limits = open(f"/proc/{daemon.proc.pid}/limits").read()
        assert f"Max open files            {nofile}" in limits, limits
        out = flood(lab, daemon, "idle", 400, DEADLINE * 3)
        assert daemon.running()
        assert daemon.cli("health").returncode == 0  # serving again once the flood is gone
        log = daemon.log()
    assert out["peak"]["fds"] <= nofile
    assert 200 in out["answers"], out["answers"]  # the good client got through during the flood
    # http.server's accept loop retried EMFILE at once: 1.5 s of CPU over this 6 s flood
    assert out["cpu_s"] < 0.1 * out["seconds"], out
    assert "Traceback" not in log
    figures("http", f"descriptor flood (NOFILE {nofile}, 400 connections, {out['seconds']} s): daemon CPU (s)",
            out["cpu_s"])
    figures("http", "descriptor flood: worst latency of a good client (s)", out["worst_latency_s"])
