"""The oned simulator against the real pyone client (7.x in .venv, 6.10 in .venv-pyone6).

Each expectation comes from tests/data/opennebula/NOTES.md or
samples/oned-7.4-behaviour.md; the section is named where it helps.
"""

import re
import threading
import xmlrpc.client
from pathlib import Path

import pyone
import pytest

from tests.one.fipenv import FIP_VM
from tests.paths import REPO, SAMPLES, XSD
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from tests.support.onesim import (
    ApiEvent, OneSimulator, StateEvent, TemplateParseError, parse_template,
)

NS = "http://opennebula.org/XMLSchema"
ADMIN = "oneadmin:pw"



@pytest.fixture
def sim():
    with OneSimulator(users={"oneadmin": "pw", "alice": "apw", "bob": "bpw"}, seed=7) as simulator:
        simulator.add_network("fip-net", "10.77.0.0/24", "10.77.0.2", bridge="br77",
                              gateway="10.77.0.1", dns="10.77.0.1")
        simulator.add_network("v6only", "2001:db8:10::/64", "2001:db8:10::101", bridge="br6",
                              gateway="2001:db8:10::1")
        simulator.add_network("l2-only", bridge="br9")
        simulator.add_network("vlan-dual", "10.20.0.0/16", "10.20.0.11", vn_mad="802.1Q",
                              bridge="onebr.120", vlan_id="120", mtu="1450", phydev="eth1",
                              gateway="10.20.0.1", ip6_global_prefix="2001:db8:30::/64")
        yield simulator


@pytest.fixture
def one(sim):
    return pyone.OneServer(sim.url, session=ADMIN)


def raw(sim, method, *params):
    """Call without pyone, to see the response array as Python decodes it."""
    proxy = xmlrpc.client.ServerProxy(sim.url)
    return getattr(proxy, method)(*params)


def running_vm(sim, template=FIP_VM, owner="oneadmin"):
    vm_id = sim.create_vm(template, owner=owner)
    sim.deploy(vm_id)
    return vm_id


def with_ns(xml):
    """oned emits no namespace while the schemas have one: move every element into it."""
    root = etree.fromstring(xml.encode())
    for element in root.iter():
        if isinstance(element.tag, str):
            element.tag = f"{{{NS}}}{element.tag}"
    etree.cleanup_namespaces(root)
    return root


@pytest.fixture(scope="module")
def vm_schema():
    return etree.XMLSchema(etree.parse(str(XSD / "vm.xsd")))


@pytest.fixture(scope="module")
def pool_schema():
    return etree.XMLSchema(etree.parse(str(XSD / "vm_pool.xsd")))


def user_template_xml(sim, vm_id):
    xml = sim.vm_xml(vm_id)
    return xml[xml.index("<USER_TEMPLATE>"):xml.index("</USER_TEMPLATE>") + 16]


# --------------------------------------------------------------------------------------
# Wire contract (behaviour §1)
# --------------------------------------------------------------------------------------

def test_failure_wire_format_matches_oned_byte_for_byte(sim):
    vm_id = running_vm(sim)
    body = xmlrpc.client.dumps((ADMIN, vm_id, 'FLOATING_IP="YES"', 2), "one.vm.update")
    reply = requests.post(sim.url, data=body, headers={"Content-Type": "text/xml"})
    assert reply.status_code == 200
    assert reply.content == (
        b'<?xml version="1.0" encoding="UTF-8"?>\r\n<methodResponse>\r\n<params>\r\n'
        b"<param><value><array><data>\r\n"
        b"<value><boolean>0</boolean></value>\r\n"
        b"<value><string>[one.vm.update] Wrong update type</string></value>\r\n"
        b"<value><i4>4096</i4></value>\r\n"
        b"<value><i4>-1</i4></value>\r\n"
        b"<value><i8>-1</i8></value>\r\n"
        b"</data></array></value></param>\r\n</params>\r\n</methodResponse>\r\n")


def test_success_array_has_three_elements(sim):
    vm_id = running_vm(sim)
    assert raw(sim, "one.vm.update", ADMIN, vm_id, 'FLOATING_IP="YES"', 1) == [True, vm_id, 0]
    assert raw(sim, "one.system.version", ADMIN) == [True, "7.4.1", 0]


def test_unknown_method_is_an_xmlrpc_fault(sim, one):
    with pytest.raises(xmlrpc.client.Fault) as fault:
        raw(sim, "one.vm.nosuchcall", ADMIN, 0)
    assert fault.value.faultCode == -506
    assert "one.vm.nosuchcall" in fault.value.faultString
    with pytest.raises(pyone.OneException):
        one.vm.nosuchcall(0)


def test_wrong_parameter_type_is_a_fault(sim):
    with pytest.raises(xmlrpc.client.Fault) as fault:
        raw(sim, "one.vm.info", ADMIN, "zero")
    assert fault.value.faultCode == -501


# --------------------------------------------------------------------------------------
# one.vm.info and authentication (behaviour §3)
# --------------------------------------------------------------------------------------

def test_info_is_one_compact_line_with_cdata_values(sim, one):
    vm_id = running_vm(sim)
    xml = raw(sim, "one.vm.info", ADMIN, vm_id, False)[1]
    assert "\n" not in xml and xml.startswith("<VM><ID>") and xml.endswith("</VM>")
    assert "<IP><![CDATA[10.77.0.2]]></IP>" in xml
    assert "<TM_MAD_SYSTEM><![CDATA[dummy]]></TM_MAD_SYSTEM>" in xml
    vm = one.vm.info(vm_id)
    assert (vm.ID, vm.NAME, vm.STATE, vm.LCM_STATE) == (vm_id, "fip-vm-01", 3, 3)
    assert vm.TEMPLATE["NIC"]["IP"] == "10.77.0.2"      # one NIC parses as a dict


