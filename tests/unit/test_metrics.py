"""Prometheus metrics (metrics.py): every metric moves as the change it counts, the pool
figures follow the state, /v1/metrics by role, the METRICS_ADDRESS listener and its
config refusals. In process, over the in-memory kernel (no root)."""

import socket
from ipaddress import IPv4Address as A

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from one_ipfloater import daemon as daemon_mod
from one_ipfloater import preflight
from one_ipfloater.api import ApiApp
from one_ipfloater.auth import Authenticator, TokenTable
from one_ipfloater.config import ConfigError, parse_config_text
from one_ipfloater.httpserver import serve_in_thread
from one_ipfloater.metrics import KINDS, RESULTS, MetricsApp, Observer, PrometheusMetrics, pool_figures
from one_ipfloater.model import FipError
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.fakes import FakeBackend, FakeHost, fake_config

TOKEN = "m" * 32
VM1, VM2, VM3 = A("10.77.0.11"), A("10.77.0.12"), A("10.77.0.13")


def scrape(body: bytes) -> dict:
    """{(sample name, frozenset(labels)): value} of an exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metered(tmp_path):
    """A service with its metrics wired as the daemon wires them."""
    config = fake_config(tmp_path / "state.db", public_interface="pub0")
    backend, store = FakeBackend(), Store(config.db_path)
    svc = FloatingIPService(config, store, backend, FakeHost())
    svc.start()
    metrics = PrometheusMetrics(svc, backend.name)
    svc.observer = metrics
    store.on_commit = metrics.store_commit
    return svc, backend, metrics


def now(metrics) -> dict:
    return scrape(metrics.exposition()[1])


def test_every_change_kind_and_result_is_counted_and_timed(metered):
    svc, backend, metrics = metered
    before = now(metrics)
    for kind in KINDS:  # every series exists at zero before anything happened
        for result in RESULTS:
            assert ("ipfloater_changes_total", frozenset({"kind": kind, "result": result}.items())) in before
    pub = svc.allocate(private_ip=VM1, owner="o")[0].public_ip           # allocate ok
    svc.associate(pub, VM1, owner="o")                                   # associate ok (idempotent)
    svc.associate(pub, VM2, owner="o", allow_move=True)                  # move ok
    with pytest.raises(FipError):
        svc.associate(pub, VM3, owner="o")                               # move refused (no allow_move)
    svc.disassociate(pub, owner="o")                                     # disassociate ok
    with pytest.raises(FipError):
        svc.release(A("198.51.100.12"), owner="o")                       # release refused (not held)
    backend.fail_update = backend.fail_sync = True
    with pytest.raises(FipError):
        svc.associate(pub, VM3, owner="o")                               # associate failed (rules)
    backend.fail_update = backend.fail_sync = False
    svc.release(pub, owner="o")                                          # release ok
    after = now(metrics)
    expected = {("allocate", "ok"): 1, ("associate", "ok"): 1, ("move", "ok"): 1, ("move", "refused"): 1,
                ("disassociate", "ok"): 1, ("release", "refused"): 1, ("associate", "failed"): 1,
                ("release", "ok"): 1}
    for kind in KINDS:
        for result in RESULTS:
            got = value(after, "ipfloater_changes_total", kind=kind, result=result)
            assert got == expected.get((kind, result), 0), (kind, result)
        timed = value(after, "ipfloater_change_duration_seconds_count", kind=kind)
        assert timed == sum(n for (k, _r), n in expected.items() if k == kind), kind
        assert value(after, "ipfloater_change_duration_seconds_sum", kind=kind) >= 0
    # four changes reached the state file (the idempotent associate and the refusals did not,
    # the failed one rolled back): four commits timed
    assert value(after, "ipfloater_store_commit_seconds_count") == 4
    assert value(after, "ipfloater_store_commit_seconds_bucket", le="+Inf") == 4


def test_refusals_by_code_and_metrics_by_role_over_http(metered, tmp_path):
    svc, _backend, metrics = metered
    table = TokenTable(svc.config.db_path)
    reader, owner = table.add("watch", "reader"), table.add("alice-tok", "owner", "alice")
    _server, url, stop = serve_in_thread(ApiApp(svc, Authenticator(TOKEN, TokenTable(svc.config.db_path))))
    try:
        def call(method, path, token, body=None):
            return requests.request(method, url + path, json=body, timeout=5,
                                    headers={"Authorization": f"Bearer {token}"} if token else {})
        assert call("GET", "/v1/pool", "wrong" * 8).status_code == 401
        assert call("POST", "/v1/floatingips", reader, {}).status_code == 403
        assert call("POST", "/v1/floatingips", TOKEN, {"private_ip": "10.99.0.1"}).status_code == 422
        assert call("POST", "/v1/floatingips", TOKEN, {"nonsense": 1}).status_code == 400
        for token in (TOKEN, reader):
            resp = call("GET", "/v1/metrics", token)
            assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
            assert "ipfloater_changes_total" in resp.text
        resp = call("GET", "/v1/metrics", owner)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden"
        assert call("GET", "/v1/metrics", None).status_code == 401
        assert call("POST", "/v1/metrics", TOKEN).status_code == 405
        samples = scrape(call("GET", "/v1/metrics", TOKEN).content)
        codes = {dict(labels)["code"]: n for (name, labels), n in samples.items()
                 if name == "ipfloater_refused_requests_total"}
        # 401 twice (wrong token, no token), 403 twice (reader POST, owner metrics)
        assert codes == {"unauthorized": 2, "forbidden": 2, "private_not_allowed": 1, "bad_request": 1,
                         "method_not_allowed": 1}
    finally:
        stop()
        table.close()


def test_pool_figures_follow_the_state(metered):
    svc, _backend, metrics = metered
    def pool(samples, what):
        return value(samples, f"ipfloater_pool_{what}", pool="default")
    start = now(metrics)
    assert [pool(start, w) for w in ("size", "free", "allocated", "associated")] == [3, 3, 0, 0]
    pub = svc.allocate(private_ip=VM1, owner="o")[0].public_ip
    svc.allocate(owner="o")
    mid = now(metrics)
    assert [pool(mid, w) for w in ("size", "free", "allocated", "associated")] == [3, 1, 2, 1]
    svc.release(pub, owner="o")
    end = now(metrics)
    assert [pool(end, w) for w in ("size", "free", "allocated", "associated")] == [3, 2, 1, 0]
    assert value(end, "ipfloater_allocations_outside_pools") == 0
    assert value(end, "ipfloater_role", role="single") == 1
    build = [labels for (name, labels) in end if name == "ipfloater_build_info"]
    assert len(build) == 1 and dict(build[0])["backend"] == "fake" and dict(build[0])["version"]


def test_pool_figures_count_allocations_outside_the_pool_apart(tmp_path):
    """IP_POOL shrunk under a held address: it is counted apart, not as a pool's."""
    config = fake_config(tmp_path / "state.db", pool="198.51.100.10-198.51.100.12")
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
    svc.start()
    svc.allocate(public_ip=A("198.51.100.12"), private_ip=VM1)
    svc.allocate(public_ip=A("198.51.100.10"))
    smaller = fake_config(tmp_path / "state.db", pool="198.51.100.10-198.51.100.11")
    svc2 = FloatingIPService(smaller, Store(smaller.db_path), FakeBackend(), FakeHost())
    figures = pool_figures(svc2.registry, svc2.list())
    assert figures == {"default": {"size": 2, "free": 1, "allocated": 1, "associated": 0},
                       None: {"size": 0, "free": 0, "allocated": 1, "associated": 1}}
    samples = scrape(PrometheusMetrics(svc2).exposition()[1])
    assert value(samples, "ipfloater_allocations_outside_pools") == 1
    assert value(samples, "ipfloater_pool_allocated", pool="default") == 1


