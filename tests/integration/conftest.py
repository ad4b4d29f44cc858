"""Fixtures for tests that build namespaces: a lab network and a real ipfloaterd in it."""

import pytest

from one_ipfloater.testing import netlab
from one_ipfloater.testing.daemonproc import DaemonProcess
from one_ipfloater.testing.netlab import Lab

TCP, UDP = 8080, 8081


@pytest.fixture(scope="session", autouse=True)
def _no_stale_labs():
    netlab.cleanup_stale()
    yield


@pytest.fixture
def lab():
    with Lab(vms=2) as lab:
        yield lab


@pytest.fixture
def daemon(lab, tmp_path):
    proc = DaemonProcess(lab.ns_router, tmp_path / "daemon")
    proc.start()
    yield proc
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


def nat_rules(lab) -> str:
    """Our chains as iptables-legacy-save prints them (for assertions and failure messages)."""
    out = lab.run(lab.ns_router, ["iptables-legacy-save", "-t", "nat"]).stdout
    return "\n".join(line for line in out.splitlines() if "IPFLOATER" in line)
