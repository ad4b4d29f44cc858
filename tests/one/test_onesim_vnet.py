"""``one.vn.info`` of the oned simulator: the VNET document oned 7.x writes (vnet.xsd),
with the network's TEMPLATE, its address range and leases; oned's error codes."""

import xmlrpc.client

import pyone
import pytest
from lxml import etree

from tests.one.test_onesim import NS, with_ns
from tests.paths import XSD
from tests.support.onesim import AUTHORIZATION, NO_EXISTS, OneSimulator

ADMIN = "oneadmin:pw"


@pytest.fixture
def sim():
    with OneSimulator(users={"oneadmin": "pw", "alice": "apw"}, seed=7) as simulator:
        simulator.add_network("fip-net", "10.77.0.0/24", "10.77.0.2", bridge="br77",
                              gateway="10.77.0.1", dns="10.77.0.1",
                              template='FLOATING_IP_POOL="campus"\nLABELS="a&b <c>"')
        simulator.add_network("v6only", "2001:db8:10::/64", "2001:db8:10::101", bridge="br6")
        simulator.add_network("l2-only", bridge="br9", other_use=True)
        simulator.add_network("vlan", "10.20.0.0/16", "10.20.0.11", vn_mad="802.1Q",
                              bridge="onebr.120", vlan_id="120", phydev="eth1")
        yield simulator


@pytest.fixture(scope="module")
def vnet_schema():
    return etree.XMLSchema(etree.parse(str(XSD / "vnet.xsd")))


def info(sim, session, net_id):
    return xmlrpc.client.ServerProxy(sim.url).one.vn.info(session, net_id)


def test_every_kind_of_network_validates_with_and_without_leases(sim, vnet_schema):
    for net_id in (0, 2, 3):
        ok, xml, code = info(sim, ADMIN, net_id)
        assert ok and code == 0
        vnet_schema.assertValid(with_ns(xml))
    vm_id = sim.create_vm('NAME="a" NIC=[NETWORK="fip-net"] NIC=[NETWORK="l2-only"]')
    sim.deploy(vm_id)
    for net_id in (0, 2):
        xml = info(sim, ADMIN, net_id)[1]
        vnet_schema.assertValid(with_ns(xml))
        root = etree.fromstring(xml.encode())
        assert root.findtext("USED_LEASES") == "1" and root.findtext("AR_POOL/AR/USED_LEASES") == "1"
        assert root.findtext("AR_POOL/AR/LEASES/LEASE/VM") == str(vm_id)
    assert etree.fromstring(info(sim, ADMIN, 0)[1].encode()).findtext("AR_POOL/AR/LEASES/LEASE/IP") == "10.77.0.2"


def test_an_ip6_static_range_fails_the_schema_like_oneds(sim, vnet_schema):
    """oned writes AR attributes from a sorted map (AddressRange::to_xml): IP6 and
    PREFIX_LENGTH where the schema has no place for them. Parse leniently (NOTES.md)."""
    ok, xml, _ = info(sim, ADMIN, 1)
    assert ok and not vnet_schema.validate(with_ns(xml)) and "IP6" in str(vnet_schema.error_log)
    ar = [e.tag for e in etree.fromstring(xml.encode()).find("AR_POOL/AR")]
    assert ar[:6] == ["AR_ID", "IP6", "MAC", "NEXT_INDEX", "PREFIX_LENGTH", "SIZE"]


def test_the_schema_bites(sim, vnet_schema):
    """Negative control: a VNET without its AR_POOL is refused by the same schema."""
    root = with_ns(info(sim, ADMIN, 0)[1])
    root.remove(root.find(f"{{{NS}}}AR_POOL"))
    assert not vnet_schema.validate(root)


def test_template_holds_the_users_attributes_in_cdata_sorted(sim):
    xml = info(sim, ADMIN, 0)[1]
    assert "<FLOATING_IP_POOL><![CDATA[campus]]></FLOATING_IP_POOL>" in xml
    assert "<LABELS><![CDATA[a&b <c>]]></LABELS>" in xml
    tags = [e.tag for e in etree.fromstring(xml.encode()).find("TEMPLATE")]
    assert tags == sorted(tags) and "VN_MAD" in tags and "BRIDGE" in tags
    sim.update_network("fip-net", 'FLOATING_IP_POOL="dc-2"')
    assert etree.fromstring(info(sim, ADMIN, 0)[1].encode()).findtext("TEMPLATE/FLOATING_IP_POOL") == "dc-2"
    # pyone reads it like any other document
    vnet = pyone.OneServer(sim.url, session=ADMIN).vn.info(0)
    assert vnet.TEMPLATE["FLOATING_IP_POOL"] == "dc-2" and vnet.NAME == "fip-net"


def test_errors_are_oneds(sim):
    assert info(sim, ADMIN, 42) == [False, "[one.vn.info] Error getting virtual network [42].",
                                    NO_EXISTS, 42, -1]
    alice = sim.uid_of("alice")
    assert info(sim, "alice:apw", 0) == [
        False, f"[one.vn.info] User [{alice}] : Not authorized to perform USE NET [0].",
        AUTHORIZATION, -1, -1]
    assert info(sim, "alice:apw", 2)[0]  # OTHER_U
    with pytest.raises(pyone.OneNoExistsException):
        pyone.OneServer(sim.url, session=ADMIN).vn.info(42)
    with pytest.raises(pyone.OneAuthorizationException):
        pyone.OneServer(sim.url, session="alice:apw").vn.info(0)
