"""Bad input at every router-side entry point: REST bodies, config files, CLI arguments.

Each case gets one clear error naming the field (a 4xx or a non-zero exit with one line),
and the state file, our rules and the floating addresses are byte-for-byte unchanged.
The OpenNebula side (hook payloads, VM attributes) has its own table in tests/one/.
"""

import json
import sys

import pytest

from tests.support.daemonproc import DaemonProcess
from tests.support.netlab import Lab
from tests.reliability.conftest import snapshot

pytestmark = pytest.mark.netns

REST_CASES = [
    # (method, path, raw body or None, status, code, fragment naming the field)
    ("POST", "/v1/floatingips", "{", 400, "bad_request", "body: not valid JSON"),
    ("POST", "/v1/floatingips", "[1, 2]", 400, "bad_request", "body: expected a JSON object"),
    ("POST", "/v1/floatingips", '"10.77.0.12"', 400, "bad_request", "body: expected a JSON object"),
    ("POST", "/v1/floatingips", '{"private_ip": 10}', 400, "bad_request", "private_ip: 10"),
    ("POST", "/v1/floatingips", '{"private_ip": "10.77.0.12; reboot"}', 400, "bad_request", "private_ip"),
    ("POST", "/v1/floatingips", '{"private_ip": "10.77.0.012"}', 400, "bad_request", "private_ip"),
    ("POST", "/v1/floatingips", '{"private_ip": "fe80::1"}', 400, "bad_request", "private_ip"),
    ("POST", "/v1/floatingips", '{"private_ip": "10.77.0.0"}', 422, "private_not_allowed", "network or broadcast"),
    ("POST", "/v1/floatingips", '{"private_ip": "10.77.0.1"}', 422, "private_not_allowed", "router itself"),
    ("POST", "/v1/floatingips", '{"private_ip": "172.16.0.5"}', 422, "private_not_allowed", "PRIVATE_IP_RANGES"),
    ("POST", "/v1/floatingips", '{"public_ip": "198.51.100.200"}', 422, "not_in_pool", "public_ip"),
    ("POST", "/v1/floatingips", '{"public_ip": "198.51.100.10"}', 409, "address_in_use", "public_ip"),
    ("POST", "/v1/floatingips", '{"private_ip": "10.77.0.11"}', 409, "private_in_use", "private_ip"),
    ("POST", "/v1/floatingips", '{"owner": ["x"]}', 400, "bad_request", "owner"),
    ("POST", "/v1/floatingips", '{"ref": "a\\"b"}', 400, "bad_request", "ref"),
    ("POST", "/v1/floatingips", '{"ref": "' + "r" * 200 + '"}', 400, "bad_request", "ref"),
    ("POST", "/v1/floatingips", '{"allow_move": 1}', 400, "bad_request", "allow_move"),
    ("POST", "/v1/floatingips", '{"surprise": true}', 400, "bad_request", "surprise: unknown field"),
    ("POST", "/v1/floatingips", '{"private_ip": "' + "9" * 70000 + '"}', 413, "body_too_large", "body"),
    ("POST", "/v1/floatingips", b"\xff\xfe".decode("latin-1"), 400, "bad_request", "body: not valid JSON"),
    ("PUT", "/v1/floatingips/198.51.100.10/association", "{}", 400, "bad_request", "private_ip: missing"),
    ("PUT", "/v1/floatingips/198.51.100.10/association", '{"private_ip": "10.77.0.12", "owner": "one:uid:1"}', 409,
     "address_in_use", "must be explicit"),
    ("PUT", "/v1/floatingips/198.51.100.10/association", '{"private_ip": "10.77.0.12", "allow_move": true}', 403,
     "owner_mismatch", "name that owner"),
    ("DELETE", "/v1/floatingips/198.51.100.10", "{}", 403, "owner_mismatch", "owner"),
    ("DELETE", "/v1/floatingips/198.51.100.10", '{"owner": "one:uid:1\\n"}', 400, "bad_request", "owner"),
    ("POST", "/v1/floatingips", '{"ref": "vm\\u0000x"}', 400, "bad_request", "ref"),
    ("POST", "/v1/floatingips", '{"owner": ' + "[" * 50 + "]" * 50 + "}", 400, "bad_request", "nested"),
    ("POST", "/v1/floatingips", '{"public_ip": 1e999999}', 400, "bad_request", "body"),
    ("POST", "/v1/floatingips", '{"public_ip": ' + "7" * 5000 + "}", 400, "bad_request", "body"),
    ("PUT", "/v1/floatingips/198.51.100.11/association", '{"private_ip": "10.77.0.12"}', 404,
     "not_allocated", "public_ip"),
    ("PUT", "/v1/floatingips/not-an-ip/association", '{"private_ip": "10.77.0.12"}', 400,
     "bad_request", "public_ip: 'not-an-ip'"),
    ("DELETE", "/v1/floatingips/198.51.100.10", '{"owner": "one:uid:9"}', 403, "owner_mismatch", "owner"),
    ("DELETE", "/v1/floatingips/198.51.100.10/association", '{"owner": "one:uid:9"}', 403, "owner_mismatch", "owner"),
    ("DELETE", "/v1/floatingips/203.0.113.1", None, 404, "not_in_pool", "public_ip"),
    ("GET", "/v1/floatingips?private_ip=x", None, 400, "bad_request", "private_ip: 'x'"),
    ("GET", "/v1/floatingips?limit=5", None, 400, "bad_request", "limit: unknown query parameter"),
    ("GET", "/v1/neighbours?mac=00:11", None, 400, "bad_request", "mac"),
    ("GET", "/v1/unknown", None, 404, "not_found", "path"),
    ("GET", "/", None, 404, "not_found", "path"),
    ("DELETE", "/v1/pool", None, 405, "method_not_allowed", "method: DELETE"),
    ("PUT", "/v1/floatingips", "{}", 405, "method_not_allowed", "method: PUT"),
    ("POST", "/v1/reconcile", '{"force": true}', 400, "bad_request", "force: unknown field"),
]

