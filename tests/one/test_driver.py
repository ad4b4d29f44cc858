"""converge_vm / sync_all: the oned simulator read through the real pyone client, and a
real ipfloaterd API over the in-memory kernel. Every VM document is read back from the
simulator, every allocation from the daemon's registry."""

import threading
from ipaddress import IPv4Address
from pathlib import Path

import pyone
import pytest

from one_ipfloater.client import IpfloaterClient
from one_ipfloater.one.driver import sync_all
from tests.one.fipenv import POOL, TOKEN, closed_port

YES = 'NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="YES"'


def assert_one_line(message):
    assert message and "\n" not in message and "\r" not in message


def assert_error_written(env, vm, result, fragment):
    assert not result.ok and fragment in result.message
    assert_one_line(result.message)
    ut = env.ut(vm)
    assert ut["FLOATING_IP_STATUS"] == "ERROR"
    assert fragment in ut["FLOATING_IP_ERROR"]
    assert_one_line(ut["FLOATING_IP_ERROR"])


def is_free(env, address):
    return env.svc.registry.get(IPv4Address(address)) is None


# --- what a VM owner writes --------------------------------------------------------------

def test_yes_allocates_associates_and_writes_back(env):
    vm = env.create(YES)
    r = env.converge(vm)
    assert r.ok and r.phase == "hold" and [s.action for s in r.steps] == ["allocate"]
    alloc = env.held(vm)[0]
    assert str(alloc.private_ip) == env.sim.nics(vm)[0]["IP"]
    assert alloc.owner == f"one:uid:{env.sim.uid_of('alice')}"
    assert alloc.ref == f"one:vm:{vm}:nic:0"
    assert (alloc.public_ip, alloc.private_ip) in env.svc.registry.associations()
    ut = env.ut(vm)
    assert ut["FLOATING_IP_ADDRESS"] == str(alloc.public_ip)
    assert ut["FLOATING_IP_STATUS"] == "ACTIVE"
    assert ut.get("FLOATING_IP_ERROR", "") == ""
    assert not any(k.startswith("FLOATING_IP_ADDRESS_NIC") for k in ut)
    assert r.message == f"VM {vm}: NIC 0 {alloc.public_ip} (ACTIVE)"


def test_specific_address(env):
    vm = env.create('NAME="a" NIC=[NETWORK="priv"] FLOATING_IP=" 198.51.100.25 "')
    assert env.converge(vm).ok
    assert env.public(vm) == {0: "198.51.100.25"}
    assert env.ut(vm)["FLOATING_IP_ADDRESS"] == "198.51.100.25"


def test_asking_for_another_address_swaps_it(env):
    vm = env.create(YES)
    env.converge(vm)
    old = env.public(vm)[0]
    env.set_template(vm, FLOATING_IP="198.51.100.30")
    r = env.converge(vm)
    assert r.ok and [s.action for s in r.steps] == ["release", "allocate"]
    assert env.public(vm) == {0: "198.51.100.30"} and is_free(env, old)
    assert env.ut(vm)["FLOATING_IP_ADDRESS"] == "198.51.100.30"


def test_asking_for_a_taken_address_keeps_the_old_one(env):
    other = env.create('NAME="b" NIC=[NETWORK="priv"] FLOATING_IP="198.51.100.30"', owner="bob")
    env.converge(other)
    vm = env.create(YES)
    env.converge(vm)
    old = env.public(vm)[0]
    env.set_template(vm, FLOATING_IP="198.51.100.30")
    r = env.converge(vm)
    assert_error_written(env, vm, r, "198.51.100.30 is already allocated to another VM")
    assert env.public(vm) == {0: old} and env.ut(vm)["FLOATING_IP_ADDRESS"] == old
    assert env.public(other) == {0: "198.51.100.30"}


