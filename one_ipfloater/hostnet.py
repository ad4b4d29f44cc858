"""Host networking at the edge: floating addresses on the public interface, gratuitous
ARP, conntrack cleanup and the neighbour table.

Everything runs `ip` / `conntrack` with argument lists (never a shell) and a timeout, or
a raw packet socket for the ARP announcement (no extra process on the hot path).
"""

from __future__ import annotations

import json
import re
import logging
import socket
import struct
import subprocess
from ipaddress import IPv4Address
from typing import Iterable

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 10.0


class HostNetError(RuntimeError):
    """A host command failed; the message says which and why in one line."""


def _run(argv: list[str], ok_codes: Iterable[int] = (0,)) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        raise HostNetError(f"{argv[0]}: command not found (install it: see README)") from None
    except subprocess.TimeoutExpired:
        raise HostNetError(f"{' '.join(argv)}: timed out after {COMMAND_TIMEOUT:.0f}s") from None
    if proc.returncode not in ok_codes:
        reason = (proc.stderr or proc.stdout).strip().splitlines()
        raise HostNetError(f"{' '.join(argv)}: {reason[-1] if reason else f'exit {proc.returncode}'}")
    return proc


# -- addresses on the public interface --------------------------------------------------

def interface_exists(iface: str) -> bool:
    return _run(["ip", "-j", "link", "show", "dev", iface], ok_codes=(0, 1)).returncode == 0


def host_addresses(iface: str) -> set[IPv4Address]:
    """The /32 IPv4 addresses on `iface` (the only shape we ever add)."""
    out = _run(["ip", "-j", "-4", "addr", "show", "dev", iface]).stdout
    found = set()
    for link in json.loads(out or "[]"):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet" and info.get("prefixlen") == 32:
                found.add(IPv4Address(info["local"]))
    return found


def all_local_addresses() -> set[IPv4Address]:
    """Every IPv4 address of this host (namespace), whatever its prefix."""
    out = _run(["ip", "-j", "-4", "addr", "show"]).stdout
    return {IPv4Address(info["local"]) for link in json.loads(out or "[]")
            for info in link.get("addr_info", []) if info.get("family") == "inet"}


def add_address(iface: str, addr: IPv4Address) -> None:
    _run(["ip", "addr", "replace", f"{addr}/32", "dev", iface])


def del_address(iface: str, addr: IPv4Address) -> None:
    proc = _run(["ip", "addr", "del", f"{addr}/32", "dev", iface], ok_codes=(0, 1, 2))
    if proc.returncode != 0 and "Cannot assign requested address" not in proc.stderr:
        raise HostNetError(f"ip addr del {addr}/32 dev {iface}: {proc.stderr.strip()}")


def gratuitous_arp(iface: str, addr: IPv4Address) -> None:
    """Announce `addr` on `iface` (like `arping -U`), so that neighbours that cached a
    failed lookup, or the address's previous owner, switch to us at once."""
    ETH_P_ARP = 0x0806
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
        sock.bind((iface, ETH_P_ARP))
        mac = sock.getsockname()[4]
        if len(mac) != 6:
            raise HostNetError(f"PUBLIC_INTERFACE: {iface} has no Ethernet address")
        ip = addr.packed
        broadcast = b"\xff" * 6
        frame = broadcast + mac + struct.pack("!H", ETH_P_ARP)
        frame += struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet/IPv4, ARP request
        frame += mac + ip + b"\x00" * 6 + ip
        sock.send(frame)


# -- conntrack -----------------------------------------------------------------------

def flush_conntrack(addr: IPv4Address) -> int:
    """Drop tracked flows to or from floating address `addr` so that established
    connections cannot keep using a NAT binding that was removed or moved."""
    deleted = 0
    for option in ("--orig-dst", "--reply-dst"):
        proc = _run(["conntrack", "-D", option, str(addr)], ok_codes=(0, 1))
        text = proc.stderr + proc.stdout
        if proc.returncode == 1 and "flow entries have been deleted" not in text:
            raise HostNetError(f"conntrack -D {option} {addr}: {text.strip().splitlines()[-1:]}")
        count = re.search(r"(\d+) flow entries have been deleted", text)
        deleted += int(count.group(1)) if count else 0
    return deleted


# -- neighbours ---------------------------------------------------------------------

def neighbours() -> list[dict]:
    """The kernel's IPv4 neighbour (ARP) table: [{ip, mac, dev, state}]."""
    out = _run(["ip", "-j", "-4", "neigh", "show"]).stdout
    entries = []
    for entry in json.loads(out or "[]"):
        entries.append({"ip": entry.get("dst"), "mac": (entry.get("lladdr") or "").lower() or None,
                        "dev": entry.get("dev"), "state": entry.get("state", [])})
    return entries