CONFIG_CASES = [
    # (config text, fragment naming the key)
    ("[IPFLOATER]\nPRIVATE_IP_RANGES = 10.77.0.0/24\n", "IP_POOL: missing"),
    ("[IPFLOATER]\nIP_POOL = 198.51.100.10\n", "PRIVATE_IP_RANGES: missing"),
    ("[OTHER]\nIP_POOL = 198.51.100.10\n", "missing section [IPFLOATER]"),
    ("IP_POOL = 198.51.100.10\n", "File contains no section headers"),
    ("[IPFLOATER]\nIP_POOL = 198.51.100.10-198.51.100.20, 198.51.100.15\nPRIVATE_IP_RANGES = 10.77.0.0/24\n",
     "IP_POOL: 198.51.100.15 appears twice"),
    ("[IPFLOATER]\nIP_POOL = 10.77.0.0/28\nPRIVATE_IP_RANGES = 10.77.0.0/24\n", "IP_POOL: 10.77.0.1 lies inside"),
    ("[IPFLOATER]\nIP_POOL = 198.51.100.0/33\nPRIVATE_IP_RANGES = 10.77.0.0/24\n", "IP_POOL: '198.51.100.0/33'"),
    ("[IPFLOATER]\nIP_POOL = 198.51.100.10\nPRIVATE_IP_RANGES = 10.77.0.1/24\n", "PRIVATE_IP_RANGES: '10.77.0.1/24'"),
    ("[IPFLOATER]\nIP_POOL = 198.51.100.10\nPRIVATE_IP_RANGES = 10.0.0.0/8, 10.77.0.0/24\n",
     "PRIVATE_IP_RANGES: 10.77.0.0/24 overlaps"),
    ("[IPFLOATER]\nIP_POOL = 198.51.100.10\nPRIVATE_IP_RANGES = 10.77.0.0/24\nREST_PORT = -1\n", "REST_PORT"),
    ("[IPFLOATER]\nIP_POOL = 198.51.100.10\nPRIVATE_IP_RANGES = 10.77.0.0/24\nPUBLIC_INTERFACE = $(id)\n",
     "PUBLIC_INTERFACE: '$(id)'"),
    ("[IPFLOATER]\nIP_POOL = 198.51.100.10\nPRIVATE_IP_RANGES = 10.77.0.0/24\nDB = state.db\n", "DB: 'state.db'"),
    ("[IPFLOATER]\nIP_POOL = 198.51.100.10\nPRIVATE_IP_RANGES = 10.77.0.0/24\nIP_POOL_TYPO = x\n",
     "IP_POOL_TYPO: unknown key"),
]

