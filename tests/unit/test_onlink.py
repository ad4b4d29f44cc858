"""On-link pools (HA_MODE = onlink): the floating /32s follow keepalived's master (no root)."""

import json
import socket
from ipaddress import IPv4Address as A

import pytest

from one_ipfloater import daemon as daemon_mod
from one_ipfloater import hastate, hostnet, onlink
from one_ipfloater.config import ConfigError
from one_ipfloater.service import FloatingIPService
from one_ipfloater.store import Store
from tests.fakes import FakeBackend, FakeHost, fake_config


def test_only_the_master_of_an_onlink_pair_holds_addresses_other_modes_always_do():
    for state in ("master", "backup", "fault", "stop", "unknown"):
        assert onlink.holds_addresses("onlink", state) is (state == "master")
        assert onlink.holds_addresses("none", state) and onlink.holds_addresses("routed", state)


def test_the_plan_converges_present_to_associated_or_to_none():
    assoc, present = [A("203.0.113.10"), A("203.0.113.11")], [A("203.0.113.11"), A("203.0.113.12")]
    assert onlink.address_plan(assoc, present, True) == ([A("203.0.113.10")], [A("203.0.113.12")])
    assert onlink.address_plan(assoc, present, False) == ([], [A("203.0.113.11"), A("203.0.113.12")])


def test_ha_mode_is_parsed_and_bad_values_are_refused_naming_them(tmp_path):
    assert fake_config(tmp_path / "db").ha_mode == "none"
    assert fake_config(tmp_path / "db", public_interface="pub0", extra="HA_MODE = OnLink\n").ha_mode == "onlink"
    with pytest.raises(ConfigError, match=r"HA_MODE: 'active' is not none, routed or onlink$"):
        fake_config(tmp_path / "db", extra="HA_MODE = active\n")
    with pytest.raises(ConfigError, match=r"HA_MODE: onlink needs PUBLIC_INTERFACE"):
        fake_config(tmp_path / "db", extra="HA_MODE = onlink\n")


def _service(tmp_path, mode="onlink"):
    config = fake_config(tmp_path / "state.db", public_interface="pub0", extra=f"HA_MODE = {mode}\n")
    host = FakeHost()
    return FloatingIPService(config, Store(config.db_path), FakeBackend(), host), host


def test_an_onlink_router_holds_nothing_until_master_then_follows_the_state(tmp_path):
    svc, host = _service(tmp_path)
    svc.start()
    alloc, _ = svc.allocate(private_ip=A("10.77.0.11"))
    pub = alloc.public_ip
    assert host.addresses == set() and host.arps == [], "state unknown: no address, NAT only"
    assert svc.desired().chains(), "the NAT is in place whatever the state"
    assert svc.ha_changed("master") == [f"added {pub}/32 to pub0"]
    assert host.addresses == {pub} and host.arps == [pub], "the master announces what it takes"
    second, _ = svc.allocate(private_ip=A("10.77.0.12"))
    assert host.addresses == {pub, second.public_ip}
    svc.ha_changed("backup")
    assert host.addresses == set()
    third, _ = svc.allocate(private_ip=A("10.77.0.13"))
    assert host.addresses == set(), "a change while backup adds no address"
    assert svc.reconcile() == [] and host.addresses == set(), "reconcile keeps a backup empty"
    svc.ha_changed("fault")
    assert host.addresses == set()
    svc.ha_changed("master")
    assert host.addresses == {pub, second.public_ip, third.public_ip}


def test_a_repeated_master_announces_what_it_already_holds(tmp_path):
    svc, host = _service(tmp_path)
    svc.start()
    pub = svc.allocate(private_ip=A("10.77.0.11"))[0].public_ip
    svc.ha_changed("master")
    assert svc.ha_changed("master") == [] and host.arps == [pub, pub]


def test_a_failed_address_change_keeps_the_state_and_asks_for_a_repair(tmp_path):
    svc, host = _service(tmp_path)
    svc.start()
    pub = svc.allocate(private_ip=A("10.77.0.11"))[0].public_ip
    host.fail["add"] = OSError("netlink timeout")
    assert svc.ha_changed("master") == ["failed: netlink timeout"] and svc.repair_wanted.is_set()
    del host.fail["add"]
    assert svc.reconcile() == [f"added {pub}/32 to pub0"] and host.addresses == {pub}


def test_a_restart_as_master_puts_the_addresses_back_from_the_state_file(tmp_path):
    svc, host = _service(tmp_path)
    svc.holds_addresses = onlink.holds_addresses("onlink", "master")  # as the daemon does from the file
    svc.start()
    alloc, _ = svc.allocate(private_ip=A("10.77.0.11"))
    assert host.addresses == {alloc.public_ip}


