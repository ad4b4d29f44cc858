"""Figure 4, hook latency; runs INSIDE the daemon's namespace:
`python -m benchmarks.hookbench --port P --token-file F --backend B --count N`.
Prints one JSON document on stdout.

The documented way to run the real hook against the oned simulator (see
tests/support/hem.py and tests/one/test_hooks.py): an in-process OneSimulator,
the `ipfloater-running` hook template of hooks/ registered in it, and the
HookExecutionManager emulation running the real script remotes/hooks/ipfloater/ipfloater-hook
as onehem would (payload on stdin, a new process per event). For each of N VMs
(FLOATING_IP="YES", deployed -> RUNNING) the hook's process time, start to exit, as the
manager records it, is one sample: the hook exits 0 only after the daemon answered (rules
live) and the address was written back to the VM (one.vm.update). Both are checked after
each run (untimed). The baseline, interleaved with the hook runs in the same namespace and
timed the same way: `python3 -c "import pyone, requests"` with the same PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.hem import HookExecutionManager
from tests.support.onesim import OneSimulator

REPO = Path(__file__).resolve().parents[1]
ADMIN_PASSWORD = "bench-admin-pw"
TEMPLATE = 'NAME="bench-{i}" NIC=[NETWORK="priv"] FLOATING_IP="YES"'


def rule_live(backend: str, public_ip: str, private_ip: str) -> bool:
    if backend == "iptables":
        save = subprocess.run(["iptables-legacy-save", "-t", "nat"], capture_output=True, text=True,
                              timeout=30, check=True).stdout
        return f"-A IPFLOATER-PRE -d {public_ip}/32 -j DNAT --to-destination {private_ip}" in save
    out = subprocess.run(["nft", "-j", "list", "map", "ip", "ipfloater", "fip_dnat"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    elems = [e for o in json.loads(out)["nftables"] if "map" in o for e in o["map"].get("elem", [])]
    return [public_ip, private_ip] in elems


def baseline_seconds(env: dict) -> float:
    start = time.time()  # the same clock and bracket as HookExecutionManager._execute
    proc = subprocess.Popen(["python3", "-c", "import pyone, requests"], env=env, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _out, err = proc.communicate(timeout=120)
    end = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"baseline failed: {err.decode()[-300:]}")
    return end - start


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hookbench")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    token = Path(args.token_file).read_text(encoding="utf-8").strip()
    tmp = tempfile.TemporaryDirectory(prefix="bench-hook-")
    work = Path(tmp.name)
    auth = work / "one_auth"
    auth.write_text(f"oneadmin:{ADMIN_PASSWORD}\n")
    conf = work / "ipfloater.conf"
    conf.write_text(f"[ONE_IPFLOATER]\nIPFLOATER_URL = http://127.0.0.1:{args.port}\n"
                    f"IPFLOATER_TOKEN_FILE = {args.token_file}\nLOCK_DIR = {work / 'locks'}\n"
                    "ONE_TIMEOUT = 60\nIPFLOATER_TIMEOUT = 60\n")
    hooks, base, checks = [], [], []
    with OneSimulator(users={"oneadmin": ADMIN_PASSWORD}) as sim:
        sim.add_network("priv", "10.80.200.0/24", "10.80.200.10", bridge="br-bench", gateway="10.80.200.1")
        env = {
            "ONE_XMLRPC": sim.url, "ONE_AUTH": str(auth), "IPFLOATER_ONE_CONF": str(conf),
            "IPFLOATER_TOKEN": token,
            # `#!/usr/bin/env python3` must find the interpreter the package is installed in
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        }
        sim.create_hook((REPO / "hooks" / "ipfloater-running.hook").read_text())
        hem = HookExecutionManager(sim, remotes_dir=str(REPO / "remotes" / "hooks"), env=env).start()
        full_env = hem.env
        try:
            for i in range(args.count):
                base.append(baseline_seconds(full_env))
                hem.clear_log()
                vm = sim.create_vm(TEMPLATE.format(i=i))
                sim.deploy(vm)
                hem.wait_idle(120)
                runs = hem.executions("ipfloater-running")
                if len(runs) != 1 or not runs[0].success:
                    raise RuntimeError(f"hook for VM {vm}: {[(r.exit_code, r.stderr[-300:]) for r in runs]}")
                hooks.append(runs[0].end - runs[0].start)
                ut = sim.user_template(vm)
                public = ut.get("FLOATING_IP_ADDRESS")
                private = sim.nics(vm)[0].get("IP")
                ok = bool(public) and ut.get("FLOATING_IP_STATUS") == "ACTIVE" and \
                    rule_live(args.backend, public, private)
                if not ok:
                    raise RuntimeError(f"VM {vm}: write-back {ut}, rule for {public} -> {private} not live")
                checks.append(public)
        finally:
            hem.stop()
            tmp.cleanup()
    json.dump({"hook": hooks, "baseline": base, "addresses": checks}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
