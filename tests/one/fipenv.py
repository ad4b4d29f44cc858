"""Shared set-up for the OpenNebula-side tests: the oned simulator, the real pyone client
and an in-process ipfloaterd (real ApiApp on waitress + FloatingIPService over the in-memory
kernel of tests/fakes.py), all on 127.0.0.1 with ephemeral ports. No root needed."""

from __future__ import annotations

import socket
from typing import Dict, List, Optional

import pyone
import pytest

from one_ipfloater.api import ApiApp
from one_ipfloater.httpserver import serve_in_thread
from one_ipfloater.auth import Authenticator
from one_ipfloater.client import IpfloaterClient
from one_ipfloater.config import parse_config_text
from one_ipfloater.one import rpc
from one_ipfloater.one.driver import Result, converge_vm
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.support.onesim import ApiEvent, OneSimulator
from tests.fakes import FakeBackend, FakeHost

TOKEN = "f" * 32
# What the real 7.4 sample VM "fip-vm-01" was built from (see hookarg-7.4-*.xml).
FIP_VM = """NAME="fip-vm-01"
CPU="0.1"
MEMORY="64"
VCPU="1"
CONTEXT=[NETWORK="YES"]
NIC=[NETWORK="fip-net"]
OS=[MACHINE="q35"]
TEMPLATE_ID="0"
"""

ADMIN = ("oneadmin", "adminpw")
USERS = {"oneadmin": ADMIN[1], "alice": "alicepw", "bob": "bobpw"}
POOL_FIRST, POOL_LAST = 10, 40          # 198.51.100.10 - 198.51.100.40 (31 addresses)
POOL = [f"198.51.100.{i}" for i in range(POOL_FIRST, POOL_LAST + 1)]
DAEMON_CONF = """
[IPFLOATER]
IP_POOL = 198.51.100.{first}-198.51.100.{last}
PRIVATE_IP_RANGES = 10.77.0.0/24
DB = {db}
"""


def closed_port() -> int:
    """A local TCP port nobody listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FipEnv:
    """oned simulator + pyone + daemon, and the small helpers the tests share."""

    def __init__(self, sim: OneSimulator, svc: FloatingIPService, daemon_url: str,
                 lock_dir: str):
        self.sim = sim
        self.svc = svc
        self.daemon_url = daemon_url
        self.lock_dir = lock_dir
        self.one = self.pyone()  # the tests act through pyone, as users and scripts do
        self.client = self.driver_client()  # the driver's own client
        self.daemon = IpfloaterClient(daemon_url, TOKEN, timeout=10)

    def pyone(self, session: str = ":".join(ADMIN), url: Optional[str] = None):
        return pyone.OneServer(url or self.sim.url, session=session, timeout=10)

    def driver_client(self, session: str = ":".join(ADMIN), url: Optional[str] = None):
        return rpc.connect(url or self.sim.url, session, 10)

    def create(self, template: str, owner: str = "alice", deploy: bool = True) -> int:
        vm_id = self.sim.create_vm(template, owner=owner)
        if deploy:
            self.sim.deploy(vm_id)
        return vm_id

    def converge(self, vm_id: int, one=None, daemon=None) -> Result:
        return converge_vm(vm_id, one or self.client, daemon or self.daemon,
                           lock_dir=self.lock_dir, lock_timeout=30)

    def held(self, vm_id: int) -> Dict[int, object]:
        """NIC_ID -> Allocation the daemon holds for the VM."""
        return {int(a.ref.rsplit(":", 1)[1]): a
                for a in self.svc.list(ref_prefix=f"one:vm:{vm_id}:")}

    def public(self, vm_id: int) -> Dict[int, str]:
        return {n: str(a.public_ip) for n, a in self.held(vm_id).items()}

    def ut(self, vm_id: int) -> dict:
        return self.sim.user_template(vm_id)

    def updates(self, vm_id: Optional[int] = None) -> List[ApiEvent]:
        """Successful one.vm.update calls (optionally for one VM) seen by the simulator."""
        return [e for e in self.sim.events() if isinstance(e, ApiEvent)
                and e.call == "one.vm.update" and e.success
                and (vm_id is None or e.params[1] == vm_id)]

    def set_template(self, vm_id: int, **attrs: str) -> None:
        """What ``onevm update --append`` does (merge), without running the driver."""
        rpc.update_user_template(self.client, vm_id, attrs)

    def replace_template(self, vm_id: int, text: str) -> None:
        """What ``onevm update`` (editor, then replace) does."""
        self.one.vm.update(vm_id, text, 0)


def start_daemon(tmp_path, first: int = POOL_FIRST, last: int = POOL_LAST):
    config = parse_config_text(DAEMON_CONF.format(first=first, last=last,
                                                  db=tmp_path / "state.db"))
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
    svc.start()
    server, url, stop = serve_in_thread(ApiApp(svc, Authenticator(TOKEN)), request_timeout=10)
    return stop, svc, url


def start_sim() -> OneSimulator:
    sim = OneSimulator(users=dict(USERS), seed=7).start()
    sim.add_network("priv", "10.77.0.0/24", "10.77.0.2", bridge="br77",
                    gateway="10.77.0.1")
    sim.add_network("outside", "10.88.0.0/24", "10.88.0.2")
    sim.add_network("v6only", "fd00:77::/64")
    return sim


@pytest.fixture
def env(tmp_path):
    server, svc, url = start_daemon(tmp_path)
    sim = start_sim()
    try:
        yield FipEnv(sim, svc, url, str(tmp_path / "locks"))
    finally:
        sim.stop()
        server()  # stops the API server
