"""The Hook Execution Manager emulation: expansion, stdin, order, parallelism, TIMEOUT.

Hooks are small scripts written to tmp_path. Tests synchronise with
``HookExecutionManager.wait_idle`` (or block on sockets the hooks connect to), never
with sleeps.
"""

import base64
import re
import socket
import sys
import xmlrpc.client
from pathlib import Path

import pyone
import pytest
from lxml import etree

from tests.one.fipenv import FIP_VM
from tests.paths import SAMPLES
from tests.support.hem import HookExecutionManager, HookIdleTimeout
from tests.support.onesim import ApiEvent, OneSimulator

ADMIN = "oneadmin:pw"


# Copies what the hook received: stdin to <pid>.stdin, argc and argv next to it.
CAPTURE = """#!/bin/sh
out="$CAPTURE_DIR/$$"
cat > "$out.stdin"
echo "$#" > "$out.argc"
for arg in "$@"; do echo "$arg"; done > "$out.argv"
printf '%s' "$out"
"""


def write_script(directory, name, body):
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


def raw(sim, method, *params):
    return getattr(xmlrpc.client.ServerProxy(sim.url), method)(*params)


def received(execution):
    """(stdin bytes, argc, argv) as the hook process saw them."""
    out = Path(execution.stdout.decode())
    argv = out.with_suffix(".argv").read_text().splitlines()
    return out.with_suffix(".stdin").read_bytes(), int(out.with_suffix(".argc").read_text()), argv


def normalise(xml):
    """Blank what differs between runs: timestamps, the OS UUID, request IDs."""
    xml = re.sub(r"<(STIME|ETIME|PSTIME|PETIME|RSTIME|RETIME|ESTIME|EETIME)>[1-9]\d*<",
                 r"<\1>T<", xml)
    xml = re.sub(r"<REQUEST_ID>\d+<", "<REQUEST_ID>R<", xml)
    return re.sub(r"<UUID><!\[CDATA\[[^\]]*\]\]>", "<UUID>U", xml)


@pytest.fixture
def sim():
    with OneSimulator(users={"oneadmin": "pw"}, seed=3) as simulator:
        simulator.add_network("fip-net", "10.77.0.0/24", "10.77.0.2", bridge="br77",
                              gateway="10.77.0.1", dns="10.77.0.1")
        yield simulator


@pytest.fixture
def hooks_dir(tmp_path):
    directory = tmp_path / "remotes" / "hooks"
    write_script(directory, "capture", CAPTURE)
    return directory


@pytest.fixture
def hook_env(sim, tmp_path):
    auth = tmp_path / "one_auth"
    auth.write_text("oneadmin:pw\n")
    capture = tmp_path / "capture"
    capture.mkdir()
    return {"ONE_XMLRPC": sim.url, "ONE_AUTH": str(auth), "CAPTURE_DIR": str(capture),
            "IPFLOATER_ONE_CONF": str(tmp_path / "ipfloater.conf")}


@pytest.fixture
def hem(sim, hooks_dir, hook_env):
    with HookExecutionManager(sim, remotes_dir=hooks_dir, env=hook_env, seed=11) as manager:
        yield manager


def running_vm(sim, template=FIP_VM):
    vm_id = sim.create_vm(template)
    sim.deploy(vm_id)
    return vm_id


# --------------------------------------------------------------------------------------
# $TEMPLATE: the pretty-printed VM, byte for byte like the real payloads
# --------------------------------------------------------------------------------------

def test_state_payloads_match_real_oned_hook_arguments(sim, hem):
    sim.create_hook('NAME=running TYPE=state RESOURCE=VM ON=RUNNING COMMAND=capture '
                    'ARGUMENTS="$TEMPLATE" ARGUMENTS_STDIN=yes')
    sim.create_hook('NAME=done TYPE=state RESOURCE=VM ON=DONE COMMAND=capture '
                    'ARGUMENTS="$TEMPLATE" ARGUMENTS_STDIN=yes')
    vm_id = running_vm(sim)
    raw(sim, "one.vm.update", ADMIN, vm_id, 'FLOATING_IP="YES"', 1)
    raw(sim, "one.vm.update", ADMIN, vm_id, 'FLOATING_IP="NO"', 0)
    hem.wait_idle(30)
    raw(sim, "one.vm.attachnic", ADMIN, vm_id, 'NIC=[NETWORK="fip-net"]')
    hem.wait_idle(30)
    raw(sim, "one.vm.detachnic", ADMIN, vm_id, 1)
    hem.wait_idle(30)
    raw(sim, "one.vm.action", ADMIN, "terminate-hard", vm_id)
    hem.wait_idle(30)
    runs = sorted(hem.executions(), key=lambda e: e.event.seq)
    expected = ["hookarg-7.4-running.xml", "hookarg-7.4-running-after-attachnic.xml",
                "hookarg-7.4-running-after-detachnic.xml", "hookarg-7.4-done.xml"]
    assert [run.hook_name for run in runs] == ["running", "running", "running", "done"]
    for run, sample in zip(runs, expected):
        stdin, argc, _ = received(run)
        assert argc == 0 and stdin == run.stdin
        assert b"\n" not in stdin                           # one base64 line, no newline
        payload = base64.b64decode(stdin).decode()
        assert not payload.startswith("<?xml") and not payload.endswith("\n")
        assert normalise(payload) == normalise((SAMPLES / sample).read_text()), sample


