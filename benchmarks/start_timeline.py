"""Run the real `ipfloaterd` with the phases of its start timed (for
`python -m benchmarks.profile_daemon timeline`): the same argv as `python -m
one_ipfloater.daemon`, but the functions the start goes through are wrapped with
perf_counter, and when the daemon reports its rules in place the phases are written to
stderr as one JSON line (`{"timeline": [[phase, start ms, duration ms], ...]}`, times
from the moment this module began, i.e. after the interpreter's own start; then the
process's VmHWM and VmRSS in MB when the phase ended). The daemon
then goes on as usual. No profiler: the figures are the daemon's own speed.
$TIMELINE_BACKEND (iptables | nftables) names the backend the config chooses, so that
only its module is imported here, as the daemon would.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import json  # noqa: E402  (after T0: the imports are part of what is timed)
import os  # noqa: E402
import sys  # noqa: E402

from .timing import wrap_timed  # noqa: E402

_phases: list[list] = []


def _memory() -> tuple[float, float]:
    """(VmHWM, VmRSS) of this process now, MB (the phases' memory: peak so far, resident)."""
    with open("/proc/self/status", encoding="ascii") as status:
        fields = dict(line.split(":", 1) for line in status if line.startswith(("VmHWM", "VmRSS")))
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def _wrap(owner, name: str, label: str) -> None:
    wrap_timed(owner, name, lambda start, end: _phases.append([label, (start - T0) * 1000,
                                                               (end - start) * 1000, *_memory()]))


def main() -> int:
    from one_ipfloater import daemon, hostnet, model, service, store
    phases = [
        (daemon, "build_parser", "argument parser"), (daemon, "load_config", "config"),
        (daemon, "take_instance_lock", "instance lock"), (daemon, "load_or_create_token", "token"),
        (store.Store, "__init__", "state file opened"), (store.Store, "allocations", "allocations read"),
        (model.Registry, "__init__", "registry built"), (daemon, "make_backend", "backend chosen"),
        (hostnet, "all_local_addresses", "router addresses (clash check)"),
        (service.FloatingIPService, "desired", "desired rule set")]
    if os.environ.get("TIMELINE_BACKEND") == "nftables":
        from one_ipfloater.nat import nftables as nft
        phases += [(nft, "desired_state", "nftables: desired table"), (nft.NftablesBackend, "_read", "nftables: table read"),
                   (nft, "document", "nftables: JSON batch"), (nft.NftablesBackend, "sync", "nftables: sync in all")]
    else:
        from one_ipfloater.nat import iptables as ipt
        planner = "plan_restore_pieces" if hasattr(ipt, "plan_restore_pieces") else "plan_restore"
        phases += [(ipt, planner, "iptables: restore script planned"),
                   (ipt.IptablesBackend, "_restore", "iptables: iptables-restore ran"),
                   (ipt.IptablesBackend, "sync", "iptables: sync in all")]
    _phases.append(["imports", 0.0, (time.perf_counter() - T0) * 1000, *_memory()])
    for owner, name, label in phases:
        _wrap(owner, name, label)

    start = service.FloatingIPService.start

    def timed_start(self, rules_in_place=None):
        def report(count: int) -> None:
            _phases.append(["rules in place", (time.perf_counter() - T0) * 1000, 0.0, *_memory()])
            print(json.dumps({"timeline": sorted(_phases, key=lambda p: p[1])}), file=sys.stderr, flush=True)
            if rules_in_place is not None:
                rules_in_place(count)
        return start(self, report)

    service.FloatingIPService.start = timed_start
    return daemon.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
