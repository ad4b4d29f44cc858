"""One ipfloaterd per network namespace.

Two daemons in one namespace (another config, DB or port) would each converge the same
kernel to their own state and remove each other's rules; a per-DB lock cannot see that.
An abstract unix socket can: its name lives in the network namespace, and it vanishes
with the process that holds it (kill -9 included), so there is no stale lock to clean up.
The daemon, `flush` and `adopt` take it before they touch anything. Whoever finds it taken
asks the socket who holds it (SO_PEERCRED) to name the pid in its one-line refusal.
"""

from __future__ import annotations

import errno
import socket
import struct

NAME = "ipfloaterd"
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


class InstanceBusy(RuntimeError):
    """Another ipfloaterd (or flush/adopt) runs in this network namespace."""

    def __init__(self, pid: int | None, what: str):
        self.pid = pid
        holder = f"ipfloaterd (pid {pid})" if pid else "another ipfloaterd"
        super().__init__(f"{what}: refused, {holder} runs in this network namespace (stop it first)")


def holder_pid(name: str = NAME, timeout: float = 1.0) -> int | None:
    """The pid that listens on the abstract socket `name`, None if nobody or unknown."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(None)  # blocking whatever socket.setdefaulttimeout() says (see below)
        # a blocking connect bounded by SO_SNDTIMEO: it waits for room in a busy holder's
        # backlog, where a Python timeout (non-blocking) would fail at once with EAGAIN
        seconds = int(timeout)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                         struct.pack("ll", seconds, int((timeout - seconds) * 1e6)))
        try:
            probe.connect("\0" + name)
            pid, _uid, _gid = _PEERCRED.unpack(
                probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        except OSError:
            return None
    return pid or None


def claim(what: str, name: str = NAME) -> socket.socket:
    """Hold this namespace's instance socket (keep the returned socket open as long as the
    claim should last; `release` or exiting ends it). InstanceBusy when taken."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # not inherited by children
    sock.settimeout(None)  # a default timeout would end answer_probes' accept loop
    try:
        sock.bind("\0" + name)
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        raise InstanceBusy(holder_pid(name), what) from None
    sock.listen(16)  # never accepted: a probe's connect completes from the backlog
    return sock


def release(sock: socket.socket, prober=None) -> None:
    """End a claim now. Shutdown first: it wakes the `answer_probes` thread blocked in
    accept, whose system call keeps the name bound until it returns (joined here)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    if prober is not None:
        prober.join(5.0)
    sock.close()


def answer_probes(sock: socket.socket):
    """Accept and drop probes in a daemon thread, so that a long-running holder's backlog
    never fills and every later probe still learns its pid."""
    import threading

    def drain():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:  # shut down: the claim ended
                return
            conn.close()

    thread = threading.Thread(target=drain, name="instance-probes", daemon=True)
    thread.start()
    return thread
