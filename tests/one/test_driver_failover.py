"""The driver with several IPFLOATER_URLs (in process: oned simulator, a real daemon API
on 127.0.0.1, a closed port for the daemon that is down): a sweep converges every VM
through the daemon that answers and fails over once, not once per call, because the
client remembers the one that answered. Negative control: the dead URL alone."""

import logging

from one_ipfloater import client as client_module
from one_ipfloater.one.config import parse_one_config_text
from one_ipfloater.one.driver import clients_from_config, sync_all
from tests.one.fipenv import ADMIN, TOKEN, closed_port


def driver(env, tmp_path, urls, monkeypatch):
    auth = tmp_path / "one_auth"
    auth.write_text(":".join(ADMIN) + "\n")
    monkeypatch.setenv("IPFLOATER_TOKEN", TOKEN)
    config = parse_one_config_text(f"[ONE_IPFLOATER]\nIPFLOATER_URL = {', '.join(urls)}\n"
                                   f"ONE_XMLRPC = {env.sim.url}\nONE_AUTH = {auth}\n", "c", env={})
    return clients_from_config(config)


def test_a_sweep_fails_over_once_and_converges_every_vm(env, tmp_path, monkeypatch, caplog):
    client_module._LAST_ANSWERED.clear()
    down = f"http://127.0.0.1:{closed_port()}"
    vms = [env.create(f'NAME="v{i}" NIC=[NETWORK="priv"] FLOATING_IP="YES"') for i in range(3)]

    one, daemon = driver(env, tmp_path, [down], monkeypatch)
    alone = sync_all(one, daemon, lock_dir=env.lock_dir)
    assert not alone.ok and env.svc.list() == []
    assert all(env.ut(vm).get("FLOATING_IP_STATUS") == "ERROR" for vm in vms)

    one, daemon = driver(env, tmp_path, [down, env.daemon_url], monkeypatch)
    with caplog.at_level(logging.WARNING, "one_ipfloater.client"):
        swept = sync_all(one, daemon, lock_dir=env.lock_dir)
    assert swept.ok, swept.as_dict()
    assert [env.ut(vm)["FLOATING_IP_ADDRESS"] for vm in vms] == [env.public(vm)[0] for vm in vms]
    assert all(env.ut(vm)["FLOATING_IP_STATUS"] == "ACTIVE" for vm in vms)
    lines = [r.getMessage() for r in caplog.records if "failing over" in r.getMessage()]
    assert lines == [f"ipfloaterd at {down}: unreachable; failing over to {env.daemon_url}"]
    client_module._LAST_ANSWERED.clear()
