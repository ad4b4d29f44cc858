"""Decode what an OpenNebula hook receives (``$TEMPLATE`` or ``$API``, base64) into a HookEvent.

oned does not escape values it puts into hook payloads (``api-7.4-one.vm.update-ltamp-ok.xml``
shows ``a < b & c`` arriving as ``a  b  c``), and ``onehook retry`` replays stale payloads.
So the only thing taken from a payload as fact is the VM ID (plus the call's RESULT and, for
state hooks, the STATE codes as a hint); the caller re-reads the VM with ``one.vm.info``.

Accepted decoded documents:

* ``<VM>``: a state hook's ``$TEMPLATE``.
* ``<CALL_INFO>``: an API hook's ``$API``. It does not name the XML-RPC method, so the caller
  passes the hook's CALL (e.g. from its ARGUMENTS) as ``call``. The VM ID is IN parameter 2,
  which holds for every ``one.vm.*`` call a floating-IP hook listens to.
* ``<HOOK_MESSAGE>``: the Hook Manager's full event (``hook_message_state.xsd`` /
  ``hook_message_api.xsd``); its CALL, when present, overrides ``call``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Optional, Union

from lxml import etree

from .vmxml import LCM_STATE_NAMES, STATE_NAMES, VmXmlError, safe_xml_root

__all__ = ["MAX_PAYLOAD_BYTES", "PayloadError", "HookEvent", "decode_hook_payload"]

#: Cap on the base64 text; a VM document is far smaller (its decoded size is 3/4 of this).
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024

_WS = b" \t\r\n\v\f"
_B64_ALPHABET = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_B64_RE = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_INT_RE = re.compile(r"[0-9]+")
_CALL_RE = re.compile(r"one\.[a-z]+\.[a-z_]+")


class PayloadError(ValueError):
    """A hook payload could not be used; the message is one line saying why."""


@dataclass(frozen=True)
class HookEvent:
    """A decoded hook event. ``kind`` is "state" (``$TEMPLATE``) or "api" (``$API``).
    ``succeeded`` is the API call's RESULT (always True for state events). ``state`` and
    ``lcm_state`` are the numbers in a state payload, None for API events or when the
    payload's values are unusable: they are a hint, the VM must be re-read."""

    kind: str
    vm_id: int
    call: Optional[str] = None
    succeeded: bool = True
    state: Optional[int] = None
    lcm_state: Optional[int] = None


def _show(value: object, limit: int = 40) -> str:
    if isinstance(value, (bytes, str)) and len(value) > limit:
        value = value[:limit] + (b"..." if isinstance(value, bytes) else "...")
    return repr(value)


def _vm_id(text: Optional[str], where: str) -> int:
    if text is None:
        raise PayloadError(f"{where}: missing")
    t = text.strip()
    if not _INT_RE.fullmatch(t):
        raise PayloadError(f"{where}: {_show(text)} is not a VM ID")
    return int(t)


def _hint_int(text: Optional[str]) -> Optional[int]:
    """A number that is only a hint: None instead of an error when it is not one."""
    if text is None:
        return None
    t = text.strip()
    return int(t) if _INT_RE.fullmatch(t) else None