def test_missing_vm(sim, one):
    assert raw(sim, "one.vm.info", ADMIN, 99999, False) == [
        False, "[one.vm.info] Error getting virtual machine [99999].", 1024, 99999, -1]
    with pytest.raises(pyone.OneNoExistsException,
                       match=r"^\[one\.vm\.info\] Error getting virtual machine \[99999\]\.$"):
        one.vm.info(99999)


@pytest.mark.parametrize("session", ["oneadmin:wrongpass", "garbage", "nobody:pw", ""])
def test_bad_credentials(sim, session):
    vm_id = running_vm(sim)
    message = "[one.vm.info] User couldn't be authenticated, aborting call."
    assert raw(sim, "one.vm.info", session, vm_id, False) == [False, message, 256, -1, -1]
    with pytest.raises(pyone.OneAuthenticationException) as error:
        pyone.OneServer(sim.url, session=session or ":").vm.info(vm_id)
    assert "User couldn't be authenticated, aborting call." in str(error.value)
    assert raw(sim, "one.vm.update", session, vm_id, 'FLOATING_IP="YES"', 1) == [
        False, "[one.vm.update] User couldn't be authenticated, aborting call.", 256, -1, -1]
    assert "FLOATING_IP" not in sim.user_template(vm_id)


def test_users_see_and_modify_only_their_own_vms(sim):
    admin_vm = running_vm(sim)
    alice_vm = running_vm(sim, owner="alice")
    alice = pyone.OneServer(sim.url, session="alice:apw")
    assert alice.vm.info(alice_vm).UNAME == "alice"
    alice.vm.update(alice_vm, 'MINE="1"', 1)
    with pytest.raises(pyone.OneAuthorizationException, match=r"^\[one\.vm\.info\] User \["):
        alice.vm.info(admin_vm)
    with pytest.raises(pyone.OneAuthorizationException):
        alice.vm.update(admin_vm, 'X="1"', 1)
    with pytest.raises(pyone.OneAuthorizationException):
        alice.vm.action("poweroff", admin_vm)
    with pytest.raises(pyone.OneAuthorizationException):   # deploy needs ADMIN rights
        alice.vm.deploy(alice_vm, 0)
    assert [vm.ID for vm in alice.vmpool.infoextended(-2, -1, -1, -1).VM] == [alice_vm]
    assert "X" not in sim.user_template(admin_vm)


# --------------------------------------------------------------------------------------
# one.vm.update (behaviour §2)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("template, stored", [
    ('FLOATING_IP_ERROR="boom"', "<FLOATING_IP_ERROR><![CDATA[boom]]></FLOATING_IP_ERROR>"),
    ('NEW_EMPTY_ATTR=""', "<NEW_EMPTY_ATTR><![CDATA[]]></NEW_EMPTY_ATTR>"),
    ("<TEMPLATE><FLOATING_IP_ERROR><![CDATA[say \"hi\" now]]></FLOATING_IP_ERROR></TEMPLATE>",
     '<FLOATING_IP_ERROR><![CDATA[say "hi" now]]></FLOATING_IP_ERROR>'),
    ('ESCAPED_QUOTE="say \\"hi\\" now"', '<ESCAPED_QUOTE><![CDATA[say "hi" now]]></ESCAPED_QUOTE>'),
    ('FLOATING_IP_ERROR="line one\nline two"',
     "<FLOATING_IP_ERROR><![CDATA[line one\nline two]]></FLOATING_IP_ERROR>"),
    ('NL_VIA_FLAT="x\ny"\n', "<NL_VIA_FLAT><![CDATA[x\ny]]></NL_VIA_FLAT>"),
    ("<TEMPLATE><NL_VIA_NESTED><![CDATA[x\ny]]></NL_VIA_NESTED></TEMPLATE>",
     "<NL_VIA_NESTED><![CDATA[x\ny]]></NL_VIA_NESTED>"),
    ("<TEMPLATE><A>1</A></TEMPLATE>", "<A><![CDATA[1]]></A>"),
    ('FLOATING_IP_ERROR="a < b & c > d"',
     "<FLOATING_IP_ERROR><![CDATA[a < b & c > d]]></FLOATING_IP_ERROR>"),
    ("HOOK_VARS=[OWNER=\"team-a\", BACKUP=\"yes\"]",
     "<HOOK_VARS><BACKUP><![CDATA[yes]]></BACKUP><OWNER><![CDATA[team-a]]></OWNER></HOOK_VARS>"),
])
def test_update_merge_cases(sim, template, stored):
    vm_id = running_vm(sim)
    assert raw(sim, "one.vm.update", ADMIN, vm_id, template, 1) == [True, vm_id, 0]
    assert stored in user_template_xml(sim, vm_id)


def test_empty_value_keeps_the_attribute_and_pyone_reads_none(sim, one):
    vm_id = running_vm(sim)
    one.vm.update(vm_id, 'FLOATING_IP_ERROR="boom"', 1)
    one.vm.update(vm_id, 'FLOATING_IP_ERROR=""', 1)
    assert "<FLOATING_IP_ERROR><![CDATA[]]></FLOATING_IP_ERROR>" in user_template_xml(sim, vm_id)
    template = one.vm.info(vm_id).USER_TEMPLATE
    assert "FLOATING_IP_ERROR" in template and template["FLOATING_IP_ERROR"] in (None, "")


