"""one_ipfloater.one.vmxml against every real OpenNebula sample and hostile input."""

import dataclasses
import re
from ipaddress import IPv4Address

import pytest

from one_ipfloater.one import vmxml
from one_ipfloater.one.vmxml import (
    MAX_XML_BYTES, Nic, NicAlias, Vm, VmXmlError, lcm_state_name, parse_vm, parse_vm_pool,
    state_name)


from tests.paths import SAMPLES
ALL_XML = sorted(p.name for p in SAMPLES.glob("*.xml"))
VM_FILES = [n for n in ALL_XML if n.startswith(("vm-", "hookarg-"))]
POOL_FILES = [n for n in ALL_XML if n.startswith("vmpool-")]


def load(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def nics_of(vm):
    return [(n.nic_id, n.ip and str(n.ip), n.ip6) for n in vm.nics]


def aliases_of(vm):
    return [(a.nic_id, a.parent_id, a.ip and str(a.ip), a.ip6) for a in vm.aliases]


# Facts read off the raw files (names, IDs, STATE/LCM_STATE, NICs as (NIC_ID, IP, IPv6),
# aliases as (NIC_ID, PARENT_ID, IP, IPv6), and USER_TEMPLATE values that must be exact).
MULTI74_NICS = [(0, "192.168.150.103", None), (1, None, "2001:db8:10::101"),
                (2, "10.20.0.11", "2001:db8:30::aff:fe14:b"), (3, None, None)]
MULTI74_ALIASES = [(4, 0, "192.168.150.104", None), (5, 1, None, "2001:db8:10::102")]
WEB_UT = {"DESCRIPTION": "Web frontend & <proxy> \u2014 caf\u00e9", "EMPTY_ATTR": "",
          "MULTILINE": "line one\nline two", "LABELS": "web,prod", "ADDED_AFTER_BOOT": "yes"}
DUAL74 = [(0, "192.168.150.106", None), (1, "10.20.0.12", "2001:db8:30::aff:fe14:c")]

VM_FACTS = {
    "hookarg-7.4-done-fip-usertemplate.xml": dict(
        id=1, name="fip-vm-02", state=6, lcm=0, nics=[(0, "10.77.0.4", None)],
        ut={"FLOATING_IP": "YES", "FLOATING_IP_ADDRESS": "10.77.0.250",
            "FLOATING_IP_STATE": "ASSIGNED", "FLOATING_IP_CMP": "YES",
            "FLOATING_IP_ERROR": "a < b & c > d", "NEW_EMPTY_ATTR": "", "A": "1",
            "NL_VIA_FLAT": "x\ny", "NL_VIA_NESTED": "x\ny", "ESCAPED_QUOTE": 'say "hi" now',
            "Q": 'a "b"', "QUOTE_VIA_PYONE_NESTED": 'a "b" c'}, ut_exact=True),
    "hookarg-7.4-done.xml": dict(id=0, name="fip-vm-01", state=6, lcm=0,
                                 nics=[(0, "10.77.0.2", None)], ut={"FLOATING_IP": "NO"},
                                 ut_exact=True),
    "hookarg-7.4-running-after-attachnic.xml": dict(
        id=0, name="fip-vm-01", state=3, lcm=3,
        nics=[(0, "10.77.0.2", None), (1, "10.77.0.3", None)], ut={"FLOATING_IP": "NO"},
        prev_lcm=25),
    "hookarg-7.4-running-after-detachnic.xml": dict(
        id=0, name="fip-vm-01", state=3, lcm=3, nics=[(0, "10.77.0.2", None)]),
    "hookarg-7.4-running.xml": dict(id=0, name="fip-vm-01", state=3, lcm=3,
                                    nics=[(0, "10.77.0.2", None)], ut={}, ut_exact=True,
                                    prev_lcm=2),
    "vm-5.10-done-1nic.xml": dict(id=0, name="CentOS 7 - KVM-0", state=6, lcm=0,
                                  nics=[(0, "192.168.122.2", None)],
                                  ut={"INPUTS_ORDER": "", "MEMORY_UNIT_COST": "MB"}),
    "vm-5.10-poweroff-1nic.xml": dict(id=1, name="CentOS 7 - KVM-1", state=8, lcm=0,
                                      nics=[(0, "192.168.122.2", None)]),
    "vm-5.2-vrouter-2nic-done.xml": dict(
        id=454, name="vr-vrtest-0", state=6, lcm=0,
        nics=[(0, "192.168.2.77", None), (1, "192.168.190.3", None)], ut={"VROUTER": "YES"},
        vrouter_id=0),
    "vm-5.4-poweroff-1nic-2disk.xml": dict(id=621, name="kolab", state=8, lcm=0,
                                           nics=[(0, "192.168.2.108", None)]),
    "vm-5.4-undeployed-1nic-13history.xml": dict(
        id=595, name="master0.s88.lab", state=9, lcm=0, nics=[(0, "192.168.2.91", None)],
        ut={"SERVICE_ID": "88", "ROLE_NAME": "master", "LABELS": "OpenShift"}),
    "vm-5.4.6-running-nonic.xml": dict(id=5, name="Debian 9 - KVM-5", state=3, lcm=3, nics=[],
                                       ut={"LOGO": "images/logos/debian.png"}, ut_exact=True),
    "vm-5.6-running-1nic-trailing-space-name.xml": dict(
        id=1004, name="5GMediaMonitoring   ", uid=19, gid=105, uname="francesco", state=3,
        lcm=3, nics=[(0, "10.50.0.0", None)]),
    "vm-5.8-pending-minimal.xml": dict(id=0, name="testvm1", state=1, lcm=0, nics=[], ut={},
                                       ut_exact=True),
    "vm-6.10-done-2nic-dualstack.xml": dict(
        id=4, name="done-01", state=6, lcm=0,
        nics=[(0, "192.168.150.104", None), (1, "10.20.0.11", "2001:db8:30::aff:fe14:b")]),
    "vm-6.10-hookarg-running-1nic-usertemplate-snapshot.xml": dict(
        id=0, name="web-01", state=3, lcm=3, nics=[(0, "192.168.150.100", None)], ut=WEB_UT,
        vectors={"HOOK_VARS": {"BACKUP": "yes", "OWNER": "team-a"}}),
    "vm-6.10-running-5nic-2alias-ipv6.xml": dict(
        id=1, name="multi-nic-01", state=3, lcm=3,
        nics=[(0, "192.168.150.101", None), (1, None, "2001:db8:10::100"),
              (2, "10.20.0.10", "2001:db8:30::aff:fe14:a"), (3, None, None),
              (6, None, "2001:db8:10::103")],
        aliases=[(4, 0, "192.168.150.102", None), (5, 1, None, "2001:db8:10::101")]),
    "vm-6.8-pending-1disk-schedmsg.xml": dict(id=4, name="image_missing", state=1, lcm=0,
                                              nics=[]),
    "vm-7.4-done-2nic-dualstack.xml": dict(id=5, name="done-01", state=6, lcm=0, nics=DUAL74),
    "vm-7.4-hold-never-deployed.xml": dict(id=7, name="hold-01", state=2, lcm=0,
                                           nics=[(0, "192.168.150.108", None)]),
    "vm-7.4-hookarg-done-2nic.xml": dict(id=5, name="done-01", state=6, lcm=0, nics=DUAL74,
                                         prev_state=3),
    "vm-7.4-hookarg-pending-4nic-2alias.xml": dict(
        id=2, name="multi-nic-01", state=1, lcm=0, nics=MULTI74_NICS, aliases=MULTI74_ALIASES),
    "vm-7.4-poweroff-1nic.xml": dict(id=4, name="poweroff-01", state=8, lcm=0,
                                     nics=[(0, "192.168.150.105", None)]),
    "vm-7.4-running-1nic-usertemplate-snapshot.xml": dict(
        id=1, name="web-01", state=3, lcm=3, nics=[(0, "192.168.150.102", None)], ut=WEB_UT,
        vectors={"HOOK_VARS": {"BACKUP": "yes", "OWNER": "team-a"}}),
    "vm-7.4-running-5nic-2alias-ipv6.xml": dict(
        id=2, name="multi-nic-01", state=3, lcm=3,
        nics=MULTI74_NICS + [(6, None, "2001:db8:10::104")], aliases=MULTI74_ALIASES,
        ut={"LOGO": "images/logos/alpine.png"}, ut_exact=True),
    "vm-7.4-running-ipv6only.xml": dict(id=3, name="v6only-01", state=3, lcm=3,
                                        nics=[(0, None, "2001:db8:10::103")]),
}

POOL_FACTS = {
    "vmpool-5.4.6-1vm.xml": dict(ids=[5], reduced=False),
    "vmpool-5.8-reduced-body.xml": dict(ids=[0], reduced=True),
    "vmpool-7.4-info-reduced.xml": dict(ids=[7, 6, 4, 3, 2, 1], reduced=True),
    "vmpool-7.4-infoextended.xml": dict(ids=[7, 6, 4, 3, 2, 1], reduced=False),
}


def test_every_sample_has_facts():
    """A new sample must get facts here, and no fact may point at a vanished file."""
    assert set(VM_FILES) == set(VM_FACTS)
    assert set(POOL_FILES) == set(POOL_FACTS)
    assert set(ALL_XML) == set(VM_FILES) | set(POOL_FILES) | {
        n for n in ALL_XML if n.startswith("api-")}


@pytest.mark.parametrize("name", VM_FILES)
def test_vm_sample_facts(name):
    vm = parse_vm(load(name))
    f = VM_FACTS[name]
    assert (vm.id, vm.name, vm.state, vm.lcm_state) == (f["id"], f["name"], f["state"], f["lcm"])
    assert (vm.uid, vm.gid, vm.uname) == (f.get("uid", 0), f.get("gid", 0),
                                          f.get("uname", "oneadmin"))
    assert nics_of(vm) == f["nics"]
    assert aliases_of(vm) == f.get("aliases", [])
    if f.get("ut_exact"):
        assert dict(vm.user_template) == f["ut"]
    for key, value in f.get("ut", {}).items():
        assert vm.user_template[key] == value
    assert {k: dict(v) for k, v in vm.user_vectors.items()} == f.get("vectors", {})
    assert vm.vrouter_id == f.get("vrouter_id")
    if "prev_lcm" in f:
        assert vm.prev_lcm_state == f["prev_lcm"]
    if "prev_state" in f:
        assert vm.prev_state == f["prev_state"]
    assert vm.reduced is False


@pytest.mark.parametrize("name", VM_FILES)
def test_vm_sample_invariants(name):
    vm = parse_vm(load(name))
    ids = [n.nic_id for n in vm.nics]
    assert ids == sorted(ids)
    all_ids = ids + [a.nic_id for a in vm.aliases]
    assert len(all_ids) == len(set(all_ids))
    for n in vm.nics + vm.aliases:
        assert n.ip is None or isinstance(n.ip, IPv4Address)
        assert n.mac and re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", n.mac)
        assert all(k == k.upper() and isinstance(v, str) for k, v in n.attrs.items())
        assert n.attrs["NIC_ID"].strip() == str(n.nic_id)
    for key, value in vm.user_template.items():
        assert isinstance(value, str) and key == key.upper()
    assert not set(vm.user_template) & set(vm.user_vectors)
    assert state_name(vm.state) == vm.state_name != f"UNKNOWN({vm.state})"
    assert lcm_state_name(vm.lcm_state) == vm.lcm_state_name
    hash(vm)


def _variants(raw: bytes):
    """The same document compact/pretty-agnostic: with and without declaration and xmlns."""
    text = raw.decode("utf-8")
    bare = re.sub(r"^<\?xml[^>]*\?>\s*", "", text)
    bare = bare.replace(' xmlns="http://opennebula.org/XMLSchema"', "", 1)
    namespaced = bare.replace("<VM>", '<VM xmlns="http://opennebula.org/XMLSchema">', 1)
    prefixed = re.sub(r"<(/?)([A-Z_][A-Z0-9_]*)([ >/])", r"<\1one:\2\3", bare)
    prefixed = prefixed.replace("<one:VM>", '<one:VM xmlns:one="http://opennebula.org/XMLSchema">',
                                1)
    decl = '<?xml version="1.0" encoding="UTF-8"?>\n' + bare
    return [bare, bare.encode(), namespaced, prefixed.encode(), decl, decl.encode()]


@pytest.mark.parametrize("name", VM_FILES)
def test_vm_sample_variants_parse_the_same(name):
    ref = parse_vm(load(name))
    for variant in _variants(load(name)):
        assert parse_vm(variant) == ref


def test_specific_sample_details():
    multi = parse_vm(load("vm-7.4-running-5nic-2alias-ipv6.xml"))
    v6 = multi.nic(1)
    assert v6.ip is None and v6.ip6 == "2001:db8:10::101" and v6.network == "v6only"
    l2 = multi.nic(3)
    assert (l2.ip, l2.ip6, l2.mac, l2.network, l2.network_id) == (
        None, None, "02:00:73:ba:6e:98", "l2-only", 3)
    assert multi.nic(4) is None  # an alias, not a NIC
    dual = multi.nic(2)
    assert dual.attrs["IP6_LINK"] == "fe80::aff:fe14:b" and dual.attrs["VLAN_ID"] == "120"
    assert multi.nic(0).attrs["NAME"] == "pub0" and multi.nic(0).attrs["ALIAS_IDS"] == "4"
    a4 = multi.aliases[0]
    assert isinstance(a4, NicAlias)
    assert (a4.nic_id, a4.parent_id, a4.alias_id, a4.parent, a4.attrs["NAME"]) == (
        4, 0, 0, "pub0", "NIC0_ALIAS4")

    vr = parse_vm(load("vm-5.2-vrouter-2nic-done.xml"))
    assert vr.nic(0).attrs["FLOATING_IP"] == "YES"
    assert vr.nic(0).attrs["VROUTER_IP"] == "192.168.2.76"
    assert "FLOATING_IP" not in vr.nic(1).attrs

    g = parse_vm(load("vm-5.6-running-1nic-trailing-space-name.xml"))
    assert g.nic(0).network == "5GMedia" and g.nic(0).network_id == 45
    assert g.nic(0).attrs["CLUSTER_ID"] == "0,100,101"

    err = parse_vm(load("vm-5.10-done-1nic.xml")).user_template["ERROR"]
    assert err.startswith("Mon Jun  3 12:11:33 2019 : Error deploying")  # double space kept

    sched = parse_vm(load("vm-6.8-pending-1disk-schedmsg.xml")).user_template["SCHED_MESSAGE"]
    assert "Cannot dispatch VM" in sched


@pytest.mark.parametrize("name", POOL_FILES)
def test_pool_samples(name):
    vms = parse_vm_pool(load(name))
    f = POOL_FACTS[name]
    assert [vm.id for vm in vms] == f["ids"]
    assert all(vm.reduced is f["reduced"] for vm in vms)


def test_pool_reduced_vs_extended_aliases():
    """The reduced pool body lists NIC_ALIAS entries as plain NICs: hence Vm.reduced."""
    reduced = {vm.id: vm for vm in parse_vm_pool(load("vmpool-7.4-info-reduced.xml"))}
    full = {vm.id: vm for vm in parse_vm_pool(load("vmpool-7.4-infoextended.xml"))}
    assert [n.nic_id for n in reduced[2].nics] == [0, 1, 2, 3, 4, 5, 6]
    assert reduced[2].aliases == ()
    assert [n.nic_id for n in full[2].nics] == [0, 1, 2, 3, 6]
    assert [a.nic_id for a in full[2].aliases] == [4, 5]
    assert dict(reduced[1].user_template) == {"LABELS": "web,prod"}
    single = parse_vm(load("vm-7.4-running-5nic-2alias-ipv6.xml"))
    assert full[2] == single


# --- synthetic documents -------------------------------------------------------------------

HEAD = ("<VM><ID>{id}</ID><UID>0</UID><GID>0</GID><UNAME>u</UNAME><NAME>n</NAME>"
        "<PERMISSIONS/><STATE>{state}</STATE><LCM_STATE>{lcm}</LCM_STATE>")


def doc(body: str = "", *, id="1", state="3", lcm="3") -> str:
    return HEAD.format(id=id, state=state, lcm=lcm) + body + "</VM>"


def test_empty_element_forms_are_equal():
    a = parse_vm(doc("<TEMPLATE/><USER_TEMPLATE><X/></USER_TEMPLATE>"))
    b = parse_vm(doc("<TEMPLATE></TEMPLATE><USER_TEMPLATE><X></X></USER_TEMPLATE>"))
    c = parse_vm(doc("<USER_TEMPLATE><X><![CDATA[]]></X></USER_TEMPLATE>"))
    assert a == b == c
    assert a.user_template["X"] == ""


def test_cdata_kept_exactly():
    vm = parse_vm(doc("<USER_TEMPLATE><V><![CDATA[  a & b < c\n d  ]]></V>"
                      "<W>  plain  </W></USER_TEMPLATE>"))
    assert vm.user_template["V"] == "  a & b < c\n d  "
    assert vm.user_template["W"] == "  plain  "


def test_doctype_text_in_a_value_is_just_text():
    """Only a real DTD is refused, not a user's value that mentions one."""
    vm = parse_vm(doc("<USER_TEMPLATE><DESCRIPTION><![CDATA[<!DOCTYPE html><!ENTITY x \"y\">]]>"
                      "</DESCRIPTION></USER_TEMPLATE>"))
    assert vm.user_template["DESCRIPTION"] == '<!DOCTYPE html><!ENTITY x "y">'


def test_keys_upper_cased_first_wins_and_vectors_apart():
    vm = parse_vm(doc("<USER_TEMPLATE><floating_ip>yes</floating_ip><FLOATING_IP>NO</FLOATING_IP>"
                      "<VEC><A>1</A><B><C>deep</C></B></VEC><VEC>flat-later</VEC>"
                      "</USER_TEMPLATE>"))
    assert vm.user_template["FLOATING_IP"] == "yes"
    assert dict(vm.user_vectors["VEC"]) == {"A": "1"}
    assert "VEC" not in vm.user_template


def test_nic_fields_and_sorting():
    vm = parse_vm(doc(
        "<TEMPLATE>"
        "<NIC><NIC_ID>7</NIC_ID><IP6_ULA>fd00::7</IP6_ULA><MAC> 02:00:00:00:00:07 </MAC></NIC>"
        "<NIC><NIC_ID> 2 </NIC_ID><IP> 10.0.0.2 </IP><NETWORK>net</NETWORK>"
        "<NETWORK_ID>5</NETWORK_ID><floating_ip>YES</floating_ip></NIC>"
        "<NIC><NIC_ID>3</NIC_ID><IP></IP><IP6/></NIC>"
        "<NIC_ALIAS><NIC_ID>4</NIC_ID><PARENT_ID>2</PARENT_ID><IP>10.0.0.4</IP></NIC_ALIAS>"
        "<VROUTER_ID>9</VROUTER_ID>"
        "</TEMPLATE>"))
    assert [n.nic_id for n in vm.nics] == [2, 3, 7]
    n2, n3, n7 = vm.nics
    assert n2 == Nic(2, IPv4Address("10.0.0.2"), None, None, "net", 5, n2.attrs)
    assert n2.attrs["FLOATING_IP"] == "YES"
    assert (n3.ip, n3.ip6, n3.mac, n3.network, n3.network_id) == (None, None, None, None, None)
    assert (n7.ip6, n7.mac) == ("fd00::7", "02:00:00:00:00:07")
    assert vm.aliases == (NicAlias(4, 2, None, None, IPv4Address("10.0.0.4"),
                                   attrs=vm.aliases[0].attrs),)
    assert vm.vrouter_id == 9


def test_unknown_states_do_not_crash():
    vm = parse_vm(doc(state="42", lcm="99"))
    assert (vm.state, vm.lcm_state) == (42, 99)
    assert vm.state_name == "UNKNOWN(42)" and vm.lcm_state_name == "UNKNOWN(99)"
    assert state_name(None) == "UNKNOWN(None)" and lcm_state_name("x") == "UNKNOWN(x)"
    assert lcm_state_name(16) == "UNKNOWN" and lcm_state_name(71) == "RESTORE"
    assert lcm_state_name(65) == "HOTPLUG_NIC_POWEROFF" and lcm_state_name(25) == "HOTPLUG_NIC"
    assert state_name(9) == "UNDEPLOYED" and state_name(11) == "CLONING_FAILURE"
    assert (vmxml.DONE, vmxml.POWEROFF, vmxml.RUNNING, vmxml.BACKUP_POWEROFF) == (6, 8, 3, 70)


def test_frozen():
    vm = parse_vm(doc("<TEMPLATE><NIC><NIC_ID>0</NIC_ID><IP>10.0.0.1</IP></NIC></TEMPLATE>"
                      "<USER_TEMPLATE><A>1</A></USER_TEMPLATE>"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        vm.id = 2
    with pytest.raises(TypeError):
        vm.user_template["A"] = "2"
    with pytest.raises(TypeError):
        vm.nics[0].attrs["IP"] = "x"
    again = dataclasses.replace(vm, user_template={"B": "2"})
    with pytest.raises(TypeError):
        again.user_template["B"] = "3"
    assert Vm(1, "n", 0, 0, "u", 3, 3, user_vectors={"V": {"A": "1"}}).user_vectors["V"]["A"] == "1"


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<VM><ID>1</ID><NAME>&lol4;</NAME></VM>"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE VM [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<VM><ID>1</ID><NAME>&xxe;</NAME></VM>"""

BAD_DOCS = [
    ("empty", b"", "is empty"),
    ("blank", b"  \n ", "is empty"),
    ("not xml", b"hello", "not well-formed"),
    ("truncated", doc()[:-3], "not well-formed"),
    ("host", "<HOST><ID>1</ID></HOST>", "document root is <HOST>, expected <VM>"),
    ("pool given to parse_vm", "<VM_POOL/>", "document root is <VM_POOL>, expected <VM>"),
    ("id abc", doc(id="abc"), "VM/ID: 'abc' is not an integer"),
    ("id float", doc(id="1.5"), "VM/ID: '1.5' is not an integer"),
    ("id unicode digits", doc(id="\u0661"), "VM/ID: '\u0661' is not an integer"),
    ("id empty", doc(id=""), "VM/ID: empty"),
    ("state missing", "<VM><ID>1</ID><UID>0</UID><GID>0</GID><LCM_STATE>0</LCM_STATE></VM>",
     "VM/STATE: missing"),
    ("lcm garbage", doc(lcm="RUNNING"), "VM/LCM_STATE: 'RUNNING' is not an integer"),
    ("nic id garbage", doc("<TEMPLATE><NIC><NIC_ID>x</NIC_ID></NIC></TEMPLATE>"),
     "VM/TEMPLATE/NIC[0]/NIC_ID: 'x' is not an integer"),
    ("nic id missing", doc("<TEMPLATE><NIC><IP>10.0.0.1</IP></NIC></TEMPLATE>"),
     "VM/TEMPLATE/NIC[0]/NIC_ID: missing"),
    ("nic ip garbage", doc("<TEMPLATE><NIC><NIC_ID>0</NIC_ID><IP>10.0.0</IP></NIC></TEMPLATE>"),
     "VM/TEMPLATE/NIC[0]/IP: '10.0.0' is not an IPv4 address"),
    ("nic ip v6 in IP", doc("<TEMPLATE><NIC><NIC_ID>0</NIC_ID><IP>::1</IP></NIC></TEMPLATE>"),
     "is not an IPv4 address"),
    ("network id garbage",
     doc("<TEMPLATE><NIC><NIC_ID>0</NIC_ID><NETWORK_ID>n</NETWORK_ID></NIC></TEMPLATE>"),
     "VM/TEMPLATE/NIC[0]/NETWORK_ID: 'n' is not an integer"),
    ("duplicate nic id", doc("<TEMPLATE><NIC><NIC_ID>0</NIC_ID></NIC>"
                             "<NIC_ALIAS><NIC_ID>0</NIC_ID></NIC_ALIAS></TEMPLATE>"),
     "NIC_ID 0 appears twice"),
    ("billion laughs", BILLION_LAUGHS, "DTD"),
    ("external entity", XXE, "DTD"),
    ("utf-16 dtd", ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE VM [<!ENTITY a "b">]>'
                    "<VM><ID>&a;</ID></VM>").encode("utf-16"), "DTD"),
    ("undefined entity", "<VM><ID>&a;</ID></VM>", "not well-formed"),
    # A comment holding "<A" ends the cheap prolog scan early: the parse-time guards remain.
    ("bomb behind comment", "<!-- <A -->" + BILLION_LAUGHS.split("?>", 1)[1], "entity"),
    ("xxe behind comment", "<!-- <A -->" + XXE.split("?>", 1)[1], "DTD"),
    ("xxe in attribute", '<!-- <A --><!DOCTYPE VM [<!ENTITY x SYSTEM "file:///etc/hostname">]>'
     '<VM a="&x;"><ID>1</ID></VM>', "external entity"),
    ("external dtd", '<!-- <A --><!DOCTYPE VM SYSTEM "http://127.0.0.1:9/x.dtd"><VM/>', "DTD"),
    ("too large", doc("<USER_TEMPLATE><X>" + "a" * MAX_XML_BYTES + "</X></USER_TEMPLATE>"),
     "too large"),
    ("long garbage value", doc(id="x" * 500), "is not an integer"),
    ("not bytes", 42, "expected bytes or str"),
]


@pytest.mark.parametrize("data,expected", [(d, e) for _, d, e in BAD_DOCS],
                         ids=[i for i, _, _ in BAD_DOCS])
def test_bad_documents(data, expected):
    with pytest.raises(VmXmlError) as info:
        parse_vm(data)
    msg = str(info.value)
    assert expected in msg
    assert "\n" not in msg and len(msg) < 300
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("data,expected", [
    ("<VM/>", "document root is <VM>, expected <VM_POOL>"),
    ("<VM_POOL><HOST/></VM_POOL>", "VM_POOL child 0 is <HOST>, expected <VM>"),
    ("<VM_POOL>" + doc() + doc(id="x") + "</VM_POOL>", "VM_POOL/VM[1]/ID: 'x' is not an integer"),
])
def test_bad_pools(data, expected):
    with pytest.raises(VmXmlError, match=re.escape(expected)):
        parse_vm_pool(data)


def test_pool_empty_and_max_bytes():
    assert parse_vm_pool("<VM_POOL/>") == ()
    with pytest.raises(VmXmlError, match="too large"):
        parse_vm(doc(), max_bytes=10)
