"""Fixtures for tests that build namespaces: a lab network and a real ipfloaterd in it."""

import json

import pytest

from tests.support import netlab
from tests.support.daemonproc import DaemonProcess
from tests.support.netlab import Lab

TCP, UDP = 8080, 8081


@pytest.fixture(scope="session", autouse=True)
def _no_stale_labs():
    netlab.cleanup_stale()
    yield


@pytest.fixture
def lab():
    with Lab(vms=2) as lab:
        yield lab


BACKENDS = ("iptables", "nftables")


@pytest.fixture(params=BACKENDS)
def nat_backend(request):
    """NAT_BACKEND for tests that start their own DaemonProcess."""
    return request.param


@pytest.fixture(params=BACKENDS)
def daemon(request, lab, tmp_path):
    """ipfloaterd in the router, once per NAT backend (backend_of(daemon) names it)."""
    proc = DaemonProcess(lab.ns_router, tmp_path / "daemon", NAT_BACKEND=request.param)
    proc.start()
    try:
        assert proc.cli_json("version")["backend"] == request.param
        yield proc
    finally:
        proc.stop()
        if proc.proc.returncode not in (0, None):
            print(proc.log())


@pytest.fixture
def servers(lab):
    """A TCP+UDP echo server on every VM, named vm1, vm2, ..."""
    started = [lab.start_server(lab.vm_ns(i), f"vm{i}", tcp_port=TCP, udp_port=UDP)
               for i in range(1, lab.vm_count + 1)]
    yield started
    for server in started:
        server.stop()


def getip(daemon, private_ip) -> str:
    """`ipfloater getip PRIVATE` through the daemon's CLI: the floating IP it got."""
    proc = daemon.cli("getip", private_ip)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def nat_rules(lab) -> str:
    """Our chains as iptables-legacy-save prints them (for assertions and failure messages):
    the nat table's and the filter table's (IPFLOATER-FWD, always; IPFLOATER-IN)."""
    out = lab.run(lab.ns_router, ["iptables-legacy-save"]).stdout
    return "\n".join(line for line in out.splitlines() if "IPFLOATER" in line)


# -- backend-neutral views and drift, so one test body checks both NAT backends ----------

def backend_of(daemon_or_name) -> str:
    if isinstance(daemon_or_name, str):
        return daemon_or_name
    return daemon_or_name.settings.get("NAT_BACKEND", "iptables")


def our_rules(lab, backend) -> str:
    """Everything of ours in the router's kernel as stable text ("" when nothing is there):
    our iptables-legacy chains, or our nft table (handles left out, elements sorted)."""
    if backend_of(backend) == "iptables":
        return nat_rules(lab)
    proc = lab.run(lab.ns_router, ["nft", "-j", "list", "table", "ip", "ipfloater"], check=False)
    if proc.returncode != 0:
        return ""
    lines = []
    for obj in json.loads(proc.stdout)["nftables"]:
        if "chain" in obj:
            c = obj["chain"]
            lines.append(f"chain {c['name']} {c.get('type')} {c.get('hook')} {c.get('prio')} {c.get('policy')}")
        elif "rule" in obj:
            lines.append(f"rule {obj['rule']['chain']} {json.dumps(obj['rule']['expr'], sort_keys=True)}")
        elif "map" in obj:
            m = obj["map"]
            lines.append(f"map {m['name']} {m['type']} : {m['map']}")
            lines += sorted(f"element {m['name']} {k} : {v}" for k, v in m.get("elem", ()))
        elif "table" not in obj and "metainfo" not in obj:
            lines.append(json.dumps(obj, sort_keys=True))
    return "\n".join(lines)


def break_hairpin(lab, backend) -> None:
    """Delete our hairpin MASQUERADE rule by hand (drift for reconcile to repair)."""
    if backend_of(backend) == "iptables":
        lab.run(lab.ns_router, ["iptables-legacy", "-w", "5", "-t", "nat", "-D", "IPFLOATER-POST",
                                "-s", "10.77.0.0/24", "-d", "10.77.0.0/24", "-m", "conntrack",
                                "--ctstate", "DNAT", "-j", "MASQUERADE"])
        return
    listing = lab.run(lab.ns_router, ["nft", "-j", "-a", "list", "chain", "ip", "ipfloater", "postrouting"])
    handles = [o["rule"]["handle"] for o in json.loads(listing.stdout)["nftables"]
               if "rule" in o and any("masquerade" in e for e in o["rule"]["expr"])]
    assert len(handles) == 1, listing.stdout
    lab.run(lab.ns_router, ["nft", "delete", "rule", "ip", "ipfloater", "postrouting",
                            "handle", str(handles[0])])


def break_jump(lab, backend) -> None:
    """Cut the way from the built-in PREROUTING into our DNAT rules."""
    if backend_of(backend) == "iptables":
        lab.run(lab.ns_router, ["iptables-legacy", "-w", "5", "-t", "nat", "-D", "PREROUTING",
                                "-j", "IPFLOATER-PRE"])
    else:
        lab.run(lab.ns_router, ["nft", "delete", "chain", "ip", "ipfloater", "prerouting"])


def jump_repair(backend) -> str:
    """The repair a reconcile reports after `break_jump`, in the backend's own words."""
    if backend_of(backend) == "iptables":
        return "restored jump nat/PREROUTING -> IPFLOATER-PRE"
    return "created chain prerouting (type nat hook prerouting priority -110 policy accept)"


def wipe_nat(lab, backend) -> None:
    """An admin wiping NAT by hand: `iptables -t nat -F/-X`, or `nft flush ruleset`
    (what nftables.service does on restart)."""
    if backend_of(backend) == "iptables":
        lab.run(lab.ns_router, ["iptables-legacy", "-w", "5", "-t", "nat", "-F"])
        lab.run(lab.ns_router, ["iptables-legacy", "-w", "5", "-t", "nat", "-X"])
    else:
        lab.run(lab.ns_router, ["nft", "flush", "ruleset"])


def foreign_iptables(backend) -> tuple[str, str]:
    """(iptables command, its -save) for rules of somebody else's on the same netfilter side
    as the backend: legacy tables beside the iptables backend, iptables-nft beside nftables."""
    if backend_of(backend) == "iptables":
        return "iptables-legacy", "iptables-legacy-save"
    return "iptables-nft", "iptables-nft-save"
