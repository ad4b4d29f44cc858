"""One "never a floating IP" policy for both sides: every address at the edges of the
blocks of addresses.NEVER_FLOATING, and 0.0.0.1-0.0.0.40 that the daemon once took into
IP_POOL while the front-end refused them, is judged alike by the daemon's IP_POOL, its
PRIVATE_IP_RANGES and the front-end's FLOATING_IP (pure: no namespace needed)."""

from ipaddress import IPv4Address

from one_ipfloater.addresses import NEVER_FLOATING, never_floating
from one_ipfloater.config import ConfigError, parse_config_text
from one_ipfloater.one.fipspec import parse_public_ip

POOL = IPv4Address("198.51.100.10")  # the pool of the PRIVATE_IP_RANGES check


def accepted_by_each_side(addr: IPv4Address) -> list:
    """[IP_POOL, FLOATING_IP, PRIVATE_IP_RANGES]: True where the address is accepted."""
    outcomes = []
    for check in (lambda: parse_config_text(f"[IPFLOATER]\nIP_POOL = {addr}\n"
                                            f"PRIVATE_IP_RANGES = 10.77.0.0/24\n"),
                  lambda: parse_public_ip(str(addr)),
                  lambda: parse_config_text(f"[IPFLOATER]\nIP_POOL = {POOL}\n"
                                            f"PRIVATE_IP_RANGES = {addr}/32\n")):
        try:
            check()
            outcomes.append(True)
        except (ValueError, ConfigError):
            outcomes.append(False)
    return outcomes


def edge_addresses() -> list:
    edges = set()
    for net, _ in NEVER_FLOATING:
        edges.update((int(net.network_address), int(net.broadcast_address) + 1))
    values = {v for e in edges for v in range(e - 40, e + 41) if 0 <= v < 2**32}
    return [IPv4Address(v) for v in sorted(values) if IPv4Address(v) != POOL]


def test_both_sides_judge_every_edge_address_alike(figures):
    addresses = edge_addresses()
    disagree = []
    for addr in addresses:
        outcomes = accepted_by_each_side(addr)
        if outcomes not in ([True] * 3, [False] * 3) or outcomes[0] != (never_floating(addr) is None):
            disagree.append((str(addr), outcomes))
    refused = sum(never_floating(a) is not None for a in addresses)
    assert refused and refused < len(addresses)  # both kinds were tried
    assert IPv4Address("0.0.0.1") in addresses and IPv4Address("255.255.255.255") in addresses
    assert not disagree, disagree[:10]
    figures("address policy", "edge addresses judged alike by IP_POOL, PRIVATE_IP_RANGES, "
            "FLOATING_IP", f"{len(addresses) - len(disagree)} of {len(addresses)} "
            f"({refused} refused by all three)")