def _by_name(names: dict, text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    t = text.strip()
    if _INT_RE.fullmatch(t):
        return int(t)
    for code, name in names.items():
        if name == t.upper():
            return code
    return None


def _check_call(call: Optional[str]) -> Optional[str]:
    if call is None:
        return None
    if not isinstance(call, str) or not _CALL_RE.fullmatch(call.strip()):
        raise PayloadError(f"call {_show(call)} is not an XML-RPC method name like one.vm.update")
    call = call.strip()
    if not call.startswith("one.vm."):
        raise PayloadError(f"call {call!r} is not a VM call (one.vm.*)")
    return call


def _from_vm(vm: etree._Element, call: Optional[str]) -> HookEvent:
    return HookEvent(
        kind="state",
        vm_id=_vm_id(vm.findtext("ID"), "VM/ID"),
        call=call,
        succeeded=True,
        state=_hint_int(vm.findtext("STATE")),
        lcm_state=_hint_int(vm.findtext("LCM_STATE")),
    )


def _from_call_info(ci: etree._Element, call: Optional[str]) -> HookEvent:
    result = ci.findtext("RESULT")
    if result is None:
        raise PayloadError("CALL_INFO/RESULT: missing")
    if result.strip() not in ("0", "1"):
        raise PayloadError(f"CALL_INFO/RESULT: {_show(result)} is not 0 or 1")
    vm_id_text = None
    found = False
    for p in ci.iterfind("PARAMETERS/PARAMETER"):
        if (p.findtext("TYPE") or "").strip() == "IN" and \
                (p.findtext("POSITION") or "").strip() == "2":
            value = p.find("VALUE")
            vm_id_text = "" if value is None else "".join(value.itertext())
            found = True
            break
    if not found:
        raise PayloadError("CALL_INFO: no IN parameter 2 (the VM ID)")
    t = vm_id_text.strip()
    if not _INT_RE.fullmatch(t):
        raise PayloadError(f"CALL_INFO: IN parameter 2 is {_show(vm_id_text)}, not a VM ID "
                           "(not a one.vm.* call?)")
    return HookEvent(kind="api", vm_id=int(t), call=call,
                     succeeded=result.strip() == "1")


def _from_hook_message(msg: etree._Element, call: Optional[str]) -> HookEvent:
    hook_type = (msg.findtext("HOOK_TYPE") or "").strip().upper()
    if hook_type == "API":
        msg_call = msg.findtext("CALL")
        if msg_call is not None and msg_call.strip():
            call = _check_call(msg_call)
        ci = msg.find("CALL_INFO")
        if ci is None:
            raise PayloadError("HOOK_MESSAGE of type API has no CALL_INFO")
        return _from_call_info(ci, call)
    if hook_type == "STATE":
        obj = (msg.findtext("HOOK_OBJECT") or "").strip()
        if obj != "VM":
            raise PayloadError(f"HOOK_MESSAGE is about a {_show(obj)} object, expected VM")
        vm = msg.find("VM")
        rid = msg.findtext("RESOURCE_ID")
        if rid is None and vm is None:
            raise PayloadError("HOOK_MESSAGE/RESOURCE_ID: missing")
        vm_id = _vm_id(rid, "HOOK_MESSAGE/RESOURCE_ID") if rid is not None else None
        if vm is not None:
            inner = _from_vm(vm, call)
            if vm_id is not None and inner.vm_id != vm_id:
                raise PayloadError(f"HOOK_MESSAGE: RESOURCE_ID {vm_id} differs from "
                                   f"VM/ID {inner.vm_id}")
            return inner
        return HookEvent(kind="state", vm_id=vm_id, call=call, succeeded=True,
                         state=_by_name(dict(STATE_NAMES), msg.findtext("STATE")),
                         lcm_state=_by_name(dict(LCM_STATE_NAMES), msg.findtext("LCM_STATE")))
    if not hook_type and msg.find("HOOK_ID") is not None:
        raise PayloadError("HOOK_MESSAGE is a retry message (ARGUMENTS, HOOK_ID); it names no VM")
    raise PayloadError(f"HOOK_MESSAGE/HOOK_TYPE: {_show(hook_type)} is not STATE or API")


def decode_hook_payload(raw: Union[bytes, str], call: Optional[str] = None) -> HookEvent:
    """Decode a hook's stdin (or argv[1]) into a :class:`HookEvent`.

    ``call`` is the XML-RPC method an API hook is registered on (``CALL_INFO`` does not say);
    it must be a ``one.vm.*`` name. Raises :class:`PayloadError` with a one-line message."""
    call = _check_call(call)
    if isinstance(raw, str):
        try:
            raw = raw.encode("ascii")
        except UnicodeEncodeError:
            raise PayloadError("payload is not base64: it has non-ASCII characters") from None
    elif isinstance(raw, (bytearray, memoryview)):
        raw = bytes(raw)
    elif not isinstance(raw, bytes):
        raise PayloadError(f"payload must be bytes or str, not {type(raw).__name__}")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload is too large: {len(raw)} bytes (limit {MAX_PAYLOAD_BYTES})")
    # Whitespace around (a trailing newline from a shell) or inside (line-wrapped base64).
    compact = raw.translate(None, _WS)
    if not compact:
        raise PayloadError("payload is empty")
    if not _B64_RE.fullmatch(compact):
        bad = next((c for c in compact if c not in _B64_ALPHABET), None)
        what = f"character {bytes([bad])!r}" if bad is not None else "padding"
        raise PayloadError(f"payload is not base64: unexpected {what}")
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError(f"payload is not base64: {' '.join(str(exc).split())}") from None
    if not data.strip():
        raise PayloadError("payload decodes to nothing but whitespace")
    if not data.lstrip().startswith(b"<"):
        raise PayloadError(f"payload is base64 but not XML: it starts with {_show(data[:16])}")
    try:
        root = safe_xml_root(data, max_bytes=MAX_PAYLOAD_BYTES, what="decoded payload")
    except VmXmlError as exc:
        raise PayloadError(str(exc)) from None
    if root.tag == "VM":
        return _from_vm(root, call)
    if root.tag == "CALL_INFO":
        return _from_call_info(root, call)
    if root.tag == "HOOK_MESSAGE":
        return _from_hook_message(root, call)
    raise PayloadError(f"payload is a <{root.tag}> document, expected <VM>, <CALL_INFO> or "
                       "<HOOK_MESSAGE>")
