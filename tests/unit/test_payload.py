"""one_ipfloater.one.payload: real hook payloads from oned 7.4.1 and hostile input."""

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from one_ipfloater.one.payload import (
    MAX_PAYLOAD_BYTES, HookEvent, PayloadError, decode_hook_payload)
from one_ipfloater.one.vmxml import parse_vm


from tests.paths import SAMPLES
ALL_XML = sorted(p.name for p in SAMPLES.glob("*.xml"))
# API-hook payloads ($API); the api-*-one.hook* files are one.hook.info answers, not payloads.
HOOK_INFO_FILES = [n for n in ALL_XML if n.startswith("api-") and "-one.hook" in n]
API_FILES = [n for n in ALL_XML if n.startswith("api-") and n not in HOOK_INFO_FILES]
HOOKARG_FILES = [n for n in ALL_XML if n.startswith("hookarg-") or "-hookarg-" in n]
VM_FILES = [n for n in ALL_XML if n.startswith(("vm-", "hookarg-"))]


def b64(data) -> bytes:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data)


def sample_b64(name: str) -> bytes:
    return b64((SAMPLES / name).read_bytes())


# (vm_id, succeeded) per API payload, read off the files (IN 2 and RESULT).
API_FACTS = {
    "api-7.4-one.vm.attachnic-ok.xml": (0, True),
    "api-7.4-one.vm.detachnic-ok.xml": (0, True),
    "api-7.4-one.vm.update-badtype-failed.xml": (1, False),
    "api-7.4-one.vm.update-failed.xml": (99999, False),
    "api-7.4-one.vm.update-fromhook-ok.xml": (1, True),
    "api-7.4-one.vm.update-ltamp-ok.xml": (1, True),
    "api-7.4-one.vm.update-ok.xml": (0, True),
    "api-7.4-one.vm.update-replace-ok.xml": (0, True),
    "api-7.4-one.vm.update-xmltemplate-ok.xml": (1, True),
}
# (vm_id, STATE, LCM_STATE) per state-hook payload.
STATE_FACTS = {
    "hookarg-7.4-done-fip-usertemplate.xml": (1, 6, 0),
    "hookarg-7.4-done.xml": (0, 6, 0),
    "hookarg-7.4-running-after-attachnic.xml": (0, 3, 3),
    "hookarg-7.4-running-after-detachnic.xml": (0, 3, 3),
    "hookarg-7.4-running.xml": (0, 3, 3),
    "vm-6.10-hookarg-running-1nic-usertemplate-snapshot.xml": (0, 3, 3),
    "vm-7.4-hookarg-done-2nic.xml": (5, 6, 0),
    "vm-7.4-hookarg-pending-4nic-2alias.xml": (2, 1, 0),
}


def test_every_payload_sample_has_facts():
    assert set(API_FILES) == set(API_FACTS)
    assert set(HOOKARG_FILES) == set(STATE_FACTS)


@pytest.mark.parametrize("name", API_FILES)
def test_api_samples(name):
    vm_id, ok = API_FACTS[name]
    call = name.split("-")[2]  # e.g. one.vm.update
    assert decode_hook_payload(sample_b64(name)) == HookEvent("api", vm_id, None, ok, None, None)
    ev = decode_hook_payload(sample_b64(name), call=call)
    assert (ev.kind, ev.vm_id, ev.call, ev.succeeded) == ("api", vm_id, call, ok)


@pytest.mark.parametrize("name", HOOKARG_FILES)
def test_state_samples(name):
    vm_id, state, lcm = STATE_FACTS[name]
    assert decode_hook_payload(sample_b64(name)) == HookEvent("state", vm_id, None, True, state,
                                                               lcm)


@pytest.mark.parametrize("name", VM_FILES)
def test_every_vm_document_decodes_as_state_payload(name):
    raw = (SAMPLES / name).read_bytes()
    vm = parse_vm(raw)
    ev = decode_hook_payload(b64(raw))
    assert (ev.kind, ev.vm_id, ev.state, ev.lcm_state) == ("state", vm.id, vm.state,
                                                           vm.lcm_state)


@pytest.mark.parametrize("name", API_FILES[:1] + HOOKARG_FILES[:1])
def test_transport_variants(name):
    """stdin has no newline, but a shell or argv may add whitespace or wrap lines."""
    enc = sample_b64(name)
    ref = decode_hook_payload(enc)
    raw = (SAMPLES / name).read_bytes()
    for variant in (enc + b"\n", b"  " + enc + b"\r\n", enc.decode(), " " + enc.decode() + "\n",
                    base64.encodebytes(raw), bytearray(enc), memoryview(enc)):
        assert decode_hook_payload(variant) == ref


def test_ltamp_payload_is_damaged_but_the_id_survives():
    """oned does not escape: the template text arrives damaged; only the VM ID is used."""
    text = (SAMPLES / "api-7.4-one.vm.update-ltamp-ok.xml").read_text()
    assert 'FLOATING_IP_ERROR="a  b  c &gt; d"' in text
    assert decode_hook_payload(b64(text)).vm_id == 1


