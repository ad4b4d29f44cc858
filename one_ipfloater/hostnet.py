"""Host networking at the edge: floating addresses on the public interface, gratuitous
ARP, conntrack cleanup and the neighbour table.

Everything speaks netlink (rtnetlink for addresses and neighbours, ctnetlink for
conntrack, see netlink.py) or a raw packet socket (ARP) on sockets opened once: an `ip`
or `conntrack` process per call, or a freshly opened ARP packet socket (closing one waits
for an RCU grace period), cost far more than the change itself, and a long-lived socket
is what keeps a change cheap at thousands of floating IPs (benchmarks/ANALYSIS.md). Everything acts on the network namespace the
daemon runs in.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import threading
from collections.abc import Iterable
from ipaddress import IPv4Address

from .netlink import (NETLINK_NETFILTER, NETLINK_ROUTE, NLM_F_CREATE, NLM_F_REPLACE, NetlinkError,
                      NetlinkSocket, attr, attrs)

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR, RTM_GETNEIGH = 20, 21, 22, 30
IFA_ADDRESS, IFA_LOCAL = 1, 2
NDA_DST, NDA_LLADDR = 1, 2
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = (1 << 8) | 1, (1 << 8) | 2  # NFNL_SUBSYS_CTNETLINK
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_TUPLE_IP, CTA_IP_V4_DST = 1, 2, 1, 2
NUD_STATES = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY", 0x10: "PROBE",
              0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT"}
BATCH = 256  # address messages per write (their ACKs must fit the receive buffer)

_handles: dict = {}
_locks = {NETLINK_ROUTE: threading.Lock(), NETLINK_NETFILTER: threading.Lock(), "arp": threading.Lock()}
# one lock per socket (shared by the API and reconcile threads): a slow conntrack dump
# must not hold up an address change


class HostNetError(RuntimeError):
    """A host operation failed; the message says which and why in one line."""


def _socket(protocol: int) -> NetlinkSocket:
    if protocol not in _handles:
        _handles[protocol] = NetlinkSocket(protocol)
    return _handles[protocol]


def _index(iface: str) -> int:
    try:
        return socket.if_nametoindex(iface)
    except OSError:
        raise HostNetError(f"PUBLIC_INTERFACE: {iface} does not exist") from None


# -- addresses on the public interface --------------------------------------------------

def interface_exists(iface: str) -> bool:
    try:
        socket.if_nametoindex(iface)
        return True
    except OSError:
        return False


def _ifaddrmsg(prefixlen: int, index: int) -> bytes:
    return struct.pack("=BBBBI", socket.AF_INET, prefixlen, 0, 0, index)


def _addresses() -> list[tuple[int, IPv4Address, int]]:
    """(interface index, address, prefix length) of every IPv4 address."""
    found = []
    with _locks[NETLINK_ROUTE]:
        for _kind, payload in _socket(NETLINK_ROUTE).dump(RTM_GETADDR, _ifaddrmsg(0, 0)):
            _family, prefixlen, _flags, _scope, index = struct.unpack_from("=BBBBI", payload)
            values = {kind: value for kind, value, _raw in attrs(payload, 8)}
            raw = values.get(IFA_LOCAL) or values.get(IFA_ADDRESS)
            if raw and len(raw) == 4:
                found.append((index, IPv4Address(raw), prefixlen))
    return found


def host_addresses(iface: str) -> set[IPv4Address]:
    """The /32 IPv4 addresses on `iface` (the only shape we ever add)."""
    index = _index(iface)
    return {addr for i, addr, prefixlen in _addresses() if i == index and prefixlen == 32}


def all_local_addresses() -> set[IPv4Address]:
    """Every IPv4 address of this host (namespace), whatever its prefix."""
    return {addr for _i, addr, _prefixlen in _addresses()}


def _change_addresses(kind: int, flags: int, iface: str, addrs: list[IPv4Address], ignore=()) -> None:
    index = _index(iface)
    with _locks[NETLINK_ROUTE]:
        for start in range(0, len(addrs), BATCH):
            chunk = addrs[start:start + BATCH]
            try:
                _socket(NETLINK_ROUTE).batch(
                    [(kind, flags, _ifaddrmsg(32, index) + attr(IFA_LOCAL, a.packed) + attr(IFA_ADDRESS, a.packed))
                     for a in chunk], ignore=ignore)
            except NetlinkError as exc:
                verb = "adding" if kind == RTM_NEWADDR else "removing"
                raise HostNetError(f"{verb} {chunk[0]}/32 ... on {iface}: {exc.strerror}") from None


def add_addresses(iface: str, addrs: Iterable[IPv4Address]) -> None:
    """Add (or keep) each address as /32 on `iface`."""
    _change_addresses(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, iface, list(addrs))


def del_address(iface: str, addr: IPv4Address) -> None:
    """Remove `addr`/32 from `iface`; an address already gone is fine."""
    _change_addresses(RTM_DELADDR, 0, iface, [addr], ignore=(errno.EADDRNOTAVAIL,))


# -- gratuitous ARP --------------------------------------------------------------------

def _arp_socket(iface: str) -> tuple[socket.socket, bytes]:
    key = ("arp", iface)
    if key not in _handles:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        try:
            sock.bind((iface, ETH_P_ARP))
            mac = sock.getsockname()[4]
            if len(mac) != 6:
                raise HostNetError(f"PUBLIC_INTERFACE: {iface} has no Ethernet address")
        except BaseException:
            sock.close()
            raise
        _handles[key] = (sock, mac)
    return _handles[key]


def gratuitous_arp(iface: str, addr: IPv4Address) -> None:
    """Announce `addr` on `iface` (like `arping -U`), so that neighbours that cached a
    failed lookup, or the address's previous owner, switch to us at once."""
    with _locks["arp"]:
        try:
            sock, mac = _arp_socket(iface)
            frame = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
            frame += struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet/IPv4, ARP request
            frame += mac + addr.packed + b"\x00" * 6 + addr.packed
            sock.send(frame)
        except OSError:
            stale = _handles.pop(("arp", iface), None)  # the interface may have been re-created
            if stale:
                stale[0].close()
            raise


