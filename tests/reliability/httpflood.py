"""Run inside the router namespace: hold many slow or idle connections to the daemon
while a well-behaved client keeps calling it; print one JSON line of what happened.

    python httpflood.py PORT TOKEN PID MODE COUNT SECONDS

MODE: `slow` (half trickle header bytes, half announce a body they never finish) or
`idle` (connect and say nothing: a descriptor flood). The daemon's threads, memory and
CPU time are read from /proc/PID around the flood.
"""

import json
import os
import select
import socket
import sys
import time


def proc_stats(pid: int) -> dict:
    status = open(f"/proc/{pid}/status").read()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"threads": int(fields["Threads"]), "rss_kb": int(fields["VmRSS"].split()[0]),
            "cpu_s": (int(stat[11]) + int(stat[12])) / ticks, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def good_call(port: int, token: str, timeout: float = 5.0):
    """One GET /v1/version on a fresh connection: (status or None, seconds)."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(f"GET /v1/version HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                         "Connection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return int(data.split()[1]), time.monotonic() - started
    except (OSError, IndexError, ValueError):
        return None, time.monotonic() - started


def main() -> None:
    port, token, pid, mode, count, seconds = (int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4],
                                              int(sys.argv[5]), float(sys.argv[6]))
    before = proc_stats(pid)
    conns, pending, refused = [], [], 0
    for i in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        pending.append(sock)
    # connected = writable with no error (bounded wait: the backlog may hold some a while)
    deadline = time.monotonic() + 10
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], pending, [], 0.2)
        for sock in writable:
            pending.remove(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                conns.append(sock)
            else:
                refused += 1
                sock.close()
    refused += len(pending)
    opened = len(conns)
    prefix = b"GET /v1/version HTTP/1.1\r\nHost: x\r\nX-Slow: "
    stalled = b"POST /v1/floatingips HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"
    sent = [0] * len(conns)
    answers, worst, peak = [], 0.0, dict(before)
    closed_by_server = set()
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        for i, sock in enumerate(conns):
            if i in closed_by_server or mode != "slow":
                continue
            try:
                if i % 2 == 0:  # trickle: one header byte per round, never the end
                    sent[i] += sock.send((prefix + b"a" * 10000)[sent[i]:sent[i] + 1])
                elif sent[i] == 0:  # a body announced, never finished
                    sent[i] = sock.send(stalled)
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed_by_server.add(i)
        readable, _, _ = select.select([s for i, s in enumerate(conns) if i not in closed_by_server], [], [], 0)
        for sock in readable:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:  # EOF: the server closed it (a 408 may come first)
                closed_by_server.add(conns.index(sock))
        status, took = good_call(port, token)
        answers.append(status)
        worst = max(worst, took)
        now = proc_stats(pid)
        peak = {k: max(peak[k], now[k]) for k in ("threads", "rss_kb", "fds")} | {"cpu_s": now["cpu_s"]}
        time.sleep(0.1)  # pacing of the well-behaved client, not synchronisation
    after = proc_stats(pid)
    for sock in conns:
        sock.close()
    print(json.dumps({"opened": opened, "refused": refused, "closed_by_server": len(closed_by_server),
                      "answers": answers, "worst_latency_s": round(worst, 3), "before": before,
                      "peak": peak, "after": after, "cpu_s": round(after["cpu_s"] - before["cpu_s"], 3),
                      "seconds": round(time.monotonic() - started, 2)}))


if __name__ == "__main__":
    main()
