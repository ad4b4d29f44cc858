"""Talking to oned: the standard library's XML-RPC client, pyone's exception classes.

Why not pyone's client: the driver needs (1) the raw XML oned sent, because ``parse_vm``
(hardened, lenient, keeps CDATA values exactly) must see it, while pyone 6.10 and 7.x turn
every answer into generateDS bindings and exporting those back is lossy (6.10 drops 7.x
elements such as PLAN_ID, empty values come back as None, CDATA is re-escaped); and (2) a
timeout on every request, which pyone's requests transport does not set (its ``timeout``
only sets the socket default, which requests overrides), so a hung oned would hold a hook
until onehem kills it. Both are reachable in pyone only through private attributes.
``xmlrpc.client.ServerProxy`` with a transport that sets the timeout gives both through
public interfaces, and speaks the same wire contract.

What stays pyone's: the exception classes. Error arrays become the same pyone exceptions
pyone itself raises, by the same codes, so callers (and operators' scripts) catch one set
of classes whichever client made the call. Template writes are XML with CDATA values (what
pyone's nested-dict form sends), never ``KEY="value"`` lines, which carry quotes unescaped.
"""

from __future__ import annotations

import http.client
import xmlrpc.client
from typing import Any, Mapping, Optional
from xml.parsers.expat import ExpatError
from xml.sax.saxutils import escape

import pyone

from .vmxml import safe_xml_root

__all__ = ["OneClient", "connect", "call_raw", "vm_xml", "vnet_pool", "vmpool_xml", "hookpool_xml",
           "update_user_template", "describe_one_error", "endpoint", "ONE_ERRORS"]

#: Exceptions a call to oned can end with (pyone's, transport, malformed answers).
ONE_ERRORS = (pyone.OneException, OSError, xmlrpc.client.Error, ExpatError, ValueError,
              http.client.HTTPException)

_BY_CODE = {
    0x0100: pyone.OneAuthenticationException,
    0x0200: pyone.OneAuthorizationException,
    0x0400: pyone.OneNoExistsException,
    0x0800: pyone.OneActionException,
    0x1000: pyone.OneApiException,
    0x2000: pyone.OneInternalException,
}


class _Timeout:
    """Mixin for ``xmlrpc.client`` transports: connections time out (connect and every read)."""

    def __init__(self, timeout: float):
        super().__init__()
        self.timeout = timeout

    def make_connection(self, host):
        connection = super().make_connection(host)
        connection.timeout = self.timeout
        return connection


class _TimeoutTransport(_Timeout, xmlrpc.client.Transport):
    """http endpoints."""


class _SafeTimeoutTransport(_Timeout, xmlrpc.client.SafeTransport):
    """https endpoints (certificates verified by the default context)."""


class OneClient:
    """oned's XML-RPC API with a session and a timeout: ``call("one.vm.info", 7)`` returns
    the value of a successful answer or raises the pyone exception for its error code."""

    def __init__(self, url: str, session: str, timeout: float):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"ONE_XMLRPC {url!r}: need an http(s):// XML-RPC endpoint")
        transport_class = _SafeTimeoutTransport if url.startswith("https://") \
            else _TimeoutTransport
        self.url = url
        self._session = session
        self._proxy = xmlrpc.client.ServerProxy(url, transport=transport_class(timeout))

    def __repr__(self) -> str:  # never the session
        return f"OneClient({self.url!r})"

    def call(self, method: str, *params: Any) -> Any:
        try:
            response = getattr(self._proxy, method)(self._session, *params)
        except xmlrpc.client.Fault as fault:  # xmlrpc-c refused the call (as pyone maps it)
            raise pyone.OneException(str(fault)) from None
        if not isinstance(response, (list, tuple)) or len(response) < 3:
            raise ValueError(f"{method}: unexpected answer from oned: {str(response)[:80]!r}")
        if response[0]:
            return response[1]
        raise _BY_CODE.get(response[2], pyone.OneException)(str(response[1]))


