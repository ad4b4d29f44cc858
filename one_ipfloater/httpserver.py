"""The HTTP server under the API: waitress, made strict and bounded for an edge router.

waitress gives bounded worker threads, a bounded number of connections and a careful
HTTP/1.1 parser. What it leaves open for a daemon that anyone on the management network
may reach is closed here, in one place:

- a WHOLE-request deadline (waitress only closes connections that are idle): a request
  whose first byte came more than REQUEST_TIMEOUT ago and that is still incomplete
  (headers trickled, body stalled) is answered 408 and closed;
- framing it accepts but that two HTTP parsers may read differently (Transfer-Encoding
  at all, a repeated Content-Length) is refused before any body is read;
- its own error answers (400, 413, 431, 501, 500) are the API's JSON error object;
- accept() failing for want of file descriptors pauses accepting instead of retrying in
  a tight loop (waitress' accept is level-triggered), and the connection limit is kept
  below RLIMIT_NOFILE so that this is the exception; at the limit, connections that
  have sent nothing for a second are closed first, so that waiting clients get a slot;
- a client that goes away early costs a debug line, never a traceback.
"""

from __future__ import annotations

import errno
import json
import logging
import resource
import socket
import threading
import time

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.server import TcpWSGIServer
from waitress.adjustments import Adjustments
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask
from waitress.utilities import BadRequest, Error, ServerNotImplemented

log = logging.getLogger(__name__)

THREADS = 8
# Descriptors kept for the daemon itself (state file, WAL, locks, netlink and xtables
# sockets, the trigger pipe, logging) when the connection limit is derived from NOFILE.
FD_RESERVE = 32
MAX_CONNECTIONS = 4096
MAX_HEADER_BYTES = 16384
ACCEPT_PAUSE = 0.5  # seconds without accept() after EMFILE/ENFILE
IDLE_UNDER_PRESSURE = 1.0  # seconds an idle connection is kept while others wait for a slot

ERROR_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
               411: "length_required", 413: "body_too_large", 414: "uri_too_long",
               431: "headers_too_large", 500: "internal_error", 501: "not_implemented"}


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    """The API's error object, as bytes (also for answers waitress makes itself)."""
    payload = {"error": {"code": code or ERROR_CODES.get(status, "error"), "message": message}}
    return json.dumps(payload, sort_keys=True).encode() + b"\n"


class LengthRequired(BadRequest):
    code = 411
    reason = "Length Required"


class RequestTimeout(BadRequest):
    code = 408
    reason = "Request Timeout"


def connection_limit(nofile: int | None = None) -> int:
    """Connections to accept at most: below the descriptor limit, so that accept()
    practically never meets EMFILE."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY:
            nofile = MAX_CONNECTIONS + FD_RESERVE
    return max(4, min(MAX_CONNECTIONS, nofile - FD_RESERVE))


class StrictParser(HTTPRequestParser):
    """waitress' parser, minus the framing that lets two parsers disagree."""

    framing_error: Error | None = None

    def parse_header(self, header_plus: bytes) -> None:
        fields = [line.split(b":", 1) for line in header_plus.split(b"\r\n")[1:]]
        names = [f[0].strip().lower() for f in fields]
        lengths = names.count(b"content-length")
        if b"transfer-encoding" in names:
            codings = b",".join(f[1].strip(b" \t") for f in fields if f[0].strip().lower() == b"transfer-encoding"
                                and len(f) == 2)
            if lengths:
                self.framing_error = BadRequest("Content-Length: not allowed with Transfer-Encoding")
            elif [c.strip(b" \t").lower() for c in codings.split(b",") if c.strip(b" \t")] == [b"chunked"]:
                self.framing_error = LengthRequired(
                    "Content-Length: required (chunked bodies are not accepted)")
            else:
                self.framing_error = ServerNotImplemented(
                    f"Transfer-Encoding: {codings.decode('latin-1')[:40]!r} is not supported")
            raise ParsingError(self.framing_error.body)
        if lengths > 1:
            self.framing_error = BadRequest(f"Content-Length: given {lengths} times")
            raise ParsingError(self.framing_error.body)
        super().parse_header(header_plus)

    def received(self, data: bytes) -> int:
        consumed = super().received(data)
        if self.error is not None and self.framing_error is not None:
            self.error = self.framing_error
        return consumed


