"""The front-end with several IPFLOATER_URLs: the first router's daemon is stopped (and
its router is cut off, so keepalived makes the second master); the real hooks, run by the
emulated onehem for the oned simulator, converge a VM through the second daemon, and real
packets from the client reach the VM through the floating IP on the second router.

Negative control in the same lab: with IPFLOATER_URL naming only the first router, the
same VM ends in ERROR (unreachable) and the second daemon is never asked.
"""

import pytest

from tests.support.frontend import Frontend
from tests.support.halab import VM, HaLab
from tests.support.nsforward import PortForward

pytestmark = [pytest.mark.netns, pytest.mark.ha, pytest.mark.xdist_group("ha")]

PORT = 8080
YES = 'NAME="web" MEMORY="64" CPU="0.1" NIC=[NETWORK="priv"] FLOATING_IP="YES"'


def set_urls(fe, urls):
    """What an operator edits in /etc/one/ipfloater.conf (each hook reads it anew)."""
    lines = [line for line in fe.conf.read_text().splitlines() if not line.startswith("IPFLOATER_URL")]
    fe.conf.write_text("\n".join(lines + [f"IPFLOATER_URL = {', '.join(urls)}"]) + "\n")


def pair_with_one_token(lab):
    """Both daemons of the group with the same operator token (one front-end token file)."""
    first = lab.start_daemon("r1")
    (lab.workdir / "r2").mkdir(parents=True, exist_ok=True)
    shared = lab.workdir / "r2" / "token"
    shared.write_text(first.token + "\n")
    shared.chmod(0o600)
    lab.start_daemon("r2")
    lab.start_keepalived("r1")
    lab.wait_master("r1")
    lab.start_keepalived("r2")
    lab.wait_entered("r2", "BACKUP", 1)
    return first.token


def test_the_hooks_converge_a_vm_through_the_second_daemon_when_the_first_is_stopped(figures):
    with HaLab(advert_int=0.2, routers=False) as lab:
        token = pair_with_one_token(lab)
        r1, r2 = lab.daemons["r1"], lab.daemons["r2"]
        with PortForward(lab.ns("r1"), r1.port) as f1, PortForward(lab.ns("r2"), r2.port) as f2, \
                Frontend(lab.workdir / "frontend", f"http://127.0.0.1:{f1.port}", token) as fe:
            url1, url2 = f"http://127.0.0.1:{f1.port}", f"http://127.0.0.1:{f2.port}"
            r1.stop()
            lab.cut_links("r1")  # the router is gone: keepalived makes r2 master
            lab.wait_master("r2")

            # negative control: only the stopped daemon configured
            vm = fe.instantiate(YES)
            fe.settle()
            ut = fe.user_template(vm)
            assert ut.get("FLOATING_IP_STATUS") == "ERROR" and "unreachable" in ut.get("FLOATING_IP_ERROR", ""), ut
            assert r2.cli_json("status")["floatingips"] == []

            set_urls(fe, [url1, url2])
            before = len(fe.hem.executions())
            fe.pyone("alice").vm.update(vm, 'FLOATING_IP="YES"', 1)  # any change runs the hook
            fe.settle()
            ut = fe.user_template(vm)
            assert ut.get("FLOATING_IP_STATUS") == "ACTIVE", ut
            fip = ut["FLOATING_IP_ADDRESS"]
            held = r2.cli_json("status")["floatingips"]
            assert [(a["public_ip"], a["private_ip"], a["ref"]) for a in held] == [
                (fip, lab.vm_ip(VM), f"one:vm:{vm}:nic:0")]
            runs = fe.hem.executions()[before:]
            logs = "".join(e.stderr.decode(errors="replace") for e in runs)
            failovers = logs.count(f"ipfloaterd at {url1}: unreachable; failing over to {url2}")
            assert failovers >= 1, logs
            with lab.start_server(lab.vm_ns(VM), "vm1", tcp_port=PORT):
                reply = lab.tcp_probe(lab.ns_client, fip, PORT)
            assert reply["ok"] and reply["reply"]["name"] == "vm1", reply
            figures("front-end, first of two IPFLOATER_URLs stopped: VM converged through the second, "
                    "failover log lines in its hook runs", failovers)
            figures("front-end, first of two IPFLOATER_URLs stopped: longest hook run (s)",
                    round(max(e.end - e.start for e in runs), 2))
