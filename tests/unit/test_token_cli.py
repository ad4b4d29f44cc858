"""`ipfloaterd token add|list|revoke` as a real subprocess (no root): the secret is
printed once and stored hashed, list never shows it, bad input is one line, exit 2."""

import hashlib
import json
import sqlite3
import subprocess
import sys

import pytest

CONF = """[IPFLOATER]
IP_POOL = 198.51.100.10-198.51.100.12
PRIVATE_IP_RANGES = 10.77.0.0/24
DB = {db}
TOKEN_FILE = {token}
"""


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "ipfloaterd.conf"
    path.write_text(CONF.format(db=tmp_path / "state.db", token=tmp_path / "token"))
    return path


def ipfloaterd(conf, *args):
    return subprocess.run([sys.executable, "-m", "one_ipfloater.daemon", "--config", str(conf), *args],
                          capture_output=True, text=True, timeout=30)


def test_add_list_revoke(conf, tmp_path):
    added = ipfloaterd(conf, "token", "add", "frontend", "--role", "operator")
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    assert len(secret) >= 43 and "\n" not in secret
    as_json = ipfloaterd(conf, "token", "add", "alice", "--role", "owner", "--owner", "one:uid:5", "--json")
    alice = json.loads(as_json.stdout)
    assert alice["name"] == "alice" and alice["owner"] == "one:uid:5" and len(alice["token"]) >= 43
    listed = ipfloaterd(conf, "token", "list", "--json")
    assert json.loads(listed.stdout)["tokens"] == [
        {"name": "alice", "role": "owner", "owner": "one:uid:5", "created_at": pytest.approx(0, abs=1e10)},
        {"name": "frontend", "role": "operator", "owner": None, "created_at": pytest.approx(0, abs=1e10)}]
    plain = ipfloaterd(conf, "token", "list")
    for out in (listed.stdout, plain.stdout, listed.stderr, plain.stderr, added.stderr):
        assert secret not in out and alice["token"] not in out
    db = sqlite3.connect(tmp_path / "state.db")
    stored = dict(db.execute("SELECT name, sha256 FROM tokens"))
    db.close()
    assert stored["frontend"] == hashlib.sha256(secret.encode()).hexdigest()  # hashed, never the secret
    assert secret.encode() not in (tmp_path / "state.db").read_bytes()
    assert ipfloaterd(conf, "token", "revoke", "frontend").returncode == 0
    assert [t["name"] for t in json.loads(ipfloaterd(conf, "token", "list", "--json").stdout)["tokens"]] == ["alice"]


@pytest.mark.parametrize("args, fragment", [
    (("token", "add", "bad name", "--role", "reader"), "NAME: 'bad name'"),
    (("token", "add", "x", "--role", "root"), "--role: 'root'"),
    (("token", "add", "x", "--role", "owner"), "--owner: None"),
    (("token", "add", "token-file", "--role", "reader"), "reserved"),
    (("token", "revoke", "nobody"), "NAME: no token named 'nobody'"),
    (("token",), "required"),
    (("token", "add", "x"), "--role"),
])
def test_bad_token_commands_are_one_line_exit_2(conf, args, fragment):
    proc = ipfloaterd(conf, *args)
    assert proc.returncode == 2, proc
    assert fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == ""


def test_duplicate_name_refused(conf):
    assert ipfloaterd(conf, "token", "add", "x", "--role", "reader").returncode == 0
    again = ipfloaterd(conf, "token", "add", "x", "--role", "operator")
    assert again.returncode == 2 and "exists" in again.stderr and again.stdout == ""
