"""The daemon's configuration file: INI with an [IPFLOATER] section (and [POOL <name>] ones).

Keys of the original ipfloater (IP_POOL, PRIVATE_IP_RANGES, REST_IP, REST_PORT, DB,
BLOCK_PUBLIC_IPS) keep their names and meaning so that old config files still load.
Every value is validated here, once, so the rest of the daemon works with typed values.
"""

from __future__ import annotations

import bisect
import configparser
import ipaddress
import os
import re
from collections import namedtuple
from ipaddress import IPv4Address, IPv4Network
from urllib.parse import urlsplit

from .addresses import DEFAULT_POOL, MAX_POOL_SIZE, POOL_NAME_RE, AddressError, never_floating_overlap, parse_networks, parse_pool
from .logformat import parse_format

SECTION = "IPFLOATER"
POOL_SECTION_PREFIX = "POOL "
POOL_KEYS = {"IP_POOL", "ROUTER_GROUP"}
DEFAULT_DB = "/var/lib/ipfloater/ipfloater.db"
DEFAULT_TOKEN_FILE = "/var/lib/ipfloater/token"
DEFAULT_XTABLES_LOCK = "/run/xtables.lock"
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")

KNOWN_KEYS = {
    "IP_POOL", "PRIVATE_IP_RANGES", "REST_IP", "REST_PORT", "DB", "BLOCK_PUBLIC_IPS",
    "PUBLIC_INTERFACE", "TOKEN_FILE", "RECONCILE_INTERVAL", "CONNTRACK_FLUSH",
    "GRATUITOUS_ARP", "XTABLES_LOCK", "LOG_LEVEL", "NAT_BACKEND", "MAX_BODY_BYTES",
    "REQUEST_TIMEOUT", "DB_SYNC",
    "HISTORY_DAYS", "METRICS_ADDRESS", "LOG_FORMAT",
    "HA_MODE", "STATE_STORE", "ETCD_ENDPOINTS", "ETCD_PREFIX", "ETCD_TIMEOUT", "ETCD_POLL_INTERVAL",
    "ROUTER_GROUP", "IP_POOL_ROUTER_GROUP", "ROUTER_NAME",
}
# Keys the original daemon had that mean nothing here; accepted so old files load.
IGNORED_LEGACY_KEYS = {"IPTABLES_CMD", "MAX_REDIRECTIONS", "LISTEN_IP", "PID_FILE", "LOG_FILE"}


class ConfigError(ValueError):
    """A config problem; the message names the file, the key and the value."""


_SETTINGS = (  # (field, default); the first two have none
    ("pool", None),                          # tuple of IPv4Address, sorted
    ("private_ranges", None),                # tuple of IPv4Network
    ("rest_ip", "127.0.0.1"),
    ("rest_port", 7003),
    ("db_path", DEFAULT_DB),
    ("token_file", DEFAULT_TOKEN_FILE),
    ("block_public_ips", False),
    ("public_interface", None),
    ("reconcile_interval", 30.0),
    ("conntrack_flush", True),
    ("gratuitous_arp", True),
    ("xtables_lock", DEFAULT_XTABLES_LOCK),
    ("log_level", "INFO"),
    ("nat_backend", "auto"),
    ("max_body_bytes", 65536),
    ("request_timeout", 10.0),
    ("db_sync", "full"),
    ("history_days", 400),                   # history kept this many days; 0: forever
    ("pools", None),                         # ((name, addresses), ...); None: one pool, `default`
    ("metrics_address", None),               # (host, port) of the /metrics listener, or None
    ("log_format", "text"),
    ("ha_mode", "none"),                     # none, routed or onlink (onlink.py)
    ("state_store", "sqlite"),               # sqlite | etcd (etcdstore.py)
    ("etcd_endpoints", ()),                  # tuple of http(s)://host:port
    ("etcd_prefix", "/ipfloater"),
    ("etcd_timeout", 2.0),                   # seconds per gateway call
    ("etcd_poll_interval", 0.5),             # seconds between checks of the shared revision
    ("router_group", None),                  # this router's group (groups.py); None: serves every pool
    ("pool_groups", None),                   # ((pool, group), ...) in pool order; None: no groups
    ("router_name", None),                   # this router in <prefix>/routers/ (default: the host name)
)