@pytest.mark.parametrize("attr", ["", 'FLOATING_IP="NO"', 'FLOATING_IP=""', 'FLOATING_IP=" no "'])
def test_no_request_means_no_allocation_and_no_write(env, attr):
    vm = env.create(f'NAME="a" NIC=[NETWORK="priv"] {attr}')
    r = env.converge(vm)
    assert r.ok and r.addresses == {} and r.written == {} and r.steps == []
    assert env.held(vm) == {} and env.updates(vm) == []


@pytest.mark.parametrize("how", ["set to NO", "removed by onevm update"])
def test_withdrawing_the_request_releases(env, how):
    vm = env.create(YES)
    env.converge(vm)
    pub = env.public(vm)[0]
    if how == "set to NO":
        env.set_template(vm, FLOATING_IP="NO")
    else:
        env.replace_template(vm, f'DESCRIPTION="web" FLOATING_IP_ADDRESS="{pub}"')
    r = env.converge(vm)
    assert r.ok and [s.action for s in r.steps] == ["release"]
    assert env.held(vm) == {} and is_free(env, pub)
    ut = env.ut(vm)
    assert ut["FLOATING_IP_ADDRESS"] == "" and ut.get("FLOATING_IP_STATUS", "") == ""


def test_floating_ip_nic_picks_the_nic(env):
    vm = env.create('NAME="a" NIC=[NETWORK="priv"] NIC=[NETWORK="priv"] FLOATING_IP="YES" '
                    'FLOATING_IP_NIC="1"')
    assert env.converge(vm).ok
    held = env.held(vm)
    assert list(held) == [1] and str(held[1].private_ip) == env.sim.nics(vm)[1]["IP"]
    assert "FLOATING_IP_ADDRESS_NIC1" not in env.ut(vm)  # one floating IP: no per-NIC keys


def test_nic_vector_requests_on_two_nics(env):
    vm = env.create('NAME="a" NIC=[NETWORK="priv", FLOATING_IP="YES"] NIC=[NETWORK="outside"] '
                    'NIC=[NETWORK="priv", FLOATING_IP="198.51.100.33"]')
    r = env.converge(vm)
    assert r.ok
    pub = env.public(vm)
    assert set(pub) == {0, 2} and pub[2] == "198.51.100.33"
    ut = env.ut(vm)
    assert ut["FLOATING_IP_ADDRESS"] == pub[0]
    assert ut["FLOATING_IP_ADDRESS_NIC0"] == pub[0]
    assert ut["FLOATING_IP_ADDRESS_NIC2"] == "198.51.100.33"
    assert "FLOATING_IP_ADDRESS_NIC1" not in ut


def test_address_moves_between_nics_of_one_vm(env):
    vm = env.create('NAME="a" NIC=[NETWORK="priv"] NIC=[NETWORK="priv"] '
                    'FLOATING_IP="198.51.100.20" FLOATING_IP_NIC="0"')
    env.converge(vm)
    env.set_template(vm, FLOATING_IP_NIC="1")
    r = env.converge(vm)
    assert r.ok and [(s.action, s.nic_id) for s in r.steps] == [("release", 0), ("allocate", 1)]
    assert env.public(vm) == {1: "198.51.100.20"}


# --- lifecycle -----------------------------------------------------------------------------

def test_pending_vm_waits(env):
    vm = env.create(YES, deploy=False)
    r = env.converge(vm)
    assert r.ok and r.phase == "wait" and env.held(vm) == {} and env.updates(vm) == []


