"""A long-lived TCP stream for the HA lab; runs *inside* a namespace.

    ip netns exec NS python tests/support/stream.py HOST PORT --interval 0.05

One connection, a numbered line every interval; the echo server (traffic.py serve) answers
each line. Every answer is printed as one JSON line with its arrival time (time.time(), so
that it compares with ping -D's timestamps), so a test sees when the stream stopped and
when it flowed again without sleeping. Ends on stdin EOF or --max-seconds, printing
{"event": "end", ...} with the counts and the largest gap between answers.
"""

import argparse
import json
import socket
import sys
import threading
import time

_lock = threading.Lock()


def emit(obj):
    with _lock:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python tests/support/stream.py")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--max-seconds", type=float, default=300.0)
    args = p.parse_args(argv)
    try:
        sock = socket.create_connection((args.host, args.port), timeout=5)
    except OSError as exc:
        emit({"event": "error", "error": str(exc), "t": time.time()})
        return 1
    sock.settimeout(None)
    emit({"event": "connect", "local": "%s:%d" % sock.getsockname(), "t": time.time()})
    stop = threading.Event()
    state = {"sent": 0, "received": 0, "last": None, "max_gap": 0.0, "error": None, "out_of_order": 0}

    def sender():
        n = 0
        while not stop.wait(args.interval):
            n += 1
            try:
                sock.sendall(b"seq %d\n" % n)
            except OSError as exc:
                state["error"] = "send: %s" % exc
                emit({"event": "error", "error": state["error"], "t": time.time()})
                stop.set()
                return
            state["sent"] = n

    def receiver():
        buf = b""
        expected = 1
        while not stop.is_set():
            try:
                chunk = sock.recv(65536)
            except OSError as exc:
                if not stop.is_set():
                    state["error"] = "recv: %s" % exc
                    emit({"event": "error", "error": state["error"], "t": time.time()})
                stop.set()
                return
            if not chunk:
                state["error"] = "connection closed by peer"
                emit({"event": "error", "error": state["error"], "t": time.time()})
                stop.set()
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                now = time.time()
                try:
                    n = int(json.loads(line)["data"].split()[1])
                except (ValueError, KeyError, IndexError, TypeError):
                    continue
                if n != expected:
                    state["out_of_order"] += 1
                expected = n + 1
                if state["last"] is not None:
                    state["max_gap"] = max(state["max_gap"], now - state["last"])
                state["last"] = now
                state["received"] += 1
                emit({"event": "reply", "n": n, "t": now})

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            stop.set()

    threads = [threading.Thread(target=f, daemon=True) for f in (sender, receiver, watch_stdin)]
    for t in threads:
        t.start()
    stop.wait(args.max_seconds)
    stop.set()
    emit({"event": "end", "sent": state["sent"], "received": state["received"],
          "max_gap": round(state["max_gap"], 3), "error": state["error"],
          "out_of_order": state["out_of_order"], "t": time.time()})
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