# -- conntrack -----------------------------------------------------------------------

def _tuple_dst(nested: bytes) -> bytes:
    for kind, value, _raw in attrs(nested):
        if kind == CTA_TUPLE_IP:
            for ip_kind, ip_value, _ip_raw in attrs(value):
                if ip_kind == CTA_IP_V4_DST:
                    return ip_value
    return b""


def flush_conntrack(addrs: Iterable[IPv4Address]) -> dict[IPv4Address, int]:
    """Drop tracked flows whose original destination (inbound) or reply destination (the
    VM's outbound flows, SNATed to it) is one of `addrs`, so that established connections
    cannot keep using a NAT binding that was removed or moved; flows dropped per address.
    One dump of the table serves every address; each flow is deleted by the original
    tuple exactly as the kernel reported it."""
    wanted = {addr.packed: addr for addr in addrs}
    counts = dict.fromkeys(wanted.values(), 0)
    nfgenmsg = struct.pack("=BBH", socket.AF_INET, 0, 0)
    with _locks[NETLINK_NETFILTER]:
        ct = _socket(NETLINK_NETFILTER)
        try:
            doomed = []
            for _kind, payload in ct.dump(IPCTNL_MSG_CT_GET, nfgenmsg):
                tuples = {kind: (value, raw) for kind, value, raw in attrs(payload, 4)}
                orig, reply = tuples.get(CTA_TUPLE_ORIG), tuples.get(CTA_TUPLE_REPLY)
                if not orig:
                    continue
                addr = wanted.get(_tuple_dst(orig[0])) or (wanted.get(_tuple_dst(reply[0])) if reply else None)
                if addr is not None:
                    doomed.append(orig[1])
                    counts[addr] += 1
            ct.batch([(IPCTNL_MSG_CT_DELETE, 0, nfgenmsg + raw) for raw in doomed], ignore=(errno.ENOENT,))
        except NetlinkError as exc:
            where = ", ".join(str(addr) for addr in sorted(counts))
            raise HostNetError(f"conntrack cleanup for {where}: {exc.strerror}") from None
    return counts


# -- neighbours ---------------------------------------------------------------------

def neighbours() -> list[dict]:
    """The kernel's IPv4 neighbour (ARP) table: [{ip, mac, dev, state}]."""
    entries = []
    with _locks[NETLINK_ROUTE]:
        replies = list(_socket(NETLINK_ROUTE).dump(RTM_GETNEIGH, struct.pack("=BxxxiHBB", socket.AF_INET, 0, 0, 0, 0)))
    for _kind, payload in replies:
        _family, index, state, _flags, _type = struct.unpack_from("=BxxxiHBB", payload)
        values = {kind: value for kind, value, _raw in attrs(payload, 12)}
        if len(values.get(NDA_DST, b"")) != 4:
            continue
        lladdr = values.get(NDA_LLADDR)
        try:
            dev = socket.if_indextoname(index)
        except OSError:
            dev = None
        entries.append({"ip": str(IPv4Address(values[NDA_DST])),
                        "mac": ":".join(f"{b:02x}" for b in lladdr) if lladdr else None,
                        "dev": dev, "state": [name for bit, name in NUD_STATES.items() if state & bit]})
    return entries
