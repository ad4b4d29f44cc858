"""Malformed endpoints and arguments are one line naming the field and the value, and
exit 2, never a traceback: the real console scripts `ipfloater` and `ipfloater-one`
run as subprocesses. Nothing listens on the ports used: a command that got past the
checks would fail differently (exit 1 or 3), so each row also proves nothing was sent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
BASE_ENV = {k: v for k, v in os.environ.items()
            if not k.startswith("IPFLOATER_") and k not in ("ONE_XMLRPC", "ONE_AUTH")}

IPFLOATER_CASES = [
    # (argv, extra environment, fragment of the one error line)
    (["--url", "127.0.0.1:7003", "status"], {}, "--url: '127.0.0.1:7003' is not an http://"),
    (["--url", "router", "status"], {}, "--url: 'router' is not an http://"),
    (["--url", "ftp://router/", "status"], {}, "--url: 'ftp://router/' is not an http://"),
    (["--url", "http://rou ter:7003", "status"], {}, "must not contain spaces"),
    (["--url", " http://router:7003", "status"], {}, "must not contain spaces"),
    (["--url", "http://router:7003\n", "status"], {}, "must not contain spaces, control"),
    (["--url", "http://admin:pw@router:7003", "status"], {}, "must not contain credentials"),
    (["--url", "http://router:99999", "status"], {}, "'http://router:99999' has an invalid port"),
    (["--url", "http://router:0", "status"], {}, "has an invalid port"),
    (["--url", "http://router:http", "status"], {}, "has an invalid port"),
    (["--url", "http://router:", "status"], {}, "has an invalid port"),
    (["--url", "http://[fe80::zz]:7003", "status"], {}, "has an invalid host"),
    (["--url", "http://300.1.1.1:7003", "status"], {}, "invalid host '300.1.1.1'"),
    (["--url", "http://router:7003/?x=1", "status"], {}, "must not have a query"),
    (["--url", "http://röuter:7003", "status"], {}, "non-ASCII"),
    (["-i", "::1", "status"], {}, "-i/--server-ip: '::1' is not an IPv4 address or a host name"),
    (["-i", "a b", "status"], {}, "-i/--server-ip: 'a b' is not an IPv4 address"),
    (["-i", "", "status"], {}, "-i/--server-ip: '' is not"),
    (["-i", "10.0.0.300", "status"], {}, "'10.0.0.300' is not an IPv4 address"),
    (["-i", "router:7003", "status"], {}, "'router:7003' is not an IPv4 address"),
    (["-i", "-router", "status"], {}, "-i/--server-ip"),
    (["-p", "0", "status"], {}, "-p/--server-port: '0' is not a port number"),
    (["-p", "70000", "status"], {}, "'70000' is not a port number"),
    (["-p", "-1", "status"], {}, "-p/--server-port"),
    (["-p", "\u0667\u0660\u0660\u0663", "status"], {}, "is not a port number"),
    (["status"], {"IPFLOATER_SERVER_PORT": "seven"}, "'seven' is not a port number"),
    (["status"], {"IPFLOATER_SERVER_IP": "::1"}, "'::1' is not an IPv4 address"),
    (["--timeout", "-1", "status"], {}, "--timeout: '-1' is not a number of seconds"),
    (["--timeout", "nan", "status"], {}, "--timeout: 'nan'"),
    (["--timeout", "inf", "status"], {}, "--timeout: 'inf'"),
]


def run(script, argv, env):
    return subprocess.run([str(BIN / script), *argv], capture_output=True, text=True,
                          env={**BASE_ENV, "IPFLOATER_TOKEN": "t" * 32, **env}, timeout=60)


def assert_one_line_exit_2(proc, prog, fragment):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"{prog}: "), proc.stderr
    assert fragment in proc.stderr, proc.stderr


@pytest.mark.parametrize("argv, env, fragment", IPFLOATER_CASES,
                         ids=[" ".join(a) + (f" {e}" if e else "") for a, e, _ in
                              IPFLOATER_CASES])
def test_ipfloater_malformed_endpoint(argv, env, fragment):
    assert_one_line_exit_2(run("ipfloater", argv, env), "ipfloater", fragment)


def test_ipfloater_rows_are_checked_before_anything_else():
    """The control: a well-formed endpoint with nobody listening is exit 3, not 2."""
    proc = run("ipfloater", ["-i", "127.0.0.1", "-p", "9", "--timeout", "2", "status"], {})
    assert proc.returncode == 3 and "unreachable" in proc.stderr


ONE_CASES = [
    # (config lines or None, extra environment, argv, fragment)
    ("IPFLOATER_URL = 127.0.0.1:7003", {}, ["sync"], "IPFLOATER_URL: '127.0.0.1:7003' is not"),
    ("IPFLOATER_URL = ftp://router", {}, ["sync"], "IPFLOATER_URL: 'ftp://router' is not an"),
    ("IPFLOATER_URL = http://rou ter:7003", {}, ["sync"], "must not contain spaces"),
    ("IPFLOATER_URL = http://op:pw@router:7003", {}, ["sync"], "must not contain credentials"),
    ("IPFLOATER_URL = http://router:99999", {}, ["sync"], "has an invalid port"),
    ("IPFLOATER_URL = http://[::1:7003", {}, ["sync"], "IPFLOATER_URL"),
    ("IPFLOATER_URL = http://router:7003/#x", {}, ["sync"], "must not have a query"),
    ("ONE_XMLRPC = localhost:2633/RPC2", {}, ["sync"], "ONE_XMLRPC: 'localhost:2633/RPC2'"),
    ("", {"ONE_XMLRPC": "http://one:2633 /RPC2"}, ["sync"], "ONE_XMLRPC (environment)"),
    ("IPFLOATER_USE_ENV_PROXY = maybe", {}, ["sync"], "IPFLOATER_USE_ENV_PROXY: 'maybe' is not"),
    ("", {}, ["show", "abc"], "VMID: 'abc' is not a VM ID"),
    ("", {}, ["show", "--", "-1"], "VMID: '-1' is not a VM ID"),
    ("", {}, ["show", "99999999999999999999"], "is not a VM ID"),
    ("", {}, ["show", "\u0663"], "is not a VM ID"),
]


@pytest.mark.parametrize("lines, env, argv, fragment", ONE_CASES,
                         ids=[f"{c[0] or c[1] or ''} {' '.join(c[2])}".strip() for c in ONE_CASES])
def test_ipfloater_one_malformed_input(tmp_path, lines, env, argv, fragment):
    auth = tmp_path / "auth"
    auth.write_text("oneadmin:pw\n")
    conf = tmp_path / "ipfloater.conf"
    conf.write_text(f"[ONE_IPFLOATER]\nONE_AUTH = {auth}\nONE_TIMEOUT = 2\n"
                    f"IPFLOATER_TIMEOUT = 2\nLOCK_DIR = {tmp_path}/locks\n{lines}\n")
    proc = run("ipfloater-one", ["--config", str(conf), *argv], env)
    assert_one_line_exit_2(proc, "ipfloater-one", fragment)
    assert not (tmp_path / "locks").exists()  # nothing was tried