def test_keepalived_stopped_gives_the_addresses_up_and_a_restart_does_not_put_them_back(tmp_path):
    """notify_stop / ExecStopPost on the master: the /32s go, and the state file says `stop`,
    so a daemon started afterwards (as daemon.py does: the file read before the first sync)
    holds none while keepalived is down. The same start from a `master` file holds them."""
    svc, host = _service(tmp_path)
    svc.start()
    pub = svc.allocate(private_ip=A("10.77.0.11"))[0].public_ip
    path = str(tmp_path / "state.db.ha-state")
    ha = hastate.HaState(path, lambda: hastate.served_addresses(svc), host.flush_conntrack,
                         on_change=svc.ha_changed)
    ha.set("master")
    assert host.addresses == {pub}
    assert ha.set("stop")["addresses"] == [f"removed {pub}/32 from pub0"] and host.addresses == set()
    for recorded, held in (("stop", set()), ("master", {pub})):
        hastate.write_state(path, recorded, hastate.boot_time() + 1)
        restarted = FloatingIPService(svc.config, Store(svc.config.db_path), FakeBackend(), host)
        restarted.holds_addresses = onlink.holds_addresses("onlink", hastate.HaState(
            path, lambda: set(), host.flush_conntrack).state)
        restarted.start()
        assert host.addresses == held, f"restarted with {recorded!r} in the state file"
        restarted.ha_changed("stop")


def test_onlink_turns_block_public_ips_on_and_refuses_it_off(tmp_path):
    """The /32s are the router's own addresses: what conntrack does not translate must not
    reach its stack (which would reset a flow the peer carried during a takeover)."""
    config = fake_config(tmp_path / "db", public_interface="pub0", extra="HA_MODE = onlink\n")
    assert config.block_public_ips is True
    svc = FloatingIPService(config, Store(config.db_path), FakeBackend(), FakeHost())
    assert "IPFLOATER-IN" in svc.desired().chains()
    assert fake_config(tmp_path / "db", public_interface="pub0",
                       extra="HA_MODE = onlink\nBLOCK_PUBLIC_IPS = yes\n").block_public_ips is True
    assert fake_config(tmp_path / "db", public_interface="pub0", extra="HA_MODE = routed\n").block_public_ips is False
    with pytest.raises(ConfigError) as exc:
        fake_config(tmp_path / "db", public_interface="pub0", extra="HA_MODE = onlink\nBLOCK_PUBLIC_IPS = no\n")
    message = str(exc.value)
    assert message.startswith("<config>: BLOCK_PUBLIC_IPS: 'no' cannot go with HA_MODE onlink") and "\n" not in message


def test_none_and_routed_keep_today_s_behaviour(tmp_path):
    for mode in ("none", "routed"):
        (tmp_path / mode).mkdir()
        svc, host = _service(tmp_path / mode, mode)
        svc.start()
        alloc, _ = svc.allocate(private_ip=A("10.77.0.11"))
        assert svc.ha_changed("backup") == [] and host.addresses == {alloc.public_ip}


def test_ha_state_set_calls_the_service_after_recording_the_state(tmp_path):
    svc, host = _service(tmp_path)
    svc.start()
    pub = svc.allocate(private_ip=A("10.77.0.11"))[0].public_ip
    ha = hastate.HaState(str(tmp_path / "state.db.ha-state"), lambda: hastate.served_addresses(svc),
                         host.flush_conntrack, on_change=svc.ha_changed)
    done = ha.set("master")
    assert done["addresses"] == [f"added {pub}/32 to pub0"] and host.addresses == {pub}
    assert hastate.read_state(ha.path)["state"] == "master"


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("state,left", [("backup", set()), ("fault", set()), ("stop", set()),
                                        ("master", {A("203.0.113.10")})])
def test_the_command_without_a_daemon_gives_the_addresses_up_unless_master(tmp_path, monkeypatch, capsys,
                                                                         state, left):
    conf = tmp_path / "ipfloaterd.conf"
    conf.write_text(f"[IPFLOATER]\nIP_POOL = 203.0.113.10-203.0.113.12\nPRIVATE_IP_RANGES = 10.77.0.0/24\n"
                    f"DB = {tmp_path / 'state.db'}\nTOKEN_FILE = {tmp_path / 'token'}\n"
                    f"REST_PORT = {_closed_port()}\nPUBLIC_INTERFACE = pub0\nHA_MODE = onlink\n")
    (tmp_path / "token").write_text("t" * 32)
    monkeypatch.delenv("IPFLOATER_TOKEN", raising=False)
    host = FakeHost()
    host.addresses = {A("203.0.113.10"), A("198.51.100.2")}
    for name in ("flush_conntrack", "interface_exists", "host_addresses", "del_address"):
        monkeypatch.setattr(hostnet, name, getattr(host, name))
    assert daemon_mod.main(["--config", str(conf), "ha-state", state]) == 0
    out = json.loads(capsys.readouterr().out)
    assert host.addresses == left | {A("198.51.100.2")}, "only pool addresses are ours to remove"
    assert out.get("addresses", []) == ([] if left else ["removed 203.0.113.10/32 from pub0"])
