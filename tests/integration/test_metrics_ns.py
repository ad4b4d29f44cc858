"""The real ipfloaterd in the lab's router namespace with METRICS_ADDRESS and LOG_FORMAT =
json: its own /metrics listener, scraped after real changes made with the real CLI,
counts each of them, agrees with the NAT rules in the kernel, and /v1/metrics answers
by token role; every line of its log is one JSON object. Without METRICS_ADDRESS
nothing listens there (the control)."""

import json
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import our_rules
from tests.support.daemonproc import DaemonProcess

pytestmark = pytest.mark.netns

METRICS = "127.0.0.1:9470"
VM1, VM2, VM3 = "10.77.0.11", "10.77.0.12", "10.77.0.13"

# An HTTP request from inside the router namespace: prints the status and the body as JSON.
FETCH = """
import json, sys, urllib.error, urllib.request
url, method, token = sys.argv[1:4]
req = urllib.request.Request(url, method=method, data=b"{}" if method != "GET" else None,
                             headers={"Authorization": "Bearer " + token} if token else {})
try:
    with urllib.request.urlopen(req, timeout=10) as resp:
        print(json.dumps([resp.status, resp.read().decode()]))
except urllib.error.HTTPError as exc:
    print(json.dumps([exc.code, exc.read().decode()]))
"""


def fetch(lab, url, method="GET", token=""):
    proc = lab.run(lab.ns_router, [sys.executable, "-c", FETCH, url, method, token], check=False, timeout=20)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def samples(text: str) -> dict:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def kernel_associations(lab, backend) -> int:
    """Association (DNAT) entries of ours in the router's kernel, as the backend holds them."""
    rules = our_rules(lab, backend).splitlines()
    if backend == "iptables":
        return sum(1 for line in rules if line.startswith("-A IPFLOATER-PRE ") and "-j DNAT" in line)
    return sum(1 for line in rules if line.startswith("element fip_dnat "))


def add_token(daemon, name, *role):
    proc = subprocess.run(daemon.argv("token", "add", name, *role), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_metrics_listener_counts_real_changes_and_logs_are_json(lab, nat_backend, tmp_path):
    daemon = DaemonProcess(lab.ns_router, tmp_path / "daemon", NAT_BACKEND=nat_backend,
                           METRICS_ADDRESS=METRICS, LOG_FORMAT="json", LOG_LEVEL="INFO")
    daemon.start()
    try:
        reader = add_token(daemon, "watch", "--role", "reader")
        owner = add_token(daemon, "alice-tok", "--role", "owner", "--owner", "alice")
        pub1 = daemon.cli("getip", VM1).stdout.strip()                    # allocate ok
        pub2 = daemon.cli("getip", VM2).stdout.strip()                    # allocate ok
        assert daemon.cli("redirect", pub1, VM3).returncode == 0          # move ok
        assert daemon.cli("releaseip", pub2).returncode == 0              # release ok
        assert daemon.cli("getip", "10.99.0.1").returncode != 0           # allocate refused
        assert fetch(lab, f"http://127.0.0.1:{daemon.port}/v1/pool", token="x" * 40)[0] == 401
        assert daemon.cli_json("reconcile")["repairs"] == []

        status, text = fetch(lab, f"http://{METRICS}/metrics")
        assert status == 200, text
        found = samples(text)
        counted = {(dict(labels)["kind"], dict(labels)["result"]): n for (name, labels), n in found.items()
                   if name == "ipfloater_changes_total" and n}
        assert counted == {("allocate", "ok"): 2, ("move", "ok"): 1, ("release", "ok"): 1,
                           ("allocate", "refused"): 1}
        assert value(found, "ipfloater_change_duration_seconds_count", kind="allocate") == 3  # refused too
        assert value(found, "ipfloater_store_commit_seconds_count") == 4  # the committed changes
        assert value(found, "ipfloater_refused_requests_total", code="unauthorized") == 1
        assert value(found, "ipfloater_refused_requests_total", code="private_not_allowed") == 1
        assert value(found, "ipfloater_reconcile_runs_total", result="ok") == 2  # the start's and ours
        assert value(found, "ipfloater_role", role="single") == 1
        assert value(found, "ipfloater_pool_size", pool="default") == 31
        assert value(found, "ipfloater_pool_allocated", pool="default") == 1
        assert value(found, "ipfloater_pool_free", pool="default") == 30
        # the gauge says what the kernel holds
        assert value(found, "ipfloater_pool_associated", pool="default") == kernel_associations(lab, nat_backend) == 1
        assert value(found, "process_resident_memory_bytes") > 0

        api = f"http://127.0.0.1:{daemon.port}/v1/metrics"
        status, text = fetch(lab, api, token=reader)
        assert status == 200 and value(samples(text), "ipfloater_changes_total", kind="move", result="ok") == 1
        status, text = fetch(lab, api, token=owner)
        assert status == 403 and json.loads(text)["error"]["code"] == "forbidden"
        assert fetch(lab, f"http://{METRICS}/v1/floatingips")[0] == 404  # the listener serves /metrics only
    finally:
        daemon.stop()
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    messages = [e["message"] for e in entries]
    assert any(m.startswith(f"allocated {pub1} (pool=default private={VM1}") for m in messages), messages
    assert f"metrics on http://{METRICS}/metrics" in messages

    # the control: without METRICS_ADDRESS nothing listens there
    daemon.settings.pop("METRICS_ADDRESS")
    daemon.start()
    try:
        proc = lab.run(lab.ns_router, [sys.executable, "-c", FETCH, f"http://{METRICS}/metrics", "GET", ""],
                       check=False, timeout=20)
        assert proc.returncode != 0 and "Connection refused" in proc.stderr
        assert fetch(lab, f"http://127.0.0.1:{daemon.port}/v1/metrics", token=daemon.token)[0] == 200
    finally:
        daemon.stop()
