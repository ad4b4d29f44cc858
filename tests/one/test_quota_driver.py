"""Quotas through the driver: limits read from the simulator's user and group templates
(one.user.info / one.group.info through the real XML-RPC wire), counted by a real
ipfloaterd API; what the VM shows when it is over, when a limit is lowered, and when a
value is bad."""

from one_ipfloater.one.driver import converge_vm, sync_all
from tests.one.fipenv import TOKEN
from tests.one.test_driver import assert_error_written

YES = 'NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="YES"'


def vms(env, count, owner="alice"):
    return [env.create(YES.replace('"a"', f'"q{i}"'), owner=owner) for i in range(count)]


def taken(env):
    return len(env.svc.registry)


def test_user_quota_refuses_the_next_vm_and_says_quota_and_held(env):
    env.sim.set_user_template("alice", 'FLOATING_IP_QUOTA="2"')
    a, b, c = vms(env, 3)
    assert env.converge(a).ok and env.converge(b).ok
    result = env.converge(c)
    uid = env.sim.uid_of("alice")
    assert_error_written(env, c, result, f"NIC 0: no floating IP, over quota: quota: one:uid:{uid} "
                                         "already holds 2 floating IP(s) in all pools; its limit is 2")
    assert env.public(c) == {} and taken(env) == 2 and "FLOATING_IP_ADDRESS" not in env.ut(c)
    assert {a.owner_group for a in env.svc.registry} == {"one:gid:1"}


def test_lowering_a_quota_keeps_what_is_held_and_refuses_only_new(env):
    a, b = vms(env, 2)
    assert env.converge(a).ok and env.converge(b).ok
    held = {vm: env.public(vm) for vm in (a, b)}
    env.sim.set_user_template("alice", 'FLOATING_IP_QUOTA="1"')
    for vm in (a, b):  # a hook fires again (a snapshot, a migration): nothing is lost
        again = env.converge(vm)
        assert again.ok and env.public(vm) == held[vm] and env.ut(vm)["FLOATING_IP_STATUS"] == "ACTIVE"
    assert sync_all(env.client, env.daemon, lock_dir=env.lock_dir).ok
    c = vms(env, 1)[0]
    result = env.converge(c)
    assert_error_written(env, c, result, "already holds 2 floating IP(s) in all pools; its limit is 1")
    assert taken(env) == 2
    env.sim.set_user_template("alice", 'FLOATING_IP_QUOTA="3"')  # raised: the next run gets one
    assert env.converge(c).ok and env.public(c) and env.ut(c)["FLOATING_IP_ERROR"] == ""


def test_group_quota_counts_all_members_and_the_lower_limit_wins(env):
    env.sim.set_group_template("users", 'FLOATING_IP_QUOTA="2"')
    env.sim.set_user_template("alice", 'FLOATING_IP_QUOTA="5"')
    a = vms(env, 1, owner="alice")[0]
    b1, b2 = vms(env, 2, owner="bob")
    assert env.converge(a).ok and env.converge(b1).ok
    result = env.converge(b2)
    assert_error_written(env, b2, result, "quota: one:gid:1 already holds 2 floating IP(s) in all "
                                          "pools; its limit is 2")
    gid = env.sim.add_group("lab")  # another group is not counted with "users"
    env.sim.chgrp_user("bob", "lab")
    b3 = vms(env, 1, owner="bob")[0]
    assert env.converge(b3).ok and env.svc.list(ref_prefix=f"one:vm:{b3}:")[0].owner_group == f"one:gid:{gid}"


def test_per_pool_limit_applies_to_that_pool(env):
    env.sim.set_user_template("alice", 'FLOATING_IP_POOL_QUOTA=[POOL="default",LIMIT="1"]\n'
                                       'FLOATING_IP_POOL_QUOTA=[POOL="campus",LIMIT="0"]')
    a, b = vms(env, 2)
    assert env.converge(a).ok
    assert_error_written(env, b, env.converge(b), "already holds 1 floating IP(s) in pool 'default'; "
                                                  "its limit is 1")


def test_config_default_applies_where_no_template_sets_a_limit(env):
    a, b = vms(env, 2)
    assert converge_vm(a, env.client, env.daemon, lock_dir=env.lock_dir, quota_default=1).ok
    result = converge_vm(b, env.client, env.daemon, lock_dir=env.lock_dir, quota_default=1)
    assert_error_written(env, b, result, "its limit is 1")
    env.sim.set_user_template("alice", 'FLOATING_IP_QUOTA="-1"')  # the template wins: unlimited
    env.sim.set_group_template("users", 'FLOATING_IP_QUOTA="-1"')
    assert converge_vm(b, env.client, env.daemon, lock_dir=env.lock_dir, quota_default=1).ok


def test_a_bad_value_refuses_new_addresses_and_keeps_held_ones(env):
    a, b = vms(env, 2)
    assert env.converge(a).ok
    held = env.public(a)
    env.sim.set_user_template("alice", 'FLOATING_IP_QUOTA="three"')
    uid = env.sim.uid_of("alice")
    result = env.converge(b)
    assert_error_written(env, b, result, f"no new floating IP: FLOATING_IP_QUOTA of user alice ({uid}): "
                                         "'three' is not a number of floating IPs")
    assert env.public(b) == {} and taken(env) == 1
    assert env.converge(a).ok and env.public(a) == held  # nothing new to take: not even read


