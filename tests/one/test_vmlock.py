"""LOCK_DIR is trusted only when nobody else can write to it, and lock files are never
opened through a symlink. Real directories under tmp_path; the foreign owner is made
with chown (the suite runs as root). Every refusal is one line naming the path and the
problem, and leaves the directory, the planted file and its target as they were."""

import base64
import os
import stat

import pytest

from one_ipfloater.one import hook, rpc
from one_ipfloater.one.driver import converge_vm, sync_all
from one_ipfloater.one.vmlock import LockError, vm_lock
from tests.one.fipenv import TOKEN

FOREIGN_UID = 65534  # nobody
YES = 'NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="YES"'


def take(lock_dir, vm_id=7):
    with vm_lock(str(lock_dir), vm_id, timeout=5):
        pass


def refused(lock_dir, fragment, vm_id=7, named=None):
    with pytest.raises(LockError) as info:
        take(lock_dir, vm_id)
    message = str(info.value)
    assert message == f"LOCK_DIR: {named or os.path.normpath(lock_dir)}: {fragment}" or (
        "\n" not in message and f"LOCK_DIR: {named or os.path.normpath(lock_dir)}: " in message
        and fragment in message), message
    return message


def snapshot(path):
    st = os.lstat(path)
    listing = sorted(os.listdir(path)) if stat.S_ISDIR(st.st_mode) else None
    return (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, listing)


def test_missing_directory_is_created_0700_whatever_the_umask(tmp_path):
    lock_dir = tmp_path / "var" / "lock" / "one-ipfloater"
    old = os.umask(0)
    try:
        take(lock_dir)
    finally:
        os.umask(old)
    st = os.stat(lock_dir)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    lock = lock_dir / "vm-7.lock"
    assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600
    take(lock_dir)  # and it is used as it is the next time
    assert stat.S_IMODE(os.stat(lock_dir).st_mode) == 0o700


def test_an_existing_private_directory_is_used(tmp_path):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o755)
    os.chmod(lock_dir, 0o755)  # readable by others is fine, writable is not
    take(lock_dir)
    assert (lock_dir / "vm-7.lock").is_file()


@pytest.mark.parametrize("mode, who", [(0o777, "group and others"), (0o1777, "group and others"),
                                       (0o770, "group"), (0o702, "others")])
def test_directory_writable_by_others_is_refused(tmp_path, mode, who):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    os.chmod(lock_dir, mode)
    before = snapshot(lock_dir)
    refused(lock_dir, f"is writable by {who} (mode {mode:04o})")
    assert snapshot(lock_dir) == before  # not "fixed" behind the operator's back, no file


def test_directory_of_another_user_is_refused(tmp_path):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    os.chown(lock_dir, FOREIGN_UID, FOREIGN_UID)
    before = snapshot(lock_dir)
    refused(lock_dir, f"is owned by uid {FOREIGN_UID}")
    assert snapshot(lock_dir) == before


