"""Tiny traffic tools that run *inside* a network namespace of the lab.

    ip netns exec NS python tests/support/traffic.py serve --tcp 8080 --udp 8081 --name vm1
    ip netns exec NS python tests/support/traffic.py tcp-probe 198.51.100.50 8080 --timeout 2
    ip netns exec NS python tests/support/traffic.py udp-probe 198.51.100.50 8081 --timeout 2
    ip netns exec NS python tests/support/traffic.py tcp-session 198.51.100.50 8080 --timeout 2

Every answer from `serve` is one JSON line naming the server and the peer address it saw, so a
test can tell *which* VM answered and *from which source address* the client arrived (the two
facts DNAT and SNAT change). Everything prints JSON lines and flushes, so callers read stdout
instead of sleeping. All waits are bounded.
"""

import argparse
import errno as errno_mod
import json
import socket
import sys
import threading
import time

_print_lock = threading.Lock()


def emit(obj):
    """One JSON line on stdout, flushed, safe from several threads."""
    with _print_lock:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()


def error_fields(exc):
    """{"error": text, "errno": symbolic name} for a socket failure (tests match on errno)."""
    if isinstance(exc, socket.timeout):
        name = "ETIMEDOUT"
    elif isinstance(exc, EOFError):
        name = "EOF"
    elif getattr(exc, "errno", None):
        name = errno_mod.errorcode.get(exc.errno, str(exc.errno))
    else:
        name = type(exc).__name__
    return {"error": "%s: %s" % (type(exc).__name__, exc), "errno": name}


def parse_reply(raw):
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_line(sock, buf, deadline):
    """Read one line from a socket before `deadline` (monotonic); `buf` keeps the rest.

    Hand-rolled because a socket.makefile() reader is unusable after its first timeout.
    """
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no reply line in time")
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError("connection closed by peer")
        buf.extend(chunk)
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


# ---------------------------------------------------------------- serve

def answer(name, proto, peer, local, data):
    return {"name": name, "proto": proto, "peer": peer[0], "peer_port": peer[1],
            "local": local, "data": data}


def serve_tcp_conn(conn, peer, name):
    local = conn.getsockname()[0]
    buf = bytearray()
    with conn:
        while True:
            try:
                line = read_line(conn, buf, time.monotonic() + 3600)
            except (OSError, EOFError):
                return
            data = line.decode("utf-8", "replace").rstrip("\r")
            reply = answer(name, "tcp", peer, local, data)
            emit(dict(reply, event="tcp"))
            try:
                conn.sendall((json.dumps(reply, sort_keys=True) + "\n").encode())
            except OSError:
                return


def serve_tcp(sock, name):
    while True:
        conn, peer = sock.accept()
        threading.Thread(target=serve_tcp_conn, args=(conn, peer, name), daemon=True).start()


def serve_udp(sock, name):
    local = sock.getsockname()[0]
    while True:
        data, peer = sock.recvfrom(65535)
        reply = answer(name, "udp", peer, local, data.decode("utf-8", "replace").strip())
        emit(dict(reply, event="udp"))
        try:
            sock.sendto((json.dumps(reply, sort_keys=True) + "\n").encode(), peer)
        except OSError as exc:  # e.g. ENETUNREACH: we got a packet we cannot answer
            emit(dict(error_fields(exc), event="udp-reply-error", peer=peer[0]))


def cmd_serve(args):
    """Listen, print "ready", answer until stdin closes or --max-seconds pass."""
    threads = []
    if args.tcp:
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((args.bind, args.tcp))
        t.listen(64)
        threads.append(threading.Thread(target=serve_tcp, args=(t, args.name), daemon=True))
    if args.udp:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((args.bind, args.udp))
        threads.append(threading.Thread(target=serve_udp, args=(u, args.name), daemon=True))
    for t in threads:
        t.start()
    stop = threading.Event()

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print("ready", flush=True)
    stop.wait(args.max_seconds)
    return 0


# ---------------------------------------------------------------- probes

def cmd_tcp_probe(args):
    result = {"ok": False, "reply": None, "error": None, "errno": None}
    deadline = time.monotonic() + args.timeout
    try:
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as s:
            s.sendall((args.send + "\n").encode())
            result["reply"] = parse_reply(read_line(s, bytearray(), deadline))
            result["ok"] = True
    except (OSError, EOFError) as exc:
        result.update(error_fields(exc))
    emit(result)
    return 0 if result["ok"] else 1


def cmd_udp_probe(args):
    result = {"ok": False, "reply": None, "error": None, "errno": None}
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(args.timeout)
            s.connect((args.host, args.port))  # connected: ICMP errors surface as exceptions
            s.send(args.send.encode())
            result["reply"] = parse_reply(s.recv(65535))
            result["ok"] = True
    except OSError as exc:
        result.update(error_fields(exc))
    emit(result)
    return 0 if result["ok"] else 1


def cmd_tcp_session(args):
    """Hold ONE connection; stdin `send TEXT` -> one JSON line per reply or error.

    Lets a test change NAT between two sends on the same connection (conntrack behaviour).
    """
    try:
        s = socket.create_connection((args.host, args.port), timeout=args.timeout)
    except OSError as exc:
        emit(dict(error_fields(exc), event="connect", ok=False))
        return 1
    emit({"event": "connect", "ok": True, "local": "%s:%d" % s.getsockname()})
    buf = bytearray()
    for cmd in sys.stdin:
        verb, _, text = cmd.rstrip("\n").partition(" ")
        if verb == "close":
            break
        if verb != "send":
            emit({"event": "error", "ok": False, "error": "unknown command %r" % verb,
                  "errno": None})
            continue
        try:
            s.sendall((text + "\n").encode())
            line = read_line(s, buf, time.monotonic() + args.timeout)
            emit({"event": "reply", "ok": True, "reply": parse_reply(line)})
        except (OSError, EOFError) as exc:
            emit(dict(error_fields(exc), event="reply", ok=False))
    s.close()
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python tests/support/traffic.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--tcp", type=int, default=0)
    s.add_argument("--udp", type=int, default=0)
    s.add_argument("--name", required=True)
    s.add_argument("--bind", default="0.0.0.0")
    s.add_argument("--max-seconds", type=float, default=600.0)
    s.set_defaults(func=cmd_serve)
    for cmd, func in (("tcp-probe", cmd_tcp_probe), ("udp-probe", cmd_udp_probe),
                      ("tcp-session", cmd_tcp_session)):
        s = sub.add_parser(cmd)
        s.add_argument("host")
        s.add_argument("port", type=int)
        s.add_argument("--timeout", type=float, default=2.0)
        if cmd != "tcp-session":
            s.add_argument("--send", default="probe")
        s.set_defaults(func=func)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