# --- HOOK_MESSAGE wrappers -----------------------------------------------------------------

CALL_INFO = ("<CALL_INFO><RESULT>{result}</RESULT><PARAMETERS>"
             "<PARAMETER><POSITION>1</POSITION><TYPE>IN</TYPE><VALUE>****</VALUE></PARAMETER>"
             "<PARAMETER><POSITION>2</POSITION><TYPE>IN</TYPE><VALUE>{vm}</VALUE></PARAMETER>"
             "<PARAMETER><POSITION>2</POSITION><TYPE>OUT</TYPE><VALUE>7</VALUE></PARAMETER>"
             "</PARAMETERS><EXTRA/></CALL_INFO>")


def call_info(vm="7", result="1"):
    return CALL_INFO.format(vm=vm, result=result)


def test_hook_message_api():
    msg = ("<HOOK_MESSAGE><HOOK_TYPE>API</HOOK_TYPE><CALL>one.vm.attachnic</CALL>"
           + call_info(result="0") + "</HOOK_MESSAGE>")
    assert decode_hook_payload(b64(msg)) == HookEvent("api", 7, "one.vm.attachnic", False)
    # The message's own CALL wins over the caller's hint.
    assert decode_hook_payload(b64(msg), call="one.vm.update").call == "one.vm.attachnic"
    ns = msg.replace("<HOOK_MESSAGE>", '<HOOK_MESSAGE xmlns="http://opennebula.org/XMLSchema">')
    assert decode_hook_payload(b64(ns)).vm_id == 7


def test_hook_message_state_with_and_without_vm():
    with_vm = ("<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>VM</HOOK_OBJECT>"
               "<STATE>ACTIVE</STATE><LCM_STATE>RUNNING</LCM_STATE><RESOURCE_ID>12</RESOURCE_ID>"
               "<VM><ID>12</ID><STATE>3</STATE><LCM_STATE>3</LCM_STATE></VM></HOOK_MESSAGE>")
    assert decode_hook_payload(b64(with_vm)) == HookEvent("state", 12, None, True, 3, 3)
    names_only = ("<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>VM</HOOK_OBJECT>"
                  "<STATE>POWEROFF</STATE><LCM_STATE>LCM_INIT</LCM_STATE>"
                  "<RESOURCE_ID>4</RESOURCE_ID></HOOK_MESSAGE>")
    assert decode_hook_payload(b64(names_only)) == HookEvent("state", 4, None, True, 8, 0)
    odd = names_only.replace("POWEROFF", "SOMETHING_NEW")
    assert decode_hook_payload(b64(odd)).state is None


def test_vm_payload_with_odd_states_still_gives_the_id():
    ev = decode_hook_payload(b64("<VM><ID> 3 </ID><STATE>x</STATE></VM>"))
    assert ev == HookEvent("state", 3, None, True, None, None)


def test_doctype_text_inside_a_value_is_fine():
    xml = call_info().replace("<EXTRA/>", "<EXTRA><![CDATA[<!DOCTYPE x>]]></EXTRA>")
    assert decode_hook_payload(b64(xml)).vm_id == 7


def test_xml_template_value_is_not_needed():
    """IN 3 may hold elements (XML template); only IN 2 is read."""
    xml = call_info().replace("<VALUE>****</VALUE>", "<VALUE>****</VALUE>").replace(
        "</PARAMETERS>", "<PARAMETER><POSITION>3</POSITION><TYPE>IN</TYPE><VALUE><TEMPLATE>"
        "<A>1</A></TEMPLATE></VALUE></PARAMETER></PARAMETERS>")
    assert decode_hook_payload(b64(xml)).vm_id == 7