def connect(url: str, session: str, timeout: float) -> OneClient:
    """A client whose every request, connect and read, is bounded by `timeout` seconds."""
    return OneClient(url, session, timeout)


def call_raw(one: OneClient, method: str, *params: Any) -> Any:
    """Run ``method`` and return oned's value as sent (documents as XML text)."""
    return one.call(method, *params)


def _xml(one: Any, method: str, *params: Any) -> str:
    value = call_raw(one, method, *params)
    if not isinstance(value, str):
        raise ValueError(f"{method}: oned answered {type(value).__name__}, not an XML document")
    return value


def vm_xml(one: Any, vm_id: int) -> str:
    """``one.vm.info``: the full VM document."""
    return _xml(one, "one.vm.info", vm_id)


def vnet_pool(one: Any, net_id: int) -> Optional[str]:
    """``one.vn.info``: the virtual network's TEMPLATE/FLOATING_IP_POOL (None: not set)."""
    root = safe_xml_root(_xml(one, "one.vn.info", net_id), what="VNET document")
    if root.tag != "VNET":
        raise ValueError(f"one.vn.info: document root is <{root.tag}>, expected <VNET>")
    element = root.find("TEMPLATE/FLOATING_IP_POOL")
    return None if element is None or len(element) else (element.text or "")


def vmpool_xml(one: Any) -> str:
    """``one.vmpool.infoextended(-2, -1, -1, -1)``: full bodies of every VM but DONE ones."""
    return _xml(one, "one.vmpool.infoextended", -2, -1, -1, -1)


def hookpool_xml(one: Any) -> str:
    """``one.hookpool.info(-2, -1, -1)``: every hook."""
    return _xml(one, "one.hookpool.info", -2, -1, -1)


def update_user_template(one: OneClient, vm_id: int, attrs: Mapping[str, str]) -> None:
    """Merge ``attrs`` into USER_TEMPLATE (type 1), sent as XML with CDATA values."""
    if not attrs:
        return
    bad = next((key for key in attrs if not _is_name(key)), None)
    if bad is not None:
        raise ValueError(f"attribute name {escape(str(bad))!r} is not a template name")
    body = "".join(f"<{key}><![CDATA[{_cdata_safe(value)}]]></{key}>"
                   for key, value in attrs.items())
    one.call("one.vm.update", vm_id, f"<TEMPLATE>{body}</TEMPLATE>", 1)


def _is_name(key: str) -> bool:
    return bool(key) and key[0].isalpha() and all(c.isalnum() or c == "_" for c in key) \
        and key.isascii()


def _cdata_safe(value: str) -> str:
    """A ``]]>`` inside a value would end the CDATA section early."""
    return str(value).replace("]]>", "]] >")


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def endpoint(one: Any) -> str:
    """The oned URL a client talks to."""
    return str(getattr(one, "url", ""))


def describe_one_error(exc: BaseException, one: Any = None) -> str:
    """One line for an exception of a call to oned, naming the endpoint when known."""
    url = endpoint(one) if one is not None else ""
    where = f" at {url}" if url else ""
    if isinstance(exc, pyone.OneAuthenticationException):
        return f"OpenNebula{where} refused the credentials: {_one_line(exc)}"
    if isinstance(exc, pyone.OneException):
        return f"OpenNebula: {_one_line(exc)}"
    if isinstance(exc, xmlrpc.client.ProtocolError):
        return f"OpenNebula{where} answered HTTP {exc.errcode} {_one_line(exc.errmsg, 60)}"
    if isinstance(exc, OSError):  # requests' exceptions are OSErrors too
        return f"OpenNebula{where} is unreachable ({type(exc).__name__})"
    if isinstance(exc, (ExpatError, xmlrpc.client.ResponseError)):
        return f"OpenNebula{where} answered something that is not XML-RPC"
    return f"OpenNebula{where}: {type(exc).__name__}: {_one_line(exc)}"

