"""Paths the daemon opens cannot be hijacked (issue 10, part 1): links, directories
others can write, foreign owners, a token others could read. Each case is refused with
one line naming the key, the path and what is wrong, and nothing is created.

These tests run as root (they chown files to another uid), as the whole suite does."""

import os
import stat

import pytest

from one_ipfloater import safefs
from one_ipfloater.safefs import UnsafePath
from one_ipfloater.config import parse_config_text
from one_ipfloater.daemon import DaemonError, load_or_create_token, take_instance_lock
from one_ipfloater.store import Store, StoreError

OTHER_UID = 4242  # any uid that is neither root nor us


def tree(path):
    """Every name under `path`, to prove that a refusal created nothing."""
    return sorted(os.path.relpath(os.path.join(d, n), path) for d, dirs, files in os.walk(path)
                  for n in dirs + files)


@pytest.fixture
def base(tmp_path):
    os.chmod(tmp_path, 0o700)
    return tmp_path


def config_for(base):
    return parse_config_text(f"[IPFLOATER]\nIP_POOL = 198.51.100.10\nPRIVATE_IP_RANGES = 10.77.0.0/24\n"
                             f"DB = {base}/lib/state.db\nTOKEN_FILE = {base}/lib/token\n"
                             f"XTABLES_LOCK = {base}/xtables.lock\n")


# -- the token -----------------------------------------------------------------------

def refused_token(base, expected):
    before = tree(base)
    with pytest.raises(DaemonError) as err:
        load_or_create_token(str(base / "lib" / "token"))
    assert str(err.value) == expected and "\n" not in str(err.value)
    assert tree(base) == before
    return err


def test_a_token_that_others_can_read_is_refused(base):
    (base / "lib").mkdir(mode=0o700)
    token = base / "lib" / "token"
    token.write_text("x" * 32 + "\n")
    os.chmod(token, 0o644)
    refused_token(base, f"TOKEN_FILE: {token} is readable by group or others (mode 0644): chmod 600 it "
                        "and consider a new token (it may have been read)")
    os.chmod(token, 0o600)  # negative control: the same file at 0600 is read
    assert load_or_create_token(str(token)) == "x" * 32


def test_a_token_that_others_can_write_is_refused(base):
    (base / "lib").mkdir(mode=0o700)
    token = base / "lib" / "token"
    token.write_text("x" * 32 + "\n")
    os.chmod(token, 0o602)
    refused_token(base, f"TOKEN_FILE: {token} is writable by group or others (mode 0602): chmod 600 it")


def test_a_token_owned_by_someone_else_is_refused(base):
    (base / "lib").mkdir(mode=0o700)
    token = base / "lib" / "token"
    token.write_text("x" * 32 + "\n")
    os.chmod(token, 0o600)
    os.chown(token, OTHER_UID, -1)
    refused_token(base, f"TOKEN_FILE: {token} is owned by uid {OTHER_UID}, not by root or uid {os.geteuid()}")


def test_a_token_that_is_a_symlink_is_refused_and_its_target_untouched(base):
    (base / "lib").mkdir(mode=0o700)
    target = base / "elsewhere"
    target.write_text("y" * 32 + "\n")
    os.chmod(target, 0o600)
    os.symlink(target, base / "lib" / "token")
    refused_token(base, f"TOKEN_FILE: {base}/lib/token is a symbolic link (refused: it could point anywhere)")
    os.unlink(base / "lib" / "token")  # a dangling link: the old code created the target through it
    os.symlink(base / "planted", base / "lib" / "token")
    refused_token(base, f"TOKEN_FILE: {base}/lib/token is a symbolic link (refused: it could point anywhere)")
    assert not (base / "planted").exists()


def test_a_token_with_a_second_hard_link_is_refused(base):
    (base / "lib").mkdir(mode=0o700)
    token = base / "lib" / "token"
    token.write_text("x" * 32 + "\n")
    os.chmod(token, 0o600)
    os.link(token, base / "copy")
    refused_token(base, f"TOKEN_FILE: {token} has 2 hard links (another name can change it)")


@pytest.mark.parametrize("mode, who", [(0o770, "group"), (0o707, "others"), (0o777, "group and others"),
                                       (0o1777, "group and others")])
def test_a_token_directory_others_can_write_is_refused(base, mode, who):
    (base / "lib").mkdir()
    os.chmod(base / "lib", mode)
    refused_token(base, f"TOKEN_FILE: directory {base}/lib is writable by {who} (mode {mode:04o}): "
                        "chmod go-w it or choose another path")


def test_an_ancestor_owned_by_someone_else_is_refused(base):
    (base / "lib").mkdir(mode=0o700)
    os.chown(base, OTHER_UID, -1)
    refused_token(base, f"TOKEN_FILE: directory {base} is owned by uid {OTHER_UID}, not by root or uid {os.geteuid()}")


def test_a_directory_link_owned_by_someone_else_is_refused(base):
    (base / "real").mkdir(mode=0o700)
    os.symlink(base / "real", base / "lib")
    os.lchown(base / "lib", OTHER_UID, -1)
    refused_token(base, f"TOKEN_FILE: {base}/lib is a symbolic link owned by uid {OTHER_UID}, "
                        f"not by root or uid {os.geteuid()}")


