"""Safe starts in the namespace network, on both NAT backends: a state file that is missing,
empty or new never wipes live NAT; `adopt` takes it back; one daemon per network namespace;
a clean install logs an install, not repairs."""

import json

import pytest

from tests.support.daemonproc import DaemonProcess
from tests.integration.conftest import BACKENDS, TCP, getip, our_rules

pytestmark = pytest.mark.netns

VM1, VM2 = "10.77.0.11", "10.77.0.12"


def kernel(lab) -> tuple[str, str, str]:
    """Everything of ours the kernel holds, both backends, and the addresses on pub0."""
    addresses = lab.run(lab.ns_router, ["ip", "-4", "-o", "addr", "show", "dev", "pub0"]).stdout
    return our_rules(lab, "iptables"), our_rules(lab, "nftables"), addresses


def refused_line(proc) -> str:
    """The one line a refused command ends with (after its log lines, if any)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines, (proc.returncode, proc.stderr)
    return lines[-1]


def reaches(lab, fip, vm_name) -> bool:
    reply = lab.tcp_probe(lab.ns_client, fip, TCP)
    return reply["ok"] and reply["reply"]["name"] == vm_name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("state_file", ["missing", "empty"])
def test_new_or_empty_state_file_refuses_to_start_and_changes_nothing(lab, servers, tmp_path, backend,
                                                                      state_file, figures):
    first = DaemonProcess(lab.ns_router, tmp_path / "first", NAT_BACKEND=backend).start()
    fips = [getip(first, VM1), getip(first, VM2)]
    first.stop()
    before = kernel(lab)
    assert all(fip in before[0 if backend == "iptables" else 1] for fip in fips)
    wrong = DaemonProcess(lab.ns_router, tmp_path / "wrong", NAT_BACKEND=backend)  # a wrong DB path
    db = wrong.workdir / "state.db"
    if state_file == "empty":
        db.write_bytes(b"")
    result = wrong.run_command("run", timeout=30)
    line = refused_line(result)
    assert line == (f"ipfloaterd: DB: {db} is new or empty but the kernel holds 2 live associations of ours "
                    f"(2 NAT pairs, 2 pool addresses on pub0); not starting, so as not to remove them: run "
                    f"`ipfloaterd --config {wrong.config_path} adopt` to take them into the state file, or "
                    f"`ipfloaterd --config {wrong.config_path} flush` to drop them")
    assert kernel(lab) == before  # rules of both backends and addresses byte-identical
    if state_file == "missing":
        assert not db.exists()  # not created
    else:
        assert db.read_bytes() == b""  # left as it was
    assert not (wrong.workdir / "token").exists()
    assert reaches(lab, fips[0], "vm1") and reaches(lab, fips[1], "vm2")
    figures("safe start", f"{backend}, {state_file} state file: live associations kept", "2 of 2")


@pytest.mark.parametrize("backend", BACKENDS)
def test_adopt_rebuilds_the_state_from_the_live_rules(lab, servers, tmp_path, backend, figures):
    first = DaemonProcess(lab.ns_router, tmp_path / "first", NAT_BACKEND=backend).start()
    fips = [getip(first, VM1), getip(first, VM2)]
    first.stop()
    before = kernel(lab)
    restored = DaemonProcess(lab.ns_router, tmp_path / "restored", NAT_BACKEND=backend)
    db = restored.workdir / "state.db"

    # a conflict (a live public outside IP_POOL) is one line, and writes nothing
    restored.settings["IP_POOL"] = fips[0]
    line = refused_line(restored.run_command("adopt"))
    assert line == (f"ipfloaterd: adopt: IP_POOL: live association {fips[1]} -> {VM2}: {fips[1]} is not in "
                    f"the pool; nothing written")
    assert not db.exists() and kernel(lab) == before

    restored.settings["IP_POOL"] = first.settings["IP_POOL"]
    result = restored.run_command("adopt")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["adopted"] == [{"public_ip": fips[0], "private_ip": VM1},
                                  {"public_ip": fips[1], "private_ip": VM2}]
    assert summary["owner"] is None and "operator-owned" in summary["note"]
    assert kernel(lab) == before  # adopt touches no rule or address

    again = json.loads(restored.run_command("adopt").stdout)  # idempotent
    assert again["adopted"] == [] and again["already_stored"] == 2

    restored.start()
    stored = {(f["public_ip"], f["private_ip"], f["owner"]) for f in restored.cli_json("status")["floatingips"]}
    assert stored == {(fips[0], VM1, None), (fips[1], VM2, None)}
    assert restored.cli_json("reconcile")["repairs"] == []
    assert kernel(lab) == before
    assert reaches(lab, fips[0], "vm1") and reaches(lab, fips[1], "vm2")
    restored.stop()
    figures("adopt", f"{backend}: associations taken back from the kernel, rules unchanged", "2 of 2")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_emptied_by_releases_still_starts(lab, tmp_path, backend):
    """The file has held allocations: empty now means "all released", and the start
    removes what the kernel still holds (here a pool address whose removal failed)."""
    daemon = DaemonProcess(lab.ns_router, tmp_path / "d", NAT_BACKEND=backend).start()
    fip = getip(daemon, VM1)
    assert daemon.cli("releaseip", fip).returncode == 0
    daemon.stop()
    lab.run(lab.ns_router, ["ip", "addr", "add", f"{fip}/32", "dev", "pub0"])
    daemon.start()
    assert "" == lab.run(lab.ns_router, ["ip", "-4", "-o", "addr", "show", "dev", "pub0", "to", f"{fip}/32"]).stdout
    assert f"reconcile repaired: removed {fip}/32 from pub0" in daemon.log()
    daemon.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_daemon_per_network_namespace(lab, servers, tmp_path, backend, figures):
    first = DaemonProcess(lab.ns_router, tmp_path / "first", NAT_BACKEND=backend).start()
    try:
        fip = getip(first, VM1)
        before = kernel(lab)
        other = DaemonProcess(lab.ns_router, tmp_path / "other", NAT_BACKEND=backend, REST_PORT="7004",
                              IP_POOL="198.51.100.50-198.51.100.60")  # another config, DB and port
        refused = 0
        for command in ("run", "flush", "adopt"):
            for daemon in (other, first):  # flush/adopt with the running daemon's own config too
                if command == "run" and daemon is first:
                    continue
                line = refused_line(daemon.run_command(command, timeout=30))
                assert line == (f"ipfloaterd: {command}: refused, ipfloaterd (pid {first.proc.pid}) runs in "
                                f"this network namespace (stop it first)")
                assert kernel(lab) == before
                refused += 1
        assert not (other.workdir / "state.db").exists()
        assert first.cli_json("show", fip)["private_ip"] == VM1  # still serving
        assert reaches(lab, fip, "vm1")
        assert getip(first, VM2) != fip
    finally:
        first.stop()
    # once the first is gone the namespace is free: the next refusal is the state file's
    assert "is new or empty but the kernel holds 2 live associations" in refused_line(other.run_command("run"))
    figures("one per namespace", f"{backend}: second daemon, flush, adopt refused, rules unchanged",
            f"{refused} of {refused}")


def test_first_start_of_a_clean_install_logs_an_install(lab, tmp_path):
    for backend in BACKENDS:
        daemon = DaemonProcess(lab.ns_router, tmp_path / backend, NAT_BACKEND=backend).start()
        daemon.stop()
        assert "installed rules for 0 associations" in daemon.log()
        assert "repaired" not in daemon.log()
        daemon.run_command("flush")


def test_rules_of_the_other_backend_count_and_are_adopted(lab, servers, tmp_path, figures):
    """A wrong DB together with a backend switch: the old backend's rules are live NAT too
    (the start would migrate them away); refused, then adopted, then migrated."""
    first = DaemonProcess(lab.ns_router, tmp_path / "first", NAT_BACKEND="iptables").start()
    fips = [getip(first, VM1), getip(first, VM2)]
    first.stop()
    before = kernel(lab)
    switched = DaemonProcess(lab.ns_router, tmp_path / "switched", NAT_BACKEND="nftables")
    assert "2 live associations of ours (2 NAT pairs" in refused_line(switched.run_command("run", timeout=30))
    assert kernel(lab) == before
    adopted = switched.run_command("adopt")
    assert adopted.returncode == 0, adopted.stderr
    assert len(json.loads(adopted.stdout)["adopted"]) == 2
    switched.start()
    try:
        assert our_rules(lab, "iptables") == "" and all(fip in our_rules(lab, "nftables") for fip in fips)
        assert reaches(lab, fips[0], "vm1") and reaches(lab, fips[1], "vm2")
    finally:
        switched.stop()
    figures("adopt", "iptables rules adopted by an nftables daemon, then migrated", "2 of 2")
