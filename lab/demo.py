"""The one-ipfloater lab: a scripted walk-through on a throw-away network.

Builds an internet client, a router and two VMs in network namespaces and starts the real
ipfloaterd in the router namespace. Part 1 starts from OpenNebula: a simulated oned with
the Hook Execution Manager emulation runs the REAL hooks (registered with the real
`ipfloater-one install-hooks`) when VMs are created with FLOATING_IP="YES", updated and
terminated. Part 2 drives the daemon by hand with the real `ipfloater` CLI. Every step is
proven with real traffic. Everything is removed at the end, also on failure or Ctrl-C.
Run as root: `bash lab/run` (installs what it needs first).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# The lab's tooling lives with the tests (tests/support), not in the shipped package: the
# repository root goes on the path so that `python lab/demo.py` finds it from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.daemonproc import DaemonProcess
from tests.support.frontend import Frontend
from tests.support.netlab import Lab
from tests.support.nsforward import PortForward

TCP, UDP = 8080, 8081
TOPOLOGY = """
  internet client                router (ipfloaterd)                 hypervisor bridge      VMs
  198.51.100.2/24 ---- pub0 198.51.100.1/24   priv0 10.77.0.1/24 ---- br0 ---------------- vm1 10.77.0.11
  (no route to 10/8)    floating pool 198.51.100.10-40                                 \\--- vm2 10.77.0.12

  OpenNebula front-end (simulated oned + onehem running the real hooks) -> ipfloaterd REST API