def test_a_directory_link_of_ours_is_followed_and_its_target_checked(base):
    """/var/run -> /run: a link in a trusted directory, owned by root, is followed; the
    directories it leads to obey the same rule."""
    (base / "real").mkdir(mode=0o777)
    os.chmod(base / "real", 0o777)
    os.symlink("real", base / "lib")
    refused_token(base, f"TOKEN_FILE: directory {base}/real is writable by group and others (mode 0777): "
                        "chmod go-w it or choose another path")
    os.chmod(base / "real", 0o700)
    token = load_or_create_token(str(base / "lib" / "token"))
    assert (base / "real" / "token").read_text().strip() == token


def test_a_sticky_ancestor_is_accepted_but_not_as_the_files_own_directory(base):
    (base / "tmp").mkdir()
    os.chmod(base / "tmp", 0o1777)
    (base / "tmp" / "lib").mkdir(mode=0o700)
    assert len(load_or_create_token(str(base / "tmp" / "lib" / "token"))) >= 16
    with pytest.raises(DaemonError, match="directory .*/tmp is writable by group and others"):
        load_or_create_token(str(base / "tmp" / "token"))
    assert not (base / "tmp" / "token").exists()


def test_a_new_token_is_created_0600_in_0700_directories(base):
    old_umask = os.umask(0)  # the worst umask: nothing comes from it
    try:
        token = load_or_create_token(str(base / "a" / "b" / "token"))
    finally:
        os.umask(old_umask)
    for directory in (base / "a", base / "a" / "b"):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(base / "a" / "b" / "token").st_mode) == 0o600
    assert tree(base) == ["a", "a/b", "a/b/token"]  # no temporary file left
    assert load_or_create_token(str(base / "a" / "b" / "token")) == token


# -- the state file and its lock -----------------------------------------------------

@pytest.mark.parametrize("name", ["state.db", "state.db-wal", "state.db-shm"])
def test_a_state_file_that_is_a_symlink_is_refused(base, name):
    (base / "lib").mkdir(mode=0o700)
    os.symlink(base / "victim", base / "lib" / name)
    before = tree(base)
    with pytest.raises(StoreError) as err:
        Store(str(base / "lib" / "state.db"))
    assert str(err.value) == f"DB: {base}/lib/{name} is a symbolic link (refused: it could point anywhere)"
    assert tree(base) == before and not (base / "victim").exists()


@pytest.mark.parametrize("name", ["state.db", "state.db-wal"])
def test_a_state_file_owned_by_someone_else_is_refused(base, name):
    (base / "lib").mkdir(mode=0o700)
    Store(str(base / "lib" / "state.db")).close()  # a real state file (and its WAL)
    (base / "lib" / name).touch(mode=0o600)
    os.chown(base / "lib" / name, OTHER_UID, -1)
    with pytest.raises(StoreError) as err:
        Store(str(base / "lib" / "state.db"))
    assert str(err.value) == f"DB: {base}/lib/{name} is owned by uid {OTHER_UID}, not by root or uid {os.geteuid()}"
    os.chown(base / "lib" / name, os.geteuid(), -1)  # negative control
    Store(str(base / "lib" / "state.db")).close()


def test_a_state_directory_others_can_write_is_refused_and_nothing_created(base):
    (base / "lib").mkdir()
    os.chmod(base / "lib", 0o775)
    with pytest.raises(StoreError, match=f"^DB: directory {base}/lib is writable by group \\(mode 0775\\)"):
        Store(str(base / "lib" / "state.db"))
    assert tree(base) == ["lib"]


def test_store_reports_whether_it_created_the_file(base):
    first = Store(str(base / "state.db"))
    assert first.created and stat.S_IMODE(os.stat(base / "state.db").st_mode) == 0o600
    first.close()
    again = Store(str(base / "state.db"))
    assert not again.created
    again.close()


def test_the_instance_lock_is_not_followed(base):
    (base / "lib").mkdir(mode=0o700)
    os.symlink(base / "victim", base / "lib" / "state.db.lock")
    with pytest.raises(DaemonError, match="^DB: .*state.db.lock is a symbolic link"):
        take_instance_lock(config_for(base))
    assert not (base / "victim").exists()


def test_sqlite_nofollow_uri_parameter_does_not_protect_us(base):
    """Why the checks are ours: measured, SQLite's `nofollow=1` in a URI is ignored (it is
    an open flag Python cannot pass); if a future SQLite honours it, this tells us."""
    import sqlite3
    real = sqlite3.connect(base / "real.db")
    real.execute("CREATE TABLE t(x)")
    real.close()
    os.symlink(base / "real.db", base / "link.db")
    db = sqlite3.connect(f"file:{base}/link.db?nofollow=1", uri=True)
    assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
    db.close()


def test_check_file_creates_nothing_and_write_new_never_overwrites(base):
    assert safefs.check_file("DB", str(base / "a" / "b" / "state.db")) is False
    assert tree(base) == []
    safefs.write_new("TOKEN_FILE", str(base / "token"), b"first\n")
    with pytest.raises(FileExistsError):
        safefs.write_new("TOKEN_FILE", str(base / "token"), b"second\n")
    assert (base / "token").read_bytes() == b"first\n" and tree(base) == ["token"]
    assert safefs.check_file("TOKEN_FILE", str(base / "token"), secret=True) is True


def test_a_sticky_directory_reached_through_dot_dot_is_still_the_files_own(base):
    (base / "tmp").mkdir()
    os.chmod(base / "tmp", 0o1777)
    (base / "tmp" / "lib").mkdir(mode=0o700)
    os.symlink("..", base / "tmp" / "lib" / "up")
    with pytest.raises(UnsafePath, match="directory .*/tmp is writable by group and others"):
        safefs.check_file("DB", str(base / "tmp" / "lib" / "up" / "state.db"))