class DaemonConfig(namedtuple("DaemonConfig", [name for name, _ in _SETTINGS],
                              defaults=[default for _, default in _SETTINGS[2:]])):
    """Validated daemon settings (immutable; a named tuple for the start-up's sake, see
    nat.ruleset.Rule)."""

    __slots__ = ()


def config_pools(config: DaemonConfig) -> tuple[tuple[str, tuple[IPv4Address, ...]], ...]:
    """The named pools, `default` first: configs built without `pools` have one, `default`."""
    return config.pools if config.pools is not None else ((DEFAULT_POOL, tuple(config.pool)),)


def _bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off", ""):
        return False
    raise ConfigError(f"{key}: {value!r} is not a boolean (yes/no)")


# ASCII digits only: int() and float() also take '٣', '1_000', '1e3', 'inf' and ' +5 ',
# which no operator means and which other tools reading the same file would not read alike.
_INTEGER = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")


def _number(key: str, value: str, kind, low, high):
    text = value.strip()
    if not (_INTEGER if kind is int else _DECIMAL).fullmatch(text):
        form = "whole, ASCII digits only" if kind is int else "ASCII digits and at most one dot"
        raise ConfigError(f"{key}: {value!r} is not a number ({form})")
    number = kind(text)
    if not low <= number <= high:
        raise ConfigError(f"{key}: {value!r} must be between {low} and {high}")
    return number