def test_unescaped_quote_is_a_parse_error_and_changes_nothing(sim, one):
    vm_id = running_vm(sim)
    one.vm.update(vm_id, 'KEEP="1"', 1)
    before = user_template_xml(sim, vm_id)
    assert raw(sim, "one.vm.update", ADMIN, vm_id, 'FLOATING_IP_ERROR="say "hi" now"\n', 1) == [
        False, "[one.vm.update] Parse error: syntax error, unexpected VARIABLE, expecting EQUAL "
               "or EQUAL_EMPTY at line 1, columns 29:32", 2048, -1, -1]
    with pytest.raises(pyone.OneActionException, match=r"^\[one\.vm\.update\] Parse error: "
                       r"syntax error, unexpected VARIABLE, expecting EQUAL or EQUAL_EMPTY"):
        one.vm.update(vm_id, {"FLOATING_IP_ERROR": 'say "hi" now'}, 1)   # pyone's flat dict
    assert user_template_xml(sim, vm_id) == before


def test_pyone_nested_dict_carries_quotes_and_newlines(sim, one):
    vm_id = running_vm(sim)
    one.vm.update(vm_id, {"TEMPLATE": {"Q": 'a "b" c', "NL": "x\ny"}}, 1)
    one.vm.update(vm_id, {"FLAT_NL": "p\nq"}, 1)
    template = one.vm.info(vm_id).USER_TEMPLATE
    assert (template["Q"], template["NL"], template["FLAT_NL"]) == ('a "b" c', "x\ny", "p\nq")


@pytest.mark.parametrize("update_type", [2, -1, 3])
def test_wrong_update_type(sim, one, update_type):
    vm_id = running_vm(sim)
    assert raw(sim, "one.vm.update", ADMIN, vm_id, 'FLOATING_IP="YES"', update_type) == [
        False, "[one.vm.update] Wrong update type", 4096, -1, -1]
    with pytest.raises(pyone.OneApiException, match=r"Wrong update type"):
        one.vm.update(vm_id, 'FLOATING_IP="YES"', update_type)
    assert "FLOATING_IP" not in sim.user_template(vm_id)


def test_update_missing_vm(sim, one):
    assert raw(sim, "one.vm.update", ADMIN, 99999, 'FLOATING_IP="YES"', 1) == [
        False, "[one.vm.update] Error getting virtual machine [99999].", 1024, 99999, -1]
    with pytest.raises(pyone.OneNoExistsException):
        one.vm.update(99999, 'FLOATING_IP="YES"', 1)


def test_type_0_replaces_type_1_merges_and_omitted_type_replaces(sim, one):
    vm_id = running_vm(sim)
    one.vm.update(vm_id, 'A="1"\nB="2"', 1)
    one.vm.update(vm_id, 'B="3"\nC="4"', 1)
    assert sim.user_template(vm_id) == {"A": "1", "B": "3", "C": "4"}
    one.vm.update(vm_id, 'FLOATING_IP="YES"', 0)
    assert sim.user_template(vm_id) == {"FLOATING_IP": "YES"}
    one.vm.update(vm_id, 'D="5"')                    # 4th parameter omitted: REPLACE
    assert sim.user_template(vm_id) == {"D": "5"}


def test_merge_replaces_a_vector_whole(sim, one):
    vm_id = running_vm(sim)
    one.vm.update(vm_id, 'V=[A="1", B="2"]', 1)
    one.vm.update(vm_id, 'V=[C="3"]', 1)
    assert sim.user_template(vm_id) == {"V": {"C": "3"}}


def test_update_on_done_vm_succeeds(sim, one):
    vm_id = running_vm(sim)
    one.vm.update(vm_id, 'FLOATING_IP="YES"', 1)
    one.vm.action("terminate-hard", vm_id)
    assert one.vm.update(vm_id, 'FLOATING_IP="NO"', 0) == vm_id
    assert sim.user_template(vm_id) == {"FLOATING_IP": "NO"}


def test_concurrent_updates_are_all_applied(sim):
    vm_id = running_vm(sim)

    def writer(index):
        client = pyone.OneServer(sim.url, session=ADMIN)
        for step in range(10):
            client.vm.update(vm_id, f'K_{index}_{step}="{step}"', 1)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sim.user_template(vm_id)) == 80


# --------------------------------------------------------------------------------------
# Template parser
# --------------------------------------------------------------------------------------

def test_parser_handles_oned_template_forms():
    assert parse_template('NAME=testvm1 MEMORY=1 CPU=1') == [
        ("NAME", "testvm1"), ("MEMORY", "1"), ("CPU", "1")]
    assert parse_template('a = "x" # comment\nEMPTY=\nNIC = [ network = "n",\n IP = 10.0.0.1 ]') == [
        ("A", "x"), ("EMPTY", ""), ("NIC", {"NETWORK": "n", "IP": "10.0.0.1"})]
    assert parse_template("<TEMPLATE><V><X>1</X></V><S>t</S></TEMPLATE>") == [
        ("V", {"X": "1"}), ("S", "t")]
    for bad in ['A="unterminated', "A=[B=1 C=2]", "<TEMPLATE><A></TEMPLATE>"]:
        with pytest.raises(TemplateParseError):
            parse_template(bad)


_VALUES = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\"),
                  max_size=40)


@given(st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True), _VALUES,
                       min_size=1, max_size=5))
