"""Several daemon URLs: the client tries them in order, remembers the one that answered,
fails over where nothing was answered or a 503 refused, and never sends a change twice.

Real HTTP servers on 127.0.0.1 (tests/unit/test_client.py's Recorder), a closed port and
a listening socket that never answers stand for the daemons; the time bound is checked
with a scripted session and a fake clock (what each attempt may wait, not how fast it is).
"""

from __future__ import annotations

import json
import logging
import socket
import threading

import pytest
import requests
import urllib3.exceptions

from one_ipfloater import cli
from one_ipfloater import client as client_module
from one_ipfloater.client import ApiError, IpfloaterClient, UrlError, check_urls
from one_ipfloater.one.config import ConfigError, parse_one_config_text
from tests.unit.test_client import TOKEN, Recorder, cli as run_cli, servers  # noqa: F401 (fixture)

LOGGER = "one_ipfloater.client"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hole():
    """A port that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def answering(*statuses, body=None):
    """A reply function: the given statuses in turn (the last one repeats)."""
    left = list(statuses)

    def reply(path):
        status = left.pop(0) if len(left) > 1 else left[0]
        if status >= 400:
            return status, {}, {"error": {"code": {503: "unavailable", 409: "address_in_use",
                                                   500: "internal_error"}.get(status, "error"),
                                          "message": f"answer {status}"}}
        return status, {}, body if body is not None else {"floatingips": [], "public_ip": "198.51.100.9",
                                                          "status": "ok"}
    return reply


@pytest.fixture(autouse=True)
def _fresh_memory():
    client_module._LAST_ANSWERED.clear()
    yield
    client_module._LAST_ANSWERED.clear()


def failovers(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and "failing over" in r.getMessage()]


# --- the URL list ---------------------------------------------------------------------------

def test_check_urls_takes_commas_lists_and_names_the_bad_entry():
    assert check_urls("http://a:7003, http://b:7003/") == ("http://a:7003", "http://b:7003")
    assert check_urls(["http://a:7003", "http://b:7003,http://c:7003"]) == (
        "http://a:7003", "http://b:7003", "http://c:7003")
    for value, message in [
            ("http://a:7003,ftp://b", "IPFLOATER_URL: 'ftp://b' is not an http:// or https:// URL"),
            ("http://a:7003,,http://b:7003", "has an empty entry"),
            ("http://a:7003,", "has an empty entry"),
            ("http://a:7003,http://a:7003/", "IPFLOATER_URL: 'http://a:7003/' is given twice"),
            (",".join(f"http://h{i}:7003" for i in range(9)), "9 URLs given, at most 8")]:
        with pytest.raises(UrlError, match=message.replace("?", r"\?")):
            check_urls(value, "IPFLOATER_URL")


def test_front_end_config_takes_several_urls_and_names_the_bad_one():
    cfg = parse_one_config_text("[ONE_IPFLOATER]\nIPFLOATER_URL = http://r1:7003, http://r2:7003\n",
                                "c", env={})
    assert cfg.ipfloater_url == "http://r1:7003,http://r2:7003"
    assert IpfloaterClient(cfg.ipfloater_url).urls == ("http://r1:7003", "http://r2:7003")
    with pytest.raises(ConfigError, match=r"^c: IPFLOATER_URL: 'http://r2:99999' has an invalid port$"):
        parse_one_config_text("[ONE_IPFLOATER]\nIPFLOATER_URL = http://r1:7003,http://r2:99999\n",
                              "c", env={})


# --- order and memory -----------------------------------------------------------------------

def test_the_first_url_is_used_while_it_answers(servers):
    a, b = servers(), servers()
    client = IpfloaterClient([a.url, b.url], TOKEN, timeout=5)
    client.list()
    client.allocate(private_ip="10.77.0.5")
    assert len(a.requests) == 2 and b.requests == []


def test_503_fails_over_and_the_one_that_answered_is_remembered(servers, caplog):
    a, b = servers(answering(503, 200)), servers()
    client = IpfloaterClient(f"{a.url},{b.url}", TOKEN, timeout=5)
    with caplog.at_level(logging.WARNING, LOGGER):
        client.allocate(private_ip="10.77.0.5")  # no ref: a 503 applied nothing, so it may move on
        client.list()
        # a new client in the same process starts with the one that answered too
        IpfloaterClient([a.url, b.url], TOKEN, timeout=5).list()
    assert len(a.requests) == 1 and len(b.requests) == 3
    assert failovers(caplog) == [f"ipfloaterd at {a.url}: 503 unavailable; failing over to {b.url}"]
    assert client.url == b.url


def test_refused_connection_fails_over_for_every_call(servers, caplog):
    down, b = f"http://127.0.0.1:{closed_port()}", servers(answering(201))
    client = IpfloaterClient([down, b.url], TOKEN, timeout=5)
    with caplog.at_level(logging.WARNING, LOGGER):
        assert client.allocate(private_ip="10.77.0.5")["public_ip"] == "198.51.100.9"
    assert [path for _, path, _ in b.requests] == ["/v1/floatingips"]
    assert failovers(caplog) == [f"ipfloaterd at {down}: unreachable; failing over to {b.url}"]


def test_timeout_fails_over_for_reads_and_idempotent_changes(servers, hole, caplog):
    b = servers()
    with caplog.at_level(logging.WARNING, LOGGER):
        for call in (lambda c: c.list(),
                     lambda c: c.allocate(private_ip="10.77.0.5", ref="one:vm:1:nic:0"),
                     lambda c: c.associate("198.51.100.9", "10.77.0.5"),
                     lambda c: c.disassociate("198.51.100.9"),
                     lambda c: c.release("198.51.100.9")):
            before = len(b.requests)
            call(IpfloaterClient([hole, b.url], TOKEN, timeout=0.3))
            assert len(b.requests) == before + 1
            client_module._LAST_ANSWERED.clear()  # each call starts at the hole again
    assert len(failovers(caplog)) == 5


def test_no_failover_after_a_timeout_for_an_allocation_without_ref(servers, hole):
    """The hung daemon may have taken the address: a second one elsewhere would be a leak."""
    b = servers()
    client = IpfloaterClient([hole, b.url], TOKEN, timeout=0.3)
    with pytest.raises(ApiError) as caught:
        client.allocate(private_ip="10.77.0.5")
    assert caught.value.code == "timeout" and b.requests == []
    assert f"not sent to {b.url}: the change may have been made" in caught.value.message


def test_a_5xx_other_than_503_fails_over_only_when_repeatable(servers):
    a, b = servers(answering(500)), servers()
    client = IpfloaterClient([a.url, b.url], TOKEN, timeout=5)
    with pytest.raises(ApiError) as caught:
        client.allocate(private_ip="10.77.0.5")
    assert (caught.value.code, caught.value.status, b.requests) == ("internal_error", 500, [])
    client.allocate(private_ip="10.77.0.5", ref="one:vm:1:nic:0")
    assert len(b.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_a_4xx_is_the_answer_never_a_failover(servers, status):
    a, b = servers(answering(status)), servers()
    client = IpfloaterClient([a.url, b.url], TOKEN, timeout=5)
    for call in (lambda: client.list(), lambda: client.allocate(private_ip="10.77.0.5", ref="r"),
                 lambda: client.release("198.51.100.9")):
        with pytest.raises(ApiError) as caught:
            call()
        assert caught.value.status == status
    assert b.requests == [] and len(a.requests) == 3


def test_the_ha_state_of_a_router_never_goes_to_another(servers):
    a, b = servers(answering(503)), servers()
    with pytest.raises(ApiError):
        IpfloaterClient([a.url, b.url], TOKEN, timeout=5).set_ha_state("master")
    assert b.requests == []


def test_when_none_answers_the_error_names_each(hole):
    down = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(ApiError) as caught:
        IpfloaterClient([down, hole], TOKEN, timeout=0.3).list()
    assert caught.value.code == "timeout"
    assert caught.value.message == (f"no ipfloaterd answered: ipfloaterd at {down} is unreachable; "
                                    f"ipfloaterd at {hole} did not answer within 0.3s")


def test_a_single_url_fails_exactly_as_before():
    down = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(ApiError) as caught:
        IpfloaterClient(down, TOKEN, timeout=1).list()
    assert (caught.value.code, caught.value.message) == ("unreachable", f"ipfloaterd at {down} is unreachable")


# --- the time bound (scripted session, fake clock) ---------------------------------------------

class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class ScriptedSession(requests.Session):
    """request(): per URL host, what the script says, after the clock moved on by what
    that failure costs at most with the timeouts given: a connect timeout the connect
    limit, a read timeout the answer limit, a slow one both (it connected just in time)."""

    def __init__(self, clock, script):
        super().__init__()
        self.clock, self.script, self.calls = clock, script, []

    def request(self, method, url, **kw):
        host = url.split("//")[1].split(":")[0]
        connect, answer = kw["timeout"] if isinstance(kw["timeout"], tuple) else (kw["timeout"],) * 2
        self.calls.append((host, connect + answer))
        kind = self.script[host]
        self.clock.now += {"connect-timeout": connect, "read-timeout": answer,
                           "slow-read-timeout": connect + answer}.get(kind, 0)
        if kind == "connect-timeout":
            raise requests.ConnectTimeout("connect timed out")
        if kind.endswith("read-timeout"):
            raise requests.ReadTimeout("read timed out")
        if kind == "refused":
            raise requests.ConnectionError(urllib3.exceptions.MaxRetryError(
                None, url, urllib3.exceptions.NewConnectionError(None, "refused")))
        if kind == "reset":
            raise requests.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted."))
        resp = requests.Response()
        resp.status_code, resp._content = 200, json.dumps({"floatingips": []}).encode()
        return resp


@pytest.mark.parametrize("script, tried", [
    ({"a": "connect-timeout", "b": "read-timeout", "c": "ok"}, ["a", "b", "c"]),
    ({"a": "read-timeout", "b": "read-timeout", "c": "ok"}, ["a", "b", "c"]),
    ({"a": "read-timeout", "b": "slow-read-timeout", "c": "ok"}, ["a", "b"]),
    # a first daemon that connected just in time and then did not answer leaves less
    ({"a": "slow-read-timeout", "b": "slow-read-timeout", "c": "ok"}, ["a", "b"]),
    ({"a": "slow-read-timeout", "b": "slow-read-timeout", "c": "slow-read-timeout"}, ["a", "b"]),
])
def test_the_whole_call_ends_within_the_timeout_times_the_urls(script, tried):
    clock = Clock()
    session = ScriptedSession(clock, script)
    client = IpfloaterClient(["http://a:7003", "http://b:7003", "http://c:7003"], TOKEN,
                             timeout=4, session=session, clock=clock)
    start = clock.now
    try:
        client.list()
    except ApiError as exc:
        assert "http://c:7003: not tried, the call's 12s were spent" in exc.message
    assert [h for h, _ in session.calls] == tried
    assert clock.now - start <= 4 * 3
    assert session.calls[0][1] == 8  # the first URL waits as a single one does (connect, answer)


def test_a_single_url_keeps_its_timeouts():
    clock = Clock()
    session = ScriptedSession(clock, {"a": "slow-read-timeout"})
    with pytest.raises(ApiError, match=r"^ipfloaterd at http://a:7003 did not answer within 4s$"):
        IpfloaterClient("http://a:7003", TOKEN, timeout=4, session=session, clock=clock).list()
    assert session.calls == [("a", 8)]


@pytest.mark.parametrize("kind, repeated", [("connect-timeout", True), ("refused", True),
                                            ("read-timeout", False), ("reset", False)])
def test_a_change_is_sent_again_only_if_it_cannot_have_arrived(kind, repeated):
    clock = Clock()
    session = ScriptedSession(clock, {"a": kind, "b": "ok"})
    client = IpfloaterClient(["http://a:7003", "http://b:7003"], TOKEN, timeout=4,
                             session=session, clock=clock)
    try:
        client.allocate(private_ip="10.77.0.5")  # no ref: not idempotent
    except ApiError as exc:
        assert "the change may have been made" in exc.message
    assert [h for h, _ in session.calls] == (["a", "b"] if repeated else ["a"])


# --- ipfloater status with several URLs ------------------------------------------------------

def health_reply(state):
    def reply(path):
        if path == "/v1/health":
            return 200, {}, {"status": "ok", "warnings": [],
                             "ha_state": {"state": state, "since": "2026-12-01T03:00:00Z", "changes": 1}}
        return 200, {}, {"floatingips": [{"public_ip": "198.51.100.9", "private_ip": "10.77.0.5",
                                          "status": "associated", "owner": None, "ref": None}]}
    return reply


def test_status_shows_every_daemon_health_and_ha_state(servers):
    down, backup, master = f"http://127.0.0.1:{closed_port()}", servers(health_reply("backup")), \
        servers(health_reply("master"))
    proc = run_cli("--url", f"{down},{backup.url}", "--url", master.url, "--timeout", "5", "status")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["URL", "HEALTH", "HA_STATE", "SINCE", "WARNINGS"]
    assert lines[1].split() == [down, "unreachable", "-", "-", "-"]
    assert lines[2].split() == [backup.url, "ok", "backup", "2026-12-01T03:00:00Z", "0"]
    assert lines[3].split() == [master.url, "ok", "master", "2026-12-01T03:00:00Z", "0"]
    assert f"allocations (from {backup.url}):" in proc.stdout and "198.51.100.9" in proc.stdout
    proc = run_cli("--json", "--url", f"{down},{backup.url},{master.url}", "status")
    out = json.loads(proc.stdout)
    assert [(d["url"], d["health"], d["ha_state"]) for d in out["daemons"]] == [
        (down, "unreachable", None), (backup.url, "ok", "backup"), (master.url, "ok", "master")]
    assert out["daemons"][0]["error"] == f"ipfloaterd at {down} is unreachable"
    assert out["floatingips"][0]["public_ip"] == "198.51.100.9"


def test_status_when_no_daemon_answers_still_shows_the_table_and_exits_3():
    downs = [f"http://127.0.0.1:{closed_port()}" for _ in range(2)]
    proc = run_cli("--url", ",".join(downs), "status")
    assert proc.returncode == cli.EXIT_UNREACHABLE
    assert [line.split()[:2] for line in proc.stdout.splitlines()[1:]] == [[d, "unreachable"] for d in downs]
    assert proc.stderr.splitlines() == [
        f"ipfloater: ipfloaterd at {downs[0]}: unreachable; failing over to {downs[1]}",
        f"ipfloater: no ipfloaterd answered: ipfloaterd at {downs[0]} is unreachable; "
        f"ipfloaterd at {downs[1]} is unreachable"]
    proc = run_cli("--json", "--url", ",".join(downs), "status")
    warning, error = [json.loads(line) for line in proc.stderr.splitlines()]
    assert warning["message"].endswith(f"failing over to {downs[1]}") and error["error"]["code"] == "unreachable"
    assert [d["health"] for d in json.loads(proc.stdout)["daemons"]] == ["unreachable"] * 2


def test_cli_names_the_bad_url_of_several():
    proc = run_cli("--url", "http://127.0.0.1:7003,http://r2:0", "status")
    assert proc.returncode == 2 and "--url: 'http://r2:0' has an invalid port" in proc.stderr


def test_status_asks_the_daemons_at_once_and_keeps_their_order(servers):
    """Each fake daemon holds its health answer until both requests have arrived (a barrier
    both must reach): asked one after another, the first would wait alone, the barrier
    breaks, and both answer 500. The rows stay in the order of the URLs."""
    meeting = threading.Barrier(2, timeout=5)

    def held(state):
        answer = health_reply(state)

        def reply(path):
            if path == "/v1/health":
                try:
                    meeting.wait()
                except threading.BrokenBarrierError:
                    return 500, {}, {"error": {"code": "internal_error", "message": "asked alone"}}
            return answer(path)
        return reply

    first, second = servers(held("master")), servers(held("backup"))
    proc = run_cli("--json", "--url", f"{first.url},{second.url}", "--timeout", "20", "status")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["daemons"]
    assert [(d["url"], d["health"], d["ha_state"]) for d in rows] == [
        (first.url, "ok", "master"), (second.url, "ok", "backup")], "asked one after the other"


def test_status_of_a_router_whose_keepalived_stopped_says_so(servers):
    router = servers(health_reply("stop"))
    proc = run_cli("--url", router.url, "status")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "HA state: stop (keepalived is not running on this router)"
    assert json.loads(run_cli("--json", "--url", router.url, "status").stdout)["ha_state"]["state"] == "stop"


def conflicting(times):
    """A reply function: `times` answers 503 store_conflict (nothing changed), then 201."""
    left = [times]

    def reply(path):
        if left[0]:
            left[0] -= 1
            return 503, {}, {"error": {"code": "store_conflict", "message": "change not applied: the shared "
                                       "state changed under it 24 times in a row; try again"}}
        return 201, {}, {"public_ip": "198.51.100.9", "status": "associated"}
    return reply


def test_a_store_conflict_is_sent_again_to_the_same_daemon_when_it_is_the_only_one(servers, caplog):
    a = servers(conflicting(2))
    with caplog.at_level(logging.WARNING, LOGGER):
        assert IpfloaterClient(a.url, TOKEN, timeout=5).allocate(private_ip="10.77.0.5")["public_ip"] == \
            "198.51.100.9"
    assert len(a.requests) == 3
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        f"ipfloaterd at {a.url}: 503 store_conflict; sending it again"] * 2


def test_store_conflicts_are_sent_again_a_bounded_number_of_times(servers):
    a = servers(conflicting(99))
    with pytest.raises(ApiError) as err:
        IpfloaterClient(a.url, TOKEN, timeout=5).allocate(private_ip="10.77.0.5")
    assert len(a.requests) == 1 + client_module.CONFLICT_RESENDS
    assert err.value.code == "store_conflict" and err.value.status == 503
    assert err.value.message.startswith("change not applied: the shared state changed")


def test_another_503_is_not_sent_again_to_the_same_daemon(servers):
    a = servers(answering(503, 201))  # store unavailable: a different daemon may help, the same not now
    with pytest.raises(ApiError):
        IpfloaterClient(a.url, TOKEN, timeout=5).allocate(private_ip="10.77.0.5")
    assert len(a.requests) == 1
