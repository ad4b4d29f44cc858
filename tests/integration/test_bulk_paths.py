"""The backends' paths for a region's /16 (benchmarks/ANALYSIS.md, 65,536), against a real
kernel in a lab namespace: above a threshold the nftables rebuild runs in a child `nft`
and an iptables change in a child `iptables-restore`, so that the daemon's heap never
holds their copies of the table. The kernel must end up exactly as with the in-process
paths; a wrapper on PATH counts the children, which proves which path ran."""

import json
import os
import re
import stat
import sys

import pytest

from tests.integration.conftest import our_rules
from tests.support.netlab import Lab

pytestmark = pytest.mark.netns

DRIVER = r"""
import json, sys
from ipaddress import ip_address, ip_network
from one_ipfloater.nat import NatError
from one_ipfloater.nat.ruleset import desired_spec, pair_delta

def pairs(items):
    return [(ip_address(p), ip_address(v)) for p, v in items]

args = json.load(sys.stdin)
if args["backend"] == "nftables":
    from one_ipfloater.nat.nftables import NftablesBackend
    backend = NftablesBackend(bulk_elements=args["threshold"])
else:
    from one_ipfloater.nat.iptables import IptablesBackend
    backend = IptablesBackend(lock_path=args["lock"], bulk_associations=args["threshold"])
results = []
for op in args["ops"]:
    try:
        if op["op"] == "sync":
            out = list(backend.sync(desired_spec(pairs(op["pairs"]), [ip_network("10.0.0.0/8")])))
        elif op["op"] == "update":
            out = backend.apply(*pair_delta(pairs(op["before"]), pairs(op["after"])))
        elif op["op"] == "flush":
            out = backend.flush()
        results.append({"ok": out})
    except NatError as exc:
        results.append({"error": str(exc)})
print(json.dumps(results))
"""

# the tool each bulk path runs in a child, and its real program
CHILD = {"nftables": "nft", "iptables": "iptables-legacy-restore"}


def wrapper_dir(tmp_path, tool):
    """A directory with `tool`: logs each call to calls.log, then execs the real one."""
    real = next(os.path.join(d, tool) for d in ("/usr/sbin", "/sbin", "/usr/bin") if os.path.exists(os.path.join(d, tool)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / tool
    script.write_text(f"#!{sys.executable}\nimport os, sys\n"
                      f"with open({str(tmp_path / 'calls.log')!r}, 'a') as log:\n"
                      f"    log.write(' '.join(sys.argv[1:]) + '\\n')\n"
                      f"os.execv({real!r}, [{real!r}] + sys.argv[1:])\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def calls(tmp_path):
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def drive(lab, tmp_path, backend, threshold, ops):
    env_path = f"{wrapper_dir(tmp_path, CHILD[backend])}:{os.environ['PATH']}"
    args = {"backend": backend, "threshold": threshold, "lock": str(tmp_path / "xtables.lock"), "ops": ops}
    proc = lab.run(lab.ns_router, ["env", f"PATH={env_path}", sys.executable, "-c", DRIVER],
                   input=json.dumps(args), timeout=120)
    return json.loads(proc.stdout)




def mentions(text, addr):
    """`addr` appears in `text` as a whole address (10.1.0.2 is not in 10.1.0.20)."""
    return re.search(rf"(?<![\d.]){re.escape(addr)}(?![\d.])", text) is not None


def live(n):
    return [[f"100.64.{i // 200}.{i % 200 + 1}", f"10.1.{i // 200}.{i % 200 + 1}"] for i in range(n)]


@pytest.fixture
def router():
    with Lab(vms=0) as lab:
        yield lab


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_bulk_paths_leave_the_kernel_as_the_in_process_paths_do(router, tmp_path, backend):
    pairs = live(300)
    moved = [pairs[0][0], "10.2.0.9"]
    after = [moved] + pairs[2:]
    ops = [{"op": "sync", "pairs": pairs},
           {"op": "update", "before": [pairs[0], pairs[1]], "after": [moved]},
           {"op": "sync", "pairs": after}]  # (a restart or reconcile: reads, finds nothing to do)
    kernel = {}
    for threshold in (100, 10**6):  # 300 associations: above, then below the threshold
        (tmp_path / "calls.log").unlink(missing_ok=True)
        res = drive(router, tmp_path, backend, threshold, ops)
        assert all("ok" in r for r in res), res
        assert res[2] == {"ok": []}  # the table read back (by a child above) equals the change's result
        kernel[threshold] = our_rules(router, backend)
        children = len(calls(tmp_path))
        if backend == "nftables":  # the rebuild and the read in a child `nft`; changes in-process
            # (each sync lists the table, the first finds none; the first rebuilds it)
            assert children == (3 if threshold == 100 else 0), calls(tmp_path)
        else:  # the start's load is iptables-restore either way; the change too above
            assert children == (2 if threshold == 100 else 1), calls(tmp_path)
        drive(router, tmp_path, backend, threshold, [{"op": "flush"}])
        assert our_rules(router, backend) == ""
    assert kernel[100] == kernel[10**6]
    assert mentions(kernel[100], "10.2.0.9") and mentions(kernel[100], pairs[299][1])
    assert not mentions(kernel[100], pairs[1][1]) and not mentions(kernel[100], pairs[0][1])


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_bulk_change_is_all_or_nothing(router, tmp_path, backend):
    pairs = live(50)
    gone = ["100.64.9.9", "10.1.9.9"]  # never installed: its deletion fails the whole change
    res = drive(router, tmp_path, backend, 10,
                [{"op": "sync", "pairs": pairs}, {"op": "update", "before": [pairs[0], gone], "after": []}])
    before = our_rules(router, backend)
    assert "error" in res[1], res
    assert mentions(before, pairs[0][1])  # the deletion that could be made was not made either
    drive(router, tmp_path, backend, 10, [{"op": "flush"}])