def test_parser_reads_back_escaped_values(values):
    text = "\n".join(f'{key}="{value.replace(chr(34), chr(92) + chr(34))}"'
                     for key, value in values.items())
    assert dict(parse_template(text)) == values


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
@given(value=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
                     max_size=30).filter(lambda v: "]]>" not in v))
def test_nested_dict_round_trips_through_pyone(sim, one, value):
    vm_id = sim.vm_ids()[0] if sim.vm_ids() else running_vm(sim)
    one.vm.update(vm_id, {"TEMPLATE": {"ROUND_TRIP": value}}, 1)
    assert sim.user_template(vm_id)["ROUND_TRIP"] == value
    assert one.vm.info(vm_id).USER_TEMPLATE["ROUND_TRIP"] == value


# --------------------------------------------------------------------------------------
# Allocation, NICs and leases
# --------------------------------------------------------------------------------------

def test_allocate_sorts_attributes_between_template_and_user_template(sim, one):
    vm_id = one.vm.allocate('NAME="web"\nMEMORY="64"\nCPU="0.1"\nFLOATING_IP="YES"\n'
                            'FLOATING_IP_NIC="0"\nLOGO="x.png"\n'
                            'NIC=[NETWORK="fip-net", FLOATING_IP="YES"]', False)
    vm = one.vm.info(vm_id)
    assert (vm.NAME, vm.STATE, vm.LCM_STATE) == ("web", 1, 0)
    assert dict(vm.USER_TEMPLATE) == {"FLOATING_IP": "YES", "FLOATING_IP_NIC": "0",
                                      "LOGO": "x.png"}
    nic = vm.TEMPLATE["NIC"]
    assert nic["FLOATING_IP"] == "YES" and nic["IP"] == "10.77.0.2"
    assert (vm.TEMPLATE["CPU"], vm.TEMPLATE["MEMORY"]) == ("0.1", "64")
    assert "TM_MAD_SYSTEM" not in vm.TEMPLATE        # only after deploy


def test_allocate_errors(sim, one):
    with pytest.raises(pyone.OneException, match=r"^\[one\.vm\.allocate\] Error allocating"):
        one.vm.allocate('NIC=[NETWORK="no-such-net"]', False)
    with pytest.raises(pyone.OneException, match="Parse error"):
        one.vm.allocate('A="x', False)
    assert sim.network_leases("fip-net") == {}


def test_leases_in_order_and_released_only_at_done(sim, one):
    first = running_vm(sim)
    second = running_vm(sim)
    assert sim.network_leases("fip-net") == {"10.77.0.2": first, "10.77.0.3": second}
    assert sim.nics(first)[0]["MAC"] == "02:00:0a:4d:00:02"
    for action in ("poweroff-hard", "undeploy-hard"):
        one.vm.action(action, first)
        assert "10.77.0.2" in sim.network_leases("fip-net")
    one.vm.action("terminate-hard", first)
    assert sim.network_leases("fip-net") == {"10.77.0.3": second}
    assert one.vm.info(first).TEMPLATE["NIC"]["IP"] == "10.77.0.2"   # kept in the template
    third = running_vm(sim)
    assert sim.nics(third)[0]["IP"] == "10.77.0.4"   # oned's cursor moves on, no reuse yet


def test_ipv6_only_l2_and_dual_stack_nics(sim, one):
    vm_id = running_vm(sim, 'NAME="multi"\nCONTEXT=[NETWORK="YES"]\nNIC=[NETWORK="v6only"]\n'
                            'NIC=[NETWORK="l2-only"]\nNIC=[NETWORK="vlan-dual"]')
    v6, l2, dual = sim.nics(vm_id)
    assert v6["IP6"] == "2001:db8:10::101" and "IP" not in v6
    assert "IP" not in l2 and "IP6" not in l2 and l2["MAC"].startswith("02:00:")
    assert dual["IP"] == "10.20.0.11" and dual["MAC"] == "02:00:0a:14:00:0b"
    assert dual["IP6_GLOBAL"] == "2001:db8:30::aff:fe14:b"
    assert dual["IP6_LINK"] == "fe80::aff:fe14:b" and dual["VLAN_ID"] == "120"
    assert len({nic["MAC"] for nic in (v6, l2, dual)}) == 3
    context = one.vm.info(vm_id).TEMPLATE["CONTEXT"]
    assert context["ETH0_IP6"] == "2001:db8:10::101" and context["ETH0_IP6_PREFIX_LENGTH"] == "64"
    assert context["ETH1_IP"] in (None, "") and context["ETH2_IP6"] == "2001:db8:30::aff:fe14:b"


def test_aliases_share_the_nic_id_counter(sim, one):
    vm_id = running_vm(sim, 'NAME="alias"\nCONTEXT=[NETWORK="YES"]\n'
                            'NIC=[NETWORK="fip-net", NAME="pub0"]\nNIC=[NETWORK="v6only"]\n'
                            'NIC_ALIAS=[NETWORK="fip-net", PARENT="pub0"]')
    nic0, nic1, alias = sim.nics(vm_id)
    assert (nic0["NIC_ID"], nic1["NIC_ID"], alias["NIC_ID"]) == ("0", "1", "2")
    assert alias["PARENT"] == "pub0" and alias["PARENT_ID"] == "0" and alias["ALIAS_ID"] == "0"
    assert alias["NAME"] == "NIC0_ALIAS2" and nic0["ALIAS_IDS"] == "2"
    one.vm.detachnic(vm_id, 1)
    one.vm.attachnic(vm_id, 'NIC=[NETWORK="l2-only"]')
    assert [nic["NIC_ID"] for nic in sim.nics(vm_id)] == ["0", "3", "2"]  # not contiguous
    vm = one.vm.info(vm_id)
    assert isinstance(vm.TEMPLATE["NIC"], list) and vm.TEMPLATE["NIC_ALIAS"]["IP"] == "10.77.0.3"
    assert vm.TEMPLATE["CONTEXT"]["ETH0_ALIAS0_IP"] == "10.77.0.3"


