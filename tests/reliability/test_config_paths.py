"""A careless operator and a local attacker at the daemon's files: config values that
cannot be right, and paths that are links, foreign or writable by others (issue 10,
parts 1 and 5). Each is refused by the real `ipfloaterd` in a lab router namespace with
one line naming the key, the path or value and what is wrong; nothing is created or
followed, and no rule reaches the kernel."""

import os
import stat
import sys

import pytest

from tests.support.netlab import Lab
from tests.unit.test_config_refusals import REFUSED

pytestmark = pytest.mark.netns

OTHER_UID = 4242


@pytest.fixture(scope="module")
def lab():
    with Lab(vms=0) as lab:
        yield lab


def ipfloaterd(lab, config, command):
    return lab.run(lab.ns_router, [sys.executable, "-m", "one_ipfloater.daemon", "--config", str(config), command],
                   check=False, timeout=60)


def state_of(path):
    """Names, owners, modes and link targets under `path`: what a refusal must not change."""
    found = {}
    for directory, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(directory, name)
            st = os.lstat(full)
            found[os.path.relpath(full, path)] = (st.st_uid, stat.S_IMODE(st.st_mode),
                                                  os.readlink(full) if stat.S_ISLNK(st.st_mode) else st.st_size)
    return found


def ours_in_kernel(lab):
    return [l for l in lab.run(lab.ns_router, ["iptables-legacy-save"]).stdout.splitlines() if "IPFLOATER" in l]


def secret(w, name="lib/token", mode=0o600):
    (w / name).write_text("t" * 32 + "\n")
    os.chmod(w / name, mode)


def link(w, name, target="victim"):
    os.symlink(w / target, w / name)


def foreign(w, name):
    (w / name).touch(mode=0o600)
    os.chown(w / name, OTHER_UID, -1)


PATH_CASES = [
    # (what, setup(w), key, fragment after "KEY: " with {w} the work directory)
    ("token readable by others", lambda w: secret(w, mode=0o644), "TOKEN_FILE",
     "{w}/lib/token is readable by group or others (mode 0644)"),
    ("token writable by group", lambda w: secret(w, mode=0o620), "TOKEN_FILE",
     "{w}/lib/token is writable by group or others (mode 0620)"),
    ("token of another user", lambda w: (secret(w), os.chown(w / "lib/token", OTHER_UID, -1)), "TOKEN_FILE",
     f"{{w}}/lib/token is owned by uid {OTHER_UID}"),
    ("token a link to a file", lambda w: (secret(w, "victim"), link(w, "lib/token")), "TOKEN_FILE",
     "{w}/lib/token is a symbolic link"),
    ("token a dangling link", lambda w: link(w, "lib/token", "planted"), "TOKEN_FILE",
     "{w}/lib/token is a symbolic link"),
    ("token with a second hard link", lambda w: (secret(w), os.link(w / "lib/token", w / "copy")), "TOKEN_FILE",
     "{w}/lib/token has 2 hard links"),
    ("state directory writable by group", lambda w: os.chmod(w / "lib", 0o770), "DB",
     "directory {w}/lib is writable by group (mode 0770)"),
    ("state directory sticky and world-writable", lambda w: os.chmod(w / "lib", 0o1777), "DB",
     "directory {w}/lib is writable by group and others (mode 1777)"),
    ("work directory of another user", lambda w: os.chown(w, OTHER_UID, -1), "DB",
     f"directory {{w}} is owned by uid {OTHER_UID}"),
    ("state directory a link of another user", lambda w: (os.rename(w / "lib", w / "real"),
                                                          os.symlink(w / "real", w / "lib"),
                                                          os.lchown(w / "lib", OTHER_UID, -1)), "DB",
     f"{{w}}/lib is a symbolic link owned by uid {OTHER_UID}"),
    ("state file a link", lambda w: link(w, "lib/state.db"), "DB", "{w}/lib/state.db is a symbolic link"),
    ("WAL a link", lambda w: link(w, "lib/state.db-wal"), "DB", "{w}/lib/state.db-wal is a symbolic link"),
    ("SHM a link", lambda w: link(w, "lib/state.db-shm"), "DB", "{w}/lib/state.db-shm is a symbolic link"),
    ("state file of another user", lambda w: foreign(w, "lib/state.db"), "DB",
     f"{{w}}/lib/state.db is owned by uid {OTHER_UID}"),
    ("WAL of another user", lambda w: foreign(w, "lib/state.db-wal"), "DB",
     f"{{w}}/lib/state.db-wal is owned by uid {OTHER_UID}"),
    ("state file writable by others", lambda w: ((w / "lib/state.db").touch(), os.chmod(w / "lib/state.db", 0o606)),
     "DB", "{w}/lib/state.db is writable by group or others (mode 0606)"),
    ("instance lock a link", lambda w: link(w, "lib/state.db.lock"), "DB", "{w}/lib/state.db.lock is a symbolic link"),
    ("XTABLES_LOCK a link", lambda w: link(w, "run/xtables.lock"), "XTABLES_LOCK",
     "{w}/run/xtables.lock is a symbolic link"),
    ("XTABLES_LOCK directory writable by others", lambda w: os.chmod(w / "run", 0o777), "XTABLES_LOCK",
     "directory {w}/run is writable by group and others (mode 0777)"),
]


