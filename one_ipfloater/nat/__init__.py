"""The NAT layer: choosing the backend, and removing what the other backend of ours left.

The contract every backend keeps is in base.py (`NatBackend`, `NatError`,
`NatUnavailable`, `Repairs`), what they are given in ruleset.py (`NatSpec`); the backends
are iptables.py and nftables.py, each imported only when chosen.

NAT_BACKEND = iptables | nftables | auto. `auto` takes nftables where the host's
`iptables` is the nf_tables variant (Debian 11 and later: rules written through legacy
iptables would sit beside the host's own nft rules) or where legacy iptables cannot be
used at all, and iptables otherwise.

Switching backends on a router migrates on the next start: the chosen backend's sync
installs every association first, then `remove_other_backends` deletes the other one's
leftovers (our IPFLOATER-* legacy chains and their jumps, or our `ip ipfloater` table).
Both give the same NAT while they overlap, so no association is ever missing.
"""

from __future__ import annotations

import logging

from .base import NatBackend, NatError, NatUnavailable, Repairs

__all__ = ["NatBackend", "NatError", "NatUnavailable", "Repairs", "make_backend", "choose_backend",
           "live_pairs_everywhere", "remove_other_backends"]

log = logging.getLogger(__name__)

BACKENDS = ("iptables", "nftables")
DEFAULT_XTABLES_LOCK = "/run/xtables.lock"


def iptables_variant() -> str | None:
    """"nf_tables" or "legacy" as `iptables --version` says; None without iptables."""
    import shutil
    import subprocess
    path = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    if "(nf_tables)" in out:
        return "nf_tables"
    return "legacy" if out.strip() else None


def legacy_usable() -> bool:
    """python-iptables is installed (it drives the legacy tables through libiptc)."""
    import importlib.util
    return importlib.util.find_spec("iptc") is not None


def choose_backend(setting: str, variant: str | None, legacy_ok: bool) -> str:
    """The backend name for a NAT_BACKEND setting (pure: the probes are arguments)."""
    if setting in BACKENDS:
        return setting
    if setting != "auto":
        raise ValueError(f"NAT_BACKEND: {setting!r}")
    if variant == "nf_tables" or variant is None or not legacy_ok:
        return "nftables"
    return "iptables"


def make_backend(config):
    """The backend `config.nat_backend` names (`auto` decided by probing this host)."""
    setting = getattr(config, "nat_backend", "auto")
    if setting == "auto":
        name = choose_backend(setting, iptables_variant(), legacy_usable())
        log.info("NAT_BACKEND auto: using %s", name)
    else:
        name = choose_backend(setting, None, True)
    if name == "nftables":  # each backend module imported only when chosen (start-up time)
        from .nftables import NftablesBackend
        return NftablesBackend()
    from .iptables import IptablesBackend
    return IptablesBackend(lock_path=config.xtables_lock)


def _other_backends(active, xtables_lock: str) -> list:
    """(name, factory) of our real backends other than `active` that this host may hold
    rules of; [] for a test double."""
    from .iptables import IptablesBackend
    from .nftables import NftablesBackend
    if isinstance(active, NftablesBackend):
        if not legacy_usable():
            return []  # no python-iptables: we cannot have written legacy rules
        return [("iptables", lambda: IptablesBackend(lock_path=xtables_lock))]
    if isinstance(active, IptablesBackend):
        return [("nftables", NftablesBackend)]
    return []


def live_pairs_everywhere(active, xtables_lock: str = DEFAULT_XTABLES_LOCK) -> set:
    """The live (public, private) pairs of `active` and of our other backend (rules left by
    a backend switched away from are live NAT too, until the start migrates them)."""
    pairs = set(active.live_pairs())
    for name, make in _other_backends(active, xtables_lock):
        backend = make()
        try:
            pairs |= backend.live_pairs()
        except NatUnavailable as exc:
            log.debug("%s backend not usable here (%s): no rules of it", name, exc)
        finally:
            backend.close()
    return pairs


def remove_other_backends(active, xtables_lock: str = DEFAULT_XTABLES_LOCK) -> list[str]:
    """Delete the rules a backend of ours other than `active` left; what was removed.

    Acts only for our real backends (a test double gets []), never touches anything but
    our own chains/table, and a backend this host cannot drive has nothing to remove.
    """
    others = _other_backends(active, xtables_lock)
    if not others:
        return []
    removed: list[str] = []
    for name, make in others:
        backend = make()
        try:
            removed += backend.flush()
        except NatUnavailable as exc:
            log.debug("%s backend not usable here (%s): nothing of it to remove", name, exc)
        finally:
            backend.close()
    for line in removed:
        log.warning("migrated to %s: %s", active.name, line)
    return removed