class JsonErrorTask(ErrorTask):
    """waitress' own error answers, as the API's JSON error object; the connection closes."""

    def execute(self):
        err = self.request.error
        body = error_body(err.code, self.message(err))
        self.status = f"{err.code} {err.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


    def message(self, err: Error) -> str:
        adj = self.channel.adj
        if err.code == 413:
            return (f"body: {self.request.content_length} bytes is over the limit of "
                    f"{adj.max_request_body_size - 1}")
        if err.code == 431:
            return f"headers: over the limit of {adj.max_request_header_size} bytes"
        text = str(err.body)
        return text if text.split(":", 1)[0] in ("Content-Length", "Transfer-Encoding") else f"request: {text}"


class OneSendTask(WSGITask):
    """Headers and a small body in one write, sent by the worker thread itself (with
    `send_bytes=1`): waitress would queue them as two writes and wake the loop thread to
    send them, a thread hand-off per answer that showed in the throughput figure."""

    def write(self, data):
        if (not self.wrote_header and data and self.has_body and not self.chunked_response
                and self.content_length == len(data)):
            head = self.build_response_header()
            self.wrote_header = True
            self.content_bytes_written += len(data)
            self.channel.write_soon(head + data)
            return
        super().write(data)


class DeadlineChannel(HTTPChannel):
    """A connection that remembers when its current request began."""

    parser_class = StrictParser
    task_class = OneSendTask
    error_task_class = JsonErrorTask
    request_started: float | None = None

    def received(self, data: bytes) -> bool:
        if data and self.request is None:
            self.request_started = time.monotonic()
        result = super().received(data)
        if self.request is None:
            self.request_started = None
        return result

    def service(self):
        """As waitress', minus the wake-up of the loop thread after each answer when
        there is nothing for it to do (the worker sent the answer; with a request
        look-ahead of 1 the loop keeps listening on this connection meanwhile)."""
        _serving.channel = self
        try:
            super().service()
        finally:
            _serving.channel = None

    def needs_loop(self) -> bool:
        return bool(self.total_outbufs_len or self.will_close or self.close_when_flushed
                    or not self.connected)

    def expire(self, status: int, message: str) -> None:
        """Answer an unfinished request with `status` and close (from the loop thread)."""
        body = error_body(status, message)
        head = (f"HTTP/1.1 {status} {RequestTimeout.reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with self.requests_lock:
            self.request = None
            self.request_started = None
            if self.requests:  # one is being served: its answer comes first, then close
                self.will_close = True
                return
            with self.outbuf_lock:
                self.outbufs[-1].append(head + body)
                self.current_outbuf_count += len(head) + len(body)
                self.total_outbufs_len += len(head) + len(body)
            self.close_when_flushed = True


_serving = threading.local()  # the channel a worker thread is serving, if any


class ApiHTTPServer(TcpWSGIServer):
    """waitress' TCP server with the request deadline and a calm accept on EMFILE."""

    def pull_trigger(self):
        channel = getattr(_serving, "channel", None)
        if channel is not None and not channel.needs_loop():
            return
        super().pull_trigger()

    channel_class = DeadlineChannel
    request_timeout = 10.0
    _accept_paused_until = 0.0
    _next_deadline_check = 0.0
    stopping = False

    def readable(self):
        now = time.monotonic()
        if now >= self._next_deadline_check:
            self._next_deadline_check = now + min(1.0, self.request_timeout / 4)
            self.expire_slow_requests(now)
        accepting = super().readable()
        return accepting and now >= self._accept_paused_until

    def expire_slow_requests(self, now: float) -> None:
        cutoff = now - self.request_timeout
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if started is not None and started < cutoff and not channel.close_when_flushed:
                log.debug("closing %s: request not complete after %.1f s", channel.addr, self.request_timeout)
                channel.expire(408, f"request: not complete within {self.request_timeout:g} s")
            elif channel.close_when_flushed and channel.last_activity < time.time() - self.request_timeout:
                channel.will_close = True  # a client that does not even read its 408
            elif (self.in_connection_overflow and started is None and not channel.requests
                  and channel.last_activity < time.time() - IDLE_UNDER_PRESSURE):
                channel.will_close = True  # at the limit: idle connections make room first

    def handle_accept(self):
        try:
            pair = self.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                if time.monotonic() >= self._accept_paused_until:
                    log.warning("accept: %s; not accepting for %.1f s", exc.strerror, ACCEPT_PAUSE)
                self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE
                return
            log.debug("accept: %s", exc)
            return
        if pair is None:
            return
        conn, addr = pair
        try:
            self.set_socket_options(conn)
        except OSError:  # the client left already
            conn.close()
            return
        self.channel_class(self, conn, addr, self.adj, map=self._map)


class _QuietWaitress(logging.Filter):
    """Client disconnects and socket errors are the client's business: debug lines
    without tracebacks; waitress' other messages pass."""

    NOISE = ("Client disconnected", "Socket error", "server accept() threw",
             "Task queue depth")  # (a burst wider than the thread pool: normal, it waits its turn)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(self.NOISE):
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger("waitress").isEnabledFor(logging.DEBUG)
        return True


def make_server(app, host: str, port: int, request_timeout: float, max_body: int,
                threads: int = THREADS, connections: int | None = None) -> ApiHTTPServer:
    """A listening server (not yet serving); OSError when it cannot bind."""
    for name in ("waitress", "waitress.queue"):  # a logger's filters do not see its children's records
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietWaitress) for f in logger.filters):
            logger.addFilter(_QuietWaitress())
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    adj = Adjustments(
        host=host, port=port, ipv4=family == socket.AF_INET, ipv6=family == socket.AF_INET6,
        threads=threads, connection_limit=connections or connection_limit(),
        channel_timeout=max(1, int(round(request_timeout))), cleanup_interval=1,
        asyncore_loop_timeout=1, asyncore_use_poll=True, channel_request_lookahead=1,  # select() stops at descriptor 1024
        max_request_header_size=MAX_HEADER_BYTES, max_request_body_size=max_body + 1,
        backlog=128, ident="ipfloaterd", expose_tracebacks=False, log_socket_errors=False,
        clear_untrusted_proxy_headers=False)
    adj.send_bytes = 1  # the worker sends its answer itself (OneSendTask); set here: the keyword is deprecated
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    info = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)[0]
    sockinfo = (info[0], info[1], info[2], info[4])
    server = ApiHTTPServer(app, map={}, dispatcher=dispatcher, adj=adj, sockinfo=sockinfo)
    server.request_timeout = request_timeout
    return server


def serve(server: ApiHTTPServer) -> None:
    """Run the loop until `stop(server)`, then close every connection."""
    from waitress import wasyncore
    server.stopping = False
    try:
        while not server.stopping:
            wasyncore.poll2(1.0, server._map)
    except BaseException:
        log.exception("API server loop failed")
        raise
    finally:
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        wasyncore.close_all(server._map)


def stop(server: ApiHTTPServer) -> None:
    """Make `serve` return (from any thread or a signal handler)."""
    server.stopping = True
    try:
        server.pull_trigger()  # wake the loop now rather than at its next timeout
    except OSError:  # the loop saw `stopping` first and closed the trigger already
        pass


def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, request_timeout: float = 10.0,
                    max_body: int = 65536):
    """Tests and the lab: a server on a thread; returns (server, url, stop())."""
    server = make_server(app, host, port, request_timeout, max_body)
    thread = threading.Thread(target=serve, args=(server,), name="api", daemon=True)
    thread.start()
    host_text = f"[{host}]" if ":" in host else host
    url = f"http://{host_text}:{server.effective_port}"

    def shutdown() -> None:
        stop(server)
        thread.join(10)
    return server, url, shutdown