# --- bad input -------------------------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<VM><ID>1</ID><NAME>&lol3;</NAME></VM>"""
XXE = ('<?xml version="1.0"?><!DOCTYPE VM [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       "<VM><ID>1</ID><NAME>&x;</NAME></VM>")

BAD = [
    ("empty", b"", "payload is empty"),
    ("only newline", b"\n", "payload is empty"),
    ("not base64", b"this is not base64!", "not base64"),
    ("bad padding", b"YWJjZA=", "not base64"),
    ("padding in the middle", b"YW==YWJj", "not base64"),
    ("non-ascii str", "\u00e9t\u00e9", "not base64"),
    ("non-ascii bytes", b"\xc3\xa9t\xc3\xa9", "not base64"),
    ("garbage", b64(bytes(range(256))), "not XML"),
    ("plain text", b64("hello world"), "not XML"),
    ("whitespace inside", b64("   \n  "), "nothing but whitespace"),
    ("truncated xml", b64("<VM><ID>1</ID>"), "not well-formed"),
    ("billion laughs", b64(BILLION_LAUGHS), "DTD"),
    ("external entity", b64(XXE), "DTD"),
    # oned sends UTF-8; anything not starting with "<" is refused before the XML parser.
    ("utf-16 dtd", b64('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE VM [<!ENTITY a "1">]>'
                       "<VM><ID>&a;</ID></VM>".encode("utf-16")), "not XML"),
    ("20 MB", b"A" * (20 * 1024 * 1024), "too large"),
    ("host", b64("<HOST><ID>1</ID></HOST>"), "<HOST> document"),
    ("image", b64("<IMAGE><ID>1</ID></IMAGE>"), "<IMAGE> document"),
    ("vm pool", b64("<VM_POOL/>"), "<VM_POOL> document"),
    ("vm without id", b64("<VM><STATE>3</STATE></VM>"), "VM/ID: missing"),
    ("vm id abc", b64("<VM><ID>abc</ID></VM>"), "VM/ID: 'abc' is not a VM ID"),
    ("vm id negative", b64("<VM><ID>-1</ID></VM>"), "is not a VM ID"),
    ("call_info in2 abc", b64(call_info(vm="abc")), "IN parameter 2 is 'abc', not a VM ID"),
    ("call_info in2 template", b64(call_info(vm='NAME="x"')), "not a VM ID"),
    ("call_info no in2", b64("<CALL_INFO><RESULT>1</RESULT><PARAMETERS/></CALL_INFO>"),
     "no IN parameter 2"),
    ("call_info no result", b64(call_info().replace("<RESULT>1</RESULT>", "")),
     "CALL_INFO/RESULT: missing"),
    ("call_info odd result", b64(call_info(result="yes")), "'yes' is not 0 or 1"),
    ("hook message host", b64("<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>HOST"
                              "</HOOK_OBJECT><RESOURCE_ID>0</RESOURCE_ID></HOOK_MESSAGE>"),
     "'HOST' object, expected VM"),
    ("hook message retry", b64("<HOOK_MESSAGE><ARGUMENTS>x</ARGUMENTS><HOOK_ID>3</HOOK_ID>"
                               "</HOOK_MESSAGE>"), "retry message"),
    ("hook message ids differ", b64(
        "<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>VM</HOOK_OBJECT>"
        "<RESOURCE_ID>1</RESOURCE_ID><VM><ID>2</ID></VM></HOOK_MESSAGE>"), "differs"),
    ("hook message api without call_info", b64(
        "<HOOK_MESSAGE><HOOK_TYPE>API</HOOK_TYPE><CALL>one.vm.update</CALL></HOOK_MESSAGE>"),
     "no CALL_INFO"),
    ("hook message api non-vm call", b64(
        "<HOOK_MESSAGE><HOOK_TYPE>API</HOOK_TYPE><CALL>one.host.update</CALL>"
        + call_info() + "</HOOK_MESSAGE>"), "not a VM call"),
    ("not bytes", 12345, "must be bytes or str"),
]


@pytest.mark.parametrize("raw,expected", [(r, e) for _, r, e in BAD], ids=[i for i, _, _ in BAD])
def test_bad_payloads(raw, expected):
    with pytest.raises(PayloadError) as info:
        decode_hook_payload(raw)
    msg = str(info.value)
    assert expected in msg
    assert "\n" not in msg and len(msg) < 300
    assert isinstance(info.value, ValueError)


def test_cap_is_checked_before_decoding():
    assert MAX_PAYLOAD_BYTES == 8 * 1024 * 1024
    just_over = b"A" * (MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(PayloadError, match="too large"):
        decode_hook_payload(just_over)


@pytest.mark.parametrize("call,expected", [
    ("one.host.update", "not a VM call"),
    ("rm -rf /", "not an XML-RPC method name"),
    ("one.vm.update; ls", "not an XML-RPC method name"),
    ("", "not an XML-RPC method name"),
])
def test_bad_call_argument(call, expected):
    with pytest.raises(PayloadError, match=expected):
        decode_hook_payload(b64(call_info()), call=call)


def test_call_argument_is_trimmed():
    assert decode_hook_payload(b64(call_info()), call=" one.vm.update\n").call == "one.vm.update"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_payload_error(raw):
    try:
        ev = decode_hook_payload(raw)
    except PayloadError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(ev.vm_id, int) and ev.vm_id >= 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=512))
def test_random_base64_text_only_raises_payload_error(text):
    for raw in (b64(text), b64("<VM><ID>" + text + "</ID></VM>"), b64(call_info(vm=text)),
                text):
        try:
            decode_hook_payload(raw)
        except PayloadError as exc:
            assert "\n" not in str(exc)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(["0", "1"]))
def test_any_vm_id_round_trips(vm_id, result):
    ev = decode_hook_payload(b64(call_info(vm=str(vm_id), result=result)))
    assert (ev.vm_id, ev.succeeded) == (vm_id, result == "1")
