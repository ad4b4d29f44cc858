"""Several pools, OpenNebula side: where a VM's FLOATING_IP_POOL comes from (NIC, VM top
level, virtual network), what an unknown or exhausted pool writes back, and a NIC that
changes pools. The oned simulator through pyone, a real daemon API with two pools."""

from ipaddress import IPv4Address

import pytest

from one_ipfloater.api import ApiApp
from one_ipfloater.auth import Authenticator
from one_ipfloater.config import parse_config_text
from one_ipfloater.httpserver import serve_in_thread
from one_ipfloater.one.driver import sync_all
from one_ipfloater.one.vmxml import parse_vm
from one_ipfloater.one.fipspec import desired_floating_ips
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.fakes import FakeBackend, FakeHost
from tests.one.fipenv import TOKEN, FipEnv, start_sim
from tests.paths import SAMPLES
from tests.support.onesim import ApiEvent

CONF = """
[IPFLOATER]
IP_POOL = 198.51.100.10-198.51.100.40
PRIVATE_IP_RANGES = 10.77.0.0/24
DB = {db}

[POOL campus]
IP_POOL = 203.0.113.20-203.0.113.21
"""


@pytest.fixture
def env(tmp_path):
    config = parse_config_text(CONF.format(db=tmp_path / "state.db"))
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
    svc.start()
    _server, url, stop = serve_in_thread(ApiApp(svc, Authenticator(TOKEN)), request_timeout=10)
    sim = start_sim()  # networks: priv (ID 0), outside, v6only
    sim.add_network("campus-net", "10.77.0.0/24", "10.77.0.100", size=50,
                    template='FLOATING_IP_POOL="campus"')
    try:
        yield FipEnv(sim, svc, url, str(tmp_path / "locks"))
    finally:
        sim.stop()
        stop()


def pool_of(env, address):
    return env.svc.registry.pool_of(IPv4Address(address))


def vn_info_calls(env):
    return [e for e in env.sim.events() if isinstance(e, ApiEvent) and e.call == "one.vn.info"]


def assert_error_written(env, vm, result, *fragments):
    ut = env.ut(vm)
    assert not result.ok and ut["FLOATING_IP_STATUS"] == "ERROR"
    for fragment in fragments:
        assert fragment in ut["FLOATING_IP_ERROR"], ut["FLOATING_IP_ERROR"]
    assert "\n" not in ut["FLOATING_IP_ERROR"]


def test_without_any_pool_attribute_the_default_pool_and_nothing_new_written(env):
    vm = env.create('NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="YES"')
    r = env.converge(vm)
    assert r.ok and pool_of(env, env.public(vm)[0]) == "default"
    assert "FLOATING_IP_ADDRESS_POOL" not in env.ut(vm)


def test_a_nic_asks_for_its_pool(env):
    vm = env.create('NAME="a" NIC=[NETWORK="priv", FLOATING_IP="YES", FLOATING_IP_POOL="campus"]')
    r = env.converge(vm)
    assert r.ok and env.public(vm) == {0: "203.0.113.20"}
    assert env.ut(vm)["FLOATING_IP_ADDRESS_POOL"] == "campus"
    assert vn_info_calls(env) == []  # the NIC decided: its network is not read


def test_the_vm_top_level_asks_and_a_nic_overrides_it(env):
    vm = env.create('NAME="a" NIC=[NETWORK="priv"] NIC=[NETWORK="priv", FLOATING_IP="YES", '
                    'FLOATING_IP_POOL="default"] FLOATING_IP="YES" FLOATING_IP_NIC="0" '
                    'FLOATING_IP_POOL="campus"')
    r = env.converge(vm)
    assert r.ok, r.message
    assert {n: pool_of(env, a) for n, a in env.public(vm).items()} == {0: "campus", 1: "default"}
    ut = env.ut(vm)
    assert (ut["FLOATING_IP_ADDRESS_POOL"], ut["FLOATING_IP_ADDRESS_POOL_NIC0"],
            ut["FLOATING_IP_ADDRESS_POOL_NIC1"]) == ("campus", "campus", "default")


def test_the_virtual_network_gives_the_default_read_once_per_network(env):
    vm = env.create('NAME="a" NIC=[NETWORK="campus-net", FLOATING_IP="YES"] '
                    'NIC=[NETWORK="campus-net", FLOATING_IP="YES"] NIC=[NETWORK="priv"]')
    r = env.converge(vm)
    assert r.ok, r.message
    assert sorted(env.public(vm).values()) == ["203.0.113.20", "203.0.113.21"]
    calls = vn_info_calls(env)
    campus_net = env.sim.nics(vm)[0]["NETWORK_ID"]
    assert [c.params[1] for c in calls] == [int(campus_net)]  # two NICs, one read; priv not asked
    # the top level beats the network
    vm2 = env.create('NAME="b" NIC=[NETWORK="campus-net"] FLOATING_IP="YES" FLOATING_IP_POOL="default"')
    assert env.converge(vm2).ok and pool_of(env, env.public(vm2)[0]) == "default"