def test_symlinked_lock_dir_is_refused(tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    link = tmp_path / "locks"
    link.symlink_to(real)
    refused(link, "is a symbolic link")
    refused(str(link) + "/", "is a symbolic link")  # a trailing slash must not follow it
    assert os.listdir(real) == []


def test_a_file_as_lock_dir_is_refused(tmp_path):
    path = tmp_path / "locks"
    path.write_text("x")
    refused(path, "not a directory")
    assert path.read_text() == "x"


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_planted_symlink_as_lock_file_is_refused_and_its_target_untouched(tmp_path, dangling):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    target = tmp_path / "victim"
    if not dangling:
        target.write_text("precious\n")
        os.chmod(target, 0o644)
        before = (target.read_bytes(), os.stat(target).st_mtime_ns, os.stat(target).st_mode)
    (lock_dir / "vm-7.lock").symlink_to(target)
    refused(lock_dir, "is a symbolic link", named=lock_dir / "vm-7.lock")
    if dangling:
        assert not target.exists()  # O_CREAT through the link would have made it
    else:
        assert (target.read_bytes(), os.stat(target).st_mtime_ns,
                os.stat(target).st_mode) == before
    take(lock_dir, vm_id=8)  # other VMs' locks still work


def test_planted_fifo_or_foreign_file_is_refused(tmp_path):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    os.mkfifo(lock_dir / "vm-7.lock")
    refused(lock_dir, "not a regular file of this user", named=lock_dir / "vm-7.lock")
    foreign = lock_dir / "vm-9.lock"
    foreign.write_text("")
    os.chown(foreign, FOREIGN_UID, FOREIGN_UID)
    refused(lock_dir, "not a regular file of this user", vm_id=9, named=foreign)


# --- what the driver and the hook do with a refused LOCK_DIR -------------------------------

def test_converge_with_a_bad_lock_dir_changes_nothing(env, tmp_path):
    lock_dir = tmp_path / "shared-locks"
    lock_dir.mkdir()
    os.chmod(lock_dir, 0o777)
    vm = env.create(YES)
    r = converge_vm(vm, env.client, env.daemon, lock_dir=str(lock_dir), lock_timeout=5)
    assert not r.ok and "is writable by group and others" in r.message
    assert "\n" not in r.message
    assert env.held(vm) == {} and env.updates(vm) == [] and os.listdir(lock_dir) == []
    out = sync_all(env.client, env.daemon, lock_dir=str(lock_dir))
    assert out.errors == [f"LOCK_DIR: {lock_dir}: is writable by group and others "
                          "(mode 0777); chmod 700 it or choose another LOCK_DIR"]
    assert out.results == [] and env.held(vm) == {} and env.updates(vm) == []
    # The control: the same VM converges once the directory is private.
    os.chmod(lock_dir, 0o700)
    assert converge_vm(vm, env.client, env.daemon, lock_dir=str(lock_dir)).ok
    assert set(env.held(vm)) == {0}


def test_hook_exits_non_zero_with_one_line(env, tmp_path, monkeypatch, capsys):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    os.chown(lock_dir, FOREIGN_UID, FOREIGN_UID)
    auth = tmp_path / "one_auth"
    auth.write_text("oneadmin:adminpw\n")
    conf = tmp_path / "ipfloater.conf"
    conf.write_text(f"[ONE_IPFLOATER]\nIPFLOATER_URL = {env.daemon_url}\nLOCK_DIR = {lock_dir}\n")
    for key, value in {"ONE_XMLRPC": env.sim.url, "ONE_AUTH": str(auth),
                       "IPFLOATER_ONE_CONF": str(conf), "IPFLOATER_TOKEN": TOKEN}.items():
        monkeypatch.setenv(key, value)
    vm = env.create(YES)
    payload = base64.b64encode(rpc.vm_xml(env.client, vm).encode()).decode()
    code = hook.main([payload], stdin=None)
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1
    assert f"LOCK_DIR: {lock_dir}: is owned by uid {FOREIGN_UID}" in err
    assert env.held(vm) == {} and env.updates(vm) == [] and os.listdir(lock_dir) == []
    os.chown(lock_dir, os.geteuid(), os.getegid())  # control: the same hook then works
    assert hook.main([payload], stdin=None) == 0 and set(env.held(vm)) == {0}


# --- the wait for another hook is bounded (locking.flock_exclusive) -----------------------

def test_a_lock_held_too_long_is_one_line_naming_vm_and_file(tmp_path):
    from tests.unit.test_locking import hold_in_child
    lock_dir = tmp_path / "locks"
    with vm_lock(str(lock_dir), 7):
        pass  # creates the directory and the lock file as a hook would
    child = hold_in_child(lock_dir / "vm-7.lock")
    try:
        with pytest.raises(LockError) as err:
            with vm_lock(str(lock_dir), 7, timeout=0.1):
                raise AssertionError("entered a lock another process holds")
        assert str(err.value) == f"VM 7: another hook held {lock_dir}/vm-7.lock for over 0.1s"
        with vm_lock(str(lock_dir), 8, timeout=0):  # another VM's lock is free
            pass
        child.stdin.close()
        with vm_lock(str(lock_dir), 7, timeout=60):  # taken once the holder is gone
            pass
    finally:
        child.kill()
        child.wait(timeout=60)
