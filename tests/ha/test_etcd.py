"""The lab's three etcd members (Debian etcd-server), each in its own namespace on the
management segment: they form a cluster that a router reaches through etcd's JSON
gateway, and it keeps accepting writes with one member down. The shared state on it is
tested in test_shared_state.py."""

import base64
import time

import pytest

from tests.support.halab import HaLab

pytestmark = [pytest.mark.netns, pytest.mark.ha, pytest.mark.xdist_group("ha")]

FORM_BOUND = 30.0  # seconds for three fresh members to elect a leader (measured: about 2)


def b64(text):
    return base64.b64encode(text.encode()).decode()


def put(lab, member, key, value, timeout=3.0):
    return lab.etcd_call(lab.ns("r1"), member, "/v3/kv/put", {"key": b64(key), "value": b64(value)}, timeout)


def get(lab, member, key, timeout=3.0):
    status, body = lab.etcd_call(lab.ns("r1"), member, "/v3/kv/range", {"key": b64(key)}, timeout)
    kvs = body.get("kvs") or []
    return status, base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def test_three_members_form_and_tolerate_one_member_down(figures):
    with HaLab(etcd=True, routers=False) as lab:
        started, deadline = time.monotonic(), time.monotonic() + FORM_BOUND
        while put(lab, 1, "ipfloater/probe", "formed")[0] != 200:
            assert time.monotonic() < deadline, "etcd did not accept a write:\n" + \
                (lab.workdir / "etcd1" / "etcd.log").read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        figures("etcd: three members accept a write after (s)", round(time.monotonic() - started, 2))
        status, members = lab.etcd_call(lab.ns("r1"), 2, "/v3/cluster/member/list", {})
        assert status == 200 and len(members["members"]) == 3
        lab.stop_etcd_member(3)
        assert put(lab, 1, "ipfloater/probe", "one down")[0] == 200
        assert get(lab, 2, "ipfloater/probe") == (200, "one down")
        # the control: with two of three down there is no quorum, and a write fails
        lab.stop_etcd_member(2)
        assert put(lab, 1, "ipfloater/probe", "no quorum", timeout=2.0)[0] != 200