"""


class Walkthrough:
    def __init__(self, lab: Lab, daemon: DaemonProcess, workdir: Path):
        self.lab, self.daemon, self.workdir = lab, daemon, workdir
        self.failures = 0

    def step(self, title: str) -> None:
        print(f"\n== {title}")

    def cli(self, *args: str) -> str:
        proc = self.daemon.cli(*args)
        print(f"$ ipfloater {' '.join(args)}")
        for line in (proc.stdout + proc.stderr).rstrip().splitlines():
            print(f"  {line}")
        return proc.stdout.strip()

    def expect(self, what: str, ok: bool) -> None:
        print(f"  [{'ok' if ok else 'UNEXPECTED'}] {what}")
        self.failures += 0 if ok else 1

    def probe(self, ns_label: str, ns: str, host: str, expect_name: str | None) -> None:
        tcp = self.lab.tcp_probe(ns, host, TCP, timeout=1.5)
        if tcp["ok"]:
            reply = tcp["reply"]
            print(f"  {ns_label} -> {host}:{TCP}/tcp answered by {reply['name']} "
                  f"(it saw the connection come from {reply['peer']})")
        else:
            print(f"  {ns_label} -> {host}:{TCP}/tcp: {tcp['error']}")
        got = tcp["reply"]["name"] if tcp["ok"] else None
        self.expect(f"answered by {expect_name}" if expect_name else "no answer", got == expect_name)

    def opennebula(self, fe: Frontend) -> None:
        """Part 1: everything starts from OpenNebula; hooks do the work."""
        lab = self.lab
        self.step("OpenNebula: hooks registered with `ipfloater-one install-hooks`")
        for hook in fe.sim.hooks():
            on = hook.template.get("ON") or hook.template.get("CALL")
            print(f"  {hook.name:<24} {hook.type:<6} {on}")
        template = 'NAME="web" MEMORY="512" CPU="1" NIC=[NETWORK="priv"] FLOATING_IP="YES"'
        self.step(f"alice instantiates a VM: {template}")
        vm = fe.instantiate(template)
        fe.settle()
        ut = fe.user_template(vm)
        fip = ut.get("FLOATING_IP_ADDRESS")
        print(f"  onevm show {vm}: FLOATING_IP_ADDRESS={fip} FLOATING_IP_STATUS={ut.get('FLOATING_IP_STATUS')}")
        self.expect("the hooks wrote the address back", bool(fip))
        self.probe("client", lab.ns_client, fip, "vm1")
        self.cli("status")

        self.step(f"alice removes the attribute (onevm update {vm}, replace)")
        fe.pyone("alice").vm.update(vm, 'DESCRIPTION="internal only"', 0)
        fe.settle()
        print(f"  FLOATING_IP_ADDRESS={fe.user_template(vm).get('FLOATING_IP_ADDRESS')!r}")
        self.probe("client", lab.ns_client, fip, None)

        self.step(f"alice adds it back (onevm update {vm} --append FLOATING_IP=YES)")
        fe.pyone("alice").vm.update(vm, 'FLOATING_IP="YES"', 1)
        fe.settle()
        fip = fe.address(vm)
        print(f"  FLOATING_IP_ADDRESS={fip}")
        self.probe("client", lab.ns_client, fip, "vm1")

        self.step(f"alice terminates VM {vm}: the address goes back to the pool")
        fe.pyone("alice").vm.action("terminate-hard", vm)
        fe.settle()
        self.probe("client", lab.ns_client, fip, None)
        self.cli("status")
        runs = fe.hem.executions()
        print(f"  hook runs: {len(runs)}, failed: {len(fe.failed_hooks())}")
        self.expect("every hook run succeeded", not fe.failed_hooks())

    def run(self) -> int:
        lab = self.lab
        print(TOPOLOGY)
        with PortForward(lab.ns_router, self.daemon.port) as forward, \
                Frontend(self.workdir / "frontend", f"http://127.0.0.1:{forward.port}", self.daemon.token) as fe:
            self.opennebula(fe)
        print("\n# Part 2: the router daemon by hand, with the ipfloater CLI")
        self.step("The daemon is up; the pool is free")
        self.cli("version")
        self.cli("--json", "health")
        self.step("Before anything is allocated, the client cannot reach a VM")
        self.probe("client", lab.ns_client, "198.51.100.10", None)

        self.step("Allocate a floating IP for vm1 (10.77.0.11)")
        fip = self.cli("getip", "10.77.0.11")
        self.probe("client", lab.ns_client, fip, "vm1")
        udp = lab.udp_probe(lab.ns_client, fip, UDP)
        self.expect(f"UDP to {fip} answered by vm1", udp["ok"] and udp["reply"]["name"] == "vm1")
        self.expect(f"ping {fip}", lab.ping(lab.ns_client, fip))

        self.step("vm1 connects out: the client sees the floating IP as source")
        with lab.start_server(lab.ns_client, "client", tcp_port=TCP):
            out = lab.tcp_probe(lab.vm_ns(1), lab.client_ip, TCP)
            seen = out["reply"]["peer"] if out["ok"] else out["error"]
            print(f"  vm1 -> client: client saw {seen}")
            self.expect(f"source is {fip}", out["ok"] and seen == fip)

        self.step("Hairpin: vm2 reaches vm1 by its floating IP")
        self.probe("vm2", lab.vm_ns(2), fip, "vm1")

        self.step("Status and pool")
        self.cli("status")

        self.step(f"Move {fip} to vm2 (explicit redirect); conntrack of the old flow is flushed")
        self.cli("redirect", fip, "10.77.0.12")
        self.probe("client", lab.ns_client, fip, "vm2")

        self.step("Release it: nothing gets through any more")
        self.cli("releaseip", fip)
        self.probe("client", lab.ns_client, fip, None)
        self.cli("status")

        self.step(f"An abuse report names {fip} and the time of the move: the history answers")
        self.cli("history", fip)
        move = [e for e in self.daemon.cli_json("history", fip)["events"] if e["event"] == "move"][-1]
        answer = self.cli("history", fip, "--at", move["at"])
        self.expect(f"at {move['at']} {fip} pointed at vm2 (10.77.0.12)",
                    "held by" in answer and "pointing at 10.77.0.12" in answer)

        print(f"\nLab finished: {'all steps as expected' if not self.failures else f'{self.failures} unexpected'}")
        return 0 if not self.failures else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-log", action="store_true", help="print the daemon log at the end")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ipfloater-lab-") as workdir, Lab(vms=2) as lab:
        servers = [lab.start_server(lab.vm_ns(i), f"vm{i}", tcp_port=TCP, udp_port=UDP) for i in (1, 2)]
        daemon = DaemonProcess(lab.ns_router, Path(workdir) / "daemon", LOG_LEVEL="INFO")
        with daemon:
            code = Walkthrough(lab, daemon, Path(workdir)).run()
        for server in servers:
            server.stop()
        if args.keep_log or code:
            print("\n-- ipfloaterd log --\n" + daemon.log())
    return code


if __name__ == "__main__":
    sys.exit(main())
