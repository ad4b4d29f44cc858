"""LOG_FORMAT in the front-end config: the real hook, run as OpenNebula runs it (a process,
its payload on stdin), writes its log lines and its closing result line as JSON objects
with LOG_FORMAT = json, and the usual text without it (the control)."""

import base64
import json
import os
import subprocess
import sys

import pytest

from tests.one.fipenv import TOKEN
from tests.paths import SAMPLES

YES = 'NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="YES"'


def run_hook(env, tmp_path, log_format, stdin, *args):
    auth = tmp_path / "one_auth"
    auth.write_text("oneadmin:adminpw\n")
    conf = tmp_path / f"ipfloater-{log_format}.conf"
    conf.write_text(f"[ONE_IPFLOATER]\nIPFLOATER_URL = {env.daemon_url}\nLOCK_DIR = {tmp_path / 'locks'}\n"
                    f"LOG_FORMAT = {log_format}\n")
    hook_env = {**os.environ, "ONE_XMLRPC": env.sim.url, "ONE_AUTH": str(auth),
                "IPFLOATER_ONE_CONF": str(conf), "IPFLOATER_TOKEN": TOKEN}
    return subprocess.run([sys.executable, "-m", "one_ipfloater.one.hook", *args], input=stdin, env=hook_env,
                          capture_output=True, timeout=60, text=True)


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_hook_lines_follow_log_format(env, tmp_path, log_format):
    vm = env.create(YES)
    assert vm == 0  # the VM ID of the sample payload
    payload = base64.b64encode((SAMPLES / "hookarg-7.4-running.xml").read_bytes()).decode()
    proc = run_hook(env, tmp_path, log_format, payload, "-v")
    assert proc.returncode == 0, proc.stderr
    pub = env.public(vm)[0]
    if log_format == "text":
        assert proc.stdout == f"ipfloater-hook: VM 0: NIC 0 {pub} (ACTIVE)\n"
        assert "ipfloater-hook: INFO state event for VM 0" in proc.stderr
        return
    closing = json.loads(proc.stdout)
    assert closing["message"] == f"VM 0: NIC 0 {pub} (ACTIVE)" and closing["vm_id"] == 0
    assert closing["result"] == "ok" and closing["level"] == "INFO" and closing["logger"] == "ipfloater-hook"
    entries = [json.loads(line) for line in proc.stderr.splitlines()]  # every log line is one object
    event = [e for e in entries if e["message"].startswith("state event for VM 0")]
    assert len(event) == 1 and event[0]["vm_id"] == 0 and event[0]["level"] == "INFO"


def test_a_failing_hook_ends_with_one_json_line_on_stderr(env, tmp_path):
    vm = env.create('NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="198.51.100.250"')  # outside the pool
    assert vm == 0
    payload = base64.b64encode((SAMPLES / "hookarg-7.4-running.xml").read_bytes()).decode()
    proc = run_hook(env, tmp_path, "json", payload)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    closing = json.loads(lines[0])
    assert closing["result"] == "error" and closing["level"] == "ERROR" and closing["vm_id"] == 0
    assert "198.51.100.250" in closing["message"]