def test_set_nic_ip_simulates_a_private_ip_change(sim, one):
    vm_id = running_vm(sim)
    sim.set_nic_ip(vm_id, 0, "10.77.0.99")
    vm = one.vm.info(vm_id)
    assert vm.TEMPLATE["NIC"]["IP"] == "10.77.0.99"
    assert vm.TEMPLATE["CONTEXT"]["ETH0_IP"] == "10.77.0.99"
    assert sim.network_leases("fip-net") == {"10.77.0.99": vm_id}


# --------------------------------------------------------------------------------------
# State machine, NIC hotplug, events
# --------------------------------------------------------------------------------------

def state_events(sim, vm_id, since=0):
    return [(e.state, e.lcm_state) for e in sim.events()[since:]
            if isinstance(e, StateEvent) and e.resource_id == vm_id]


def test_deploy_walks_prolog_boot_running(sim, one):
    vm_id = sim.create_vm(FIP_VM)
    assert state_events(sim, vm_id) == [("PENDING", "LCM_INIT")]
    mark = len(sim.events())
    one.vm.deploy(vm_id, 0)
    assert state_events(sim, vm_id, mark) == [
        ("ACTIVE", "LCM_INIT"), ("ACTIVE", "PROLOG"), ("ACTIVE", "BOOT"), ("ACTIVE", "RUNNING")]
    vm = one.vm.info(vm_id)
    assert (vm.PREV_STATE, vm.PREV_LCM_STATE) == (3, 3)   # stored document: prev == current
    history = vm.HISTORY_RECORDS.HISTORY[0]
    assert (history.HOSTNAME, history.ACTION) == ("host01", 0)
    assert vm.DEPLOY_ID == "host01:fip-vm-01:dummy"


def test_actions_walk_oned_states(sim, one):
    vm_id = running_vm(sim)
    walks = [
        ("poweroff", [("ACTIVE", "SHUTDOWN_POWEROFF"), ("POWEROFF", "LCM_INIT")]),
        ("resume", [("ACTIVE", "BOOT_POWEROFF"), ("ACTIVE", "RUNNING")]),
        ("suspend", [("ACTIVE", "SAVE_SUSPEND"), ("SUSPENDED", "LCM_INIT")]),
        ("resume", [("ACTIVE", "BOOT_SUSPENDED"), ("ACTIVE", "RUNNING")]),
        ("reboot", []),
        ("stop", [("ACTIVE", "SAVE_STOP"), ("ACTIVE", "EPILOG_STOP"), ("STOPPED", "LCM_INIT")]),
        ("resume", [("PENDING", "LCM_INIT")]),
    ]
    for action, expected in walks:
        mark = len(sim.events())
        assert one.vm.action(action, vm_id) == vm_id
        assert state_events(sim, vm_id, mark) == expected, action
    mark = len(sim.events())
    one.vm.deploy(vm_id, 0)
    assert state_events(sim, vm_id, mark)[1:3] == [("ACTIVE", "PROLOG_RESUME"),
                                                   ("ACTIVE", "BOOT_STOPPED")]
    for action, expected in [
            ("undeploy-hard", [("ACTIVE", "SHUTDOWN_UNDEPLOY"), ("ACTIVE", "EPILOG_UNDEPLOY"),
                               ("UNDEPLOYED", "LCM_INIT")]),
            ("resume", [("PENDING", "LCM_INIT")]),
            ("hold", [("HOLD", "LCM_INIT")]),
            ("release", [("PENDING", "LCM_INIT")]),
            ("terminate", [("DONE", "LCM_INIT")])]:
        mark = len(sim.events())
        one.vm.action(action, vm_id)
        assert state_events(sim, vm_id, mark) == expected, action


def test_terminate_hard_history_like_oned(sim, one):
    vm_id = running_vm(sim)
    mark = len(sim.events())
    one.vm.action("terminate-hard", vm_id)
    assert state_events(sim, vm_id, mark) == [
        ("ACTIVE", "SHUTDOWN"), ("ACTIVE", "EPILOG"), ("DONE", "LCM_INIT")]
    vm = one.vm.info(vm_id)
    last = vm.HISTORY_RECORDS.HISTORY[-1]
    assert last.ACTION == 28 and last.ETIME > 0 and last.EETIME > 0 and vm.ETIME > 0


def test_action_in_wrong_state(sim, one):
    vm_id = sim.create_vm(FIP_VM)
    with pytest.raises(pyone.OneActionException, match=r"^\[one\.vm\.action\] "):
        one.vm.action("poweroff", vm_id)
    with pytest.raises(pyone.OneActionException):
        one.vm.action("no-such-action", vm_id)
    with pytest.raises(pyone.OneNoExistsException):
        one.vm.deploy(vm_id, 42)