def parse_config_text(text: str, source: str = "<config>") -> DaemonConfig:
    """Parse and validate INI text; raises ConfigError naming `source`, key and value."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str.upper  # keys are case-insensitive, reported upper-case
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        first_line = str(exc).splitlines()[0]
        raise ConfigError(f"{source}: {first_line}") from None
    if not parser.has_section(SECTION):
        raise ConfigError(f"{source}: missing section [{SECTION}]")
    raw = dict(parser.items(SECTION))
    try:
        named = _named_pool_sections(parser)
        section_groups = {section[len(POOL_SECTION_PREFIX):]: parser.get(section, "ROUTER_GROUP")
                          for section in parser.sections() if section.startswith(POOL_SECTION_PREFIX)
                          and parser.has_option(section, "ROUTER_GROUP")}
        return _build(raw, named, section_groups)
    except (ConfigError, AddressError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _named_pool_sections(parser: configparser.ConfigParser) -> list[tuple[str, str]]:
    """(name, IP_POOL text) of every [POOL <name>] section, in file order. Other sections
    are ignored as before (old files may have them), but not a misspelt pool section."""
    named = []
    for section in parser.sections():
        if section == SECTION or not section.upper().startswith("POOL"):
            continue
        if not section.startswith(POOL_SECTION_PREFIX):
            raise ConfigError(f"[{section}]: not a pool section (write [POOL <name>])")
        name = section[len(POOL_SECTION_PREFIX):]
        if not POOL_NAME_RE.fullmatch(name):
            raise ConfigError(f"[{section}]: pool name {name!r} must be 1-32 characters: a lower-case "
                              "letter, then lower-case letters, digits, _ or -")
        if name == DEFAULT_POOL:
            raise ConfigError(f"[{section}]: the pool {DEFAULT_POOL!r} is IP_POOL in [{SECTION}]")
        keys = dict(parser.items(section))
        unknown = sorted(set(keys) - POOL_KEYS)
        if unknown:
            raise ConfigError(f"[{section}] {unknown[0]}: unknown key (known: {', '.join(sorted(POOL_KEYS))})")
        if not keys.get("IP_POOL", "").strip():
            raise ConfigError(f"[{section}] IP_POOL: missing (required)")
        named.append((name, keys["IP_POOL"]))
    return named


def _build_pools(raw: dict[str, str], named: list[tuple[str, str]]
                 ) -> tuple[tuple[str, tuple[IPv4Address, ...]], ...]:
    """Every pool parsed, `default` (IP_POOL) first; overlaps between pools are refused
    because the pool of an allocation is derived from its address."""
    pools = []
    if raw.get("IP_POOL", "").strip() or not named:
        if not raw.get("IP_POOL", "").strip():
            raise ConfigError("IP_POOL: missing (required unless [POOL <name>] sections exist)")
        pools.append((DEFAULT_POOL, parse_pool(raw["IP_POOL"], "IP_POOL")))
    for name, text in named:
        pools.append((name, parse_pool(text, f"[POOL {name}] IP_POOL")))
    if len(pools) > 1:
        owner: dict[int, str] = {}
        for name, addrs in pools:
            for addr in map(int, addrs):
                other = owner.setdefault(addr, name)
                if other != name:
                    raise ConfigError(f"[POOL {name}] IP_POOL: {IPv4Address(addr)} is also in pool "
                                      f"{other!r} (pools must not overlap)")
        if len(owner) > MAX_POOL_SIZE:
            raise ConfigError(f"pools: {len(owner)} addresses in all pools, more than {MAX_POOL_SIZE}")
    return tuple(pools)


def _lowest_inside(pool: tuple[IPv4Address, ...], ranges: tuple[IPv4Network, ...]
                   ) -> tuple[IPv4Address, IPv4Network] | None:
    """The lowest pool address inside one of `ranges`, and that range; None if none is.

    `pool` is sorted, so one bisection per range does it instead of testing every
    address against every range, which the start would pay per range."""
    found = None
    for net in ranges:
        i = bisect.bisect_left(pool, net.network_address)
        if i < len(pool) and pool[i] <= net.broadcast_address and (found is None or pool[i] < found[0]):
            found = pool[i], net
    return found


def _check_private_ranges(ranges: tuple[IPv4Network, ...]) -> None:
    """A range that touches a NEVER_FLOATING block is a typo (or 0.0.0.0/0): NAT rules for
    it would hairpin or SNAT the router's own loopback and control traffic."""
    for net in ranges:
        bad = never_floating_overlap(net)
        if bad is not None:
            raise ConfigError(f"PRIVATE_IP_RANGES: {net} overlaps {bad[1]} ({bad[0]}), "
                              "which no VM address can be")


def _check_paths(values: dict) -> None:
    """Files the daemon opens must be distinct: DB = TOKEN_FILE would read the token out
    of the SQLite file, XTABLES_LOCK = DB would flock the state file."""
    db = values.get("db_path", DEFAULT_DB)
    owners = {db + "-wal": "DB", db + "-shm": "DB", db + ".lock": "DB", db: "DB"}
    for key, attr, default in (("TOKEN_FILE", "token_file", DEFAULT_TOKEN_FILE),
                               ("XTABLES_LOCK", "xtables_lock", DEFAULT_XTABLES_LOCK)):
        path = os.path.normpath(values.get(attr, default))
        if path in owners:
            raise ConfigError(f"{key}: {path!r} is also used by {owners[path]}")
        owners[path] = key