def test_arguments_on_argv_and_id_not_substituted(sim, hem):
    sim.create_hook('NAME=argv TYPE=state RESOURCE=VM ON=RUNNING COMMAND=capture '
                    'ARGUMENTS="$TEMPLATE  $ID literal"')
    vm_id = running_vm(sim)
    hem.wait_idle(30)
    (run,) = hem.executions()
    stdin, argc, argv = received(run)
    assert stdin == b"" and run.stdin is None and argc == 3
    assert argv[1:] == ["$ID", "literal"]
    document = etree.fromstring(base64.b64decode(argv[0]))
    assert document.findtext("ID") == str(vm_id) and document.findtext("LCM_STATE") == "3"


# --------------------------------------------------------------------------------------
# $API: CALL_INFO exactly like samples/api-7.4-*.xml
# --------------------------------------------------------------------------------------

API_CASES = [
    ("one.vm.update", (0, 'FLOATING_IP="YES"', 1), "api-7.4-one.vm.update-ok.xml"),
    ("one.vm.update", (0, 'FLOATING_IP="NO"', 0), "api-7.4-one.vm.update-replace-ok.xml"),
    ("one.vm.attachnic", (0, 'NIC=[NETWORK="fip-net"]'), "api-7.4-one.vm.attachnic-ok.xml"),
    ("one.vm.detachnic", (0, 1), "api-7.4-one.vm.detachnic-ok.xml"),
    ("one.vm.update", (1, 'FLOATING_IP="YES"', 2), "api-7.4-one.vm.update-badtype-failed.xml"),
    ("one.vm.update", (99999, 'FLOATING_IP="YES"', 1), "api-7.4-one.vm.update-failed.xml"),
    ("one.vm.update", (1, "<TEMPLATE><A>1</A></TEMPLATE>", 1),
     "api-7.4-one.vm.update-xmltemplate-ok.xml"),
    ("one.vm.update", (1, 'FLOATING_IP_ERROR="a < b & c > d"', 1),
     "api-7.4-one.vm.update-ltamp-ok.xml"),
    ("one.vm.update", (1, 'FLOATING_IP_ADDRESS="10.77.0.250"\nFLOATING_IP_STATE="ASSIGNED"', 1),
     "api-7.4-one.vm.update-fromhook-ok.xml"),
]


def test_api_payloads_match_real_oned_byte_for_byte(sim, hem):
    for call in ("one.vm.update", "one.vm.attachnic", "one.vm.detachnic"):
        sim.create_hook(f'NAME="{call}" TYPE=api CALL="{call}" COMMAND=capture '
                        'ARGUMENTS="$API" ARGUMENTS_STDIN=yes')
    running_vm(sim)
    running_vm(sim)
    for method, params, _ in API_CASES:
        raw(sim, method, ADMIN, *params)
        hem.wait_idle(30)      # one at a time, so the log order is the call order
    runs = hem.executions()
    assert len(runs) == len(API_CASES)
    for run, (method, params, sample) in zip(runs, API_CASES):
        stdin, argc, _ = received(run)
        assert argc == 0 and stdin == run.stdin and run.event.call == method
        assert base64.b64decode(stdin).decode() == (SAMPLES / sample).read_text(), sample