def test_attach_and_detach_in_running_go_through_hotplug_nic(sim, one):
    vm_id = running_vm(sim)
    mark = len(sim.events())
    assert one.vm.attachnic(vm_id, 'NIC=[NETWORK="fip-net", FLOATING_IP="YES"]') == vm_id
    events = sim.events()[mark:]
    kinds = [(type(e).__name__, getattr(e, "lcm_state", getattr(e, "call", None))) for e in events]
    assert kinds == [("StateEvent", "HOTPLUG_NIC"), ("ApiEvent", "one.vm.attachnic"),
                     ("StateEvent", "RUNNING")]
    assert "<PREV_LCM_STATE>25</PREV_LCM_STATE>" in events[-1].xml
    assert "<IP><![CDATA[10.77.0.3]]></IP>" in events[-1].xml   # new NIC already listed
    vm = one.vm.info(vm_id)
    assert [n["FLOATING_IP"] for n in vm.TEMPLATE["NIC"] if "FLOATING_IP" in n] == ["YES"]
    assert [h.ACTION for h in vm.HISTORY_RECORDS.HISTORY] == [23, 0]
    mark = len(sim.events())
    one.vm.detachnic(vm_id, 1)
    assert state_events(sim, vm_id, mark) == [("ACTIVE", "HOTPLUG_NIC"), ("ACTIVE", "RUNNING")]
    assert [h.ACTION for h in one.vm.info(vm_id).HISTORY_RECORDS.HISTORY] == [23, 24, 0]
    assert sim.network_leases("fip-net") == {"10.77.0.2": vm_id}


def test_attach_and_detach_in_poweroff_change_no_state(sim, one):
    vm_id = running_vm(sim)
    one.vm.action("poweroff-hard", vm_id)
    mark = len(sim.events())
    one.vm.attachnic(vm_id, 'NIC=[NETWORK="fip-net"]')
    one.vm.detachnic(vm_id, 0)
    events = sim.events()[mark:]
    assert [type(e) for e in events] == [ApiEvent, ApiEvent]
    assert sim.vm_state(vm_id) == ("POWEROFF", "LCM_INIT")
    assert [n["NIC_ID"] for n in sim.nics(vm_id)] == ["1"]


def test_detach_unknown_nic_and_attach_in_pending(sim, one):
    vm_id = running_vm(sim)
    with pytest.raises(pyone.OneActionException):
        one.vm.detachnic(vm_id, 9)
    pending = sim.create_vm(FIP_VM)
    with pytest.raises(pyone.OneActionException):
        one.vm.attachnic(pending, 'NIC=[NETWORK="fip-net"]')


def test_api_events_for_failed_calls_but_none_for_failed_auth(sim):
    vm_id = running_vm(sim)
    mark = len(sim.events())
    raw(sim, "one.vm.update", "oneadmin:wrong", vm_id, 'A="1"', 1)
    assert sim.events()[mark:] == []
    raw(sim, "one.vm.update", ADMIN, vm_id, 'A="1"', 2)
    raw(sim, "one.vm.info", ADMIN, 99999)
    failed = sim.events()[mark:]
    assert [(e.call, e.success) for e in failed] == [("one.vm.update", False),
                                                     ("one.vm.info", False)]
    assert failed[0].call_info.startswith("<CALL_INFO><RESULT>0</RESULT>")
    assert "<VALUE>****</VALUE>" in failed[0].call_info


def test_force_state_unknown_and_resume(sim, one):
    vm_id = running_vm(sim)
    sim.force_state(vm_id, "ACTIVE", "UNKNOWN")
    mark = len(sim.events())
    one.vm.action("resume", vm_id)
    assert state_events(sim, vm_id, mark) == [("ACTIVE", "BOOT_UNKNOWN"), ("ACTIVE", "RUNNING")]


# --------------------------------------------------------------------------------------
# Pools
# --------------------------------------------------------------------------------------

def test_pool_filters(sim, one):
    done = running_vm(sim)
    one.vm.action("terminate-hard", done)
    running = running_vm(sim)
    pending = sim.create_vm(FIP_VM, owner="alice")
    poweroff = running_vm(sim)
    one.vm.action("poweroff", poweroff)

    def ids(*args):
        pool = one.vmpool.infoextended(*args)
        return [vm.ID for vm in pool.VM]

    assert ids(-2, -1, -1, -1) == [poweroff, pending, running]       # newest first, no DONE
    assert ids(-2, -1, -1, -2) == [poweroff, pending, running, done]
    assert ids(-2, -1, -1, 6) == [done]
    assert ids(-2, -1, -1, 8) == [poweroff]
    assert ids(sim.uid_of("alice"), -1, -1, -2) == [pending]
    assert ids(-3, -1, -1, -2) == [poweroff, running, done]           # mine
    assert ids(-2, running, pending, -2) == [pending, running]        # ID range
    assert ids(-2, 1, -2, -2) == [pending, running]                  # offset 1, page of 2
    assert ids(-2, 50, -1, -2) == []


def test_pool_bodies(sim, one, vm_schema, pool_schema):
    vm_id = running_vm(sim)
    one.vm.update(vm_id, 'LABELS="web"\nFLOATING_IP="YES"', 1)
    reduced = raw(sim, "one.vmpool.info", ADMIN, -2, -1, -1, -1)[1]
    pool_schema.assertValid(with_ns(reduced))
    assert "PERMISSIONS" not in reduced and "<CPU>0.1</CPU>" in reduced
    assert "<LABELS><![CDATA[web]]></LABELS>" in reduced and "FLOATING_IP" not in reduced
    assert "<IP><![CDATA[10.77.0.2]]></IP>" in reduced and "BRIDGE" not in reduced
    extended = raw(sim, "one.vmpool.infoextended", ADMIN, -2, -1, -1, -1)[1]
    for vm in with_ns(extended):
        vm_schema.assertValid(etree.ElementTree(vm))
    assert one.vmpool.info(-2, -1, -1, -1).VM[0].TEMPLATE["NIC"]["IP"] == "10.77.0.2"


