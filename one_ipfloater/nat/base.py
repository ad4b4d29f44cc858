"""The NAT contract: what the service asks of a backend, and the errors it gets back.

The service speaks in associations, (public, private) address pairs, plus the private
ranges, the pool and the block flag (`ruleset.NatSpec`); it never sees a backend's own
form (iptables rules, nftables map elements). A backend:

    sync(spec) -> Repairs          converge everything to `spec`; what it had to change,
                                   in its own words, and whether nothing of ours was there
    apply(removed, added)          one change: pairs to remove, pairs to add, all or nothing
    flush() -> list[str]           remove everything of ours; what was removed
    live_pairs() -> set of pairs   what the kernel holds now (read back, changes nothing)
    close()                        release what it holds (a library context)

A plain base class, not `typing.Protocol` or an ABC: this is imported on the daemon's
start path before the rules are in place, where `typing`'s and `abc`'s machinery would
cost start-up time for nothing (benchmarks/ANALYSIS.md).
"""

from __future__ import annotations


class NatError(RuntimeError):
    """The kernel or the tool refused a rule change; nothing of it was applied."""


class NatUnavailable(NatError):
    """This backend cannot run on this host (its library or tool is missing): it can
    hold no rules of ours here, so there is nothing of it to read or remove."""


class Repairs(list):
    """What a `sync` changed, one line each, in the backend's own words; a list, plus
    `installed_afresh`: the kernel held nothing of ours before (a clean install or a
    reboot), so the lines describe an installation, not a repair of drift; and
    `installed`: the lines that add a filter chain of ours that was absent altogether
    (a start after an upgrade that adds one, or after BLOCK_PUBLIC_IPS was turned on):
    at a start these are an installation too."""

    def __init__(self, lines=(), installed_afresh: bool = False, installed=()):
        super().__init__(lines)
        self.installed_afresh = installed_afresh
        self.installed = list(installed)


class NatBackend:
    """The backend contract (see the module docstring); every backend derives from it."""

    name = "abstract"

    def sync(self, spec) -> Repairs:
        raise NotImplementedError

    def apply(self, removed, added) -> None:
        """`removed`, `added`: iterables of (public, private) IPv4Address pairs."""
        raise NotImplementedError

    def flush(self) -> list[str]:
        raise NotImplementedError

    def live_pairs(self) -> set:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to release by default."""