def test_api_hooks_fire_for_failed_calls_but_not_for_failed_auth(sim, hem):
    sim.create_hook('NAME=info TYPE=api CALL="one.vm.info" COMMAND=capture ARGUMENTS="$API" '
                    'ARGUMENTS_STDIN=yes')
    vm_id = running_vm(sim)
    raw(sim, "one.vm.info", "oneadmin:wrong", vm_id, False)
    raw(sim, "one.vm.info", "garbage", vm_id, False)
    hem.wait_idle(30)
    assert hem.executions() == []
    raw(sim, "one.vm.info", ADMIN, 99999, False)
    hem.wait_idle(30)
    raw(sim, "one.vm.info", ADMIN, vm_id, False)
    hem.wait_idle(30)
    failed, ok = (etree.fromstring(base64.b64decode(run.stdin)) for run in hem.executions())
    assert failed.findtext("RESULT") == "0" and ok.findtext("RESULT") == "1"
    out = failed.xpath("PARAMETERS/PARAMETER[TYPE='OUT']/VALUE/text()")
    assert out == ["false", "[one.vm.info] Error getting virtual machine [99999].", "1024",
                   "99999"]
    # a successful info carries the VM document in OUT 2 (unescaped, so as elements)
    assert ok.xpath("PARAMETERS/PARAMETER[TYPE='OUT'][POSITION=2]/VALUE/VM/ID/text()") == [
        str(vm_id)]


# --------------------------------------------------------------------------------------
# Matching state hooks
# --------------------------------------------------------------------------------------

def test_state_hooks_fire_on_their_states(sim, hem):
    ons = {"prolog": "ON=PROLOG", "running": "ON=RUNNING", "shutdown": "ON=SHUTDOWN",
           "stop": "ON=STOP", "done": "ON=DONE", "unknown": "ON=UNKNOWN",
           "poweroff": "ON=CUSTOM STATE=POWEROFF LCM_STATE=LCM_INIT",
           "pending": "ON=CUSTOM STATE=PENDING LCM_STATE=LCM_INIT",
           "hotplug": "ON=CUSTOM STATE=ACTIVE LCM_STATE=HOTPLUG_NIC"}
    for name, on in ons.items():
        sim.create_hook(f"NAME={name} TYPE=state RESOURCE=VM {on} COMMAND=capture")
    sim.create_hook("NAME=host TYPE=state RESOURCE=HOST ON=CUSTOM STATE=ACTIVE "
                    "LCM_STATE=RUNNING COMMAND=capture")
    vm_id = running_vm(sim)                                   # pending, prolog, running
    raw(sim, "one.vm.action", ADMIN, "poweroff", vm_id)       # poweroff
    raw(sim, "one.vm.attachnic", ADMIN, vm_id, 'NIC=[NETWORK="fip-net"]')  # no state change
    raw(sim, "one.vm.action", ADMIN, "resume", vm_id)         # running
    raw(sim, "one.vm.attachnic", ADMIN, vm_id, 'NIC=[NETWORK="fip-net"]')  # hotplug, running
    sim.force_state(vm_id, "ACTIVE", "UNKNOWN")               # unknown
    raw(sim, "one.vm.action", ADMIN, "resume", vm_id)         # running
    raw(sim, "one.vm.action", ADMIN, "stop", vm_id)           # stop
    raw(sim, "one.vm.action", ADMIN, "resume", vm_id)         # pending
    raw(sim, "one.vm.deploy", ADMIN, vm_id, 0)                # running (PROLOG_RESUME)
    raw(sim, "one.vm.action", ADMIN, "terminate-hard", vm_id)  # shutdown (EPILOG), done
    hem.wait_idle(30)
    counts = {}
    for run in hem.executions():
        counts[run.hook_name] = counts.get(run.hook_name, 0) + 1
        assert run.success
    assert counts == {"pending": 2, "prolog": 1, "running": 5, "poweroff": 1, "hotplug": 1,
                      "unknown": 1, "stop": 1, "shutdown": 1, "done": 1}


def test_poweroff_attach_is_seen_only_by_api_hooks(sim, hem):
    sim.create_hook("NAME=running TYPE=state RESOURCE=VM ON=RUNNING COMMAND=capture")
    sim.create_hook('NAME=attach TYPE=api CALL="one.vm.attachnic" COMMAND=capture')
    vm_id = running_vm(sim)
    raw(sim, "one.vm.action", ADMIN, "poweroff-hard", vm_id)
    hem.wait_idle(30)
    hem.clear_log()
    raw(sim, "one.vm.attachnic", ADMIN, vm_id, 'NIC=[NETWORK="fip-net"]')
    hem.wait_idle(30)
    assert [run.hook_name for run in hem.executions()] == ["attach"]


# --------------------------------------------------------------------------------------
# Execution: TIMEOUT, errors, environment, log, retry
# --------------------------------------------------------------------------------------

