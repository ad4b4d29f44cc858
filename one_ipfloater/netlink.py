"""A minimal synchronous netlink client: requests, dumps, ACKs and attributes.

The daemon needs four netlink conversations (add/remove an address, list addresses or
neighbours, dump and delete conntrack entries). pyroute2 covers them, but it runs an
asyncio loop per request, which was most of a change's cost at thousands of floating
IPs (benchmarks/ANALYSIS.md). These few lines do the same with one blocking socket per
protocol and keep the daemon free of a large dependency.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_TYPE_MASK = 0x3FFF  # drops NLA_F_NESTED / NLA_F_NET_BYTEORDER

_HEADER = struct.Struct("=IHHII")  # len, type, flags, seq, pid


class NetlinkError(OSError):
    """The kernel answered a request with an error (errno)."""


def attr(kind: int, data: bytes) -> bytes:
    """One attribute (rtattr/nlattr), padded to 4 bytes."""
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def attrs(data: bytes, offset: int = 0) -> Iterator[tuple[int, bytes, bytes]]:
    """(type, value, the whole attribute as sent) for each attribute in `data`."""
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, data[offset + 4:offset + length], data[offset:offset + length]
        offset += (length + 3) & ~3


class NetlinkSocket:
    """One blocking netlink socket; not thread-safe (callers hold a lock)."""

    def __init__(self, protocol: int, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        self.sock.bind((0, 0))
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def _message(self, kind: int, flags: int, payload: bytes) -> tuple[int, bytes]:
        self.seq += 1
        return self.seq, _HEADER.pack(_HEADER.size + len(payload), kind, flags, self.seq, 0) + payload

    def _replies(self, wanted: set[int]) -> Iterator[tuple[int, int, int, bytes]]:
        """(seq, type, error or 0, payload) for replies to the sequence numbers `wanted`."""
        while wanted:
            data = self.sock.recv(1 << 20)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
                payload = data[offset + _HEADER.size:offset + length]
                offset += (length + 3) & ~3
                if seq not in wanted:
                    continue  # a late answer to an earlier, abandoned request
                if kind == NLMSG_ERROR:
                    wanted.discard(seq)
                    yield seq, kind, -struct.unpack_from("=i", payload)[0], b""
                elif kind == NLMSG_DONE:
                    wanted.discard(seq)
                else:
                    yield seq, kind, 0, payload

    def batch(self, requests: list[tuple[int, int, bytes]], ignore: tuple[int, ...] = ()) -> None:
        """Send (type, flags, payload) requests, each with an ACK, in one write; raise the
        first error whose errno is not in `ignore` once every answer has arrived."""
        if not requests:
            return
        sent = [self._message(kind, flags | NLM_F_REQUEST | NLM_F_ACK, payload)
                for kind, flags, payload in requests]
        self.sock.sendall(b"".join(message for _seq, message in sent))
        failure = 0
        for _seq, _kind, error, _payload in self._replies({seq for seq, _message in sent}):
            if error and error not in ignore and not failure:
                failure = error
        if failure:
            raise NetlinkError(failure, os.strerror(failure))

    def dump(self, kind: int, payload: bytes) -> Iterator[tuple[int, bytes]]:
        """(type, payload) of every message of a dump request."""
        seq, message = self._message(kind, NLM_F_REQUEST | NLM_F_DUMP, payload)
        self.sock.sendall(message)
        replies = list(self._replies({seq}))  # drain the dump before anyone acts on it
        for _seq, reply_kind, error, reply in replies:
            if error:
                raise NetlinkError(error, os.strerror(error))
            yield reply_kind, reply
