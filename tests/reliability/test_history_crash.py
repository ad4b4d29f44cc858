"""The history never disagrees with the state: kill -9 of the daemon in the middle of a
burst, restart, and the history replayed (each address's last event) gives exactly the
stored allocations, every acknowledged change has its event, and none is there twice.
Events are written in the change's own transaction: an event written after the commit
(or before, outside it) would be lost (or left behind) by a kill between the two."""

import random
import subprocess
import sys

import pytest

from tests.reliability.conftest import read_json_lines
from tests.reliability.test_crash_and_reboot import OPS_PER_WORKER, PER_WORKER, WORKERS, big_lab  # noqa: F401
from tests.support.daemonproc import DaemonProcess

pytestmark = pytest.mark.netns

ROUNDS = 3


def replayed(events: list[dict]) -> dict:
    """public -> private (None: allocated, not associated) after the events, oldest first."""
    state: dict = {}
    for ev in events:
        if ev["event"] == "release":
            state.pop(ev["public_ip"], None)
        else:
            state[ev["public_ip"]] = ev["private_ip"]
    return state


def stored(daemon) -> dict:
    return {f["public_ip"]: f["private_ip"] for f in daemon.cli_json("status")["floatingips"]}


def test_the_checker_sees_a_lost_or_extra_event():
    """Negative control: one event dropped or added and the replay disagrees."""
    events = [{"event": "allocate", "public_ip": "p", "private_ip": None},
              {"event": "associate", "public_ip": "p", "private_ip": "v"},
              {"event": "release", "public_ip": "p", "private_ip": None}]
    assert replayed(events) == {}
    assert replayed(events[:-1]) == {"p": "v"} and replayed(events[:1]) == {"p": None}


def test_history_matches_the_state_after_kill_9(big_lab, tmp_path, figures):  # noqa: F811
    lab = big_lab
    daemon = DaemonProcess(lab.ns_router, tmp_path / "d", LOG_LEVEL="INFO", DB_SYNC="normal").start()
    rng = random.Random(20261201)
    acked_changes = 0
    try:
        for round_no in range(ROUNDS):
            kill_after = rng.randint(20, WORKERS * OPS_PER_WORKER - 20)
            gen = lab.popen(lab.ns_router, [sys.executable, "-m", "tests.reliability.loadgen", "burst",
                                            "--port", str(daemon.port), "--token-file", str(tmp_path / "d" / "token"),
                                            "--threads", str(WORKERS), "--per-worker", str(PER_WORKER),
                                            "--ops", str(OPS_PER_WORKER), "--seed", str(100 + round_no)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            lines, killed = [], False
            for line in gen.stdout:
                lines.append(line)
                if not killed and len(lines) >= kill_after:
                    daemon.kill()
                    killed = True
            gen.wait(30)
            acked_changes += sum(1 for r in read_json_lines("".join(lines))
                                 if r.get("status") in (200, 201))
            daemon.start()
            events = daemon.cli_json("history", "--limit", "10000")["events"]
            assert replayed(events) == stored(daemon), round_no
            assert len({e["id"] for e in events}) == len(events)
            assert {e["actor"] for e in events} == {"token-file"}
    finally:
        daemon.stop()
    assert acked_changes > 0 and events
    figures("history", "rounds of kill -9 during a burst, history replayed = stored state", f"{ROUNDS} of {ROUNDS}")
    figures("history", "events recorded / acknowledged calls", f"{len(events)} / {acked_changes}")
