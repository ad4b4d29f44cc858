"""Reliability suites: fixtures shared with the integration tests, and a figures table
printed at the end of the run (what each suite reached)."""

import json
import re
import sqlite3

import pytest

from tests.conftest import FIGURE
from tests.integration import conftest as integration
from tests.one import fipenv

# Fixtures shared with the integration and OpenNebula tests: bound here (not imported by
# name) so that pytest finds them and pyflakes sees no unused import.
_no_stale_labs, daemon, lab, servers = (integration._no_stale_labs, integration.daemon,
                                        integration.lab, integration.servers)
env = fipenv.env


@pytest.fixture
def figures(request):
    """record(suite, figure, value): printed in the summary at the end of the run (see
    tests/conftest.py). Figures travel in the test's report (user_properties), so they
    reach the summary from pytest-xdist workers too."""
    def record(suite: str, figure: str, value) -> None:
        request.node.user_properties.append((FIGURE, (suite, figure, str(value))))
    return record


def stored_associations(daemon) -> dict[str, str]:
    return {f["public_ip"]: f["private_ip"] for f in daemon.cli_json("status")["floatingips"] if f["private_ip"]}


def kernel_associations(lab) -> dict[str, set]:
    """(public, private) pairs per chain of ours, read back from iptables-legacy-save."""
    save = lab.run(lab.ns_router, ["iptables-legacy-save", "-t", "nat"]).stdout
    chains = {"IPFLOATER-PRE": set(), "IPFLOATER-OUT": set(), "IPFLOATER-POST": set()}
    for line in save.splitlines():
        m = re.match(r"-A (IPFLOATER-PRE|IPFLOATER-OUT) -d ([\d.]+)/32 -j DNAT --to-destination ([\d.]+)$", line)
        if m:
            chains[m.group(1)].add((m.group(2), m.group(3)))
        m = re.match(r"-A IPFLOATER-POST -s ([\d.]+)/32 -j SNAT --to-source ([\d.]+)$", line)
        if m:
            chains["IPFLOATER-POST"].add((m.group(2), m.group(1)))
    return chains


def assert_kernel_matches_state(lab, daemon) -> dict[str, str]:
    stored = stored_associations(daemon)
    pairs = set(stored.items())
    for chain, found in kernel_associations(lab).items():
        assert found == pairs, f"{chain}: kernel {sorted(found)} != stored {sorted(pairs)}"
    return stored


def read_json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def snapshot(lab, daemon):
    """Everything a bad request must not change."""
    db = sqlite3.connect(f"file:{daemon.workdir / 'state.db'}?mode=ro", uri=True)
    rows = list(db.iterdump())
    db.close()
    rules = lab.run(lab.ns_router, ["iptables-legacy-save"]).stdout
    rules = [l for l in rules.splitlines() if not l.startswith("#") and not l.startswith(":")]
    nft = lab.run(lab.ns_router, ["nft", "list", "ruleset"]).stdout
    addrs = lab.run(lab.ns_router, ["ip", "-4", "-o", "addr", "show", "dev", "pub0"]).stdout
    return rows, rules, nft, addrs
