"""History for abuse reports with the real daemon in a router namespace: changes made
through the API (by named tokens), a restart, and the history still answers "who held
this address at that time" to the event, through the real `ipfloater history` CLI."""

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from tests.support.daemonproc import DaemonProcess

pytestmark = pytest.mark.netns

VM1, VM2 = "10.77.0.11", "10.77.0.12"


def history(daemon, *args):
    """`ipfloater --json history ARGS` in the router namespace, with the daemon's token."""
    return daemon.cli_json("history", *args)


def cli_json_as(daemon, token, *args):
    """The CLI with another token than the daemon's token file (an owner token)."""
    argv = ["ip", "netns", "exec", daemon.ns, sys.executable, "-m", "one_ipfloater.cli",
            "-p", str(daemon.port), "--json", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "IPFLOATER_TOKEN": token})
    return proc.returncode, proc.stdout, proc.stderr


def test_history_survives_a_restart_and_answers_the_abuse_question(lab, tmp_path):
    daemon = DaemonProcess(lab.ns_router, tmp_path / "daemon", NAT_BACKEND="nftables")
    daemon.start()
    try:
        added = subprocess.run(daemon.argv("token", "add", "tenant-7", "--role", "owner", "--owner", "one:uid:7"),
                               capture_output=True, text=True, timeout=30)
        assert added.returncode == 0, added.stderr
        owner_token = added.stdout.strip()
        fip = daemon.cli_json("getip", VM1)["public_ip"]  # allocate + associate (token-file)
        code, out, err = cli_json_as(daemon, owner_token, "getip", VM2)  # the tenant's own
        assert code == 0, err
        tenant_fip = json.loads(out)["public_ip"]
        daemon.cli_json("redirect", fip, VM2, "--operator")  # a move (takes VM2 from the tenant)
        daemon.cli_json("releaseip", fip)
        before = history(daemon)["events"]
        assert [(e["event"], e["public_ip"], e["actor"]) for e in before] == [
            ("allocate", fip, "token-file"), ("associate", fip, "token-file"),
            ("allocate", tenant_fip, "tenant-7"), ("associate", tenant_fip, "tenant-7"),
            ("move", fip, "token-file"), ("disassociate", tenant_fip, "token-file"),
            ("release", fip, "token-file")]
        move = before[4]
        assert (move["private_ip"], move["previous_private_ip"], move["pool"]) == (VM2, VM1, "default")

        assert daemon.stop() == 0
        daemon.start()
        assert history(daemon)["events"] == before  # kept across the restart (and its reconcile)
        assert "history: pruned 0 events older than 400 days" in daemon.log()

        t = move["at_unix"]
        for at, private in ((repr(t - 1e-3), VM1), (repr(t), VM2), (repr(t + 1e-3), VM2)):
            answer = history(daemon, fip, "--at", at)
            assert answer["held"] and answer["event"]["private_ip"] == private, (at, answer)
        after_release = history(daemon, fip, "--at", repr(before[-1]["at_unix"]))
        assert after_release["held"] is False and after_release["event"]["event"] == "release"
        text = daemon.cli("history", fip, "--at", move["at"]).stdout  # the ISO form, as a report gives it
        assert text.startswith(f"{fip} at {move['at']}: held by owner") and "move by token-file" in text

        code, out, _ = cli_json_as(daemon, owner_token, "history")  # the tenant sees its own only
        assert code == 0 and {e["owner"] for e in json.loads(out)["events"]} == {"one:uid:7"}
        code, _, err = cli_json_as(daemon, owner_token, "history", fip, "--at", repr(t))
        assert code == 1 and "owner_mismatch" in err
    finally:
        daemon.stop()
    db = sqlite3.connect(daemon.settings["DB"])  # append-only in the file itself
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE history SET owner = 'nobody'")
    db.close()


def test_adopted_associations_are_recorded_as_adopt(lab, tmp_path):
    first = DaemonProcess(lab.ns_router, tmp_path / "first", NAT_BACKEND="nftables").start()
    try:
        fip = first.cli_json("getip", VM1)["public_ip"]
    finally:
        first.stop()
    restored = DaemonProcess(lab.ns_router, tmp_path / "restored", NAT_BACKEND="nftables")
    result = restored.run_command("adopt")  # a new state file, the rules still live
    assert result.returncode == 0, result.stderr
    restored.start()
    try:
        events = history(restored)["events"]
        assert [(e["event"], e["public_ip"], e["private_ip"], e["owner"], e["actor"]) for e in events] == [
            ("adopt", fip, VM1, None, "adopt")]
        assert history(restored, fip, "--at", repr(events[0]["at_unix"]))["held"] is True
    finally:
        restored.stop()