@pytest.mark.parametrize("poweroff", [False, True], ids=["running", "poweroff"])
def test_nic_attach_and_detach(env, poweroff):
    vm = env.create('NAME="a" NIC=[NETWORK="priv", FLOATING_IP="YES"]')
    env.converge(vm)
    if poweroff:
        env.sim.action(vm, "poweroff")
    nic_id = env.sim.attach_nic(vm, 'NIC=[NETWORK="priv", FLOATING_IP="YES"]')
    assert env.converge(vm).ok
    pub = env.public(vm)
    assert set(pub) == {0, nic_id}
    assert str(env.held(vm)[nic_id].private_ip) == env.sim.nics(vm)[-1]["IP"]
    ut = env.ut(vm)
    assert ut["FLOATING_IP_STATUS"] == ("DOWN" if poweroff else "ACTIVE")
    assert ut[f"FLOATING_IP_ADDRESS_NIC{nic_id}"] == pub[nic_id]
    env.sim.detach_nic(vm, nic_id)
    r = env.converge(vm)
    assert r.ok and [(s.action, s.nic_id) for s in r.steps] == [("release", nic_id)]
    assert env.public(vm) == {0: pub[0]} and is_free(env, pub[nic_id])
    ut = env.ut(vm)
    assert ut["FLOATING_IP_ADDRESS"] == pub[0]
    assert ut[f"FLOATING_IP_ADDRESS_NIC{nic_id}"] == "" and ut["FLOATING_IP_ADDRESS_NIC0"] == ""


def test_changed_private_ip_moves_the_nat(env):
    vm = env.create(YES)
    env.converge(vm)
    pub = env.public(vm)[0]
    env.sim.set_nic_ip(vm, 0, "10.77.0.200")
    r = env.converge(vm)
    assert r.ok and [s.action for s in r.steps] == ["move"] and r.written == {}
    alloc = env.held(vm)[0]
    assert str(alloc.public_ip) == pub and str(alloc.private_ip) == "10.77.0.200"
    assert (IPv4Address(pub), IPv4Address("10.77.0.200")) in env.svc.registry.associations()


def test_nat_that_cannot_follow_its_nic_is_unhooked(env):
    vm = env.create(YES)
    env.converge(vm)
    old_private = env.sim.nics(vm)[0]["IP"]
    env.sim.set_nic_ip(vm, 0, "10.88.0.50")  # outside PRIVATE_IP_RANGES
    r = env.converge(vm)
    assert_error_written(env, vm, r, "does not NAT to 10.88.0.50")
    alloc = env.held(vm)[0]
    assert alloc.private_ip is None  # kept for the VM, but not pointing at the old lease
    assert all(str(priv) != old_private for _, priv in env.svc.registry.associations())


def test_done_releases_and_clears(env):
    vm = env.create(YES)
    env.converge(vm)
    pub = env.public(vm)[0]
    env.sim.action(vm, "terminate-hard")
    r = env.converge(vm)
    assert r.ok and r.phase == "release" and env.held(vm) == {} and is_free(env, pub)
    ut = env.ut(vm)
    assert ut["FLOATING_IP_ADDRESS"] == "" and ut["FLOATING_IP_STATUS"] == ""


@pytest.mark.parametrize("action", ["poweroff", "undeploy", "stop", "suspend"])
def test_stopped_vms_keep_their_address_with_status_down(env, action):
    vm = env.create(YES)
    env.converge(vm)
    pub = env.public(vm)
    env.sim.action(vm, action)
    r = env.converge(vm)
    assert r.ok and r.phase == "hold" and env.public(vm) == pub
    assert env.ut(vm)["FLOATING_IP_STATUS"] == "DOWN"
    env.sim.action(vm, "resume")
    if env.sim.vm_state(vm)[0] == "PENDING":  # stopped/undeployed VMs go back through it
        assert env.converge(vm).phase == "wait" and env.public(vm) == pub
        env.sim.deploy(vm)
    assert env.converge(vm).ok
    assert env.public(vm) == pub and env.ut(vm)["FLOATING_IP_STATUS"] == "ACTIVE"


def test_second_converge_writes_nothing(env):
    vm = env.create(YES)
    assert env.converge(vm).written
    assert len(env.updates(vm)) == 1
    r = env.converge(vm)
    assert r.ok and r.written == {} and r.steps == []
    assert len(env.updates(vm)) == 1


