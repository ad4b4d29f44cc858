"""Forward a loopback port of this namespace to a loopback port inside a lab namespace.

The daemon listens on 127.0.0.1 of the router namespace (its default: front-end and
router on one host). Tests and the lab run the OpenNebula simulator and the hooks in the
caller's namespace; this relay lets them reach the daemon without touching any address
or route of the root namespace: the listening socket lives on our loopback, and each
outgoing socket is created by a thread that has switched itself (setns, a per-thread
property) into the lab namespace.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _enter_netns(ns: str) -> None:
    """Move the calling thread (only it) into network namespace `ns`."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


class PortForward:
    """127.0.0.1:<self.port> here -> `target_host:target_port` inside namespace `ns`."""

    def __init__(self, ns: str, target_port: int, target_host: str = "127.0.0.1", idle_timeout: float = 120.0):
        self.ns, self.target = ns, (target_host, target_port)
        self.idle_timeout = idle_timeout
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.2)
            if not ready:
                continue
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            _enter_netns(self.ns)  # this thread now lives in the lab namespace
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        pair = {client: upstream, upstream: client}
        try:
            while pair:
                ready, _, _ = select.select(list(pair), [], [], self.idle_timeout)
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