CLI_CASES = [
    # (argv, exit code, fragment)
    (("getip",), 2, "private_ip"),
    (("getip", "10.77.0.300"), 2, "private_ip: '10.77.0.300' is not an IPv4 address"),
    (("getip", "10.77.0.12 ; reboot"), 2, "private_ip"),
    (("redirect", "198.51.100.10"), 2, "private_ip"),
    (("releaseip", "not-an-ip"), 2, "ip: 'not-an-ip'"),
    (("explode",), 2, "invalid choice: 'explode'"),
    (("-p", "seven", "status"), 2, "--server-port"),
    (("getip", "10.77.0.20"), 1, "outside PRIVATE_IP_RANGES"),
    (("arp", "zz:zz"), 1, "mac: 'zz:zz'"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with Lab(vms=1) as lab:
        daemon = DaemonProcess(lab.ns_router, tmp_path_factory.mktemp("bad") / "d",
                               PRIVATE_IP_RANGES="10.77.0.0/28").start()
        assert daemon.cli("getip", lab.vm_ip(1), "--owner", "one:uid:1").returncode == 0
        yield lab, daemon
        daemon.stop()


def test_bad_rest_requests(world, figures):
    lab, daemon = world
    before = snapshot(lab, daemon)
    script = ("import json, sys, requests\n"
              "cases = json.loads(sys.stdin.read())\n"
              "out = []\n"
              "for method, path, body in cases:\n"
              "    r = requests.request(method, 'http://127.0.0.1:' + sys.argv[1] + path,\n"
              "                         data=body.encode('latin-1') if body is not None else None,\n"
              "                         headers={'Authorization': 'Bearer ' + sys.argv[2]}, timeout=5)\n"
              "    out.append([r.status_code, r.json()])\n"
              "print(json.dumps(out))\n")
    proc = lab.run(lab.ns_router, [sys.executable, "-c", script, str(daemon.port), daemon.token],
                   input=json.dumps([[m, p, b] for m, p, b, *_ in REST_CASES]), timeout=60)
    answers = json.loads(proc.stdout)
    for (method, path, _body, status, code, fragment), (got, payload) in zip(REST_CASES, answers):
        assert (got, payload["error"]["code"]) == (status, code), (method, path, payload)
        message = payload["error"]["message"]
        assert fragment in message and "\n" not in message, (method, path, message)
    assert snapshot(lab, daemon) == before
    figures("bad input", "REST cases: clear 4xx, state/rules/addresses unchanged", f"{len(REST_CASES)} of {len(REST_CASES)}")


def test_bad_config_files(world, tmp_path, figures):
    lab, daemon = world
    before = snapshot(lab, daemon)
    for i, (text, fragment) in enumerate(CONFIG_CASES):
        path = tmp_path / f"bad{i}.conf"
        path.write_text(text)
        proc = lab.run(lab.ns_router, [sys.executable, "-m", "one_ipfloater.daemon", "--config", str(path), "check"],
                       check=False)
        assert proc.returncode == 2, (text, proc.stderr)
        assert proc.stderr.count("\n") == 1 and fragment in proc.stderr, (text, proc.stderr)
        assert proc.stderr.startswith(f"ipfloaterd: {path}: ")
    missing = lab.run(lab.ns_router, [sys.executable, "-m", "one_ipfloater.daemon", "--config",
                                      str(tmp_path / "nope.conf"), "run"], check=False)
    assert missing.returncode == 2 and "cannot read config" in missing.stderr
    assert snapshot(lab, daemon) == before
    figures("bad input", "config files: exit 2 with one line naming the key", f"{len(CONFIG_CASES) + 1} of {len(CONFIG_CASES) + 1}")


def test_bad_cli_arguments(world, figures):
    lab, daemon = world
    before = snapshot(lab, daemon)
    for argv, code, fragment in CLI_CASES:
        proc = daemon.cli(*argv)
        assert proc.returncode == code, (argv, proc.stderr)
        assert fragment in proc.stderr and proc.stdout == "", (argv, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1].startswith("ipfloater: "), proc.stderr
    assert snapshot(lab, daemon) == before
    figures("bad input", "CLI arguments: non-zero exit, one error line", f"{len(CLI_CASES)} of {len(CLI_CASES)}")