# --- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("template, fragment", [
    ('NAME="a" FLOATING_IP="YES"', "no NIC has an IPv4 address"),
    ('NAME="a" NIC=[NETWORK="v6only"] FLOATING_IP="YES"', "no NIC has an IPv4 address"),
    ('NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="YES" FLOATING_IP_NIC="5"', "NIC 5 does not exist"),
    ('NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="maybe"', "is not YES, NO or an IPv4 address"),
    ('NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="203.0.113.9"',
     "203.0.113.9 is not in the floating IP pool"),
    ('NAME="a" NIC=[NETWORK="outside"] FLOATING_IP="YES"', "does not NAT to 10.88.0.2"),
    ('NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="say \\"hi\\"\n <now> & ]]>"',
     'say "hi"\\n <now> & ]] >'),
], ids=["no-nic", "ipv6-only", "nic-missing", "bad-value", "not-in-pool", "private-refused",
        "quotes-and-markup"])
def test_request_errors_are_written_back(env, template, fragment):
    vm = env.create(template)
    r = env.converge(vm)
    assert_error_written(env, vm, r, fragment)
    assert env.held(vm) == {} and env.svc.registry.free_count() == len(POOL)
    assert env.converge(vm).written == {}  # the ERROR is stable: no write-back loop
    assert len(env.updates(vm)) == 1


def test_pool_exhausted(env):
    for address in POOL:
        env.daemon.allocate(public_ip=address, owner="operator")
    vm = env.create(YES)
    assert_error_written(env, vm, env.converge(vm), "no free address left")
    assert env.held(vm) == {}


def test_partial_failure_keeps_only_the_served_nic(env):
    vm = env.create('NAME="a" NIC=[NETWORK="priv", FLOATING_IP="YES"] '
                    'NIC=[NETWORK="priv", FLOATING_IP="203.0.113.9"] '
                    'NIC=[NETWORK="outside", FLOATING_IP="YES"]')
    r = env.converge(vm)
    assert_error_written(env, vm, r, "NIC 1: 203.0.113.9 is not in the floating IP pool")
    assert "NIC 2: the router does not NAT to 10.88.0.2" in r.message
    assert set(env.public(vm)) == {0} and env.svc.registry.free_count() == len(POOL) - 1
    assert env.ut(vm)["FLOATING_IP_ADDRESS"] == env.public(vm)[0]
    again = env.converge(vm)
    assert not again.ok and again.written == {} and again.steps == []


def test_typo_keeps_the_held_address_and_fixing_it_clears_the_error(env):
    vm = env.create(YES)
    env.converge(vm)
    pub = env.public(vm)
    env.set_template(vm, FLOATING_IP="YSE")
    assert_error_written(env, vm, env.converge(vm), "'YSE' is not YES, NO")
    assert env.public(vm) == pub and env.ut(vm)["FLOATING_IP_ADDRESS"] == pub[0]
    env.set_template(vm, FLOATING_IP="yes")
    r = env.converge(vm)
    assert r.ok and env.public(vm) == pub
    ut = env.ut(vm)
    assert ut["FLOATING_IP_STATUS"] == "ACTIVE" and ut["FLOATING_IP_ERROR"] == ""


@pytest.mark.parametrize("kind", ["unreachable", "bad token"])
def test_daemon_failures_write_error_and_allocate_nothing(env, kind):
    vm = env.create(YES)
    url = f"http://127.0.0.1:{closed_port()}" if kind == "unreachable" else env.daemon_url
    broken = IpfloaterClient(url, TOKEN if kind == "unreachable" else "x" * 32, timeout=5)
    r = env.converge(vm, daemon=broken)
    assert_error_written(env, vm, r, "unreachable" if kind == "unreachable" else "token")
    assert "FLOATING_IP_ADDRESS" not in env.ut(vm) and env.held(vm) == {}
    assert env.converge(vm).ok  # and it recovers once the daemon answers
    assert env.ut(vm)["FLOATING_IP_STATUS"] == "ACTIVE"


@pytest.mark.parametrize("kind, fragment", [("unreachable", "is unreachable"),
                                            ("wrong password", "refused the credentials")])