def test_bad_group_vector_names_the_group_and_the_value(env):
    env.sim.set_group_template("users", 'FLOATING_IP_POOL_QUOTA=[POOL="campus",LIMIT="-5"]')
    b = vms(env, 1)[0]
    assert_error_written(env, b, env.converge(b), "FLOATING_IP_POOL_QUOTA of group users (1), POOL "
                                                  "'campus', LIMIT: '-5' is not a number")
    assert taken(env) == 0


def test_oneadmin_is_exempt_as_in_opennebula(env):
    env.sim.set_group_template("oneadmin", 'FLOATING_IP_QUOTA="0"')
    env.sim.set_user_template("oneadmin", 'FLOATING_IP_QUOTA="0"')
    vm = vms(env, 1, owner="oneadmin")[0]
    assert env.converge(vm).ok and env.public(vm)


def run_quota_cli(env, tmp_path, monkeypatch, capsys, *args, default=None):
    from one_ipfloater.one import cli
    auth = tmp_path / "auth"
    auth.write_text("oneadmin:adminpw\n")
    conf = tmp_path / "c.conf"
    conf.write_text(f"[ONE_IPFLOATER]\nIPFLOATER_URL = {env.daemon_url}\nONE_XMLRPC = {env.sim.url}\n"
                    f"ONE_AUTH = {auth}\nLOCK_DIR = {tmp_path}/locks\n"
                    + (f"FLOATING_IP_QUOTA = {default}\n" if default is not None else ""))
    monkeypatch.setenv("IPFLOATER_TOKEN", TOKEN)
    code = cli.main(["--config", str(conf), "quota", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_quota_command_shows_limits_and_usage(env, tmp_path, monkeypatch, capsys):
    env.sim.set_user_template("alice", 'FLOATING_IP_QUOTA="3"\nFLOATING_IP_POOL_QUOTA=[POOL="default",LIMIT="2"]')
    env.sim.set_group_template("users", 'FLOATING_IP_QUOTA="10"')
    for vm in vms(env, 2):
        assert env.converge(vm).ok
    code, out, err = run_quota_cli(env, tmp_path, monkeypatch, capsys, "--json")
    assert code == 0, err
    rows = {(r["kind"], r["name"]): r for r in __import__("json").loads(out)["quotas"]}
    assert set(rows) == {("user", "alice"), ("group", "users")}  # bob holds nothing, sets nothing
    alice = rows[("user", "alice")]
    assert (alice["limit"], alice["source"], alice["held"], alice["pools"], alice["held_by_pool"]) == (
        3, "template", 2, {"default": 2}, {"default": 2})
    assert alice["scope"] == f"one:uid:{env.sim.uid_of('alice')}"
    assert (rows[("group", "users")]["held"], rows[("group", "users")]["limit"]) == (2, 10)

    code, out, _ = run_quota_cli(env, tmp_path, monkeypatch, capsys, "bob", default=4)
    assert code == 0 and out.splitlines()[1].split() == ["user", str(env.sim.uid_of("bob")), "bob", "0",
                                                         "4", "(default)"]
    code, out, _ = run_quota_cli(env, tmp_path, monkeypatch, capsys, "alice")
    assert "per pool: default 2/2" in out

    env.sim.set_group_template("users", 'FLOATING_IP_QUOTA="lots"')
    code, out, _ = run_quota_cli(env, tmp_path, monkeypatch, capsys, "users")
    assert code == 1 and "ERROR: FLOATING_IP_QUOTA of group users (1): 'lots' is not a number" in out
    code, _, err = run_quota_cli(env, tmp_path, monkeypatch, capsys, "nobody")
    assert code == 1 and err.strip() == "ipfloater-one: USER|GROUP: 'nobody' is no user or group (name or ID)"


def test_a_bad_value_keeps_the_address_a_new_request_would_replace(env):
    vm = vms(env, 1)[0]
    assert env.converge(vm).ok
    held = env.public(vm)
    env.sim.set_group_template("users", 'FLOATING_IP_QUOTA="x"')
    env.set_template(vm, FLOATING_IP="198.51.100.33")  # asks for another address
    result = env.converge(vm)
    assert_error_written(env, vm, result, "FLOATING_IP_QUOTA of group users (1): 'x'")
    assert env.public(vm) == held and env.ut(vm)["FLOATING_IP_ADDRESS"] == held[0]


def test_a_refused_vm_gets_its_address_at_the_next_sync_after_a_release(env):
    env.sim.set_user_template("alice", 'FLOATING_IP_QUOTA="1"')
    a, b = vms(env, 2)
    assert env.converge(a).ok and not env.converge(b).ok
    env.sim.action(a, "terminate-hard")
    assert env.converge(a).ok and env.public(a) == {}  # the DONE hook released it
    assert env.public(b) == {}  # nothing retries by itself...
    assert sync_all(env.client, env.daemon, lock_dir=env.lock_dir).ok  # ...the sync does
    assert env.public(b) and env.ut(b)["FLOATING_IP_STATUS"] == "ACTIVE"
