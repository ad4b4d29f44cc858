"""Malformed endpoints and arguments are one line naming the field and the value, and
exit 2, never a traceback: the real console scripts `ipfloater` and `ipfloater-one`
run as subprocesses. Nothing listens on the ports used: a command that got past the
checks would fail differently (exit 1 or 3), so each row also proves nothing was sent."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
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


# --- the client's own surface: --version, --json anywhere, help with arguments ---

def test_ipfloater_version_needs_no_daemon():
    from one_ipfloater import __version__
    proc = run("ipfloater", ["-p", "9", "--version"], {})
    assert proc.returncode == 0 and proc.stdout == f"ipfloater {__version__}\n", proc


@pytest.mark.parametrize("argv", [["--json", "status"], ["status", "--json"],
                                  ["--json", "status", "--json"]])
def test_ipfloater_json_before_or_after_the_command(argv):
    """Nobody listens on port 9: the error is the JSON form wherever --json stands."""
    proc = run("ipfloater", ["-p", "9", "--timeout", "2", *argv], {})
    assert proc.returncode == 3 and proc.stdout == "", proc
    assert json.loads(proc.stderr)["error"]["code"] == "unreachable"


def test_ipfloater_without_json_is_text():
    """The control: the same call without --json is a plain line, not JSON."""
    proc = run("ipfloater", ["-p", "9", "--timeout", "2", "status"], {})
    assert proc.returncode == 3 and proc.stderr.startswith("ipfloater: ")
    with pytest.raises(ValueError):
        json.loads(proc.stderr)


# The original client's commands and the arguments its help listed.
ORIGINAL_COMMANDS = {"getip": ["private_ip"], "redirect": ["public_ip", "private_ip"],
                     "releaseip": ["ip"], "status": [], "ippool": [], "version": [],
                     "arp": ["mac"]}


def test_ipfloater_help_lists_each_command_with_its_arguments():
    proc = run("ipfloater", ["--help"], {})
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    for command, arguments in ORIGINAL_COMMANDS.items():
        usage = [re.sub(r"\[[^]]*\]", "", ln).split() for ln in lines
                 if ln.split()[:2] == ["ipfloater", command]]
        assert usage and usage[0][2:] == arguments, (command, proc.stdout)


@pytest.mark.parametrize("command", sorted(ORIGINAL_COMMANDS))
def test_ipfloater_command_help_explains_each_argument(command):
    proc = run("ipfloater", [command, "--help"], {})
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: ipfloater {command}")
    assert "--json" in proc.stdout
    for argument in ORIGINAL_COMMANDS[command]:
        described = [ln for ln in proc.stdout.splitlines()
                     if ln.split()[:1] == [argument] and len(ln.split()) > 1]
        assert described, (argument, proc.stdout)


# --- every option a message names exists ---

def _all_options() -> set:
    """Every option string of every parser the package ships, subcommands included."""
    from one_ipfloater import cli, daemon
    from one_ipfloater.one import cli as one_cli, hook
    found, todo = set(), [cli.build_parser(), daemon.build_parser(), one_cli.build_parser(),
                          hook._parser()]
    while todo:
        parser = todo.pop()
        for action in parser._actions:
            found.update(action.option_strings)
            todo.extend((getattr(action, "choices", None) or {}).values()
                        if isinstance(action, argparse._SubParsersAction) else [])
    return found


def _message_texts(tree):
    """The literal text of every raised exception's and logged/printed message."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Raise, ast.Call)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    yield sub.lineno, sub.value


def test_messages_name_only_options_that_exist():
    import one_ipfloater
    package = Path(one_ipfloater.__file__).parent
    options = _all_options()
    wrong = []
    for source in sorted(package.rglob("*.py")):
        parts = source.relative_to(package).parts
        if "testing" in parts or "nat" in parts or source.name in ("preflight.py", "hostnet.py"):
            continue  # the netfilter tools' own options, not ours
        for lineno, text in _message_texts(ast.parse(source.read_text())):
            for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", text):
                if option not in options:
                    wrong.append(f"{source.name}:{lineno}: {option} in {text!r}")
    assert options >= {"--token-file", "--json", "--version", "--dir", "--remotes"}
    assert not wrong, wrong


def test_ipfloater_one_token_error_names_its_config_key(tmp_path):
    """ipfloater-one has no --token-file: its missing-token error names the config key."""
    auth = tmp_path / "auth"
    auth.write_text("oneadmin:pw\n")
    conf = tmp_path / "ipfloater.conf"
    conf.write_text(f"[ONE_IPFLOATER]\nONE_AUTH = {auth}\nIPFLOATER_TOKEN_FILE = {tmp_path}/none\n"
                    f"ONE_TIMEOUT = 2\nIPFLOATER_TIMEOUT = 2\nLOCK_DIR = {tmp_path}/locks\n")
    env = {k: v for k, v in BASE_ENV.items()}
    proc = subprocess.run([str(BIN / "ipfloater-one"), "--config", str(conf), "sync"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert_one_line_exit_2(proc, "ipfloater-one", f"IPFLOATER_TOKEN_FILE in {conf}")
    assert "--token-file" not in proc.stderr


def test_ipfloater_token_error_names_its_option(tmp_path):
    env = {k: v for k, v in BASE_ENV.items()}
    proc = subprocess.run([str(BIN / "ipfloater"), "-p", "9", "--token-file",
                           str(tmp_path / "none"), "status"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 3 and "--token-file)" in proc.stderr, proc.stderr


@pytest.mark.parametrize("argv, stdin", [(["--bogus"], ""), ([], "eA== --nope\n")],
                         ids=["argv", "stdin"])
def test_ipfloater_hook_bad_option_is_one_line(argv, stdin):
    """The hook parses options from argv and, with ARGUMENTS_STDIN, from stdin: both are
    refused the way every other command refuses them (cliutil.OneLineArgumentParser)."""
    proc = subprocess.run([str(BIN / "ipfloater-hook"), *argv], input=stdin, capture_output=True,
                          text=True, env=BASE_ENV, timeout=60)
    assert_one_line_exit_2(proc, "ipfloater-hook", "unrecognized arguments: --")
    assert "(see ipfloater-hook --help)" in proc.stderr