def test_an_unknown_pool_is_written_back_and_takes_nothing(env):
    vm = env.create('NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="YES" FLOATING_IP_POOL="nope"')
    r = env.converge(vm)
    assert_error_written(env, vm, r, "NIC 0: the floating IP pool 'nope' does not exist",
                         "known: default, campus")
    assert env.held(vm) == {}


def test_a_bad_pool_name_is_written_back(env):
    vm = env.create('NAME="a" NIC=[NETWORK="priv", FLOATING_IP="YES", FLOATING_IP_POOL="Campus!"]')
    r = env.converge(vm)
    assert_error_written(env, vm, r, "FLOATING_IP_POOL in NIC 0: 'Campus!' is not a pool name")
    assert env.held(vm) == {}


def test_an_exhausted_pool_is_named(env):
    for _ in range(2):
        assert env.converge(env.create('NAME="x" NIC=[NETWORK="campus-net", FLOATING_IP="YES"]')).ok
    vm = env.create('NAME="a" NIC=[NETWORK="campus-net", FLOATING_IP="YES"]')
    r = env.converge(vm)
    assert_error_written(env, vm, r, "NIC 0: no free address left in the floating IP pool 'campus'")
    assert env.held(vm) == {}


def test_a_nic_that_changes_pools_gets_an_address_of_the_new_one(env):
    vm = env.create('NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="YES"')
    assert env.converge(vm).ok
    old = env.public(vm)[0]
    env.set_template(vm, FLOATING_IP_POOL="campus")
    r = env.converge(vm)
    assert r.ok and [(s.action, s.reason) for s in r.steps] == [
        ("release", "NIC 0 asks for pool 'campus' instead of 'default'"),
        ("allocate", "NIC 0 asks for a floating IP of pool 'campus'")]
    assert env.public(vm) == {0: "203.0.113.20"} and env.svc.registry.get(IPv4Address(old)) is None
    ut = env.ut(vm)
    assert (ut["FLOATING_IP_ADDRESS"], ut["FLOATING_IP_ADDRESS_POOL"], ut["FLOATING_IP_STATUS"]) == \
        ("203.0.113.20", "campus", "ACTIVE")
    assert env.converge(vm).written == {}  # settled
    env.set_template(vm, FLOATING_IP_POOL="")  # back to the default: the pool attribute is cleared
    r = env.converge(vm)
    assert r.ok and pool_of(env, env.public(vm)[0]) == "default"
    assert env.ut(vm).get("FLOATING_IP_ADDRESS_POOL", "") == ""


def test_changing_to_a_full_or_unknown_pool_keeps_the_address(env):
    vm = env.create('NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="YES"')
    assert env.converge(vm).ok
    old = env.public(vm)[0]
    for _ in range(2):
        assert env.converge(env.create('NAME="x" NIC=[NETWORK="campus-net", FLOATING_IP="YES"]')).ok
    env.set_template(vm, FLOATING_IP_POOL="campus")
    r = env.converge(vm)
    assert_error_written(env, vm, r, f"no free address left in the floating IP pool 'campus' (keeping {old})")
    assert env.public(vm) == {0: old}
    env.set_template(vm, FLOATING_IP_POOL="nope")
    r = env.converge(vm)
    assert_error_written(env, vm, r, "'nope' does not exist", f"(keeping {old})")
    assert env.public(vm) == {0: old}


def test_a_network_that_cannot_be_read_is_an_error_naming_it(env):
    """A driver session without USE on the network (oned's AUTHORIZATION)."""
    vm = env.create('NAME="a" NIC=[NETWORK="campus-net", FLOATING_IP="YES"]')
    as_alice = env.driver_client(session="alice:alicepw")
    r = env.converge(vm, one=as_alice)
    net = env.sim.nics(vm)[0]["NETWORK_ID"]
    assert_error_written(env, vm, r, f"NIC 0: cannot read virtual network {net} for its FLOATING_IP_POOL",
                         f"Not authorized to perform USE NET [{net}]")
    assert env.held(vm) == {}


def test_template_level_pool_of_the_vm_document():
    """TEMPLATE/FLOATING_IP_POOL (an attribute oned keeps in TEMPLATE) counts as top level."""
    xml = (SAMPLES / "vm-7.4-running-1nic-usertemplate-snapshot.xml").read_text()
    xml = xml.replace("<TEMPLATE>", "<TEMPLATE><FLOATING_IP_POOL><![CDATA[campus]]></FLOATING_IP_POOL>", 1)
    vm = parse_vm(xml)
    assert vm.template_pool == "campus"
    nic = vm.nics[0]
    vm = vm.__class__(**{**vm.__dict__, "user_template": {**vm.user_template, "FLOATING_IP": "YES"}})
    spec = desired_floating_ips(vm, {})
    assert [(r.nic_id, r.pool) for r in spec.requests] == [(nic.nic_id, "campus")]


def test_a_sweep_reads_each_network_once(env):
    vms = [env.create('NAME="x" NIC=[NETWORK="campus-net", FLOATING_IP="YES"]') for _ in range(2)]
    out = sync_all(env.client, env.daemon, lock_dir=env.lock_dir)
    assert out.ok and all(env.public(vm) for vm in vms)
    assert len(vn_info_calls(env)) == 1  # two VMs on one network