def test_oned_failures_end_with_one_line_and_touch_nothing(env, kind, fragment):
    vm = env.create(YES)
    one = env.driver_client(url=f"http://127.0.0.1:{closed_port()}/RPC2") \
        if kind == "unreachable" else env.driver_client("oneadmin:wrong")
    r = env.converge(vm, one=one)
    assert not r.ok and r.phase == "" and fragment in r.message
    assert_one_line(r.message)
    assert env.held(vm) == {} and env.updates(vm) == []


def test_user_b_cannot_take_user_a_address(env):
    a = env.create(YES, owner="alice")
    env.converge(a)
    address = env.public(a)[0]
    before = env.held(a)[0]
    b = env.create(f'NAME="b" NIC=[NETWORK="priv"] FLOATING_IP="{address}"', owner="bob")
    assert_error_written(env, b, env.converge(b), f"{address} is already allocated to another VM")
    assert env.held(b) == {} and env.held(a)[0] == before
    # Not even after Alice's VM is powered off.
    env.sim.action(a, "poweroff")
    env.converge(a)
    assert not env.converge(b).ok and env.held(a)[0] == before


def test_ten_concurrent_converges_make_one_allocation(env):
    vm = env.create(YES)
    barrier = threading.Barrier(10)
    results = []

    def run():
        one, daemon = env.driver_client(), IpfloaterClient(env.daemon_url, TOKEN, timeout=10)
        barrier.wait()
        results.append(env.converge(vm, one=one, daemon=daemon))

    threads = [threading.Thread(target=run) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 10 and all(r.ok for r in results)
    assert len(env.held(vm)) == 1 and env.svc.registry.free_count() == len(POOL) - 1
    assert {r.addresses[0] for r in results} == {env.public(vm)[0]}
    assert sum(bool(r.written) for r in results) == 1 and len(env.updates(vm)) == 1


# --- sync ----------------------------------------------------------------------------------

def test_sync_converges_everything_and_releases_allocations_of_vanished_vms(env):
    keep = env.create(YES)
    env.converge(keep)
    done = env.create(YES, owner="bob")
    env.converge(done)
    done_pub = env.public(done)[0]
    env.sim.action(done, "terminate-hard")  # DONE, and no hook ran
    ghost = env.daemon.allocate(private_ip="10.77.0.250", owner="one:uid:1",
                                ref="one:vm:999:nic:0")
    env.daemon.allocate(owner="someone", ref="other:thing")
    env.daemon.allocate(owner="someone", ref="one:vm:abc")
    fresh = env.create(YES)  # deployed, its hook never ran
    out = sync_all(env.client, env.daemon, lock_dir=env.lock_dir)
    assert out.ok, out.as_dict()
    assert sorted(out.released) == sorted([(done, done_pub), (999, ghost["public_ip"])])
    assert env.held(done) == {} and env.held(999) == {}
    assert set(env.held(keep)) == {0} and set(env.held(fresh)) == {0}
    refs = {a.ref for a in env.svc.list()}
    assert {"other:thing", "one:vm:abc"} <= refs
    summary = out.as_dict()
    assert summary["converged"] == 4 and summary["errors"] == []


def test_sync_releases_nothing_when_oned_cannot_be_read(env):
    vm = env.create(YES)
    env.converge(vm)
    out = sync_all(env.driver_client("oneadmin:wrong"), env.daemon, lock_dir=env.lock_dir)
    assert not out.ok and out.released == [] and "refused the credentials" in out.errors[0]
    assert set(env.held(vm)) == {0}


# --- ownership: what is not the VM's owner's is not touched ------------------------------

def uid_owner(env, user):
    return f"one:uid:{env.sim.uid_of(user)}"


def snapshot(env):
    """Every allocation and every association the daemon holds."""
    return ({(str(a.public_ip), str(a.private_ip), a.owner, a.ref) for a in env.svc.list()},
            set(env.svc.registry.associations()))


@pytest.mark.parametrize("phase", ["running", "done"])
@pytest.mark.parametrize("foreign", ["bob", None], ids=["other-user", "no-owner"])
def test_allocation_of_another_owner_under_the_vms_ref_is_left_alone(env, phase, foreign):
    vm = env.create(YES, owner="alice")
    # Someone else's allocation under alice's VM's ref (another token wrote it, or the
    # VM changed hands), pointing at an address of theirs.
    planted = env.daemon.allocate(private_ip="10.77.0.250", ref=f"one:vm:{vm}:nic:0",
                                  owner=uid_owner(env, foreign) if foreign else None)
    if phase == "done":
        env.sim.action(vm, "terminate-hard")
    before = snapshot(env)
    r = env.converge(vm)
    who = uid_owner(env, foreign) if foreign else "no owner"
    assert_error_written(env, vm, r, f"NIC 0: {planted['public_ip']} is registered for this "
                                     f"VM but belongs to {who}, not {uid_owner(env, 'alice')} "
                                     "(owner_mismatch)")
    assert snapshot(env) == before  # not moved to alice's NIC, not released, nothing new
    assert r.steps == [] and r.addresses == {}
    assert env.ut(vm).get("FLOATING_IP_ADDRESS", "") == ""  # not adopted
    again = env.converge(vm)  # stable: no write-back loop
    assert not again.ok and again.written == {} and snapshot(env) == before


def test_show_reports_the_foreign_allocation(env, capsys, tmp_path, monkeypatch):
    vm = env.create(YES, owner="alice")
    planted = env.daemon.allocate(ref=f"one:vm:{vm}:nic:0", owner=uid_owner(env, "bob"))
    from one_ipfloater.one import cli
    auth = tmp_path / "auth"
    auth.write_text("oneadmin:adminpw\n")
    conf = tmp_path / "c.conf"
    conf.write_text(f"[ONE_IPFLOATER]\nIPFLOATER_URL = {env.daemon_url}\nONE_XMLRPC = "
                    f"{env.sim.url}\nONE_AUTH = {auth}\nLOCK_DIR = {tmp_path}/locks\n")
    monkeypatch.setenv("IPFLOATER_TOKEN", TOKEN)
    assert cli.main(["--config", str(conf), "--json", "show", str(vm)]) == 0
    data = __import__("json").loads(capsys.readouterr().out)
    assert data["pending"] == [] and data["in_sync"] is False
    assert any(planted["public_ip"] in e and "owner_mismatch" in e for e in data["errors"])


def test_second_vm_with_the_same_private_address_gets_private_in_use(env):
    first = env.create(YES, owner="alice")
    env.converge(first)
    address, private = env.public(first)[0], env.sim.nics(first)[0]["IP"]
    second = env.create(YES, owner="bob", deploy=False)
    env.sim.set_nic_ip(second, 0, private, duplicate=True)  # a lease bug
    env.sim.deploy(second)
    before = snapshot(env)
    r = env.converge(second)
    assert_error_written(env, second, r, f"NIC 0: {private} is already served by another "
                                         "VM's floating IP (private_in_use)")
    assert snapshot(env) == before and env.held(second) == {}
    assert (IPv4Address(address), IPv4Address(private)) in env.svc.registry.associations()


@pytest.mark.parametrize("second_owner", ["bob", "alice"])
def test_moving_a_nic_onto_another_vms_address_never_displaces_its_nat(env, second_owner):
    first = env.create(YES, owner="alice")
    env.converge(first)
    address, private = env.public(first)[0], env.sim.nics(first)[0]["IP"]
    second = env.create(YES, owner=second_owner)
    env.converge(second)
    own_address, own_private = env.public(second)[0], env.sim.nics(second)[0]["IP"]
    env.sim.set_nic_ip(second, 0, private, duplicate=True)  # an operator moved it
    r = env.converge(second)
    assert_error_written(env, second, r, f"NIC 0: {private} is already served by another "
                                         "VM's floating IP (private_in_use)")
    # The first VM keeps its NAT; the second keeps its address, pointing nowhere (its
    # old private address may be someone else's by now).
    assert (IPv4Address(address), IPv4Address(private)) in env.svc.registry.associations()
    assert env.held(first)[0].private_ip == IPv4Address(private)
    kept = env.held(second)[0]
    assert str(kept.public_ip) == own_address and kept.private_ip is None
    assert all(str(priv) != own_private for _, priv in env.svc.registry.associations())


class RacingDaemon:
    """The daemon as the driver sees it when another VM's NAT appears between the
    driver's check and its move: the check finds nothing, and the daemon refuses the
    move of a private address another owner's floating IP serves, as ipfloaterd does
    once allow_move no longer displaces another owner's association."""

    def __init__(self, env):
        self.env = env
        self.client = IpfloaterClient(env.daemon_url, TOKEN, timeout=10)

    def __getattr__(self, name):
        return getattr(self.client, name)

    def list(self, **filters):
        return [] if "private_ip" in filters else self.client.list(**filters)

    def allocate(self, **fields):
        private = fields.get("private_ip")
        for a in self.env.svc.list(private_ip=IPv4Address(private)) if private else []:
            if a.owner != fields.get("owner"):
                from one_ipfloater.client import ApiError
                raise ApiError("private_in_use", f"private_ip: {private} is already served "
                                                 f"by {a.public_ip}", 409)
        return self.client.allocate(**fields)


def test_daemon_refusing_the_move_is_written_as_private_in_use(env):
    first = env.create(YES, owner="alice")
    env.converge(first)
    address, private = env.public(first)[0], env.sim.nics(first)[0]["IP"]
    second = env.create(YES, owner="bob")
    env.converge(second)
    env.sim.set_nic_ip(second, 0, private, duplicate=True)
    r = env.converge(second, daemon=RacingDaemon(env))
    assert_error_written(env, second, r, "(private_in_use)")
    assert (IPv4Address(address), IPv4Address(private)) in env.svc.registry.associations()
    assert env.held(second)[0].private_ip is None


class ForbiddingDaemon(RacingDaemon):
    """The daemon answering a token without the operator role (403 forbidden)."""

    def allocate(self, **fields):
        from one_ipfloater.client import ApiError
        raise ApiError("forbidden", "operator: this token may not act for other owners", 403)


def test_forbidden_is_written_with_the_token_hint_and_stops_the_run(env):
    vm = env.create('NAME="a" NIC=[NETWORK="priv", FLOATING_IP="YES"] '
                    'NIC=[NETWORK="priv", FLOATING_IP="YES"]')
    r = env.converge(vm, daemon=ForbiddingDaemon(env))
    assert_error_written(env, vm, r, "must hold an operator token")
    assert len(r.errors) == 1 and env.held(vm) == {}  # fatal: NIC 1 was not tried


def test_oned_client_bounds_a_hung_oned_and_maps_error_codes(env):
    """rpc.OneClient (standard library XML-RPC, public interfaces only): a peer that
    accepts and never answers ends in a timeout error instead of a hung hook, and error
    arrays become the pyone exceptions pyone itself raises."""
    import socket

    from one_ipfloater.one import rpc
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(1)
        client = rpc.connect(f"http://127.0.0.1:{hung.getsockname()[1]}/RPC2", "a:b", 0.3)
        with pytest.raises(rpc.ONE_ERRORS) as caught:
            rpc.vm_xml(client, 0)
        assert isinstance(caught.value, TimeoutError)
        assert rpc.describe_one_error(caught.value, client).endswith(
            "/RPC2 is unreachable (TimeoutError)")
    with pytest.raises(pyone.OneNoExistsException, match=r"^\[one\.vm\.info\] Error getting"):
        rpc.vm_xml(env.client, 4242)
    with pytest.raises(pyone.OneAuthenticationException):
        rpc.vm_xml(env.driver_client("oneadmin:wrong"), 0)
    assert "_ServerProxy__" not in Path(rpc.__file__).read_text()