# --------------------------------------------------------------------------------------
# XSD validation of served documents
# --------------------------------------------------------------------------------------

def test_served_documents_validate_in_many_states(sim, one, vm_schema):
    documents = []

    def keep(event):
        if isinstance(event, StateEvent) and "<TM_MAD_SYSTEM>" in event.xml:
            documents.append((event.state, event.lcm_state, event.xml))

    sim.add_listener(keep)
    vm_id = running_vm(sim, FIP_VM + 'NIC=[NETWORK="v6only"]\nNIC=[NETWORK="l2-only"]\n'
                                      'NIC_ALIAS=[NETWORK="fip-net", PARENT="NIC0"]\n'
                                      'DISK=[IMAGE="alpine"]\nGRAPHICS=[TYPE="VNC"]\n'
                                      'NIC_DEFAULT=[MODEL="virtio"]\nLOGO="x"')
    one.vm.update(vm_id, {"TEMPLATE": {"D": "& < > é", "V": {"X": "1"}}}, 1)
    one.vm.update(vm_id, 'CDATA_END="a ]]> b"', 1)
    one.vm.attachnic(vm_id, 'NIC=[NETWORK="vlan-dual"]')
    one.vm.attachnic(vm_id, 'NIC_ALIAS=[NETWORK="v6only", PARENT="NIC1"]')
    one.vm.detachnic(vm_id, 4)
    for action in ("poweroff", "resume", "suspend", "resume", "stop", "resume"):
        one.vm.action(action, vm_id)
    one.vm.deploy(vm_id, 0)
    for action in ("undeploy", "resume"):
        one.vm.action(action, vm_id)
    one.vm.deploy(vm_id, 0)
    one.vm.action("terminate-hard", vm_id)
    seen = {(state, lcm) for state, lcm, _ in documents}
    assert {("ACTIVE", "RUNNING"), ("POWEROFF", "LCM_INIT"), ("SUSPENDED", "LCM_INIT"),
            ("STOPPED", "LCM_INIT"), ("UNDEPLOYED", "LCM_INIT"), ("DONE", "LCM_INIT"),
            ("ACTIVE", "HOTPLUG_NIC"), ("ACTIVE", "PROLOG")} <= seen
    for state, lcm, xml in documents:
        assert vm_schema.validate(with_ns(xml)), (state, lcm, vm_schema.error_log)
    vm_schema.assertValid(with_ns(raw(sim, "one.vm.info", ADMIN, vm_id)[1]))


def test_never_deployed_vm_lacks_tm_mad_system_like_real_oned(sim, vm_schema):
    vm_id = sim.create_vm(FIP_VM, hold=True)
    assert not vm_schema.validate(with_ns(sim.vm_xml(vm_id)))
    assert "TM_MAD_SYSTEM" in str(vm_schema.error_log)


def test_real_samples_validate_with_the_same_helper(vm_schema):
    sample = (SAMPLES / "vm-7.4-running-1nic-usertemplate-snapshot.xml").read_text()
    vm_schema.assertValid(with_ns(sample))


# --------------------------------------------------------------------------------------
# Hooks API
# --------------------------------------------------------------------------------------

def test_hook_api(sim, one):
    hook_id = one.hook.allocate('NAME="fip-update"\nTYPE="api"\nCALL="one.vm.update"\n'
                                'COMMAND="ipfloater/api"\nARGUMENTS="$API"\nARGUMENTS_STDIN="yes"')
    state_id = one.hook.allocate('NAME=fip-running TYPE=state RESOURCE=VM ON=RUNNING '
                                 'COMMAND=ipfloater/state ARGUMENTS="$TEMPLATE" TIMEOUT=30')
    hook = one.hook.info(hook_id)
    assert (hook.ID, hook.NAME, hook.TYPE) == (hook_id, "fip-update", "api")
    assert hook.TEMPLATE["CALL"] == "one.vm.update" and "NAME" not in hook.TEMPLATE
    assert [h.NAME for h in one.hookpool.info(-2, -1, -1).HOOK] == ["fip-running", "fip-update"]
    with pytest.raises(pyone.OneException, match="NAME is already taken"):
        one.hook.allocate('NAME="fip-update" TYPE=api CALL="one.vm.info" COMMAND=x')
    for bad in ['NAME=a TYPE=state RESOURCE=VM ON=NEVER COMMAND=x',
                'NAME=b TYPE=api COMMAND=x', 'NAME=c TYPE=state RESOURCE=VM ON=CUSTOM '
                'STATE=POWEROFF COMMAND=x', 'NAME=d TYPE=other COMMAND=x']:
        with pytest.raises(pyone.OneException):
            one.hook.allocate(bad)
    one.hook.update(state_id, 'TIMEOUT="5"', 1)
    assert one.hook.info(state_id).TEMPLATE["TIMEOUT"] == "5"
    assert one.hook.delete(hook_id) == hook_id
    with pytest.raises(pyone.OneNoExistsException):
        one.hook.info(hook_id)
    with pytest.raises(pyone.OneAuthorizationException):
        pyone.OneServer(sim.url, session="alice:apw").hook.allocate(
            'NAME=x TYPE=api CALL="one.vm.info" COMMAND=x')
    assert raw(sim, "one.hooklog.info", ADMIN, 0, 0, -1, 0) == [True, "<HOOKLOG></HOOKLOG>", 0]