def test_reconcile_runs_repairs_and_failures_are_counted(metered):
    svc, backend, metrics = metered
    svc.allocate(private_ip=VM1, owner="o")
    assert svc.reconcile() == []
    backend.chains = {}  # drift: somebody flushed our rules
    repairs = svc.reconcile()
    assert repairs
    backend.fail_sync = True
    with pytest.raises(Exception):
        svc.reconcile()
    samples = now(metrics)
    assert value(samples, "ipfloater_reconcile_runs_total", result="ok") == 2
    assert value(samples, "ipfloater_reconcile_runs_total", result="failed") == 1
    assert value(samples, "ipfloater_reconcile_repairs_total") == len(repairs)


def test_without_metrics_nothing_is_collected_and_the_api_says_so(tmp_path):
    """The negative control: the default observer counts nothing, and /v1/metrics of a
    service without metrics is a clear 503, not an empty 200."""
    config = fake_config(tmp_path / "state.db")
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
    svc.start()
    assert type(svc.observer) is Observer
    svc.allocate(private_ip=VM1)
    _server, url, stop = serve_in_thread(ApiApp(svc, Authenticator(TOKEN)))
    try:
        resp = requests.get(url + "/v1/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    finally:
        stop()
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "metrics_unavailable"


def test_metrics_listener_serves_metrics_only(metered):
    _svc, _backend, metrics = metered
    _server, url, stop = serve_in_thread(MetricsApp(metrics))
    try:
        resp = requests.get(url + "/metrics", timeout=5)
        assert resp.status_code == 200 and "ipfloater_pool_size" in resp.text
        assert resp.headers["Content-Type"].startswith("text/plain")
        resp = requests.get(url + "/v1/floatingips", timeout=5)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
        resp = requests.post(url + "/metrics", timeout=5)
        assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
        assert requests.head(url + "/metrics", timeout=5).status_code == 200
    finally:
        stop()


# -- METRICS_ADDRESS ------------------------------------------------------------------------

BASE = "[IPFLOATER]\nIP_POOL = 198.51.100.10-198.51.100.12\nPRIVATE_IP_RANGES = 10.77.0.0/24\n"


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9470", ("127.0.0.1", 9470)), (" 0.0.0.0:9470 ", ("0.0.0.0", 9470)),
    ("[::1]:9470", ("::1", 9470)), ("", None),
])
def test_metrics_address_accepted(text, expected):
    assert parse_config_text(BASE + f"METRICS_ADDRESS = {text}\n").metrics_address == expected


