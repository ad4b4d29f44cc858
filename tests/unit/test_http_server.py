"""The HTTP layer under the API (waitress + httpserver.py), over raw sockets: strict
framing, nothing smuggled behind a refused request, every error the JSON object, the
whole-request deadline, odd JSON, early disconnects. In process, no root."""

import json
import logging
import select
import socket
import time

import pytest

from one_ipfloater import httpserver
from one_ipfloater.api import ApiApp
from one_ipfloater.httpserver import serve_in_thread
from one_ipfloater.auth import Authenticator
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.fakes import FakeBackend, FakeHost, fake_config

TOKEN = "t" * 32
DEADLINE = 1.0
# A request that WOULD change the state: smuggled behind a refused one, it must not run.
ALLOCATE = (b"POST /v1/floatingips HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


@pytest.fixture
def api(tmp_path):
    config = fake_config(tmp_path / "state.db")
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
    svc.start()
    server, url, stop = serve_in_thread(ApiApp(svc, Authenticator(TOKEN), max_body=4096),
                                        max_body=4096, request_timeout=DEADLINE)
    yield server.effective_port, svc, server
    stop()


def exchange(port: int, data: bytes, wait: float = 10.0) -> tuple[bytes, bool]:
    """Send `data`, read until the server closes (True) or `wait` passes (False)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                break
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
        return received, False


def responses(raw: bytes) -> list[tuple[int, dict, dict]]:
    """(status, headers, JSON body) of each response in `raw`."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        length = int(headers.get("content-length", "0"))
        out.append((status, headers, json.loads(rest[:length]) if length else None))
        raw = rest[length:]
    return out


def request(method: str, path: str, headers: list[str] = (), body: bytes = b"", token: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x"] + (["Authorization: Bearer " + TOKEN] if token else [])
    return ("\r\n".join(lines + list(headers)) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize("headers, body, status, code, fragment", [
    (["Content-Length: 2", "Content-Length: 2"], b"{}", 400, "bad_request", "Content-Length: given 2 times"),
    (["Content-Length: 2", "Content-Length: 5"], b"{}", 400, "bad_request", "Content-Length: given 2 times"),
    (["Content-Length: 2, 2"], b"{}", 400, "bad_request", "Content-Length"),
    (["Content-Length: 2", "Transfer-Encoding: chunked"], b"2\r\n{}\r\n0\r\n\r\n", 400, "bad_request",
     "not allowed with Transfer-Encoding"),
    (["Transfer-Encoding: chunked"], b"2\r\n{}\r\n0\r\n\r\n", 411, "length_required", "chunked"),
    (["Transfer-Encoding: gzip"], b"", 501, "not_implemented", "Transfer-Encoding: 'gzip'"),
    (["Content-Length: \u0662".encode().decode("latin-1")], b"{}", 400, "bad_request", "Content-Length"),
    (["Content-Length: +2"], b"{}", 400, "bad_request", "Content-Length"),
    (["Content-Length: 2 "], b"{}", None, None, None),  # trailing blank: legal, served
])
def test_ambiguous_framing_is_refused_closed_and_smuggles_nothing(api, headers, body, status, code, fragment):
    port, svc, _server = api
    raw = request("POST", "/v1/floatingips", headers, body).decode("latin-1").encode("latin-1") + ALLOCATE
    got, closed = exchange(port, raw)
    answers = responses(got)
    if status is None:  # the control: the same pipeline with sound framing runs both requests
        assert [a[0] for a in answers] == [201, 201], got
        assert len(svc.registry) == 2
        return
    assert closed, "the connection must be closed after a framing error"
    assert len(answers) == 1, got  # no answer to the pipelined request: it never ran
    got_status, hdrs, payload = answers[0]
    assert (got_status, payload["error"]["code"]) == (status, code), payload
    assert fragment in payload["error"]["message"] and hdrs["content-type"] == "application/json"
    assert len(svc.registry) == 0 and svc.store.allocations() == []


def test_body_shorter_than_announced_is_408_at_the_deadline_and_nothing_runs(api):
    port, svc, _server = api
    # the "body" is a whole request: a parser that cut the body short would run it
    raw = request("POST", "/v1/floatingips", ["Content-Length: 400"]) + ALLOCATE
    started = time.monotonic()
    got, closed = exchange(port, raw, wait=DEADLINE + 5)
    answers = responses(got)
    assert closed and [a[0] for a in answers] == [408], got
    assert answers[0][2]["error"]["code"] == "request_timeout"
    assert len(svc.registry) == 0
    print(f"stalled body closed after {time.monotonic() - started:.2f} s (deadline {DEADLINE} s)")


def test_trickled_headers_are_cut_at_the_deadline_not_at_each_byte(api):
    """One byte every 0.1 s never leaves the connection idle, so waitress' idle timeout
    would never fire: the whole-request deadline does."""
    port, svc, _server = api
    data = request("GET", "/v1/version") + b"X" * 200  # never complete: headers go on
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started, sent, reply = time.monotonic(), 0, b""
        while sent < len(data) and time.monotonic() - started < DEADLINE + 5:
            try:
                sock.send(data[sent:sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            readable, _, _ = select.select([sock], [], [], 0.1)  # pacing, and the answer if any
            if readable:
                try:
                    chunk = sock.recv(4096)
                except ConnectionResetError:  # closed with our last bytes unread: the 408 may be lost
                    break
                reply += chunk
                if not chunk:
                    break
        elapsed = time.monotonic() - started
    assert sent < len(data), "the server never cut the trickle"
    assert reply == b"" or b" 408 " in reply.split(b"\r\n")[0], reply[:200]
    assert elapsed < DEADLINE + 3


@pytest.mark.parametrize("raw, status, code", [
    (request("GET", "/v1/nothing", ["Connection: close"]), 404, "not_found"),
    (request("PATCH", "/v1/floatingips", ["Connection: close"]), 405, "method_not_allowed"),
    (request("BREW", "/v1/version", ["Connection: close"]), 501, "not_implemented"),
    (request("GET", "/v1/floatingips?ref=" + "a" * 3000, ["Connection: close"]), 414, "uri_too_long"),
    (request("GET", "/v1/version", ["X-Big: " + "b" * 20000]), 431, "headers_too_large"),
    (request("POST", "/v1/floatingips", ["Content-Length: 1000000"]), 413, "body_too_large"),
    (request("POST", "/v1/floatingips", ["Content-Length: 4096"], b"x" * 4096), 400, "bad_request"),
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET /v1/version HTTP/1.1\r\nBad Header\r\n\r\n", 400, "bad_request"),
    (request("GET", "/v1/version", ["Connection: close"], token=False), 401, "unauthorized"),
])
def test_every_error_is_the_json_object(api, raw, status, code):
    port, _svc, _server = api
    got, _closed = exchange(port, raw + b"\r\n" if raw.startswith(b"GARBAGE") else raw, wait=5)
    answers = responses(got)
    assert answers and answers[0][0] == status, got[:300]
    assert answers[0][1]["content-type"] == "application/json"
    error = answers[0][2]["error"]
    assert error["code"] == code and error["message"] and "\n" not in error["message"]


@pytest.mark.parametrize("body, fragment", [
    (b"[" * 100000 + b"]" * 100000, "nested"),
    (b'{"owner": ' + b"[" * 40 + b"]" * 40 + b"}", "nested deeper than"),
    (b'{"public_ip": 1e999999}', "out of range"),
    (b'{"public_ip": NaN}', "NaN"),
    (b'{"public_ip": -Infinity}', "Infinity"),
    (b'{"public_ip": ' + b"9" * 100000 + b"}", "digits"),
    (b'{"owner": "\xff"}', "not valid JSON"),
])
def test_odd_json_is_a_400_not_a_500(tmp_path, body, fragment):
    config = fake_config(tmp_path / "state.db")
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
    svc.start()
    server, _url, stop = serve_in_thread(ApiApp(svc, Authenticator(TOKEN), max_body=1 << 20),
                                         max_body=1 << 20, request_timeout=5)
    try:
        got, _ = exchange(server.effective_port,
                          request("POST", "/v1/floatingips", [f"Content-Length: {len(body)}", "Connection: close"],
                                  body), wait=5)
    finally:
        stop()
    (status, _h, payload), = responses(got)[:1]
    assert status == 400 and payload["error"]["code"] == "bad_request", payload
    assert fragment in payload["error"]["message"]
    assert len(svc.registry) == 0


def test_text_fields_are_matched_whole(api):
    port, svc, _server = api
    for value in ("uid:3\n", "uid:3\r", "uid\x003", "uid:3\x1b", "uid:3\u2028"):
        body = json.dumps({"owner": value}).encode()
        got, _ = exchange(port, request("POST", "/v1/floatingips", [f"Content-Length: {len(body)}"], body) +
                          request("GET", "/v1/version", ["Connection: close"]), wait=5)
        status, _h, payload = responses(got)[0]
        assert status == 400 and payload["error"]["message"].startswith("owner:"), (value, payload)
    assert len(svc.registry) == 0


def test_client_that_leaves_early_costs_no_traceback(api, caplog):
    port, _svc, _server = api
    caplog.set_level(logging.DEBUG)
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.sendall(request("GET", "/v1/pool"))
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request("POST", "/v1/floatingips", ["Content-Length: 100"], b"{"))
    got, _ = exchange(port, request("GET", "/v1/version", ["Connection: close"]))
    assert responses(got)[0][0] == 200  # still serving
    noisy = [r for r in caplog.records if r.exc_info or (r.name.startswith("waitress") and r.levelno > logging.INFO)]
    assert noisy == [], [r.getMessage() for r in noisy]


def test_connection_limit_stays_below_the_descriptor_limit():
    assert httpserver.connection_limit(64) == 64 - httpserver.FD_RESERVE
    assert httpserver.connection_limit(1024) == 1024 - httpserver.FD_RESERVE
    assert httpserver.connection_limit(1 << 20) == httpserver.MAX_CONNECTIONS
    assert httpserver.connection_limit(10) >= 1


def test_ipv6_loopback(tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    config = fake_config(tmp_path / "state.db")
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
    server, url, stop = serve_in_thread(ApiApp(svc, Authenticator(TOKEN)), host="::1")
    try:
        with socket.create_connection(("::1", server.effective_port), timeout=5) as sock:
            sock.sendall(request("GET", "/v1/health", ["Connection: close"], token=False))
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200") and url.startswith("http://[::1]:")
    finally:
        stop()


def test_control_plain_waitress_accepts_the_ambiguous_framing(api, monkeypatch):
    """Negative control: without StrictParser, waitress takes Content-Length together with
    Transfer-Encoding (and a chunked body) and runs the request: the check is what refuses."""
    from waitress.parser import HTTPRequestParser
    monkeypatch.setattr(httpserver.DeadlineChannel, "parser_class", HTTPRequestParser)
    port, svc, _server = api
    raw = request("POST", "/v1/floatingips", ["Content-Length: 2", "Transfer-Encoding: chunked"],
                  b"2\r\n{}\r\n0\r\n\r\n") + ALLOCATE
    got, _closed = exchange(port, raw, wait=3)
    assert [a[0] for a in responses(got)] == [201, 201]


def test_control_without_the_deadline_a_trickle_holds_the_connection(api, monkeypatch):
    """Negative control: waitress' own idle timeout never fires while bytes keep coming."""
    monkeypatch.setattr(httpserver.ApiHTTPServer, "expire_slow_requests", lambda self, now: None)
    port, _svc, _server = api
    data = request("GET", "/v1/version") + b"X" * 200
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started, sent = time.monotonic(), 0
        while time.monotonic() - started < DEADLINE * 3:
            sock.send(data[sent:sent + 1])
            sent += 1
            readable, _, _ = select.select([sock], [], [], 0.1)
            assert not readable, "cut although the deadline is off"


def test_emfile_on_accept_pauses_accepting_instead_of_spinning(api, monkeypatch):
    """waitress' accept is level-triggered: if accept() fails with EMFILE and the listener
    stays readable, the loop calls it again at once, forever. Ours stops listening a while."""
    import errno
    _port, _svc, server = api

    def no_descriptors():
        raise OSError(errno.EMFILE, "Too many open files")
    monkeypatch.setattr(server, "accept", no_descriptors)
    assert server.readable()
    server.handle_accept()
    assert not server.readable()  # paused: the loop sleeps in poll() instead of spinning
    # control: waitress' own handler swallows the error and stays readable
    from waitress.server import TcpWSGIServer
    server._accept_paused_until = 0.0
    TcpWSGIServer.handle_accept(server)
    assert server.readable()