def test_standalone_simulator_for_the_lab(tmp_path):
    import signal
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.onesim", "--port", "0",
         "--user", "oneadmin:lab", "--network", "fip-net=10.77.0.0/24,10.77.0.2,br77",
         "--network", "l2net=l2", "--hooks-dir", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=REPO)   # `-m tests.support...` from the root
    try:
        url = process.stdout.readline().strip()      # blocks until the server is up
        one = pyone.OneServer(url, session="oneadmin:lab")
        vm_id = one.vm.allocate('NAME=lab NIC=[NETWORK="fip-net"] NIC=[NETWORK="l2net"]', False)
        one.vm.deploy(vm_id, 0)
        vm = one.vm.info(vm_id)
        assert (vm.STATE, vm.LCM_STATE) == (3, 3)
        assert vm.TEMPLATE["NIC"][0]["IP"] == "10.77.0.2"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


# --------------------------------------------------------------------------------------
# Hooks stored the way a real oned 7.4.0 stores them (NOTES, "Hook registration")
# --------------------------------------------------------------------------------------

HOOKS_DIR = Path(__file__).resolve().parents[2] / "hooks"
HOOK_INFO_SAMPLES = sorted(SAMPLES.glob("api-7.4.0-one.hook.info-*.xml"))


def _hook_file(name):
    return (HOOKS_DIR / f"{name}.hook").read_text()


def _without_id(xml):
    return re.sub(r"^<HOOK><ID>\d+</ID>", "<HOOK><ID>N</ID>", xml)


@pytest.mark.parametrize("sample", HOOK_INFO_SAMPLES, ids=lambda p: p.name)
def test_allocate_stores_a_hook_file_as_the_real_oned_does(sim, sample):
    """The file (comments, ON, NAME/TYPE inside) comes back as oned 7.4.0 answered for it:
    byte for byte, but the ID."""
    name = sample.name.split("-one.hook.info-")[1][:-len(".xml")]
    ok, hook_id, _ = raw(sim, "one.hook.allocate", ADMIN, _hook_file(name))
    assert ok
    ok, xml, _ = raw(sim, "one.hook.info", ADMIN, hook_id)
    assert _without_id(xml) == _without_id(sample.read_text().strip())


def test_hookpool_holds_every_hook_as_the_real_pool_does(sim):
    for path in sorted(HOOKS_DIR.glob("*.hook")):
        assert raw(sim, "one.hook.allocate", ADMIN, path.read_text())[0]
    ok, xml, _ = raw(sim, "one.hookpool.info", ADMIN, -2, -1, -1)
    real = (SAMPLES / "api-7.4.0-one.hookpool.info.xml").read_text()

    def by_name(doc, drop_remote=()):
        root = etree.fromstring(doc.encode())
        out = {}
        for hook in root:
            template = hook.find("TEMPLATE")
            if hook.findtext("NAME") in drop_remote:
                template.remove(template.find("REMOTE"))
            out[hook.findtext("NAME")] = etree.tostring(template)
        return out
    # The real pool's ipfloater-detachnic (ID 1, the oldest) has no REMOTE: it was most
    # likely re-written by an earlier replace that omitted it (a replace drops what it
    # does not send); every hook that was only allocated has REMOTE="NO".
    assert by_name(xml, drop_remote={"ipfloater-detachnic"}) == by_name(real)


def test_hook_update_does_not_translate_on(sim):
    """A replace with the file of an ON=RUNNING hook fails as on the real oned, which
    keeps the old template; STATE/LCM_STATE, COMMAND and REMOTE are what update checks."""
    _, hook_id, _ = raw(sim, "one.hook.allocate", ADMIN, _hook_file("ipfloater-running"))
    _, before, _ = raw(sim, "one.hook.info", ADMIN, hook_id)
    assert raw(sim, "one.hook.update", ADMIN, hook_id, _hook_file("ipfloater-running"), 0) == [
        False, "[one.hook.update] Cannot update template. The STATE attribute is not defined "
        "or it's invalid.", 8192, -1, -1]
    assert raw(sim, "one.hook.update", ADMIN, hook_id, 'STATE="ACTIVE" LCM_STATE="RUNNING" '
               'RESOURCE="VM"', 0)[1] == ("[one.hook.update] Cannot update template. The "
                                          "COMMAND attribute is not defined.")
    assert raw(sim, "one.hook.info", ADMIN, hook_id)[1] == before
    assert raw(sim, "one.hook.update", ADMIN, hook_id, 'TIMEOUT="9"', 1)[0]  # merge keeps
    one = pyone.OneServer(sim.url, session=ADMIN)
    assert one.hook.info(hook_id).TEMPLATE["REMOTE"] == "NO"
    assert raw(sim, "one.hook.update", ADMIN, hook_id, 'COMMAND="c" RESOURCE="VM" '
               'STATE="ACTIVE" LCM_STATE="RUNNING"', 0)[0]
    assert "REMOTE" not in one.hook.info(hook_id).TEMPLATE  # replace drops what is not sent


def test_duplicate_hook_name_text_of_the_real_oned(sim):
    _, hook_id, _ = raw(sim, "one.hook.allocate", ADMIN, _hook_file("ipfloater-update"))
    answer = raw(sim, "one.hook.allocate", ADMIN, _hook_file("ipfloater-update"))
    assert answer[:3] == [False, f"[one.hook.allocate] NAME is already taken by Hook {hook_id}.",
                          0x4000]