def workdir(tmp_path):
    w = tmp_path / "w"
    for d in (tmp_path, w, w / "lib", w / "run"):
        d.mkdir()
        os.chmod(d, 0o700)
    config = tmp_path / "ipfloaterd.conf"
    config.write_text(f"[IPFLOATER]\nIP_POOL = 198.51.100.10-198.51.100.40\nPRIVATE_IP_RANGES = 10.77.0.0/24\n"
                      f"PUBLIC_INTERFACE = pub0\nDB = {w}/lib/state.db\nTOKEN_FILE = {w}/lib/token\n"
                      f"XTABLES_LOCK = {w}/run/xtables.lock\nREST_PORT = 7003\n")
    return w, config


def test_paths_that_could_be_hijacked_are_refused(lab, tmp_path, figures):
    rules = ours_in_kernel(lab)
    refused = 0
    for i, (what, setup, key, fragment) in enumerate(PATH_CASES):
        w, config = workdir(tmp_path / str(i))
        setup(w)
        before = state_of(tmp_path / str(i))
        for command in ("check", "run"):
            proc = ipfloaterd(lab, config, command)
            expected = f"ipfloaterd: {key}: {fragment.format(w=w)}"
            assert proc.returncode == 1, (what, command, proc.stderr)
            assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(expected), (what, command, proc.stderr)
            assert state_of(tmp_path / str(i)) == before, (what, command)  # nothing created, followed or fixed
        assert ours_in_kernel(lab) == rules, what
        refused += 1
    # negative control: the same layout untouched passes `check`, and `run` would go on
    w, config = workdir(tmp_path / "fine")
    proc = ipfloaterd(lab, config, "check")
    assert proc.returncode == 0, proc.stderr
    figures("paths", "hijackable token/DB/WAL/SHM/lock paths refused by run and check, nothing created",
            f"{refused} of {len(PATH_CASES)}")


def test_config_values_that_cannot_be_right_are_refused(lab, tmp_path, figures):
    rules = ours_in_kernel(lab)
    for i, (text, message) in enumerate(REFUSED):
        config = tmp_path / f"bad{i}.conf"
        config.write_text(text, encoding="utf-8")
        for command in ("check", "run"):
            proc = ipfloaterd(lab, config, command)
            assert proc.returncode == 2, (text, proc.stderr)
            assert proc.stderr == f"ipfloaterd: {config}: {message.replace('test.conf', str(config))}\n", proc.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(f"bad{i}.conf" for i in range(len(REFUSED)))
    assert ours_in_kernel(lab) == rules
    figures("bad config", "values that cannot be right refused by run and check, one line, exit 2",
            f"{len(REFUSED)} of {len(REFUSED)}")