def _build(raw: dict[str, str], named: list[tuple[str, str]] = (),
           section_groups: dict[str, str] | None = None) -> DaemonConfig:
    unknown = sorted(set(raw) - KNOWN_KEYS - IGNORED_LEGACY_KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(KNOWN_KEYS))})")
    pools = _build_pools(raw, list(named))
    if not raw.get("PRIVATE_IP_RANGES", "").strip():
        raise ConfigError("PRIVATE_IP_RANGES: missing (required)")
    ranges = parse_networks(raw["PRIVATE_IP_RANGES"], "PRIVATE_IP_RANGES")
    _check_private_ranges(ranges)
    for name, addrs in pools:
        inside = _lowest_inside(addrs, ranges)
        if inside:
            key = "IP_POOL" if name == DEFAULT_POOL else f"[POOL {name}] IP_POOL"
            raise ConfigError(f"{key}: {inside[0]} lies inside PRIVATE_IP_RANGES {inside[1]}")
    pool = pools[0][1] if len(pools) == 1 else tuple(sorted(a for _, addrs in pools for a in addrs))
    values: dict = {"pool": pool, "private_ranges": ranges,
                    "pools": pools if [name for name, _ in pools] != [DEFAULT_POOL] else None}
    if "REST_IP" in raw:
        try:
            values["rest_ip"] = str(ipaddress.ip_address(raw["REST_IP"].strip()))
        except ValueError:
            raise ConfigError(f"REST_IP: {raw['REST_IP']!r} is not an IP address") from None
    if "REST_PORT" in raw:
        values["rest_port"] = _number("REST_PORT", raw["REST_PORT"], int, 1, 65535)
    for key, attr in (("DB", "db_path"), ("TOKEN_FILE", "token_file"), ("XTABLES_LOCK", "xtables_lock")):
        if key in raw:
            path = raw[key].strip()
            if not path.startswith("/"):
                raise ConfigError(f"{key}: {raw[key]!r} must be an absolute path")
            if path.endswith("/") or "\0" in path:
                raise ConfigError(f"{key}: {raw[key]!r} must name a file")
            values[attr] = os.path.normpath(path)
    for key, attr in (("BLOCK_PUBLIC_IPS", "block_public_ips"), ("CONNTRACK_FLUSH", "conntrack_flush"),
                      ("GRATUITOUS_ARP", "gratuitous_arp")):
        if key in raw:
            values[attr] = _bool(key, raw[key])
    if raw.get("PUBLIC_INTERFACE", "").strip():
        name = raw["PUBLIC_INTERFACE"].strip()
        if not IFNAME_RE.match(name):
            raise ConfigError(f"PUBLIC_INTERFACE: {name!r} is not an interface name")
        values["public_interface"] = name
    if "RECONCILE_INTERVAL" in raw:
        values["reconcile_interval"] = _number("RECONCILE_INTERVAL", raw["RECONCILE_INTERVAL"], float, 1, 86400)
    if "REQUEST_TIMEOUT" in raw:
        values["request_timeout"] = _number("REQUEST_TIMEOUT", raw["REQUEST_TIMEOUT"], float, 0.1, 600)
    if "MAX_BODY_BYTES" in raw:
        values["max_body_bytes"] = _number("MAX_BODY_BYTES", raw["MAX_BODY_BYTES"], int, 256, 16 << 20)
    if "LOG_LEVEL" in raw:
        level = raw["LOG_LEVEL"].strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"LOG_LEVEL: {raw['LOG_LEVEL']!r} is not DEBUG, INFO, WARNING or ERROR")
        values["log_level"] = level
    if "DB_SYNC" in raw:
        sync = raw["DB_SYNC"].strip().lower()
        if sync not in ("full", "normal"):
            raise ConfigError(f"DB_SYNC: {raw['DB_SYNC']!r} is not full or normal")
        values["db_sync"] = sync
    if "HISTORY_DAYS" in raw:  # an abuse report a year later must still be answerable
        values["history_days"] = _number("HISTORY_DAYS", raw["HISTORY_DAYS"], int, 0, 36500)
    if "NAT_BACKEND" in raw:
        backend = raw["NAT_BACKEND"].strip().lower()
        if backend not in ("iptables", "nftables", "auto"):
            raise ConfigError(f"NAT_BACKEND: {raw['NAT_BACKEND']!r} is not supported "
                              "(iptables, nftables or auto)")
        values["nat_backend"] = backend
    if raw.get("METRICS_ADDRESS", "").strip():
        values["metrics_address"] = _metrics_address(raw["METRICS_ADDRESS"], values.get("rest_port", 7003))
    if "LOG_FORMAT" in raw:
        try:
            values["log_format"] = parse_format("LOG_FORMAT", raw["LOG_FORMAT"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if "HA_MODE" in raw:
        values["ha_mode"] = _ha_mode(raw["HA_MODE"], values.get("public_interface"))
        if values["ha_mode"] == "onlink":
            values["block_public_ips"] = _onlink_blocks(raw)
    values.update(_state_store(raw))
    values.update(_router_groups(raw, [name for name, _ in pools], section_groups or {}, values["state_store"]))
    _check_paths(values)
    return DaemonConfig(**values)


HA_MODES = ("none", "routed", "onlink")


def _ha_mode(value: str, public_interface: str | None) -> str:
    """HA_MODE: onlink moves the floating /32s, so it needs the interface they live on."""
    mode = value.strip().lower()
    if mode not in HA_MODES:
        raise ConfigError(f"HA_MODE: {value!r} is not none, routed or onlink")
    if mode == "onlink" and not public_interface:
        raise ConfigError("HA_MODE: onlink needs PUBLIC_INTERFACE (the floating /32s go there)")
    return mode


ROUTER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _group_key(pool: str) -> str:
    return "IP_POOL_ROUTER_GROUP" if pool == DEFAULT_POOL else f"[POOL {pool}] ROUTER_GROUP"


def _router_groups(raw: dict[str, str], pools: list[str], section_groups: dict[str, str],
                   state_store: str) -> dict:
    """ROUTER_GROUP, each pool's group and ROUTER_NAME (groups.py says what they do).

    All or nothing: once one key names a group, every pool must name the group that
    serves it, since a pool left out would silently be served by no router at all."""
    values: dict = {}
    if raw.get("ROUTER_NAME", "").strip():
        name = raw["ROUTER_NAME"].strip()
        if not ROUTER_NAME_RE.fullmatch(name):
            raise ConfigError(f"ROUTER_NAME: {raw['ROUTER_NAME']!r} must be 1-64 characters: letters, "
                              "digits, _ . or -, starting with a letter or digit")
        values["router_name"] = name
    given = {pool: section_groups[pool].strip() for pool in pools if pool in section_groups}
    if raw.get("IP_POOL_ROUTER_GROUP", "").strip():
        if DEFAULT_POOL not in pools:
            raise ConfigError(f"IP_POOL_ROUTER_GROUP: {raw['IP_POOL_ROUTER_GROUP']!r} names the group of "
                              "IP_POOL, which is not set")
        given[DEFAULT_POOL] = raw["IP_POOL_ROUTER_GROUP"].strip()
    mine = raw.get("ROUTER_GROUP", "").strip()
    if not mine and not any(given.values()):
        return values
    for pool, group in [(p, given.get(p, "")) for p in pools] + [("", mine)]:
        key = _group_key(pool) if pool else "ROUTER_GROUP"
        if not group:
            raise ConfigError(f"{key}: missing (once router groups are used, every pool names the "
                              "group that serves it and ROUTER_GROUP names this router's)")
        if not POOL_NAME_RE.fullmatch(group):
            raise ConfigError(f"{key}: {group!r} is not a group name (a lower-case letter, then up to "
                              "31 of a-z 0-9 _ -)")
    if state_store != "etcd":
        raise ConfigError(f"ROUTER_GROUP: {mine!r} needs STATE_STORE = etcd (with {state_store} no other "
                          "router sees the changes)")
    served = [pool for pool in pools if given[pool] == mine]
    if not served:
        raise ConfigError(f"ROUTER_GROUP: {mine!r} serves no pool (the pools' groups: "
                          f"{', '.join(sorted(set(given.values())))})")
    values["router_group"] = mine
    values["pool_groups"] = tuple((pool, given[pool]) for pool in pools)
    return values


def _onlink_blocks(raw: dict[str, str]) -> bool:
    """HA_MODE onlink turns BLOCK_PUBLIC_IPS on, and refuses it off: the floating /32s are
    the router's own addresses, so a packet that conntrack leaves untranslated (out of its
    TCP window after the peer carried the flow's other half during a takeover) would reach
    the router's stack, which answers with a reset and kills the connection."""
    if "BLOCK_PUBLIC_IPS" in raw and not _bool("BLOCK_PUBLIC_IPS", raw["BLOCK_PUBLIC_IPS"]):
        raise ConfigError(f"BLOCK_PUBLIC_IPS: {raw['BLOCK_PUBLIC_IPS']!r} cannot go with HA_MODE onlink "
                          "(the router would reset the flows a takeover moves; leave it out or set yes)")
    return True


ETCD_PREFIX_RE = re.compile(r"/[A-Za-z0-9_./-]{0,126}[A-Za-z0-9_.-]")


def _state_store(raw: dict[str, str]) -> dict:
    """STATE_STORE and the ETCD_* keys (ETCD_ENDPOINTS required with etcd)."""
    values: dict = {}
    kind = raw.get("STATE_STORE", "sqlite").strip().lower()
    if kind not in ("sqlite", "etcd"):
        raise ConfigError(f"STATE_STORE: {raw['STATE_STORE']!r} is not sqlite or etcd")
    values["state_store"] = kind
    endpoints = []
    for item in raw.get("ETCD_ENDPOINTS", "").replace(",", " ").split():
        url = urlsplit(item)
        if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/") \
                or url.query or url.username:
            raise ConfigError(f"ETCD_ENDPOINTS: {item!r} is not an http(s)://host:port URL")
        try:
            url.port
        except ValueError:
            raise ConfigError(f"ETCD_ENDPOINTS: {item!r} has a bad port") from None
        endpoints.append(item.rstrip("/"))
    if kind == "etcd" and not endpoints:
        raise ConfigError("ETCD_ENDPOINTS: missing (required with STATE_STORE = etcd)")
    values["etcd_endpoints"] = tuple(endpoints)
    if "ETCD_PREFIX" in raw:
        prefix = raw["ETCD_PREFIX"].strip()
        if not ETCD_PREFIX_RE.fullmatch(prefix) or "//" in prefix:
            raise ConfigError(f"ETCD_PREFIX: {raw['ETCD_PREFIX']!r} is not a key prefix such as /ipfloater")
        values["etcd_prefix"] = prefix
    if "ETCD_TIMEOUT" in raw:
        values["etcd_timeout"] = _number("ETCD_TIMEOUT", raw["ETCD_TIMEOUT"], float, 0.1, 60)
    if "ETCD_POLL_INTERVAL" in raw:
        values["etcd_poll_interval"] = _number("ETCD_POLL_INTERVAL", raw["ETCD_POLL_INTERVAL"], float, 0.05, 60)
    return values


def _metrics_address(value: str, rest_port: int) -> tuple[str, int]:
    """METRICS_ADDRESS `host:port` (`[v6]:port` for IPv6), as (host, port). The API's own
    port is refused whatever the host: one port, one listener, no guessing which answers."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    try:
        if not sep or (":" in host and not bracketed):  # ::1:9470 could be either
            raise ValueError
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigError(f"METRICS_ADDRESS: {value!r} is not host:port (an IP address and a port, "
                          "e.g. 127.0.0.1:9470 or [::1]:9470; empty: no listener)") from None
    try:
        port = _number("METRICS_ADDRESS", port_text, int, 1, 65535)
    except ConfigError:
        raise ConfigError(f"METRICS_ADDRESS: {value!r}: the port must be a number from 1 to 65535") from None
    if port == rest_port:
        raise ConfigError(f"METRICS_ADDRESS: {value!r} uses REST_PORT {rest_port}, the API's own port "
                          "(the API serves /v1/metrics itself; pick another port)")
    return host, port


def load_config(path: str) -> DaemonConfig:
    """Read and validate a config file."""
    try:
        with open(path, encoding="utf-8") as config_file:
            text = config_file.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse_config_text(text, str(path))