def test_timeout_kills_the_hook_group_and_logs_255(sim, hem, hooks_dir):
    # sh forks sleep, which holds the output pipes: only killing the group ends the run
    write_script(hooks_dir, "slow", "#!/bin/sh\necho started\nsleep 300\necho never\n")
    sim.create_hook("NAME=slow TYPE=state RESOURCE=VM ON=RUNNING COMMAND=slow TIMEOUT=1")
    running_vm(sim)
    hem.wait_idle(60)
    (run,) = hem.executions()
    assert run.exit_code == 255 and run.timed_out and not run.success
    assert run.stdout == b"started\n"
    assert run.end - run.start < 30


def test_missing_command_and_failing_hook_are_logged(sim, hem, hooks_dir):
    write_script(hooks_dir, "fail", "#!/bin/sh\necho oops >&2\nexit 3\n")
    sim.create_hook("NAME=missing TYPE=state RESOURCE=VM ON=RUNNING COMMAND=not/there")
    sim.create_hook("NAME=fail TYPE=state RESOURCE=VM ON=RUNNING COMMAND=fail")
    running_vm(sim)
    hem.wait_idle(30)
    runs = {run.hook_name: run for run in hem.executions()}
    assert runs["fail"].exit_code == 3 and runs["fail"].stderr == b"oops\n"
    assert runs["missing"].exit_code == -1
    assert runs["missing"].command == str(hooks_dir / "not/there")


def test_environment_absolute_command_and_remote(sim, hem, tmp_path, hook_env):
    script = write_script(tmp_path / "elsewhere", "env.sh",
                          '#!/bin/sh\nprintf "%s|%s|%s" "$ONE_XMLRPC" "$ONE_AUTH" '
                          '"$IPFLOATER_ONE_CONF"\n')
    sim.create_hook(f"NAME=env TYPE=state RESOURCE=VM ON=RUNNING COMMAND={script} REMOTE=yes")
    running_vm(sim)
    hem.wait_idle(30)
    (run,) = hem.executions()
    assert run.stdout.decode() == "|".join(
        [hook_env["ONE_XMLRPC"], hook_env["ONE_AUTH"], hook_env["IPFLOATER_ONE_CONF"]])
    assert run.remote_host == "host01"


def test_log_reaches_the_simulator_hooklog(sim, hem, hooks_dir):
    write_script(hooks_dir, "hello", "#!/bin/sh\necho hello\n")
    hook_id = sim.create_hook("NAME=hello TYPE=state RESOURCE=VM ON=RUNNING COMMAND=hello")
    running_vm(sim)
    hem.wait_idle(30)
    (run,) = hem.executions()
    assert (run.hook_id, run.execution_id, run.exit_code) == (hook_id, 0, 0)
    hook = pyone.OneServer(sim.url, session=ADMIN).hook.info(hook_id)
    assert hook.NAME == "hello"
    record = etree.fromstring(raw(sim, "one.hook.info", ADMIN, hook_id)[1]).find(
        "HOOKLOG/HOOK_EXECUTION_RECORD")
    assert record.findtext("EXECUTION_RESULT/CODE") == "0"
    assert base64.b64decode(record.findtext("EXECUTION_RESULT/STDOUT")) == b"hello\n"
    log = etree.fromstring(raw(sim, "one.hooklog.info", ADMIN, 0, 0, hook_id, 1)[1])
    assert len(log) == 1


def test_retry_reruns_the_stale_arguments(sim, hem):
    hook_id = sim.create_hook('NAME=upd TYPE=api CALL="one.vm.update" COMMAND=capture '
                              'ARGUMENTS="$API" ARGUMENTS_STDIN=yes')
    vm_id = running_vm(sim)
    raw(sim, "one.vm.update", ADMIN, vm_id, 'FLOATING_IP="YES"', 1)
    hem.wait_idle(30)
    assert raw(sim, "one.hook.retry", ADMIN, hook_id, 0) == [True, hook_id, 0]
    hem.wait_idle(30)
    first, again = hem.executions()
    assert again.retry and not first.retry
    assert received(again)[0] == received(first)[0] == first.stdin


def test_wait_idle_raises_while_paused(sim, hem):
    sim.create_hook("NAME=r TYPE=state RESOURCE=VM ON=RUNNING COMMAND=capture")
    hem.pause()
    running_vm(sim)
    assert hem.queued == 1
    with pytest.raises(HookIdleTimeout, match="1 queued"):
        hem.wait_idle(0.2)
    hem.resume()
    hem.wait_idle(30)
    assert len(hem.executions()) == 1


# --------------------------------------------------------------------------------------
# Concurrency and order
# --------------------------------------------------------------------------------------

GATE = f"""#!{sys.executable}
import os, socket
gate = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
gate.connect(os.environ["GATE"])
gate.recv(1)
"""


