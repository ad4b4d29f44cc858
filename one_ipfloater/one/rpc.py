"""Talking to oned through pyone, with the raw XML of documents kept intact.

Why raw XML: ``parse_vm`` (hardened, lenient, keeps CDATA values exactly) needs the
document oned sent. pyone 6.10 and 7.x both turn every XML answer into generateDS
bindings; exporting those back is lossy (6.10 drops 7.x elements such as PLAN_ID, empty
values come back as None, CDATA is re-escaped). Both versions' XML-RPC client
(``OneServer`` in 6.10, ``OneServerXRPC`` in 7.x) split the call in two steps:
``_cast_parms`` (adds the session) and ``_do_request`` (pyone's requests transport,
XML-RPC faults as ``OneException``); only the response step builds bindings. Calling
the first two ourselves reads the document THROUGH pyone (its session, transport, timeout
and error classes) and skips the binding step. Error arrays become the same pyone
exceptions pyone itself raises, by the same codes.

Writes use pyone's public API with the nested-dict form (XML with CDATA), never the
flat form, which sends ``KEY="value"`` without escaping quotes.
"""

from __future__ import annotations

import xmlrpc.client
from typing import Any, Mapping
from xml.parsers.expat import ExpatError

import pyone

__all__ = ["connect", "call_raw", "vm_xml", "vmpool_xml", "hookpool_xml",
           "update_user_template", "describe_one_error", "endpoint", "ONE_ERRORS"]

#: Exceptions a call to oned can end with (pyone's, transport, malformed answers).
ONE_ERRORS = (pyone.OneException, OSError, xmlrpc.client.Error, ExpatError, ValueError)

_BY_CODE = {
    0x0100: pyone.OneAuthenticationException,
    0x0200: pyone.OneAuthorizationException,
    0x0400: pyone.OneNoExistsException,
    0x0800: pyone.OneActionException,
    0x1000: pyone.OneApiException,
    0x2000: pyone.OneInternalException,
}


_TIMED_TRANSPORTS: dict = {}


def _timed_transport(base: type) -> type:
    """pyone's RequestsTransport calls ``requests.post`` without a timeout (its own
    ``timeout`` only sets socket.setdefaulttimeout, which requests overrides), so a hung
    oned would hold a hook until onehem kills it. This subclass adds the timeout."""
    if base not in _TIMED_TRANSPORTS:
        class TimedTransport(base):
            timeout: float = 10.0

            def request(self, host, handler, request_body, verbose=False):
                import requests
                url = self._build_url(host, handler)
                headers = getattr(self, "headers", None) or {
                    "User-Agent": getattr(self, "user_agent", "pyone"), "Content-Type": "text/xml",
                    "Accept": "*/*"}
                resp = requests.post(url, data=request_body, headers=headers,
                                     verify=getattr(self, "https_verify", True), timeout=self.timeout)
                try:
                    resp.raise_for_status()
                except requests.RequestException as exc:
                    raise xmlrpc.client.ProtocolError(url, resp.status_code, str(exc), resp.headers)
                return self.parse_response(resp)

        _TIMED_TRANSPORTS[base] = TimedTransport
    return _TIMED_TRANSPORTS[base]


def connect(url: str, session: str, timeout: float):
    """A pyone XML-RPC client (``OneServer`` picks XML-RPC for an http(s) URL in 7.x)
    whose every request, connect and read, is bounded by `timeout` seconds."""
    one = pyone.OneServer(url, session=session, timeout=timeout)
    transport = getattr(one, "_ServerProxy__transport", None)
    if transport is not None and hasattr(transport, "_build_url") and hasattr(transport, "parse_response"):
        transport.__class__ = _timed_transport(type(transport))
        transport.timeout = timeout
    return one


def call_raw(one: Any, method: str, *params: Any) -> Any:
    """Run ``method`` through pyone's proxy and return oned's value without bindings."""
    try:
        request, cast = one._do_request, one._cast_parms
    except AttributeError:
        raise pyone.OneException(
            f"{type(one).__name__} cannot return raw documents; use an XML-RPC endpoint "
            "(http://HOST:2633/RPC2)") from None
    response = request(method, cast(params))
    if not isinstance(response, (list, tuple)) or len(response) < 3:
        raise ValueError(f"{method}: unexpected answer from oned: {str(response)[:80]!r}")
    if response[0]:
        return response[1]
    raise _BY_CODE.get(response[2], pyone.OneException)(str(response[1]))


def _xml(one: Any, method: str, *params: Any) -> str:
    value = call_raw(one, method, *params)
    if not isinstance(value, str):
        raise ValueError(f"{method}: oned answered {type(value).__name__}, not an XML document")
    return value


def vm_xml(one: Any, vm_id: int) -> str:
    """``one.vm.info``: the full VM document."""
    return _xml(one, "one.vm.info", vm_id)


def vmpool_xml(one: Any) -> str:
    """``one.vmpool.infoextended(-2, -1, -1, -1)``: full bodies of every VM but DONE ones."""
    return _xml(one, "one.vmpool.infoextended", -2, -1, -1, -1)


def hookpool_xml(one: Any) -> str:
    """``one.hookpool.info(-2, -1, -1)``: every hook."""
    return _xml(one, "one.hookpool.info", -2, -1, -1)


def update_user_template(one: Any, vm_id: int, attrs: Mapping[str, str]) -> None:
    """Merge ``attrs`` into USER_TEMPLATE (type 1), sent as XML with CDATA values."""
    if not attrs:
        return
    one.vm.update(vm_id, {"TEMPLATE": {k: _cdata_safe(v) for k, v in attrs.items()}}, 1)


def _cdata_safe(value: str) -> str:
    """pyone wraps values in CDATA unescaped; a ``]]>`` would end it early."""
    return str(value).replace("]]>", "]] >")


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def endpoint(one: Any) -> str:
    """The oned URL a pyone client talks to (both pyone 6.10 and 7 are ServerProxies)."""
    host = getattr(one, "_ServerProxy__host", "")
    return f"http://{host}{getattr(one, '_ServerProxy__handler', '')}" if host else ""


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