@pytest.mark.parametrize("text, fragment", [
    ("localhost:9470", "is not host:port"), ("127.0.0.1", "is not host:port"), (":9470", "is not host:port"),
    ("127.0.0.1:0", "port must be"), ("127.0.0.1:70000", "port must be"), ("127.0.0.1:94x", "port must be"),
    ("[::1]:", "port must be"), ("::1:9470", "is not host:port"), ("127.0.0.1:7003", "REST_PORT 7003"),
])
def test_bad_metrics_address_is_one_line_naming_key_and_value(text, fragment):
    with pytest.raises(ConfigError) as err:
        parse_config_text(BASE + f"METRICS_ADDRESS = {text}\n")
    message = str(err.value)
    assert "METRICS_ADDRESS" in message and repr(text) in message and fragment in message, message
    assert "\n" not in message


def test_metrics_address_refuses_the_apis_port_as_configured():
    with pytest.raises(ConfigError, match="REST_PORT 8000"):
        parse_config_text(BASE + "REST_PORT = 8000\nMETRICS_ADDRESS = 127.0.0.1:8000\n")
    assert parse_config_text(BASE + "REST_PORT = 8000\nMETRICS_ADDRESS = 127.0.0.1:7003\n").metrics_address


def test_metrics_address_not_of_this_host_is_a_start_problem():
    config = parse_config_text(BASE + "METRICS_ADDRESS = 192.0.2.99:9470\n")
    facts = preflight.HostFacts(True, frozenset({A("127.0.0.1")}), frozenset(), 1, 0)
    assert preflight.host_problems(config, facts) == [
        "METRICS_ADDRESS: 192.0.2.99 is not an address of this host (the metrics could not listen on it)"]
    local = parse_config_text(BASE + "METRICS_ADDRESS = 127.0.0.1:9470\n")
    assert preflight.host_problems(local, facts) == []


def test_metrics_port_in_use_stops_the_start_with_one_line(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        config = parse_config_text(BASE + f"METRICS_ADDRESS = 127.0.0.1:{port}\n")
        with pytest.raises(daemon_mod.DaemonError) as err:
            daemon_mod.start_metrics_listener(config, MetricsApp(Observer()))
        assert str(err.value).startswith(f"METRICS_ADDRESS: cannot listen on 127.0.0.1:{port}: ")
    finally:
        taken.close()
    assert daemon_mod.start_metrics_listener(parse_config_text(BASE), MetricsApp(Observer())) is None


def test_the_library_is_loaded_at_the_first_scrape_not_before(tmp_path):
    """A daemon nobody scrapes does not carry prometheus_client (and the HTTP, SSL and
    e-mail modules its package imports): counting is plain Python."""
    script = f"""
import sys
from ipaddress import IPv4Address as A
from one_ipfloater.metrics import PrometheusMetrics
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.fakes import FakeBackend, FakeHost, fake_config
config = fake_config({str(tmp_path / 'state.db')!r})
svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
svc.start()
svc.observer = PrometheusMetrics(svc, "fake")
svc.allocate(private_ip=A("10.77.0.11"))
assert "prometheus_client" not in sys.modules, "imported before any scrape"
assert b"ipfloater_changes_total" in svc.observer.exposition()[1]
assert "prometheus_client" in sys.modules
"""
    import subprocess
    import sys
    from tests.paths import REPO
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_the_role_follows_the_routers_ha_state(metered):
    """A router pair reports keepalived's word (hastate.py), a lone router "single"."""
    svc, backend, _metrics = metered
    state = {"now": "master"}
    metrics = PrometheusMetrics(svc, backend.name, role=lambda: state["now"])
    assert value(now(metrics), "ipfloater_role", role="master") == 1
    state["now"] = "backup"
    samples = now(metrics)
    assert value(samples, "ipfloater_role", role="backup") == 1
    assert value(samples, "ipfloater_role", role="master") == 0


def test_pool_figures_per_named_pool(tmp_path):
    config = fake_config(tmp_path / "state.db", extra="[POOL campus]\nIP_POOL = 203.0.113.1-203.0.113.4\n")
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
    svc.start()
    svc.allocate(owner="o", pool="campus")
    figures = pool_figures(svc.registry, svc.list())
    assert figures == {"default": {"size": 3, "free": 3, "allocated": 0, "associated": 0},
                       "campus": {"size": 4, "free": 3, "allocated": 1, "associated": 0}}