@pytest.mark.parametrize("max_parallel", [10, 3])
def test_parallel_cap(sim, hooks_dir, hook_env, tmp_path, max_parallel):
    """Every hook blocks on a socket until the test releases it: once ``max_parallel``
    have connected, no further hook can start, so the counts are exact."""
    path = str(tmp_path / "gate.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    server.settimeout(60)
    write_script(hooks_dir, "gate", GATE)
    sim.create_hook('NAME=gate TYPE=api CALL="one.vm.update" COMMAND=gate')
    vm_id = running_vm(sim)
    total = max_parallel + 15
    env = dict(hook_env, GATE=path)
    kwargs = {} if max_parallel == 10 else {"max_parallel": max_parallel}
    with HookExecutionManager(sim, remotes_dir=hooks_dir, env=env, **kwargs) as hem:
        hem.pause()
        for index in range(total):
            raw(sim, "one.vm.update", ADMIN, vm_id, f'N="{index}"', 1)
        assert hem.queued == total
        hem.resume()
        first = [server.accept()[0] for _ in range(max_parallel)]
        assert (hem.running, hem.queued) == (max_parallel, total - max_parallel)
        for connection in first:
            connection.sendall(b"x")
            connection.close()
        for _ in range(total - max_parallel):
            connection, _ = server.accept()
            connection.sendall(b"x")
            connection.close()
        hem.wait_idle(60)
        assert hem.peak_running == max_parallel
        assert len(hem.executions()) == total and all(r.success for r in hem.executions())
    server.close()


def _burst_order(sim, hooks_dir, hook_env, run_in_order):
    with HookExecutionManager(sim, remotes_dir=hooks_dir, env=hook_env, max_parallel=1,
                              run_in_order=run_in_order, seed=5) as hem:
        hem.pause()
        for index in range(14):
            raw(sim, "one.vm.update", ADMIN, 0, f'N="{index}"', 1)
        hem.resume()
        hem.wait_idle(60)
        return [run.event.params[2] for run in hem.executions()]


def test_burst_runs_out_of_order_unless_asked(sim, hooks_dir, hook_env):
    sim.create_hook('NAME=upd TYPE=api CALL="one.vm.update" COMMAND=capture')
    running_vm(sim)
    calls = [f'N="{index}"' for index in range(14)]
    shuffled = _burst_order(sim, hooks_dir, hook_env, run_in_order=False)
    assert sorted(shuffled) == sorted(calls) and shuffled != calls
    assert _burst_order(sim, hooks_dir, hook_env, run_in_order=True) == calls


# --------------------------------------------------------------------------------------
# The update-from-hook loop (NOTES: converge, write only what changed)
# --------------------------------------------------------------------------------------

CONVERGING_HOOK = f"""#!{sys.executable}
import base64, os, sys
import pyone
from lxml import etree
call = etree.fromstring(base64.b64decode(sys.stdin.read()))
vm_id = int(call.xpath("PARAMETERS/PARAMETER[TYPE='IN'][POSITION=2]/VALUE/text()")[0])
session = open(os.environ["ONE_AUTH"]).read().strip()
one = pyone.OneServer(os.environ["ONE_XMLRPC"], session=session)
if one.vm.info(vm_id).USER_TEMPLATE.get("FLOATING_IP_STATE") == "ASSIGNED":
    print("no-op")
else:
    one.vm.update(vm_id, 'FLOATING_IP_STATE="ASSIGNED"', 1)
    print("wrote")
"""


def test_update_from_hook_loop_ends_after_one_noop_pass(sim, hem, hooks_dir):
    write_script(hooks_dir, "converge", CONVERGING_HOOK)
    sim.create_hook('NAME=converge TYPE=api CALL="one.vm.update" COMMAND=converge '
                    'ARGUMENTS="$API" ARGUMENTS_STDIN=yes TIMEOUT=60')
    vm_id = running_vm(sim)
    pyone.OneServer(sim.url, session=ADMIN).vm.update(vm_id, 'FLOATING_IP="YES"', 1)
    hem.wait_idle(60)              # covers the hook's own update and the hook it fires
    runs = sorted(hem.executions(), key=lambda run: run.event.seq)
    assert [(run.stdout.strip(), run.exit_code) for run in runs] == [(b"wrote", 0),
                                                                      (b"no-op", 0)]
    assert runs[1].event.params[2] == 'FLOATING_IP_STATE="ASSIGNED"'
    assert sim.user_template(vm_id) == {"FLOATING_IP": "YES", "FLOATING_IP_STATE": "ASSIGNED"}
    assert all(isinstance(run.event, ApiEvent) for run in runs)
