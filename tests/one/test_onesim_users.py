"""The simulator's users and groups (one.user.*, one.group.*, the pools) against the real
pyone client and OpenNebula's 7.x schemas: what the quota driver reads must be shaped as
oned writes it (User::to_xml_extended, Group::to_xml_extended), and the errors carry
oned's codes (tests/data/opennebula/NOTES.md)."""

import xmlrpc.client

import pyone
import pytest
from lxml import etree

from tests.one.test_onesim import with_ns
from tests.paths import XSD
from tests.support.onesim import AUTHORIZATION, INTERNAL, NO_EXISTS, XML_RPC_API, OneSimulator

ADMIN = "oneadmin:pw"


@pytest.fixture
def sim():
    with OneSimulator(users={"oneadmin": "pw", "alice": "apw", "bob": "bpw"}, seed=7) as simulator:
        yield simulator


def call(sim, method, *params, session=ADMIN):
    return getattr(xmlrpc.client.ServerProxy(sim.url), method)(session, *params)


def schema(name):
    return etree.XMLSchema(etree.parse(str(XSD / name)))


def test_user_and_group_documents_validate_against_the_7x_schemas(sim):
    gid = sim.add_group("tenants")
    sim.add_user("carol", "cpw", group="tenants")
    sim.set_user_template("alice", 'FLOATING_IP_QUOTA="3"\nFLOATING_IP_POOL_QUOTA=[POOL="campus",LIMIT="1"]')
    sim.set_group_template("tenants", 'FLOATING_IP_QUOTA="5"')
    user_schema, group_schema = schema("user.xsd"), schema("group.xsd")
    for uid in (0, 1, 3):
        ok, xml, code = call(sim, "one.user.info", uid)
        assert ok and code == 0
        user_schema.assertValid(with_ns(xml))
    for g in (0, 1, gid):
        ok, xml, _ = call(sim, "one.group.info", g)
        group_schema.assertValid(with_ns(xml))
    schema("user_pool.xsd").assertValid(with_ns(call(sim, "one.userpool.info")[1]))
    schema("group_pool.xsd").assertValid(with_ns(call(sim, "one.grouppool.info")[1]))


def test_templates_read_back_through_pyone(sim):
    sim.set_user_template("alice", 'FLOATING_IP_QUOTA="3"\nFLOATING_IP_POOL_QUOTA=[POOL="campus",LIMIT="1"]')
    one = pyone.OneServer(sim.url, session=ADMIN)
    alice = one.user.info(sim.uid_of("alice"))
    assert alice.NAME == "alice" and alice.GNAME == "users" and alice.GID == 1
    assert alice.TEMPLATE["FLOATING_IP_QUOTA"] == "3"
    assert alice.TEMPLATE["FLOATING_IP_POOL_QUOTA"] == {"POOL": "campus", "LIMIT": "1"}
    users = one.group.info(1)
    assert users.NAME == "users" and sorted(users.USERS.ID) == [1, 2]
    assert [u.NAME for u in one.userpool.info().USER] == ["oneadmin", "alice", "bob"]


def test_update_merges_or_replaces_like_vm_update(sim):
    uid = sim.uid_of("alice")
    assert call(sim, "one.user.update", uid, 'FLOATING_IP_QUOTA="3"\nLANG="en"', 1)[:3] == [True, uid, 0]
    call(sim, "one.user.update", uid, 'FLOATING_IP_QUOTA="1"', 1)
    xml = call(sim, "one.user.info", uid)[1]
    assert "<FLOATING_IP_QUOTA><![CDATA[1]]></FLOATING_IP_QUOTA>" in xml and "<LANG>" in xml
    call(sim, "one.user.update", uid, 'FLOATING_IP_QUOTA="2"', 0)  # replace: LANG is gone
    assert "<LANG>" not in call(sim, "one.user.info", uid)[1]
    assert call(sim, "one.group.update", 1, 'FLOATING_IP_QUOTA="4"', 1)[:2] == [True, 1]
    answer = call(sim, "one.user.update", uid, "X=1", 2)
    assert answer[:3] == [False, "[one.user.update] Wrong update type", XML_RPC_API]


def test_unknown_ids_answer_no_exists_like_oned(sim):
    assert call(sim, "one.user.info", 99) == [False, "[one.user.info] Error getting user [99].",
                                               NO_EXISTS, 99, -1]
    assert call(sim, "one.group.info", 99) == [False, "[one.group.info] Error getting group [99].",
                                                NO_EXISTS, 99, -1]
    assert call(sim, "one.group.update", 99, "A=1", 1)[2] == NO_EXISTS
    with pytest.raises(pyone.OneNoExistsException):
        pyone.OneServer(sim.url, session=ADMIN).user.info(99)


def test_users_read_themselves_but_not_others_and_never_set_restricted_attributes(sim):
    alice, bob = sim.uid_of("alice"), sim.uid_of("bob")
    assert call(sim, "one.user.info", -1, session="alice:apw")[1].startswith(f"<USER><ID>{alice}</ID>")
    denied = call(sim, "one.user.info", bob, session="alice:apw")
    assert denied[0] is False and denied[2] == AUTHORIZATION
    assert call(sim, "one.user.update", alice, 'SSH_PUBLIC_KEY="k"', 1, session="alice:apw")[0]
    # as on oned with the defaults: a user may raise her own limit...
    assert call(sim, "one.user.update", alice, 'FLOATING_IP_QUOTA="99"', 1, session="alice:apw")[0]
    # ...unless oned.conf restricts the attribute (what the README tells operators to do)
    sim.user_restricted.append("FLOATING_IP_QUOTA")
    answer = call(sim, "one.user.update", alice, 'FLOATING_IP_QUOTA="100"', 1, session="alice:apw")
    assert answer[:3] == [False, "[one.user.update] Cannot update template. Tried to change "
                                 "restricted attribute: FLOATING_IP_QUOTA", INTERNAL]
    assert call(sim, "one.user.update", alice, 'LANG="de"', 0, session="alice:apw")[2] == INTERNAL  # dropped
    assert call(sim, "one.user.update", alice, 'FLOATING_IP_QUOTA="99"', 1, session="alice:apw")[0]  # same
    assert call(sim, "one.user.update", alice, 'FLOATING_IP_QUOTA="1"', 1)[0]  # oneadmin may
    assert "<FLOATING_IP_QUOTA><![CDATA[1]]>" in call(sim, "one.user.info", alice)[1]
    assert call(sim, "one.group.update", 1, "A=1", 1, session="alice:apw")[2] == AUTHORIZATION
