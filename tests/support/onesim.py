"""An in-process stand-in for OpenNebula's ``oned``, speaking its XML-RPC wire contract.

Why it exists: OpenNebula cannot be installed where the tests and the lab run, yet the
floating-IP driver has to be exercised with the *real* pyone client against documents
shaped like the ones a real oned 7.4 produces, and its hooks have to be fired the way
the Hook Execution Manager fires them (see ``hem.py``).

Every behaviour here follows tests/data/opennebula/NOTES.md and
samples/oned-7.4-behaviour.md (response arrays, error codes and messages, update
semantics, hook payloads, the state machine). Where those documents are silent the
simulator makes a plausible choice and says so in a comment.

Quick use::

    with OneSimulator(users={"oneadmin": "pw"}) as sim:
        sim.add_network("fip-net", "10.77.0.0/24", "10.77.0.2", bridge="br77",
                        gateway="10.77.0.1", dns="10.77.0.1")
        vm_id = sim.create_vm('NAME="a" NIC=[NETWORK="fip-net"] FLOATING_IP="YES"')
        sim.deploy(vm_id)
        one = pyone.OneServer(sim.url, session="oneadmin:pw")
        one.vm.info(vm_id)
"""

from __future__ import annotations

import base64
import collections
import hashlib
import dataclasses
import http.server
import ipaddress
import random
import re
import threading
import time
import uuid
import xmlrpc.client
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from lxml import etree

__all__ = [
    "OneSimulator", "StateEvent", "ApiEvent", "RetryEvent", "HookSpec", "TemplateParseError",
    "parse_template",
    "VM_STATES", "LCM_STATES", "ERROR_CODES",
]

# --------------------------------------------------------------------------------------
# Wire-level constants (include/Request.h)
# --------------------------------------------------------------------------------------

AUTHENTICATION = 0x100
AUTHORIZATION = 0x200
NO_EXISTS = 0x400
ACTION = 0x800
XML_RPC_API = 0x1000
INTERNAL = 0x2000
ALLOCATE = 0x4000
LOCKED = 0x8000
REPLICATION = 0x10000

ERROR_CODES = {
    "AUTHENTICATION": AUTHENTICATION, "AUTHORIZATION": AUTHORIZATION,
    "NO_EXISTS": NO_EXISTS, "ACTION": ACTION, "XML_RPC_API": XML_RPC_API,
    "INTERNAL": INTERNAL, "ALLOCATE": ALLOCATE, "LOCKED": LOCKED,
    "REPLICATION": REPLICATION,
}

# xmlrpc-c fault codes, for calls oned never gets to run (unknown method, bad params).
FAULT_TYPE = -501
FAULT_PARSE = -503
FAULT_NO_SUCH_METHOD = -506

# --------------------------------------------------------------------------------------
# VM states: numbers go into the XML, names into hook keys (CUSTOM STATE/LCM_STATE).
# --------------------------------------------------------------------------------------

VM_STATES = {
    0: "INIT", 1: "PENDING", 2: "HOLD", 3: "ACTIVE", 4: "STOPPED", 5: "SUSPENDED",
    6: "DONE", 7: "FAILED", 8: "POWEROFF", 9: "UNDEPLOYED", 10: "CLONING",
    11: "CLONING_FAILURE",
}
_LCM_NAMES = """LCM_INIT PROLOG BOOT RUNNING MIGRATE SAVE_STOP SAVE_SUSPEND SAVE_MIGRATE
PROLOG_MIGRATE PROLOG_RESUME EPILOG_STOP EPILOG SHUTDOWN CANCEL FAILURE CLEANUP_RESUBMIT
UNKNOWN HOTPLUG SHUTDOWN_POWEROFF BOOT_UNKNOWN BOOT_POWEROFF BOOT_SUSPENDED BOOT_STOPPED
CLEANUP_DELETE HOTPLUG_SNAPSHOT HOTPLUG_NIC HOTPLUG_SAVEAS HOTPLUG_SAVEAS_POWEROFF
HOTPLUG_SAVEAS_SUSPENDED SHUTDOWN_UNDEPLOY EPILOG_UNDEPLOY PROLOG_UNDEPLOY BOOT_UNDEPLOY
HOTPLUG_PROLOG_POWEROFF HOTPLUG_EPILOG_POWEROFF BOOT_MIGRATE BOOT_FAILURE
BOOT_MIGRATE_FAILURE PROLOG_MIGRATE_FAILURE PROLOG_FAILURE EPILOG_FAILURE
EPILOG_STOP_FAILURE EPILOG_UNDEPLOY_FAILURE PROLOG_MIGRATE_POWEROFF
PROLOG_MIGRATE_POWEROFF_FAILURE PROLOG_MIGRATE_SUSPEND PROLOG_MIGRATE_SUSPEND_FAILURE
BOOT_UNDEPLOY_FAILURE BOOT_STOPPED_FAILURE PROLOG_RESUME_FAILURE PROLOG_UNDEPLOY_FAILURE
DISK_SNAPSHOT_POWEROFF DISK_SNAPSHOT_REVERT_POWEROFF DISK_SNAPSHOT_DELETE_POWEROFF
DISK_SNAPSHOT_SUSPENDED DISK_SNAPSHOT_REVERT_SUSPENDED DISK_SNAPSHOT_DELETE_SUSPENDED
DISK_SNAPSHOT DISK_SNAPSHOT_REVERT DISK_SNAPSHOT_DELETE PROLOG_MIGRATE_UNKNOWN
PROLOG_MIGRATE_UNKNOWN_FAILURE DISK_RESIZE DISK_RESIZE_POWEROFF DISK_RESIZE_UNDEPLOYED
HOTPLUG_NIC_POWEROFF HOTPLUG_RESIZE HOTPLUG_SAVEAS_UNDEPLOYED HOTPLUG_SAVEAS_STOPPED
BACKUP BACKUP_POWEROFF RESTORE""".split()
LCM_STATES = dict(enumerate(_LCM_NAMES))
_STATE_NUM = {name: num for num, name in VM_STATES.items()}
_LCM_NUM = {name: num for num, name in LCM_STATES.items()}

INIT, PENDING, HOLD, ACTIVE, STOPPED, SUSPENDED, DONE = 0, 1, 2, 3, 4, 5, 6
POWEROFF, UNDEPLOYED = 8, 9
L = _LCM_NUM  # short alias used by the state machine below

# HISTORY/ACTION numbers (vm.xsd comment).
_HISTORY_ACTION = {
    "none": 0, "undeploy": 5, "undeploy-hard": 6, "hold": 7, "release": 8, "stop": 9,
    "suspend": 10, "resume": 11, "reboot": 15, "reboot-hard": 16, "resched": 17,
    "unresched": 18, "poweroff": 19, "poweroff-hard": 20, "nic-attach": 23,
    "nic-detach": 24, "terminate": 27, "terminate-hard": 28, "alias-attach": 46,
    "alias-detach": 47,
}

# TEMPLATE children in vm.xsd order: the XSD is a strict sequence, so the simulator emits
# them in this order. Names absent from this list end up in USER_TEMPLATE, which is where
# oned leaves attributes it does not know (FLOATING_IP, LOGO, DESCRIPTION...).
_TEMPLATE_ORDER = [
    "AUTOMATIC_DS_REQUIREMENTS", "AUTOMATIC_NIC_REQUIREMENTS", "AUTOMATIC_REQUIREMENTS",
    "CLONING_TEMPLATE_ID", "CONTEXT", "CPU", "CPU_COST", "DISK", "DISK_COST", "EMULATOR",
    "FEATURES", "HYPERV_OPTIONS", "GRAPHICS", "IMPORTED", "INPUT", "MEMORY", "MEMORY_COST",
    "MEMORY_MAX", "MEMORY_SLOTS", "MEMORY_RESIZE_MODE", "NIC", "NIC_ALIAS", "NIC_DEFAULT",
    "NUMA_NODE", "OS", "PCI", "RAW", "SECURITY_GROUP_RULE", "SPICE_OPTIONS",
    "SUBMIT_ON_HOLD", "TEMPLATE_ID", "TM_MAD_SYSTEM", "TOPOLOGY", "VCPU", "VCPU_MAX",
    "VMGROUP", "VMID", "VROUTER_ID", "VROUTER_KEEPALIVED_ID", "VROUTER_KEEPALIVED_PASSWORD",
]
# Known attributes whose schema type is a plain string (a vector there breaks the XSD).
_TEMPLATE_SCALARS = {
    "CLONING_TEMPLATE_ID", "CPU", "CPU_COST", "DISK_COST", "EMULATOR", "IMPORTED", "MEMORY",
    "MEMORY_COST", "MEMORY_MAX", "MEMORY_SLOTS", "MEMORY_RESIZE_MODE", "SUBMIT_ON_HOLD",
    "TEMPLATE_ID", "VCPU", "VCPU_MAX", "VROUTER_ID", "VROUTER_KEEPALIVED_ID",
    "VROUTER_KEEPALIVED_PASSWORD",
}
_TEMPLATE_VECTORS = {
    "FEATURES", "HYPERV_OPTIONS", "GRAPHICS", "INPUT", "NIC_DEFAULT", "NUMA_NODE", "RAW",
    "SPICE_OPTIONS", "TOPOLOGY", "VMGROUP",
}
_TEMPLATE_LISTS = {"DISK", "PCI"}  # several allowed, kept in the order given
# What the reduced (one.vmpool.info) body keeps.
_SHORT_DISK_KEYS = ["DISK_ID", "DATASTORE", "DATASTORE_ID", "IMAGE", "IMAGE_ID", "SIZE",
                    "TYPE", "CLONE", "CLONE_TARGET", "LN_TARGET", "DISK_SNAPSHOT_TOTAL_SIZE"]
_SHORT_NIC_KEYS = ["IP", "IP6", "IP6_LINK", "IP6_ULA", "IP6_GLOBAL", "MAC", "NETWORK",
                   "NETWORK_ID", "NIC_ID", "SECURITY_GROUPS"]
_SHORT_USER_TEMPLATE_KEYS = {"LABELS", "ERROR", "SCHED_MESSAGE"}
_CONTEXT_ETH_KEYS = [
    "DNS", "EXTERNAL", "GATEWAY", "IP", "IP6", "IP6_GATEWAY", "IP6_METHOD", "IP6_METRIC",
    "IP6_PREFIX_LENGTH", "IP6_ULA", "MAC", "MASK", "METHOD", "METRIC", "MTU", "NETWORK",
    "ROUTES", "SEARCH_DOMAIN", "VLAN_ID", "VROUTER_IP", "VROUTER_IP6", "VROUTER_MANAGEMENT",
]

# Hook ON= values and the (STATE, LCM_STATE) pair they stand for (HookStateVM).
HOOK_ON_STATES = {
    "PROLOG": ("ACTIVE", "PROLOG"),
    "RUNNING": ("ACTIVE", "RUNNING"),
    "SHUTDOWN": ("ACTIVE", "EPILOG"),
    "STOP": ("STOPPED", "LCM_INIT"),
    "DONE": ("DONE", "LCM_INIT"),
    "UNKNOWN": ("ACTIVE", "UNKNOWN"),
}

TemplateValue = Union[str, Dict[str, str]]
TemplateItems = List[Tuple[str, TemplateValue]]


# --------------------------------------------------------------------------------------
# OpenNebula template language: KEY="value" lines, KEY=[A="1",B="2"] vectors, or XML.
# --------------------------------------------------------------------------------------

class TemplateParseError(ValueError):
    """A template oned would reject; ``str()`` is the detail after 'Parse error: '."""


class _Token:
    __slots__ = ("kind", "text", "line", "col", "end_col")

    def __init__(self, kind: str, text: str, line: int, col: int, end_col: int):
        self.kind, self.text, self.line, self.col, self.end_col = kind, text, line, col, end_col


class _TemplateLexer:
    """Hand-written lexer mirroring oned's flex states (INITIAL / VALUE / vector).

    Like flex's default rule, characters that start no token in the INITIAL state are
    skipped. That is why an unescaped quote, as in ``K="say "hi" now"``, surfaces as
    ``unexpected VARIABLE, expecting EQUAL or EQUAL_EMPTY`` exactly as on a real oned.
    """

    _NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")

    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.line = 1
        self.line_start = 0

    # -- low level -------------------------------------------------------------------
    def _col(self, pos: int) -> int:
        return pos - self.line_start + 1

    def _advance(self, count: int) -> None:
        for _ in range(count):
            if self.text[self.pos] == "\n":
                self.line += 1
                self.line_start = self.pos + 1
            self.pos += 1

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _skip(self, chars: str) -> None:
        while self._peek() and self._peek() in chars:
            self._advance(1)

    def _skip_blank_and_comments(self) -> None:
        while True:
            self._skip(" \t\r\n")
            if self._peek() == "#":
                while self._peek() and self._peek() != "\n":
                    self._advance(1)
                continue
            return

    def _token(self, kind: str, text: str, start: int, length: int) -> _Token:
        line, col = self.line, self._col(start)
        self._advance(length)
        return _Token(kind, text, line, col, col + length)

    def error(self, tok: _Token, expecting: str) -> TemplateParseError:
        return TemplateParseError(
            f"syntax error, unexpected {tok.kind}, expecting {expecting} "
            f"at line {tok.line}, columns {tok.col}:{tok.end_col}")

    # -- token kinds per state -------------------------------------------------------
    def next_initial(self) -> _Token:
        """A VARIABLE, EQUAL(_EMPTY), bracket/comma or $end; stray characters are dropped."""
        while True:
            self._skip_blank_and_comments()
            start = self.pos
            char = self._peek()
            if not char:
                return _Token("$end", "", self.line, self._col(start), self._col(start))
            match = self._NAME.match(self.text, start)
            if match:
                return self._token("VARIABLE", match.group(0), start, len(match.group(0)))
            if char == "=":
                rest = self.text[start + 1:]
                blank = re.match(r"[ \t\r]*(\n|$)", rest)
                if blank:  # `KEY =` followed by the end of the line: an empty value
                    return self._token("EQUAL_EMPTY", "", start, 1)
                return self._token("EQUAL", "=", start, 1)
            if char in "[],":
                kind = {"[": "OBRACKET", "]": "CBRACKET", ",": "COMMA"}[char]
                return self._token(kind, char, start, 1)
            self._advance(1)  # flex default rule: echo and ignore

    def next_value(self, in_vector: bool) -> _Token:
        """The value after ``=``: a quoted or bare STRING, or OBRACKET (top level only)."""
        self._skip(" \t\r" if not in_vector else " \t\r\n")
        start = self.pos
        char = self._peek()
        if not char:
            return _Token("$end", "", self.line, self._col(start), self._col(start))
        if char == '"':
            end = start + 1
            chunks = []
            while end < len(self.text) and self.text[end] != '"':
                if self.text[end] == "\\" and end + 1 < len(self.text):
                    # flex matches \\. as a pair; oned then unescapes \" only and keeps
                    # any other backslash pair as written
                    pair = self.text[end:end + 2]
                    chunks.append('"' if pair == '\\"' else pair)
                    end += 2
                    continue
                chunks.append(self.text[end])
                end += 1
            if end >= len(self.text):
                tok = _Token("$end", "", self.line, self._col(start), self._col(len(self.text)))
                raise self.error(tok, "STRING")
            return self._token("STRING", "".join(chunks), start, end + 1 - start)
        if char == "[" and not in_vector:
            return self._token("OBRACKET", "[", start, 1)
        stop = ',]"\n[=' if in_vector else ' \t\r\n"[]'
        end = start
        while end < len(self.text) and self.text[end] not in stop:
            end += 1
        if end == start:
            kind = {"]": "CBRACKET", ",": "COMMA", "[": "OBRACKET", "\n": "$end"}.get(char, char)
            raise self.error(_Token(kind, char, self.line, self._col(start), self._col(start) + 1),
                             "STRING" if in_vector else "STRING or OBRACKET")
        return self._token("STRING", self.text[start:end].strip(), start, end - start)

    def next_in_vector(self) -> _Token:
        self._skip(" \t\r\n")
        start = self.pos
        char = self._peek()
        if not char:
            return _Token("$end", "", self.line, self._col(start), self._col(start))
        match = self._NAME.match(self.text, start)
        if match:
            return self._token("VARIABLE", match.group(0), start, len(match.group(0)))
        kinds = {"=": "EQUAL", ",": "COMMA", "]": "CBRACKET", "[": "OBRACKET", '"': "STRING"}
        return self._token(kinds.get(char, repr(char)), char, start, 1)


def _parse_text_template(text: str) -> TemplateItems:
    lexer = _TemplateLexer(text)
    items: TemplateItems = []
    while True:
        tok = lexer.next_initial()
        if tok.kind == "$end":
            return items
        if tok.kind != "VARIABLE":
            raise lexer.error(tok, "$end or VARIABLE")
        name = tok.text.upper()
        tok = lexer.next_initial()
        if tok.kind == "EQUAL_EMPTY":
            items.append((name, ""))
            continue
        if tok.kind != "EQUAL":
            raise lexer.error(tok, "EQUAL or EQUAL_EMPTY")
        tok = lexer.next_value(in_vector=False)
        if tok.kind == "STRING":
            items.append((name, tok.text))
        elif tok.kind == "OBRACKET":
            items.append((name, _parse_vector_body(lexer)))
        else:
            raise lexer.error(tok, "STRING or OBRACKET")


def _parse_vector_body(lexer: _TemplateLexer) -> Dict[str, str]:
    vector: Dict[str, str] = {}
    tok = lexer.next_in_vector()
    if tok.kind == "CBRACKET":
        return vector
    while True:
        if tok.kind != "VARIABLE":
            raise lexer.error(tok, "VARIABLE")
        key = tok.text.upper()
        tok = lexer.next_in_vector()
        if tok.kind != "EQUAL":
            raise lexer.error(tok, "EQUAL")
        tok = lexer.next_value(in_vector=True)
        if tok.kind != "STRING":
            raise lexer.error(tok, "STRING")
        vector[key] = tok.text
        tok = lexer.next_in_vector()
        if tok.kind == "CBRACKET":
            return vector
        if tok.kind != "COMMA":
            raise lexer.error(tok, "COMMA or CBRACKET")
        tok = lexer.next_in_vector()


def _parse_xml_template(text: str) -> TemplateItems:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True)
    try:
        root = etree.fromstring(text.encode("utf-8"), parser)
    except etree.XMLSyntaxError as exc:
        raise TemplateParseError(f"XML template malformed: {exc}") from None
    items: TemplateItems = []
    for child in root:
        if not isinstance(child.tag, str):
            continue
        name = child.tag.upper()
        if len(child):
            items.append((name, {sub.tag.upper(): (sub.text or "") for sub in child
                                 if isinstance(sub.tag, str)}))
        else:
            items.append((name, child.text or ""))
    return items


def parse_template(text: str) -> TemplateItems:
    """Parse template text the way oned's ``parse_str_or_xml`` does.

    Returns ``[(NAME, value)]`` in the order given, ``value`` being a ``str`` or, for a
    vector attribute, a ``dict``. Raises :class:`TemplateParseError`.
    """
    if text.lstrip().startswith("<"):
        return _parse_xml_template(text)
    return _parse_text_template(text)


def _merge_items(current: TemplateItems, update: TemplateItems) -> TemplateItems:
    """oned's Template::merge: every name in ``update`` replaces all same-named entries."""
    replaced = {name for name, _ in update}
    return [item for item in current if item[0] not in replaced] + [
        (name, dict(value) if isinstance(value, dict) else value) for name, value in update]


# --------------------------------------------------------------------------------------
# XML writing: oned writes documents by hand, compact, template values in CDATA.
# --------------------------------------------------------------------------------------

def _esc(text: Any) -> str:
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def _cdata(text: Any) -> str:
    # oned does not split "]]>"; splitting keeps the document well-formed.
    return "<![CDATA[" + str(text).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _vector_xml(name: str, vector: Dict[str, str]) -> str:
    body = "".join(f"<{key}>{_cdata(vector[key])}</{key}>" for key in sorted(vector))
    return f"<{name}>{body}</{name}>"


def _item_xml(name: str, value: TemplateValue) -> str:
    if isinstance(value, dict):
        return _vector_xml(name, value)
    return f"<{name}>{_cdata(value)}</{name}>"


def _items_xml(items: Iterable[Tuple[str, TemplateValue]]) -> str:
    """oned keeps attributes in a multimap: sorted by name, same names in insertion order."""
    return "".join(_item_xml(n, v) for n, v in sorted(items, key=lambda item: item[0]))


# --------------------------------------------------------------------------------------
# Events published to listeners (the Hook Execution Manager)
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StateEvent:
    """A VM entered a new (STATE, LCM_STATE); ``xml`` is the compact VM at that moment."""

    seq: int
    resource: str
    resource_id: int
    state: str
    lcm_state: str
    xml: str
    remote_host: str = ""


@dataclasses.dataclass(frozen=True)
class ApiEvent:
    """An authenticated XML-RPC call finished. ``call_info`` is the raw, UNescaped
    ``<CALL_INFO>`` oned builds (the HEM re-parses it leniently, as onehem does)."""

    seq: int
    call: str
    success: bool
    call_info: str
    params: Tuple[Any, ...] = ()
    response: Tuple[Any, ...] = ()


@dataclasses.dataclass(frozen=True)
class RetryEvent:
    """``onehook retry``: run a logged execution again with its stored (stale) arguments."""

    seq: int
    hook_id: int
    execution_id: int
    arguments: str
    remote_host: str = ""


# --------------------------------------------------------------------------------------
# Internal model
# --------------------------------------------------------------------------------------

class _Failure(Exception):
    """A failure array for the current call: ``[False, "[method] msg", code, id, -1]``."""

    def __init__(self, code: int, message: str, obj_id: int = -1):
        super().__init__(message)
        self.code, self.message, self.obj_id = code, message, obj_id


class _NameTaken(_Failure):
    """oned answers a taken NAME without the "Error allocating" prefix."""

    def __init__(self, message: str):
        super().__init__(ALLOCATE, message)


class _TypeFault(Exception):
    """xmlrpc-c rejected the parameter list before oned's method ran."""


class _I8(int):
    """Marks an integer that goes on the wire as ``<i8>`` (the replication index)."""


@dataclasses.dataclass
class _User:
    uid: int
    gid: int
    name: str
    gname: str
    password: str
    template: TemplateItems = dataclasses.field(default_factory=list)

    @property
    def is_admin(self) -> bool:
        return self.uid == 0 or self.gid == 0


@dataclasses.dataclass
class _Group:
    id: int
    name: str
    template: TemplateItems = dataclasses.field(default_factory=list)


# oned.conf's defaults: attributes only oneadmin (user or group) may set in a user's or a
# group's template. An operator who keeps quotas there adds FLOATING_IP_QUOTA and
# FLOATING_IP_POOL_QUOTA to both lists (see the README), or users raise their own limits.
DEFAULT_RESTRICTED_ATTRS = ("VM_USE_OPERATIONS", "VM_MANAGE_OPERATIONS", "VM_ADMIN_OPERATIONS")
# What oned writes for the quotas a user or group has (none here) and for the defaults.
_EMPTY_QUOTAS = ("<DATASTORE_QUOTA></DATASTORE_QUOTA><NETWORK_QUOTA></NETWORK_QUOTA>"
                 "<VM_QUOTA></VM_QUOTA><IMAGE_QUOTA></IMAGE_QUOTA>")


@dataclasses.dataclass
class _Host:
    id: int
    name: str


@dataclasses.dataclass
class _Network:
    id: int
    name: str
    kind: str                      # "ipv4", "ipv6" or "l2"
    first: Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]
    size: int
    bridge: str
    vn_mad: str
    gateway: str = ""
    gateway6: str = ""
    dns: str = ""
    search_domain: str = ""
    mtu: str = ""
    vlan_id: str = ""
    phydev: str = ""
    prefixlen: int = 0
    network_address: str = ""
    netmask: str = ""
    ip6_global_prefix: Optional[ipaddress.IPv6Network] = None
    mac_base: int = 0
    next_index: int = 0
    used: Dict[int, int] = dataclasses.field(default_factory=dict)   # index -> vm id
    template: List[Tuple[str, "TemplateValue"]] = dataclasses.field(default_factory=list)  # user's
    other_use: bool = False        # OTHER_U: any user may USE (read) it (chmod 604)

    def address(self, index: int) -> str:
        return str(self.first + index) if self.first is not None else ""

    def mac(self, index: int) -> str:
        if self.kind == "ipv4":
            value = (0x0200 << 32) | int(self.first + index)
        else:
            value = (0x0200 << 32) | (self.mac_base + index)
        return ":".join(f"{(value >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))

    def index_of(self, address: str) -> Optional[int]:
        if self.first is None:
            return None
        try:
            index = int(ipaddress.ip_address(address)) - int(self.first)
        except ValueError:
            return None
        return index if 0 <= index < self.size else None

    def lease(self, vm_id: int, address: Optional[str] = None) -> int:
        """Hand out the next free lease (oned keeps a 'next' cursor, so freed addresses
        are not reused at once), or the requested address."""
        if address:
            index = self.index_of(address)
            if index is None or index in self.used:
                raise _Failure(ACTION, f"Cannot get IP/MAC lease from virtual network {self.id}.")
            self.used[index] = vm_id
            return index
        for step in range(self.size):
            index = (self.next_index + step) % self.size
            if index not in self.used:
                self.used[index] = vm_id
                self.next_index = (index + 1) % self.size
                return index
        raise _Failure(ACTION, f"Cannot get IP/MAC lease from virtual network {self.id}.")

    def release(self, index: int) -> None:
        self.used.pop(index, None)


@dataclasses.dataclass
class _Vm:
    id: int
    owner: _User
    name: str
    stime: int
    state: int = PENDING
    lcm: int = 0
    prev_state: int = PENDING
    prev_lcm: int = 0
    resched: int = 0
    etime: int = 0
    deploy_id: str = ""
    known: Dict[str, Any] = dataclasses.field(default_factory=dict)   # TEMPLATE extras
    context: Optional[Dict[str, str]] = None
    os: Dict[str, str] = dataclasses.field(default_factory=dict)
    nics: List[Dict[str, str]] = dataclasses.field(default_factory=list)
    aliases: List[Dict[str, str]] = dataclasses.field(default_factory=list)
    leases: Dict[int, Tuple[int, int]] = dataclasses.field(default_factory=dict)
    user_template: TemplateItems = dataclasses.field(default_factory=list)
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    next_nic_id: int = 0
    tm_mad_system: str = ""
    resume_from: str = ""          # "stopped"/"undeployed": which deploy path to take

    def all_nics(self) -> List[Dict[str, str]]:
        return self.nics + self.aliases


@dataclasses.dataclass
class _HookRecord:
    hook_id: int
    execution_id: int
    timestamp: int
    arguments: str
    command: str
    stdout: bytes
    stderr: bytes
    code: int
    remote_host: str = ""
    retry: bool = False


@dataclasses.dataclass
class _Hook:
    id: int
    name: str
    type: str
    template: TemplateItems
    log: List[_HookRecord] = dataclasses.field(default_factory=list)
    next_execution_id: int = 0


@dataclasses.dataclass(frozen=True)
class HookSpec:
    """A snapshot of a registered hook, as the Hook Execution Manager needs it."""

    id: int
    name: str
    type: str
    template: Dict[str, str]


# --------------------------------------------------------------------------------------
# XML-RPC wire encoding (xmlrpc-c layout, CRLF line ends)
# --------------------------------------------------------------------------------------

def _wire_value(value: Any) -> str:
    if isinstance(value, bool):
        return f"<value><boolean>{int(value)}</boolean></value>"
    if isinstance(value, _I8):
        return f"<value><i8>{int(value)}</i8></value>"
    if isinstance(value, int):
        tag = "i4" if -2**31 <= value < 2**31 else "i8"
        return f"<value><{tag}>{value}</{tag}></value>"
    text = _esc(value).replace("\r", "&#x0d;")
    return f"<value><string>{text}</string></value>"


def _wire_response(values: Sequence[Any]) -> bytes:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<methodResponse>", "<params>",
             "<param><value><array><data>"]
    lines += [_wire_value(v) for v in values]
    lines += ["</data></array></value></param>", "</params>", "</methodResponse>", ""]
    return "\r\n".join(lines).encode("utf-8")


def _wire_fault(code: int, message: str) -> bytes:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<methodResponse>", "<fault>",
             "<value><struct>",
             "<member><name>faultCode</name>", f"<value><i4>{code}</i4></value></member>",
             "<member><name>faultString</name>",
             f"<value><string>{_esc(message)}</string></value></member>",
             "</struct></value>", "</fault>", "</methodResponse>", ""]
    return "\r\n".join(lines).encode("utf-8")


class _RpcHandler(http.server.BaseHTTPRequestHandler):
    server_version = "Xmlrpc-c_Abyss/1.59.3"
    sys_version = ""

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        if self.path.rstrip("/") not in ("/RPC2", ""):
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        payload = self.server.simulator._handle_wire(body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, fmt: str, *args: Any) -> None:  # keep test output quiet
        pass


class _RpcServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True


# --------------------------------------------------------------------------------------
# Parameter readers with xmlrpc-c's type checks
# --------------------------------------------------------------------------------------

def _param(params: Sequence[Any], index: int, kind: type, kind_name: str) -> Any:
    if index >= len(params):
        raise _TypeFault("Not enough parameters")
    value = params[index]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _TypeFault(f"Parameter that is supposed to be {kind_name} is not")
    if kind is not int and not isinstance(value, kind):
        raise _TypeFault(f"Parameter that is supposed to be {kind_name} is not")
    return value


def _p_int(params: Sequence[Any], index: int) -> int:
    return int(_param(params, index, int, "integer"))


def _p_str(params: Sequence[Any], index: int) -> str:
    return _param(params, index, str, "string")


def _p_bool(params: Sequence[Any], index: int) -> bool:
    return _param(params, index, bool, "boolean")


def _p_opt(params: Sequence[Any], index: int, reader: Callable, default: Any) -> Any:
    return reader(params, index) if len(params) > index else default


# --------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------

class OneSimulator:
    """A threaded XML-RPC server that behaves like oned 7.4 for the calls the project uses.

    All state sits behind one lock. Listeners (``add_listener``) receive a
    :class:`StateEvent` for every VM state change and an :class:`ApiEvent` for every
    authenticated API call once it ran; they are called with the lock held and must only
    queue work (the Hook Execution Manager does).
    """

    def __init__(self, users: Optional[Dict[str, str]] = None, *,
                 networks: Iterable[Dict[str, Any]] = (),
                 hosts: Sequence[str] = ("host01",),
                 host: str = "127.0.0.1", port: int = 0, version: str = "7.4.1",
                 clock: Callable[[], float] = time.time, seed: Optional[int] = None):
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._clock = clock
        self._bind = (host, port)
        self._server: Optional[_RpcServer] = None
        self._thread: Optional[threading.Thread] = None
        self.version = version
        self._users: Dict[str, _User] = {}
        self._groups: Dict[int, _Group] = {0: _Group(0, "oneadmin"), 1: _Group(1, "users")}
        self.user_restricted: List[str] = list(DEFAULT_RESTRICTED_ATTRS)
        self.group_restricted: List[str] = list(DEFAULT_RESTRICTED_ATTRS)
        users = dict(users or {"oneadmin": "opennebula"})
        self._users["oneadmin"] = _User(0, 0, "oneadmin", "oneadmin",
                                        users.pop("oneadmin", "opennebula"))
        for uid, (name, password) in enumerate(users.items(), start=1):
            self._users[name] = _User(uid, 1, name, "users", password)
        self._hosts: Dict[int, _Host] = {i: _Host(i, name) for i, name in enumerate(hosts)}
        self._networks: Dict[int, _Network] = {}
        self._vms: Dict[int, _Vm] = {}
        self._hooks: Dict[int, _Hook] = {}
        self._next_vm_id = 0
        self._next_hook_id = 0
        self._event_seq = 0
        self._listeners: List[Callable[[Any], None]] = []
        self._events: collections.deque = collections.deque(maxlen=10000)
        self._deferred: Optional[List[Callable[[], None]]] = None
        for spec in networks:
            self.add_network(**spec)
        self._methods: Dict[str, Callable[[_User, Sequence[Any]], Any]] = {
            "one.system.version": self._rpc_system_version,
            "one.vm.info": self._rpc_vm_info,
            "one.vn.info": self._rpc_vn_info,
            "one.vm.update": self._rpc_vm_update,
            "one.vm.allocate": self._rpc_vm_allocate,
            "one.vm.action": self._rpc_vm_action,
            "one.vm.deploy": self._rpc_vm_deploy,
            "one.vm.attachnic": self._rpc_vm_attachnic,
            "one.vm.detachnic": self._rpc_vm_detachnic,
            "one.vmpool.info": self._rpc_vmpool_info,
            "one.vmpool.infoextended": self._rpc_vmpool_infoextended,
            "one.hook.allocate": self._rpc_hook_allocate,
            "one.hook.update": self._rpc_hook_update,
            "one.hook.delete": self._rpc_hook_delete,
            "one.hook.info": self._rpc_hook_info,
            "one.hookpool.info": self._rpc_hookpool_info,
            "one.hooklog.info": self._rpc_hooklog_info,
            "one.hook.retry": self._rpc_hook_retry,
            "one.user.info": self._rpc_user_info,
            "one.user.update": self._rpc_user_update,
            "one.userpool.info": self._rpc_userpool_info,
            "one.group.info": self._rpc_group_info,
            "one.group.update": self._rpc_group_update,
            "one.grouppool.info": self._rpc_grouppool_info,
        }

    # ----------------------------------------------------------------------------------
    # Server lifecycle
    # ----------------------------------------------------------------------------------
    def start(self) -> "OneSimulator":
        """Start serving (idempotent); returns self."""
        if self._server is None:
            server = _RpcServer(self._bind, _RpcHandler)
            server.simulator = self  # type: ignore[attr-defined]
            self._server = server
            # a short poll interval only makes stop() quick; requests are served at once
            self._thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                                            name="onesim-rpc", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join()
            self._server = None
            self._thread = None

    def __enter__(self) -> "OneSimulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/RPC2"

    # ----------------------------------------------------------------------------------
    # Listeners and events
    # ----------------------------------------------------------------------------------
    def add_listener(self, callback: Callable[[Any], None]) -> None:
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[Any], None]) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def events(self) -> List[Any]:
        """Every event published so far (the last 10000), oldest first."""
        with self._lock:
            return list(self._events)

    def _publish(self, make_event: Callable[[int], Any]) -> None:
        self._event_seq += 1
        event = make_event(self._event_seq)
        self._events.append(event)
        for callback in list(self._listeners):
            callback(event)

    def _later(self, step: Callable[[], None]) -> None:
        """Run ``step`` after the current API call's event, as oned's asynchronous LCM
        work happens after the call returned; outside an API call run it now."""
        if self._deferred is not None:
            self._deferred.append(step)
        else:
            step()

    # ----------------------------------------------------------------------------------
    # Users, hosts, networks
    # ----------------------------------------------------------------------------------
    def uid_of(self, user: str) -> int:
        return self._users[user].uid

    def add_group(self, name: str) -> int:
        """``onegroup create``: new groups are numbered from 100 (0 and 1 are oned's)."""
        with self._lock:
            if any(g.name == name for g in self._groups.values()):
                raise ValueError(f"group {name!r} exists")
            gid = max(99, *self._groups) + 1
            self._groups[gid] = _Group(gid, name)
            return gid

    def add_user(self, name: str, password: str, group: str = "users") -> int:
        """``oneuser create`` (+ ``oneuser chgrp``); returns the new user's ID."""
        with self._lock:
            if name in self._users:
                raise ValueError(f"user {name!r} exists")
            gid = self._group_by_name(group).id
            uid = max(u.uid for u in self._users.values()) + 1
            self._users[name] = _User(uid, gid, name, group, password)
            return uid

    def chgrp_user(self, name: str, group: str) -> None:
        """``oneuser chgrp``: the user's primary group (its VMs keep theirs, as in oned)."""
        with self._lock:
            user, target = self._users[name], self._group_by_name(group)
            user.gid, user.gname = target.id, target.name

    def set_user_template(self, name: str, text: str, merge: bool = True) -> None:
        """``oneuser update`` as oneadmin, without an API event."""
        with self._lock:
            user = self._users[name]
            user.template = self._updated(user.template, text, 1 if merge else 0, None)

    def set_group_template(self, name: str, text: str, merge: bool = True) -> None:
        """``onegroup update`` as oneadmin, without an API event."""
        with self._lock:
            group = self._group_by_name(name)
            group.template = self._updated(group.template, text, 1 if merge else 0, None)

    def _group_by_name(self, name: str) -> _Group:
        for group in self._groups.values():
            if group.name == name:
                return group
        raise KeyError(name)

    def add_host(self, name: str) -> int:
        with self._lock:
            host_id = max(self._hosts, default=-1) + 1
            self._hosts[host_id] = _Host(host_id, name)
            return host_id

    def add_network(self, name: str, cidr: Optional[str] = None,
                    first_lease: Optional[str] = None, *, size: Optional[int] = None,
                    bridge: Optional[str] = None, vn_mad: str = "bridge",
                    gateway: str = "", dns: str = "", search_domain: str = "",
                    mtu: str = "", vlan_id: str = "", phydev: str = "",
                    ip6_global_prefix: Optional[str] = None, template: str = "",
                    other_use: bool = False) -> int:
        """Add a virtual network and return its ID.

        ``cidr`` IPv4 ("10.77.0.0/24"): IPv4 leases from ``first_lease`` (default: the
        first host address) up to the last host address, MACs ``02:00:<ip bytes>``.
        ``cidr`` IPv6: an IPv6-only network (``IP6`` leases, ``gateway`` is the IPv6
        gateway). ``cidr=None``: an L2 network, leases are MACs only.
        ``ip6_global_prefix`` on an IPv4 network adds SLAAC ``IP6_GLOBAL``/``IP6_LINK``.
        ``template``: more attributes of the network's TEMPLATE (``onevnet update``), e.g.
        ``FLOATING_IP_POOL="campus"``. The network belongs to oneadmin (group oneadmin,
        permissions 600 by oned's default umask); ``other_use`` grants OTHER_U (604).
        """
        with self._lock:
            if any(net.name == name for net in self._networks.values()):
                raise ValueError(f"network {name!r} exists")
            net_id = max(self._networks, default=-1) + 1
            common = dict(id=net_id, name=name, bridge=bridge or f"br{net_id}", vn_mad=vn_mad,
                          dns=dns, search_domain=search_domain, mtu=str(mtu),
                          vlan_id=str(vlan_id), phydev=phydev,
                          mac_base=0x33400000 + ((net_id + 1) << 16))
            if cidr is None:
                net = _Network(kind="l2", first=None, size=size or 256, **common)
            else:
                network = ipaddress.ip_network(cidr, strict=False)
                first = ipaddress.ip_address(first_lease) if first_lease else next(network.hosts())
                if first not in network:
                    raise ValueError(f"{first} is not in {cidr}")
                last = network.broadcast_address - 1 if network.version == 4 else \
                    network.broadcast_address
                available = int(last) - int(first) + 1
                count = min(size or (available if network.version == 4 else 256), available)
                if network.version == 4:
                    net = _Network(kind="ipv4", first=first, size=count, gateway=gateway,
                                   prefixlen=network.prefixlen,
                                   network_address=str(network.network_address),
                                   netmask=str(network.netmask), **common)
                    if ip6_global_prefix:
                        net.ip6_global_prefix = ipaddress.IPv6Network(ip6_global_prefix)
                else:
                    net = _Network(kind="ipv6", first=first, size=count, gateway6=gateway,
                                   prefixlen=network.prefixlen, **common)
            net.template = list(parse_template(template)) if template.strip() else []
            net.other_use = other_use
            self._networks[net_id] = net
            return net_id

    def update_network(self, name: str, template: str) -> None:
        """``onevnet update --append``: merge attributes into the network's TEMPLATE."""
        with self._lock:
            net = self._network_by_name(name)
            net.template = _merge_items(net.template, parse_template(template))

    def vnet_xml(self, net_id: int) -> str:
        """What ``one.vn.info`` answers for the network (as oneadmin)."""
        with self._lock:
            return self._vnet_xml(self._networks[net_id])

    def network_leases(self, name: str) -> Dict[str, int]:
        """``{address or MAC: vm_id}`` for the leases currently held on a network."""
        with self._lock:
            net = self._network_by_name(name)
            return {(net.address(i) or net.mac(i)): vm for i, vm in sorted(net.used.items())}

    def _network_by_name(self, name: str) -> _Network:
        for net in self._networks.values():
            if net.name == name:
                return net
        raise KeyError(name)

    # ----------------------------------------------------------------------------------
    # Python-level helpers for tests (no API events; state events as oned fires them)
    # ----------------------------------------------------------------------------------
    def create_vm(self, template_text: str, owner: str = "oneadmin", *,
                  hold: bool = False) -> int:
        """Allocate a VM from template text (PENDING, or HOLD); returns its ID."""
        with self._lock:
            try:
                return self._allocate_vm(self._users[owner], template_text, hold)
            except _Failure as failure:
                raise ValueError(failure.message) from None

    def deploy(self, vm_id: int, host_id: int = 0) -> None:
        """PENDING/HOLD -> ACTIVE: PROLOG -> BOOT -> RUNNING, firing state hooks on each."""
        with self._lock:
            self._checked(lambda: self._deploy(self._vm(vm_id), host_id))

    def action(self, vm_id: int, action: str, user: str = "oneadmin") -> None:
        """Run a ``one.vm.action`` verb (terminate-hard, poweroff, resume...) directly."""
        with self._lock:
            self._checked(lambda: self._vm_action(self._vm(vm_id), action, self._users[user]))

    def attach_nic(self, vm_id: int, nic_template: str) -> int:
        """Hot-attach a NIC (or NIC_ALIAS); returns the new NIC_ID."""
        with self._lock:
            return self._checked(lambda: self._attach_nic(self._vm(vm_id), nic_template,
                                                          self._users["oneadmin"]))

    def detach_nic(self, vm_id: int, nic_id: int) -> None:
        with self._lock:
            self._checked(lambda: self._detach_nic(self._vm(vm_id), nic_id,
                                                   self._users["oneadmin"]))

    def set_nic_ip(self, vm_id: int, nic_id: int, ip: str, duplicate: bool = False) -> None:
        """Change a NIC's address behind the driver's back (a private IP change).

        The old lease is released; the new address is leased if it lies in the NIC's
        network. No event is published: oned would not notice either. ``duplicate``:
        put the address on the NIC even though another VM leases it (a lease bug, a
        hand-edited database); the other VM keeps its lease.
        """
        with self._lock:
            vm = self._vm(vm_id)
            nic = self._find_nic(vm, nic_id)
            if nic is None:
                raise KeyError(f"VM {vm_id} has no NIC {nic_id}")
            old = vm.leases.pop(nic_id, None)
            net = self._networks[int(nic["NETWORK_ID"])]
            if old is not None:
                self._networks[old[0]].release(old[1])
            index = net.index_of(ip)
            if index is not None and not (duplicate and index in net.used):
                if index in net.used:
                    raise ValueError(f"{ip} is leased to VM {net.used[index]}")
                net.used[index] = vm_id
                vm.leases[nic_id] = (net.id, index)
            key = "IP6" if ipaddress.ip_address(ip).version == 6 else "IP"
            nic[key] = ip

    def force_state(self, vm_id: int, state: str, lcm_state: str = "LCM_INIT") -> None:
        """Put a VM in any (STATE, LCM_STATE) by name, firing state hooks (e.g. UNKNOWN)."""
        with self._lock:
            self._set_state(self._vm(vm_id), _STATE_NUM[state], _LCM_NUM[lcm_state])

    def vm_xml(self, vm_id: int) -> str:
        """The compact document ``one.vm.info`` returns."""
        with self._lock:
            return self._vm_xml(self._vm(vm_id))

    def vm_state(self, vm_id: int) -> Tuple[str, str]:
        with self._lock:
            vm = self._vm(vm_id)
            return VM_STATES[vm.state], LCM_STATES[vm.lcm]

    def user_template(self, vm_id: int) -> Dict[str, Any]:
        """USER_TEMPLATE as a dict; vectors are dicts, repeated names become lists."""
        with self._lock:
            result: Dict[str, Any] = {}
            for name, value in self._vm(vm_id).user_template:
                value = dict(value) if isinstance(value, dict) else value
                if name in result:
                    if not isinstance(result[name], list):
                        result[name] = [result[name]]
                    result[name].append(value)
                else:
                    result[name] = value
            return result

    def nics(self, vm_id: int) -> List[Dict[str, str]]:
        """Copies of the VM's NIC and NIC_ALIAS vectors."""
        with self._lock:
            return [dict(nic) for nic in self._vm(vm_id).all_nics()]

    def vm_ids(self) -> List[int]:
        with self._lock:
            return sorted(self._vms)

    # Hooks -----------------------------------------------------------------------------
    def hooks(self) -> List[HookSpec]:
        """Snapshot of the registered hooks (what onehem caches)."""
        with self._lock:
            return [HookSpec(h.id, h.name, h.type, {k: v for k, v in h.template
                                                     if isinstance(v, str)})
                    for h in self._hooks.values()]

    def create_hook(self, template_text: str) -> int:
        """Register a hook as ``onehook create`` would, without an API event."""
        with self._lock:
            try:
                return self._allocate_hook(template_text)
            except _Failure as failure:
                raise ValueError(failure.message) from None

    def record_hook_execution(self, hook_id: int, *, arguments: str, command: str,
                              stdout: bytes, stderr: bytes, code: int,
                              timestamp: Optional[int] = None, remote_host: str = "",
                              retry: bool = False) -> int:
        """Store one execution in the hook's log (HOOKLOG); returns the EXECUTION_ID."""
        with self._lock:
            hook = self._hooks.get(hook_id)
            if hook is None:  # deleted meanwhile: nothing to attach the log to
                return -1
            record = _HookRecord(hook_id, hook.next_execution_id,
                                 int(timestamp if timestamp is not None else self._clock()),
                                 arguments, command, stdout, stderr, code, remote_host, retry)
            hook.next_execution_id += 1
            hook.log.append(record)
            return record.execution_id

    def retry_hook(self, hook_id: int, execution_id: int) -> None:
        """``onehook retry HOOK EXECUTION`` without an API event."""
        with self._lock:
            self._checked(lambda: self._retry_hook(hook_id, execution_id))

    # ----------------------------------------------------------------------------------
    # Wire handling and dispatch
    # ----------------------------------------------------------------------------------
    def _handle_wire(self, body: bytes) -> bytes:
        try:
            params, method = xmlrpc.client.loads(body)
        except Exception as exc:  # noqa: BLE001 - any malformed call
            return _wire_fault(FAULT_PARSE, f"Call XML not a proper XML-RPC call. {exc}")
        result = self.call(method or "", params)
        if isinstance(result, xmlrpc.client.Fault):
            return _wire_fault(result.faultCode, result.faultString)
        return _wire_response(result)

    def call(self, method: str, params: Sequence[Any]) -> Union[list, xmlrpc.client.Fault]:
        """Run one API call as the XML-RPC endpoint would (session is ``params[0]``).

        Returns the response array, or an ``xmlrpc.client.Fault`` for calls xmlrpc-c
        rejects before oned sees them.
        """
        handler = self._methods.get(method)
        if handler is None:
            return xmlrpc.client.Fault(FAULT_NO_SUCH_METHOD, f"Method '{method}' not defined")
        with self._lock:
            try:
                session = _p_str(params, 0)
            except _TypeFault as fault:
                return xmlrpc.client.Fault(FAULT_TYPE, str(fault))
            user = self._authenticate(session)
            if user is None:  # oned returns before it publishes any API event
                return [False, f"[{method}] User couldn't be authenticated, aborting call.",
                        AUTHENTICATION, -1, _I8(-1)]
            self._deferred = []
            extra = ""
            try:
                try:
                    value = handler(user, params)
                    if isinstance(value, tuple):
                        value, extra = value
                    response = [True, value, 0]
                except _Failure as failure:
                    response = [False, f"[{method}] {failure.message}", failure.code,
                                failure.obj_id, _I8(-1)]
                except _TypeFault as fault:
                    self._deferred = None
                    return xmlrpc.client.Fault(FAULT_TYPE, str(fault))
                deferred, self._deferred = self._deferred, None
                call_info = self._call_info(params, response, extra)
                self._publish(lambda seq: ApiEvent(seq, method, bool(response[0]), call_info,
                                                   tuple(params), tuple(response)))
                for step in deferred:
                    step()
            finally:
                self._deferred = None
            return response

    def _authenticate(self, session: str) -> Optional[_User]:
        name, sep, password = session.partition(":")
        user = self._users.get(name)
        if not sep or user is None or user.password != password:
            return None
        return user

    @staticmethod
    def _call_info(params: Sequence[Any], response: Sequence[Any], extra: str) -> str:
        """The CALL_INFO oned puts into an API event; values are NOT escaped (observed)."""

        def text(value: Any) -> str:
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)

        parts = ["<CALL_INFO><RESULT>", "1" if response[0] else "0", "</RESULT><PARAMETERS>"]
        for position, value in enumerate(params, start=1):
            shown = "****" if position == 1 else text(value)
            parts.append(f"<PARAMETER><POSITION>{position}</POSITION><TYPE>IN</TYPE>"
                         f"<VALUE>{shown}</VALUE></PARAMETER>")
        for position, value in enumerate(response[:4], start=1):
            parts.append(f"<PARAMETER><POSITION>{position}</POSITION><TYPE>OUT</TYPE>"
                         f"<VALUE>{text(value)}</VALUE></PARAMETER>")
        parts.append(f"</PARAMETERS><EXTRA>{extra}</EXTRA></CALL_INFO>")
        return "".join(parts)

    @staticmethod
    def _checked(step: Callable[[], Any]) -> Any:
        """Run a helper body, turning oned failures into Python exceptions."""
        try:
            return step()
        except _Failure as failure:
            raise ValueError(failure.message) from None

    def _vm(self, vm_id: int) -> _Vm:
        vm = self._vms.get(vm_id)
        if vm is None:
            raise _Failure(NO_EXISTS, f"Error getting virtual machine [{vm_id}].", vm_id)
        return vm

    def _authorize_vm(self, user: _User, vm: _Vm, operation: str) -> None:
        """Owner has USE and MANAGE (OWNER_U/M=1), never ADMIN; oneadmin group has all."""
        if user.is_admin or (user.uid == vm.owner.uid and operation in ("USE", "MANAGE")):
            return
        raise _Failure(AUTHORIZATION, f"User [{user.uid}] : Not authorized to perform "
                                      f"{operation} VM [{vm.id}].")

    @staticmethod
    def _require_admin(user: _User, what: str) -> None:
        if not user.is_admin:
            raise _Failure(AUTHORIZATION,
                           f"User [{user.uid}] : Not authorized to perform {what}.")

    def _request_id(self) -> str:
        return str(self._rng.randint(100, 9999))

    # ----------------------------------------------------------------------------------
    # RPC methods
    # ----------------------------------------------------------------------------------
    def _rpc_system_version(self, user: _User, params: Sequence[Any]) -> str:
        return self.version

    def _rpc_vm_info(self, user: _User, params: Sequence[Any]) -> str:
        vm_id = _p_int(params, 1)
        _p_opt(params, 2, _p_bool, False)
        vm = self._vm(vm_id)
        self._authorize_vm(user, vm, "USE")
        return self._vm_xml(vm)

    def _rpc_vn_info(self, user: _User, params: Sequence[Any]) -> str:
        """one.vn.info(s, id[, decrypt]): RequestManagerInfo, auth USE NET (see _vnet_xml)."""
        net_id = _p_int(params, 1)
        _p_opt(params, 2, _p_bool, False)
        net = self._networks.get(net_id)
        if net is None:
            raise _Failure(NO_EXISTS, f"Error getting virtual network [{net_id}].", net_id)
        # Owned by oneadmin: the oneadmin group may do anything, others need OTHER_U.
        if not (user.is_admin or net.other_use):
            raise _Failure(AUTHORIZATION, f"User [{user.uid}] : Not authorized to perform "
                                          f"USE NET [{net.id}].")
        return self._vnet_xml(net)

    def _rpc_vm_update(self, user: _User, params: Sequence[Any]) -> int:
        vm_id = _p_int(params, 1)
        template_text = _p_str(params, 2)
        update_type = _p_opt(params, 3, _p_int, 0)   # omitted = 0 = replace!
        vm = self._vm(vm_id)
        self._authorize_vm(user, vm, "MANAGE")
        vm.user_template = self._updated(vm.user_template, template_text, update_type, None)
        return vm.id

    def _rpc_vm_allocate(self, user: _User, params: Sequence[Any]):
        template_text = _p_str(params, 1)
        hold = _p_opt(params, 2, _p_bool, False)
        try:
            vm_id = self._allocate_vm(user, template_text, hold)
        except _Failure as failure:
            raise _Failure(ALLOCATE, f"Error allocating a new virtual machine. {failure.message}")
        return vm_id, self._vm_xml(self._vms[vm_id])

    def _rpc_vm_action(self, user: _User, params: Sequence[Any]) -> int:
        action = _p_str(params, 1)
        vm_id = _p_int(params, 2)
        vm = self._vm(vm_id)
        self._authorize_vm(user, vm, "MANAGE")
        self._vm_action(vm, action, user)
        return vm.id

    def _rpc_vm_deploy(self, user: _User, params: Sequence[Any]) -> int:
        vm_id = _p_int(params, 1)
        host_id = _p_int(params, 2)
        _p_opt(params, 3, _p_bool, False)
        _p_opt(params, 4, _p_int, -1)
        _p_opt(params, 5, _p_str, "")
        vm = self._vm(vm_id)
        self._authorize_vm(user, vm, "ADMIN")
        if host_id not in self._hosts:
            raise _Failure(NO_EXISTS, f"Error getting host [{host_id}].", host_id)
        self._deploy(vm, host_id, user)
        return vm.id

    def _rpc_vm_attachnic(self, user: _User, params: Sequence[Any]) -> int:
        vm_id = _p_int(params, 1)
        nic_template = _p_str(params, 2)
        vm = self._vm(vm_id)
        self._authorize_vm(user, vm, "MANAGE")
        self._attach_nic(vm, nic_template, user)
        return vm.id

    def _rpc_vm_detachnic(self, user: _User, params: Sequence[Any]) -> int:
        vm_id = _p_int(params, 1)
        nic_id = _p_int(params, 2)
        vm = self._vm(vm_id)
        self._authorize_vm(user, vm, "MANAGE")
        self._detach_nic(vm, nic_id, user)
        return vm.id

    def _pool(self, user: _User, params: Sequence[Any]) -> List[_Vm]:
        """Filter the VM pool like oned: owner filter, ID range, state; newest first."""
        who = _p_int(params, 1)
        start = _p_int(params, 2)
        end = _p_int(params, 3)
        state = _p_int(params, 4)
        _p_opt(params, 5, _p_str, "")   # 6.x+ optional KEY=VALUE filter: accepted, ignored
        vms = sorted(self._vms.values(), key=lambda vm: vm.id, reverse=True)
        if not user.is_admin:
            vms = [vm for vm in vms if vm.owner.uid == user.uid]
        if who >= 0:
            vms = [vm for vm in vms if vm.owner.uid == who]
        elif who in (-3, -1):      # mine (-3), mine and my group (-1)
            vms = [vm for vm in vms if vm.owner.uid == user.uid
                   or (who == -1 and vm.owner.gid == user.gid)]
        elif who == -4:            # my primary group
            vms = [vm for vm in vms if vm.owner.gid == user.gid]
        if state == -1:
            vms = [vm for vm in vms if vm.state != DONE]
        elif state >= 0:
            vms = [vm for vm in vms if vm.state == state]
        elif state != -2:
            raise _Failure(XML_RPC_API, "Incorrect filter_flag, state")
        if end < -1:                   # pagination (OCA info_paginated): offset, -size
            offset = max(start, 0)
            vms = vms[offset:offset - end]
        elif start >= 0:               # ID range; end -1 = no upper bound
            vms = [vm for vm in vms if vm.id >= start and (end < 0 or vm.id <= end)]
        return vms

    def _rpc_vmpool_info(self, user: _User, params: Sequence[Any]) -> str:
        vms = self._pool(user, params)
        return "<VM_POOL>" + "".join(self._vm_short_xml(vm) for vm in vms) + "</VM_POOL>"

    def _rpc_vmpool_infoextended(self, user: _User, params: Sequence[Any]) -> str:
        vms = self._pool(user, params)
        return "<VM_POOL>" + "".join(self._vm_xml(vm) for vm in vms) + "</VM_POOL>"

    def _rpc_hook_allocate(self, user: _User, params: Sequence[Any]):
        template_text = _p_str(params, 1)
        self._require_admin(user, "CREATE HOOK")
        try:
            hook_id = self._allocate_hook(template_text)
        except _NameTaken:
            raise
        except _Failure as failure:
            raise _Failure(ALLOCATE, f"Error allocating a new hook. {failure.message}")
        return hook_id, self._hook_xml(self._hooks[hook_id], with_log=False)

    def _rpc_hook_update(self, user: _User, params: Sequence[Any]) -> int:
        """oned 7.4 (NOTES, "Hook registration"): update does NOT translate ON; the stored
        template must hold valid STATE/LCM_STATE (state hooks of VMs) or CALL (api hooks)
        and a COMMAND, else INTERNAL "Cannot update template. ..." and the old one stays.
        Replace (0) keeps only what is sent (REMOTE too); merge (1) keeps the rest."""
        hook_id = _p_int(params, 1)
        template_text = _p_str(params, 2)
        update_type = _p_opt(params, 3, _p_int, 0)
        hook = self._hook(hook_id)
        self._require_admin(user, f"MANAGE HOOK [{hook_id}]")
        if update_type not in (0, 1):
            raise _Failure(XML_RPC_API, "Wrong update type")
        try:
            items = parse_template(template_text)
        except TemplateParseError as exc:
            raise _Failure(ACTION, f"Parse error: {exc}") from None
        merged = items if update_type == 0 else _merge_items(hook.template, items)
        merged = [(n, v) for n, v in merged if n not in ("NAME", "TYPE")]
        problem = self._stored_hook_problem(hook.type, {n: v for n, v in merged
                                                        if isinstance(v, str)})
        if problem:
            raise _Failure(INTERNAL, f"Cannot update template. {problem}")
        hook.template = merged
        return hook.id

    def _rpc_hook_delete(self, user: _User, params: Sequence[Any]):
        hook_id = _p_int(params, 1)
        hook = self._hook(hook_id)
        self._require_admin(user, f"MANAGE HOOK [{hook_id}]")
        extra = self._hook_xml(hook, with_log=False)
        del self._hooks[hook_id]
        return hook_id, extra

    def _rpc_hook_info(self, user: _User, params: Sequence[Any]) -> str:
        hook_id = _p_int(params, 1)
        hook = self._hook(hook_id)
        self._require_admin(user, f"USE HOOK [{hook_id}]")
        return self._hook_xml(hook, with_log=True)

    def _rpc_hookpool_info(self, user: _User, params: Sequence[Any]) -> str:
        _p_int(params, 1)
        start = _p_int(params, 2)
        end = _p_int(params, 3)
        self._require_admin(user, "USE HOOK")
        hooks = sorted(self._hooks.values(), key=lambda h: h.id, reverse=True)
        if start >= 0:
            hooks = [h for h in hooks if h.id >= start and (end < 0 or h.id <= end)]
        return "<HOOK_POOL>" + "".join(self._hook_xml(h, with_log=False)
                                       for h in hooks) + "</HOOK_POOL>"

    def _rpc_hook_retry(self, user: _User, params: Sequence[Any]) -> int:
        hook_id = _p_int(params, 1)
        execution_id = _p_int(params, 2)
        self._require_admin(user, f"MANAGE HOOK [{hook_id}]")
        self._retry_hook(hook_id, execution_id)
        return hook_id

    def _retry_hook(self, hook_id: int, execution_id: int) -> None:
        hook = self._hook(hook_id)
        record = next((r for r in hook.log if r.execution_id == execution_id), None)
        if record is None:
            raise _Failure(NO_EXISTS, f"Error getting hook execution record [{execution_id}].",
                           hook_id)
        self._later(lambda: self._publish(lambda seq: RetryEvent(
            seq, hook_id, execution_id, record.arguments, record.remote_host)))

    def _rpc_hooklog_info(self, user: _User, params: Sequence[Any]) -> str:
        """one.hooklog.info(s, min_ts, max_ts, hook_id, rc): rc 1 ok, -1 error, 0 all."""
        min_ts = _p_int(params, 1)
        max_ts = _p_int(params, 2)
        hook_id = _p_int(params, 3)
        rc_filter = _p_int(params, 4)
        self._require_admin(user, "USE HOOK")
        records = [r for h in self._hooks.values() for r in h.log
                   if (hook_id < 0 or r.hook_id == hook_id)
                   and (min_ts <= 0 or r.timestamp >= min_ts)
                   and (max_ts <= 0 or r.timestamp <= max_ts)
                   and (rc_filter == 0 or (rc_filter == 1) == (r.code == 0))]
        records.sort(key=lambda r: (r.timestamp, r.hook_id, r.execution_id))
        return "<HOOKLOG>" + "".join(self._hook_record_xml(r) for r in records) + "</HOOKLOG>"

    # ----------------------------------------------------------------------------------
    # VM allocation
    # ----------------------------------------------------------------------------------
    # ----------------------------------------------------------------------------------
    # Users and groups (one.user.*, one.group.*; documents as User/Group::to_xml write them)
    # ----------------------------------------------------------------------------------
    def _user(self, uid: int) -> _User:
        user = next((u for u in self._users.values() if u.uid == uid), None)
        if user is None:
            raise _Failure(NO_EXISTS, f"Error getting user [{uid}].", uid)
        return user

    def _group(self, gid: int) -> _Group:
        group = self._groups.get(gid)
        if group is None:
            raise _Failure(NO_EXISTS, f"Error getting group [{gid}].", gid)
        return group

    @staticmethod
    def _updated(current: TemplateItems, text: str, update_type: int,
                 restricted: Optional[Sequence[str]]) -> TemplateItems:
        """A template after ``one.*.update`` (type 0 replaces, 1 merges); ``restricted``
        (None for oneadmin): names the caller may not change (oned.conf
        USER/GROUP_RESTRICTED_ATTR). As PoolObjectSQL::replace_template does, a restricted
        attribute may be sent with its current value, and a replace must keep it; any
        other change fails the update as INTERNAL ("Cannot update template. ...")."""
        if update_type not in (0, 1):
            raise _Failure(XML_RPC_API, "Wrong update type")
        try:
            items = parse_template(text)
        except TemplateParseError as exc:
            raise _Failure(ACTION, f"Parse error: {exc}") from None
        items = [(n, dict(v) if isinstance(v, dict) else v) for n, v in items]
        updated = items if update_type == 0 else _merge_items(current, items)
        for name in restricted or ():
            if [v for n, v in updated if n == name] != [v for n, v in current if n == name]:
                raise _Failure(INTERNAL, f"Cannot update template. Tried to change restricted "
                                         f"attribute: {name}")
        return updated

    def _user_xml(self, user: _User, extended: bool) -> str:
        password = hashlib.sha256(user.password.encode()).hexdigest()
        body = (f"<USER><ID>{user.uid}</ID><GID>{user.gid}</GID><GROUPS><ID>{user.gid}</ID>"
                f"</GROUPS><GNAME>{_esc(user.gname)}</GNAME><NAME>{_esc(user.name)}</NAME>"
                f"<PASSWORD>{password}</PASSWORD><AUTH_DRIVER>core</AUTH_DRIVER>"
                f"<ENABLED>1</ENABLED><TEMPLATE>{_items_xml(user.template)}</TEMPLATE>")
        if extended:
            body += _EMPTY_QUOTAS + f"<DEFAULT_USER_QUOTAS>{_EMPTY_QUOTAS}</DEFAULT_USER_QUOTAS>"
        return body + "</USER>"

    def _group_xml(self, group: _Group, extended: bool) -> str:
        members = "".join(f"<ID>{u.uid}</ID>" for u in sorted(self._users.values(),
                                                              key=lambda u: u.uid)
                          if u.gid == group.id)
        body = (f"<GROUP><ID>{group.id}</ID><NAME>{_esc(group.name)}</NAME>"
                f"<TEMPLATE>{_items_xml(group.template)}</TEMPLATE>"
                f"<USERS>{members}</USERS><ADMINS></ADMINS>")
        if extended:  # VLAN_RULES: required by the 7.x group.xsd (see SOURCES.md)
            body += (_EMPTY_QUOTAS + f"<VLAN_RULES><ID>{group.id}</ID></VLAN_RULES>"
                     f"<DEFAULT_GROUP_QUOTAS>{_EMPTY_QUOTAS}</DEFAULT_GROUP_QUOTAS>")
        return body + "</GROUP>"

    @staticmethod
    def _deny(user: _User, operation: str) -> _Failure:
        return _Failure(AUTHORIZATION, f"User [{user.uid}] : Not authorized to perform {operation}.")

    def _rpc_user_info(self, user: _User, params: Sequence[Any]) -> str:
        uid = _p_int(params, 1)
        _p_opt(params, 2, _p_bool, False)
        target = user if uid == -1 else self._user(uid)
        if target.uid != user.uid and not user.is_admin:
            raise self._deny(user, f"USE USER [{target.uid}]")
        return self._user_xml(target, extended=True)

    def _rpc_user_update(self, user: _User, params: Sequence[Any]) -> int:
        uid = _p_int(params, 1)
        text = _p_str(params, 2)
        update_type = _p_opt(params, 3, _p_int, 0)
        target = self._user(uid)
        if target.uid != user.uid and not user.is_admin:
            raise self._deny(user, f"MANAGE USER [{target.uid}]")
        target.template = self._updated(target.template, text, update_type,
                                        None if user.is_admin else self.user_restricted)
        return target.uid

    def _rpc_userpool_info(self, user: _User, params: Sequence[Any]) -> str:
        users = sorted(self._users.values(), key=lambda u: u.uid)
        if not user.is_admin:
            users = [u for u in users if u.uid == user.uid]
        body = "".join(self._user_xml(u, extended=False)
                       + f"<QUOTAS><ID>{u.uid}</ID>{_EMPTY_QUOTAS}</QUOTAS>" for u in users)
        return (f"<USER_POOL>{body}<DEFAULT_USER_QUOTAS>{_EMPTY_QUOTAS}"
                "</DEFAULT_USER_QUOTAS></USER_POOL>")

    def _rpc_group_info(self, user: _User, params: Sequence[Any]) -> str:
        gid = _p_int(params, 1)
        _p_opt(params, 2, _p_bool, False)
        group = self._group(user.gid if gid == -1 else gid)
        if group.id != user.gid and not user.is_admin:
            raise self._deny(user, f"USE GROUP [{group.id}]")
        return self._group_xml(group, extended=True)

    def _rpc_group_update(self, user: _User, params: Sequence[Any]) -> int:
        gid = _p_int(params, 1)
        text = _p_str(params, 2)
        update_type = _p_opt(params, 3, _p_int, 0)
        group = self._group(gid)
        if not user.is_admin:  # group admins are not modelled: only oneadmin's group
            raise self._deny(user, f"MANAGE GROUP [{group.id}]")
        group.template = self._updated(group.template, text, update_type, None)
        return group.id

    def _rpc_grouppool_info(self, user: _User, params: Sequence[Any]) -> str:
        groups = sorted(self._groups.values(), key=lambda g: g.id)
        if not user.is_admin:
            groups = [g for g in groups if g.id == user.gid]
        body = "".join(self._group_xml(g, extended=False)
                       + f"<QUOTAS><ID>{g.id}</ID>{_EMPTY_QUOTAS}</QUOTAS>" for g in groups)
        return (f"<GROUP_POOL>{body}<DEFAULT_GROUP_QUOTAS>{_EMPTY_QUOTAS}"
                "</DEFAULT_GROUP_QUOTAS></GROUP_POOL>")

    def _allocate_vm(self, owner: _User, template_text: str, hold: bool) -> int:
        try:
            items = parse_template(template_text)
        except TemplateParseError as exc:
            raise _Failure(ALLOCATE, f"Parse error: {exc}") from None
        vm_id = self._next_vm_id
        vm = _Vm(id=vm_id, owner=owner, name=f"one-{vm_id}", stime=int(self._clock()),
                 os={"UUID": str(uuid.UUID(int=self._rng.getrandbits(128), version=4))})
        nic_specs: List[Dict[str, str]] = []
        alias_specs: List[Dict[str, str]] = []
        disks: List[Dict[str, str]] = []
        for name, value in items:
            if name == "NAME" and isinstance(value, str):
                vm.name = value
            elif name == "NIC" and isinstance(value, dict):
                nic_specs.append(dict(value))
            elif name == "NIC_ALIAS" and isinstance(value, dict):
                alias_specs.append(dict(value))
            elif name == "CONTEXT" and isinstance(value, dict):
                vm.context = dict(value)
            elif name == "OS" and isinstance(value, dict):
                vm.os.update(value)
            elif name in _TEMPLATE_LISTS and isinstance(value, dict):
                vm.known.setdefault(name, []).append(dict(value))
            elif name in _TEMPLATE_SCALARS and isinstance(value, str):
                vm.known[name] = value
            elif name in _TEMPLATE_VECTORS and isinstance(value, dict):
                vm.known[name] = dict(value)
            else:
                vm.user_template.append((name, value))
        for disk_id, disk in enumerate(vm.known.get("DISK", [])):
            disk["DISK_ID"] = str(disk_id)
            disks.append(disk)
        if vm.context is not None:
            vm.context.setdefault("DISK_ID", str(len(disks)))
            vm.context.setdefault("TARGET", "sda")
        try:
            for spec in nic_specs:
                self._add_nic(vm, spec)
            for spec in alias_specs:
                self._add_alias(vm, spec)
        except _Failure:
            self._release_leases(vm)
            raise
        if vm.known.get("SUBMIT_ON_HOLD", "").upper() == "YES":
            hold = True
        vm.state = vm.prev_state = HOLD if hold else PENDING
        self._vms[vm_id] = vm
        self._next_vm_id += 1
        self._publish_state(vm)   # onehem sees the new VM (CUSTOM PENDING/LCM_INIT hooks)
        return vm_id

    def _resolve_network(self, spec: Dict[str, str]) -> _Network:
        if spec.get("NETWORK_ID", "") != "":
            try:
                net = self._networks.get(int(spec["NETWORK_ID"]))
            except ValueError:
                net = None
            if net is None:
                raise _Failure(ACTION, f"Error getting virtual network [{spec['NETWORK_ID']}].")
            return net
        name = spec.get("NETWORK", "")
        for net in self._networks.values():
            if net.name == name:
                return net
        raise _Failure(ACTION, f"Error getting virtual network [{name}].")

    def _lease_into(self, vm: _Vm, nic: Dict[str, str], spec: Dict[str, str],
                    net: _Network, nic_id: int) -> None:
        requested = spec.get("IP") if net.kind == "ipv4" else spec.get("IP6")
        index = net.lease(vm.id, requested or None)
        vm.leases[nic_id] = (net.id, index)
        nic.update(AR_ID="0", BRIDGE=net.bridge, BRIDGE_TYPE="linux", CLUSTER_ID="0",
                   MAC=net.mac(index), NETWORK=net.name, NETWORK_ID=str(net.id),
                   NIC_ID=str(nic_id), SECURITY_GROUPS="0", TARGET=f"one-{vm.id}-{nic_id}",
                   VN_MAD=net.vn_mad)
        for key, value in (("DNS", net.dns), ("MTU", net.mtu), ("VLAN_ID", net.vlan_id),
                           ("PHYDEV", net.phydev)):
            if value:
                nic[key] = value
        if net.kind == "ipv4":
            nic["IP"] = net.address(index)
            if net.gateway:
                nic["GATEWAY"] = net.gateway
            if net.ip6_global_prefix is not None:
                eui = self._eui64(nic["MAC"])
                nic["IP6_GLOBAL"] = str(net.ip6_global_prefix.network_address + eui)
                nic["IP6_LINK"] = str(ipaddress.IPv6Address("fe80::") + eui)
        elif net.kind == "ipv6":
            nic["IP6"] = net.address(index)

    @staticmethod
    def _eui64(mac: str) -> int:
        octets = [int(part, 16) for part in mac.split(":")]
        octets[0] ^= 0x02
        value = octets[:3] + [0xFF, 0xFE] + octets[3:]
        return int.from_bytes(bytes(value), "big")

    def _add_nic(self, vm: _Vm, spec: Dict[str, str]) -> Dict[str, str]:
        net = self._resolve_network(spec)
        nic_id = vm.next_nic_id
        nic = {key: value for key, value in spec.items() if key not in ("IP", "IP6")}
        for key, value in vm.known.get("NIC_DEFAULT", {}).items():
            nic.setdefault(key, value)
        self._lease_into(vm, nic, spec, net, nic_id)
        nic.setdefault("NAME", f"NIC{nic_id}")
        vm.next_nic_id += 1
        vm.nics.append(nic)
        return nic

    def _add_alias(self, vm: _Vm, spec: Dict[str, str]) -> Dict[str, str]:
        parent_name = spec.get("PARENT", "")
        parent = next((nic for nic in vm.nics if nic.get("NAME") == parent_name), None)
        if parent is None:
            raise _Failure(ACTION, f"Parent NIC {parent_name!r} of NIC_ALIAS not found.")
        net = self._resolve_network(spec)
        nic_id = vm.next_nic_id
        alias = {key: value for key, value in spec.items() if key not in ("IP", "IP6")}
        self._lease_into(vm, alias, spec, net, nic_id)
        siblings = [a for a in vm.aliases if a["PARENT_ID"] == parent["NIC_ID"]]
        alias.update(ALIAS_ID=str(len(siblings)), PARENT=parent["NAME"],
                     PARENT_ID=parent["NIC_ID"], NAME=f"NIC{parent['NIC_ID']}_ALIAS{nic_id}")
        ids = [i for i in parent.get("ALIAS_IDS", "").split(",") if i]
        parent["ALIAS_IDS"] = ",".join(ids + [str(nic_id)])
        vm.next_nic_id += 1
        vm.aliases.append(alias)
        return alias

    def _release_leases(self, vm: _Vm, nic_ids: Optional[Iterable[int]] = None) -> None:
        for nic_id in list(nic_ids if nic_ids is not None else vm.leases):
            lease = vm.leases.pop(nic_id, None)
            if lease is not None:
                self._networks[lease[0]].release(lease[1])

    @staticmethod
    def _find_nic(vm: _Vm, nic_id: int) -> Optional[Dict[str, str]]:
        return next((nic for nic in vm.all_nics() if nic.get("NIC_ID") == str(nic_id)), None)

    # ----------------------------------------------------------------------------------
    # State machine
    # ----------------------------------------------------------------------------------
    def _publish_state(self, vm: _Vm) -> None:
        xml = self._vm_xml(vm)
        host = vm.history[-1]["HOSTNAME"] if vm.history else ""
        self._publish(lambda seq: StateEvent(seq, "VM", vm.id, VM_STATES[vm.state],
                                             LCM_STATES.get(vm.lcm, str(vm.lcm)), xml, host))

    def _set_state(self, vm: _Vm, state: int, lcm: int = 0) -> None:
        """Change state and fire state hooks. The event carries the real PREV_*; the stored
        document then shows PREV_* equal to the current state, as vm.info does."""
        vm.prev_state, vm.prev_lcm = vm.state, vm.lcm
        vm.state, vm.lcm = state, lcm
        if (vm.prev_state, vm.prev_lcm) != (state, lcm):
            self._publish_state(vm)
        vm.prev_state, vm.prev_lcm = state, lcm

    def _hist_open(self, vm: _Vm, host: _Host, now: int, prolog: bool) -> None:
        vm.history.append(dict(
            OID=vm.id, SEQ=len(vm.history), HOSTNAME=host.name, HID=host.id, CID=0,
            STIME=now, ETIME=0, VM_MAD="dummy", TM_MAD="dummy", DS_ID=0, PLAN_ID=-2,
            ACTION_ID=-1, PSTIME=now if prolog else 0, PETIME=0, RSTIME=0 if prolog else now,
            RETIME=0, ESTIME=0, EETIME=0, ACTION=0, UID=-1, GID=-1, REQUEST_ID="-1"))

    def _hist_mark(self, vm: _Vm, action: str, actor: _User, now: int, *,
                   end: bool = False, epilog: bool = False) -> None:
        """Record an action on the current history record (RETIME/ETIME/EPILOG times)."""
        if not vm.history:
            return
        rec = vm.history[-1]
        if not rec["RETIME"]:
            rec["RETIME"] = now
        if end:
            rec["ETIME"] = now
        if epilog:
            rec["ESTIME"] = rec["EETIME"] = now
        rec.update(ACTION=_HISTORY_ACTION[action], UID=actor.uid, GID=actor.gid,
                   REQUEST_ID=self._request_id())

    def _hist_reopen(self, vm: _Vm, now: int) -> None:
        """Close the current record and start a new one on the same host (resume, NIC
        hotplug: 7.4 writes a new HISTORY after each, see hookarg-7.4-* samples)."""
        if not vm.history:
            return
        rec = vm.history[-1]
        rec["ETIME"] = now
        if not rec["RETIME"]:
            rec["RETIME"] = now
        self._hist_open(vm, self._hosts.get(rec["HID"], _Host(rec["HID"], rec["HOSTNAME"])),
                        now, prolog=False)

    def _deploy(self, vm: _Vm, host_id: int, actor: Optional[_User] = None) -> None:
        if vm.state not in (PENDING, HOLD):
            raise _Failure(ACTION, f"Deploy action is not available for state "
                                   f"{VM_STATES[vm.state]}")
        host = self._hosts.get(host_id)
        if host is None:
            raise _Failure(NO_EXISTS, f"Error getting host [{host_id}].", host_id)
        now = int(self._clock())
        resume_from, vm.resume_from = vm.resume_from, ""
        self._hist_open(vm, host, now, prolog=True)
        vm.tm_mad_system = "dummy"
        self._set_state(vm, ACTIVE, L["LCM_INIT"])
        prolog, boot = {"stopped": ("PROLOG_RESUME", "BOOT_STOPPED"),
                        "undeployed": ("PROLOG_UNDEPLOY", "BOOT_UNDEPLOY")}.get(
                            resume_from, ("PROLOG", "BOOT"))

        def run() -> None:
            self._set_state(vm, ACTIVE, L[prolog])
            rec = vm.history[-1]
            rec["PETIME"] = rec["RSTIME"] = int(self._clock())
            self._set_state(vm, ACTIVE, L[boot])
            if not vm.deploy_id:
                vm.deploy_id = f"{host.name}:{vm.name}:dummy"
            self._set_state(vm, ACTIVE, L["RUNNING"])

        self._later(run)

    def _vm_action(self, vm: _Vm, action: str, actor: _User) -> None:
        """``one.vm.action``: which states allow the verb and which states it walks."""
        now = int(self._clock())
        running = vm.state == ACTIVE and vm.lcm == L["RUNNING"]
        unknown = vm.state == ACTIVE and vm.lcm == L["UNKNOWN"]
        path: List[Tuple[int, int]] = []
        sync = False

        def refuse() -> None:
            raise _Failure(ACTION, f'Error performing action "{action}": This action is not '
                                   f"available for state {self._state_label(vm)}")

        if action in ("terminate", "terminate-hard"):
            if vm.state in (PENDING, HOLD, STOPPED, UNDEPLOYED):
                # nothing runs on a host: straight to DONE
                self._hist_mark(vm, action, actor, now, end=True)
                path, sync = [(DONE, 0)], True
            elif running or (unknown and action == "terminate-hard"):
                self._hist_mark(vm, action, actor, now, end=True, epilog=True)
                path = [(ACTIVE, L["SHUTDOWN"]), (ACTIVE, L["EPILOG"]), (DONE, 0)]
            elif vm.state in (POWEROFF, SUSPENDED) or unknown:
                self._hist_mark(vm, action, actor, now, end=True, epilog=True)
                path = [(ACTIVE, L["EPILOG"]), (DONE, 0)]
            else:
                refuse()
        elif action in ("poweroff", "poweroff-hard"):
            if not (running or unknown):
                refuse()
            self._hist_mark(vm, action, actor, now)
            path = [(ACTIVE, L["SHUTDOWN_POWEROFF"]), (POWEROFF, 0)]
        elif action in ("undeploy", "undeploy-hard"):
            if running or unknown:
                path = [(ACTIVE, L["SHUTDOWN_UNDEPLOY"]), (ACTIVE, L["EPILOG_UNDEPLOY"]),
                        (UNDEPLOYED, 0)]
            elif vm.state == POWEROFF:
                path = [(ACTIVE, L["EPILOG_UNDEPLOY"]), (UNDEPLOYED, 0)]
            else:
                refuse()
            self._hist_mark(vm, action, actor, now, end=True, epilog=True)
        elif action == "stop":
            if running:
                path = [(ACTIVE, L["SAVE_STOP"]), (ACTIVE, L["EPILOG_STOP"]), (STOPPED, 0)]
            elif vm.state == SUSPENDED:
                path = [(ACTIVE, L["EPILOG_STOP"]), (STOPPED, 0)]
            else:
                refuse()
            self._hist_mark(vm, action, actor, now, end=True, epilog=True)
        elif action == "suspend":
            if not running:
                refuse()
            self._hist_mark(vm, action, actor, now)
            path = [(ACTIVE, L["SAVE_SUSPEND"]), (SUSPENDED, 0)]
        elif action == "resume":
            if vm.state == POWEROFF:
                self._hist_reopen(vm, now)
                path = [(ACTIVE, L["BOOT_POWEROFF"]), (ACTIVE, L["RUNNING"])]
            elif vm.state == SUSPENDED:
                self._hist_reopen(vm, now)
                path = [(ACTIVE, L["BOOT_SUSPENDED"]), (ACTIVE, L["RUNNING"])]
            elif unknown:
                path = [(ACTIVE, L["BOOT_UNKNOWN"]), (ACTIVE, L["RUNNING"])]
            elif vm.state in (STOPPED, UNDEPLOYED):
                vm.resume_from = "stopped" if vm.state == STOPPED else "undeployed"
                path, sync = [(PENDING, 0)], True
            else:
                refuse()
        elif action == "hold":
            if vm.state != PENDING:
                refuse()
            path, sync = [(HOLD, 0)], True
        elif action == "release":
            if vm.state != HOLD:
                refuse()
            path, sync = [(PENDING, 0)], True
        elif action in ("reboot", "reboot-hard"):
            if not running:
                refuse()
            return                         # the guest reboots; oned's state does not move
        elif action in ("resched", "unresched"):
            if not (running or vm.state == POWEROFF):
                refuse()
            vm.resched = 1 if action == "resched" else 0
            return
        else:
            raise _Failure(ACTION, f'Virtual machine action "{action}" is not supported')

        def walk() -> None:
            for state, lcm in path:
                if state == DONE:
                    vm.etime = int(self._clock())
                    self._release_leases(vm)   # leases go back only at DONE
                self._set_state(vm, state, lcm)

        if sync:
            walk()
        else:
            self._later(walk)

    def _state_label(self, vm: _Vm) -> str:
        return LCM_STATES.get(vm.lcm, str(vm.lcm)) if vm.state == ACTIVE else VM_STATES[vm.state]

    def _attach_nic(self, vm: _Vm, nic_template: str, actor: _User) -> int:
        try:
            items = parse_template(nic_template)
        except TemplateParseError as exc:
            raise _Failure(ACTION, f"Parse error: {exc}") from None
        vectors = [(n, v) for n, v in items if n in ("NIC", "NIC_ALIAS") and isinstance(v, dict)]
        if len(vectors) != 1:
            raise _Failure(ACTION, "VM template must contain exactly one NIC or NIC_ALIAS.")
        running = vm.state == ACTIVE and vm.lcm == L["RUNNING"]
        if not running and vm.state not in (POWEROFF, UNDEPLOYED, STOPPED):
            raise _Failure(ACTION, f"Could not add a new NIC to VM {vm.id}, wrong state "
                                   f"{self._state_label(vm)}.")
        kind, spec = vectors[0]
        nic = self._add_alias(vm, dict(spec)) if kind == "NIC_ALIAS" else \
            self._add_nic(vm, dict(spec))
        if running:
            self._hotplug(vm, "alias-attach" if kind == "NIC_ALIAS" else "nic-attach", actor)
        return int(nic["NIC_ID"])

    def _detach_nic(self, vm: _Vm, nic_id: int, actor: _User) -> None:
        nic = self._find_nic(vm, nic_id)
        if nic is None:
            raise _Failure(ACTION, f"Can not detach NIC with ID {nic_id}, it does not exist.")
        running = vm.state == ACTIVE and vm.lcm == L["RUNNING"]
        if not running and vm.state not in (POWEROFF, UNDEPLOYED, STOPPED):
            raise _Failure(ACTION, f"Could not detach NIC from VM {vm.id}, wrong state "
                                   f"{self._state_label(vm)}.")
        is_alias = "PARENT_ID" in nic
        if is_alias:
            vm.aliases.remove(nic)
            parent = self._find_nic(vm, int(nic["PARENT_ID"]))
            if parent is not None:
                ids = [i for i in parent.get("ALIAS_IDS", "").split(",") if i and i != str(nic_id)]
                if ids:
                    parent["ALIAS_IDS"] = ",".join(ids)
                else:
                    parent.pop("ALIAS_IDS", None)
            self._release_leases(vm, [nic_id])
        else:
            children = [a for a in vm.aliases if a["PARENT_ID"] == str(nic_id)]
            for alias in children:
                vm.aliases.remove(alias)
            vm.nics.remove(nic)
            self._release_leases(vm, [nic_id] + [int(a["NIC_ID"]) for a in children])
        if running:
            self._hotplug(vm, "alias-detach" if is_alias else "nic-detach", actor)

    def _hotplug(self, vm: _Vm, action: str, actor: _User) -> None:
        """RUNNING -> HOTPLUG_NIC (synchronous, before the call returns) -> RUNNING
        (after the driver answered); a POWEROFF VM changes no state at all."""
        now = int(self._clock())
        self._hist_mark(vm, action, actor, now, end=True)
        self._set_state(vm, ACTIVE, L["HOTPLUG_NIC"])

        def finish() -> None:
            self._hist_reopen(vm, int(self._clock()))
            self._set_state(vm, ACTIVE, L["RUNNING"])

        self._later(finish)

    # ----------------------------------------------------------------------------------
    # Documents
    # ----------------------------------------------------------------------------------
    def _context_items(self, vm: _Vm) -> Dict[str, str]:
        context = dict(vm.context or {})
        if context.get("NETWORK", "").upper() != "YES":
            return context
        for nic in vm.nics:
            context.update(self._eth_context(f"ETH{nic['NIC_ID']}", nic))
        for alias in vm.aliases:
            context.update(self._eth_context(
                f"ETH{alias['PARENT_ID']}_ALIAS{alias['ALIAS_ID']}", alias))
        return context

    def _eth_context(self, prefix: str, nic: Dict[str, str]) -> Dict[str, str]:
        net = self._networks.get(int(nic.get("NETWORK_ID", -1)))
        values = dict.fromkeys(_CONTEXT_ETH_KEYS, "")
        values["MAC"] = nic.get("MAC", "")
        values["IP"] = nic.get("IP", "")
        values["IP6"] = nic.get("IP6_GLOBAL") or nic.get("IP6", "")
        if net is not None:
            values.update(DNS=net.dns, SEARCH_DOMAIN=net.search_domain, VLAN_ID=net.vlan_id)
            if net.kind == "ipv4":
                values.update(GATEWAY=net.gateway, MASK=net.netmask,
                              NETWORK=net.network_address)
            elif net.kind == "ipv6":
                values.update(IP6_GATEWAY=net.gateway6, IP6_PREFIX_LENGTH=str(net.prefixlen))
        return {f"{prefix}_{key}": value for key, value in values.items()}

    def _template_xml(self, vm: _Vm) -> str:
        parts = ['<AUTOMATIC_DS_REQUIREMENTS><![CDATA[("CLUSTERS/ID" @> 0)]]>'
                 "</AUTOMATIC_DS_REQUIREMENTS>"]
        if vm.all_nics():
            parts.append('<AUTOMATIC_NIC_REQUIREMENTS><![CDATA[("CLUSTERS/ID" @> 0)]]>'
                         "</AUTOMATIC_NIC_REQUIREMENTS>")
        parts.append("<AUTOMATIC_REQUIREMENTS><![CDATA[(CLUSTER_ID = 0) & !(PIN_POLICY = "
                     "PINNED)]]></AUTOMATIC_REQUIREMENTS>")
        for name in _TEMPLATE_ORDER[3:]:       # the three AUTOMATIC_* are written above
            if name == "CONTEXT":
                if vm.context is not None:
                    parts.append(_vector_xml("CONTEXT", self._context_items(vm)))
            elif name == "NIC":
                parts += [_vector_xml("NIC", nic) for nic in vm.nics]
            elif name == "NIC_ALIAS":
                parts += [_vector_xml("NIC_ALIAS", alias) for alias in vm.aliases]
            elif name == "OS":
                parts.append(_vector_xml("OS", vm.os))
            elif name == "SECURITY_GROUP_RULE":
                if vm.all_nics():
                    for rule_type in ("OUTBOUND", "INBOUND"):
                        parts.append(_vector_xml("SECURITY_GROUP_RULE", {
                            "PROTOCOL": "ALL", "RULE_TYPE": rule_type,
                            "SECURITY_GROUP_ID": "0", "SECURITY_GROUP_NAME": "default"}))
            elif name == "TM_MAD_SYSTEM":
                if vm.tm_mad_system:
                    parts.append(_item_xml(name, vm.tm_mad_system))
            elif name == "VMID":
                parts.append(_item_xml(name, str(vm.id)))
            elif name in vm.known:
                value = vm.known[name]
                for entry in value if isinstance(value, list) else [value]:
                    parts.append(_item_xml(name, entry))
        return "<TEMPLATE>" + "".join(parts) + "</TEMPLATE>"

    @staticmethod
    def _history_xml(rec: Dict[str, Any]) -> str:
        fields = []
        for key in ("OID", "SEQ", "HOSTNAME", "HID", "CID", "STIME", "ETIME", "VM_MAD",
                    "TM_MAD", "DS_ID", "PLAN_ID", "ACTION_ID", "PSTIME", "PETIME", "RSTIME",
                    "RETIME", "ESTIME", "EETIME", "ACTION", "UID", "GID", "REQUEST_ID"):
            value = _cdata(rec[key]) if key in ("VM_MAD", "TM_MAD") else _esc(rec[key])
            fields.append(f"<{key}>{value}</{key}>")
        return "<HISTORY>" + "".join(fields) + "</HISTORY>"

    def _vm_header(self, vm: _Vm, full: bool) -> str:
        owner = vm.owner
        parts = [f"<VM><ID>{vm.id}</ID><UID>{owner.uid}</UID><GID>{owner.gid}</GID>"
                 f"<UNAME>{_esc(owner.name)}</UNAME><GNAME>{_esc(owner.gname)}</GNAME>"
                 f"<NAME>{_esc(vm.name)}</NAME>"]
        if full:
            parts.append("<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M>"
                         "<OWNER_A>0</OWNER_A><GROUP_U>0</GROUP_U><GROUP_M>0</GROUP_M>"
                         "<GROUP_A>0</GROUP_A><OTHER_U>0</OTHER_U><OTHER_M>0</OTHER_M>"
                         "<OTHER_A>0</OTHER_A></PERMISSIONS>")
        parts.append(f"<LAST_POLL>0</LAST_POLL><STATE>{vm.state}</STATE>"
                     f"<LCM_STATE>{vm.lcm}</LCM_STATE>")
        if full:
            parts.append(f"<PREV_STATE>{vm.prev_state}</PREV_STATE>"
                         f"<PREV_LCM_STATE>{vm.prev_lcm}</PREV_LCM_STATE>")
        parts.append(f"<RESCHED>{vm.resched}</RESCHED><STIME>{vm.stime}</STIME>"
                     f"<ETIME>{vm.etime}</ETIME><DEPLOY_ID>{_esc(vm.deploy_id)}</DEPLOY_ID>")
        return "".join(parts)

    def _vnet_xml(self, net: _Network) -> str:
        """The VNET document as oned 7.x writes it (VirtualNetwork::to_xml_extended and
        AddressRange::to_xml of OpenNebula/one, commit f847cf2e): compact, fixed elements
        escaped, TEMPLATE values in CDATA sorted by name, one AR with its LEASES. Validates
        against vnet.xsd (tests/one/test_onesim_vnet.py), but for IP6_STATIC ranges, as oned's:
        AR attributes come out of a sorted map, and the schema expects IP6 late, no
        PREFIX_LENGTH."""
        template = dict(BRIDGE=net.bridge, BRIDGE_TYPE="linux", OUTER_VLAN_ID="",
                        PHYDEV=net.phydev, SECURITY_GROUPS="0", VLAN_ID=net.vlan_id,
                        VN_MAD=net.vn_mad)
        for key, value in (("DNS", net.dns), ("GATEWAY", net.gateway),
                           ("GATEWAY6", net.gateway6), ("NETWORK_ADDRESS", net.network_address),
                           ("NETWORK_MASK", net.netmask), ("SEARCH_DOMAIN", net.search_domain),
                           ("GUEST_MTU", net.mtu)):
            if value:
                template[key] = value
        items = [(k, v) for k, v in template.items() if k not in {n for n, _ in net.template}]
        ar = {"AR_ID": "0", "MAC": net.mac(0), "NEXT_INDEX": str(net.next_index), "SIZE": str(net.size),
              "TYPE": {"ipv4": "IP4", "ipv6": "IP6_STATIC", "l2": "ETHER"}[net.kind]}
        if net.kind == "ipv4":
            ar["IP"] = str(net.first)
        elif net.kind == "ipv6":
            ar["IP6"] = str(net.first)
            ar["PREFIX_LENGTH"] = str(net.prefixlen)
        ar_xml = "".join(f"<{k}>{_esc(ar[k])}</{k}>" for k in sorted(ar))
        ar_xml += f"<MAC_END>{_esc(net.mac(net.size - 1))}</MAC_END>"
        if net.kind == "ipv4":
            ar_xml += f"<IP_END>{_esc(net.address(net.size - 1))}</IP_END>"
        elif net.kind == "ipv6":
            ar_xml += f"<IP6_END>{_esc(net.address(net.size - 1))}</IP6_END>"
        ar_xml += f"<USED_LEASES>{len(net.used)}</USED_LEASES>"
        leases = []
        for index, vm_id in sorted(net.used.items()):
            lease = {"MAC": net.mac(index), "VM": str(vm_id)}
            if net.kind == "ipv4":
                lease["IP"] = net.address(index)
            elif net.kind == "ipv6":
                lease["IP6"] = net.address(index)
            leases.append(_vector_xml("LEASE", lease))
        ar_xml += ("<LEASES>" + "".join(leases) + "</LEASES>") if leases else "<LEASES/>"
        other_u = 1 if net.other_use else 0
        return (f"<VNET><ID>{net.id}</ID><UID>0</UID><GID>0</GID><UNAME>oneadmin</UNAME>"
                f"<GNAME>oneadmin</GNAME><NAME>{_esc(net.name)}</NAME>"
                "<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A>"
                "<GROUP_U>0</GROUP_U><GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A>"
                f"<OTHER_U>{other_u}</OTHER_U><OTHER_M>0</OTHER_M><OTHER_A>0</OTHER_A></PERMISSIONS>"
                f"<CLUSTERS><ID>0</ID></CLUSTERS><BRIDGE>{_esc(net.bridge)}</BRIDGE>"
                "<BRIDGE_TYPE>linux</BRIDGE_TYPE><STATE>1</STATE><PREV_STATE>0</PREV_STATE>"
                "<PARENT_NETWORK_ID/><TEMPLATE_ID/>"
                + (f"<VN_MAD>{_esc(net.vn_mad)}</VN_MAD>" if net.vn_mad else "<VN_MAD/>")
                + (f"<PHYDEV>{_esc(net.phydev)}</PHYDEV>" if net.phydev else "<PHYDEV/>")
                + (f"<VLAN_ID>{_esc(net.vlan_id)}</VLAN_ID>" if net.vlan_id else "<VLAN_ID/>")
                + "<OUTER_VLAN_ID/><VLAN_ID_AUTOMATIC>0</VLAN_ID_AUTOMATIC>"
                "<OUTER_VLAN_ID_AUTOMATIC>0</OUTER_VLAN_ID_AUTOMATIC>"
                f"<USED_LEASES>{len(net.used)}</USED_LEASES>"
                "<VROUTERS/><UPDATED_VMS/><OUTDATED_VMS/><UPDATING_VMS/><ERROR_VMS/>"
                "<TEMPLATE>" + _items_xml(items + list(net.template)) + "</TEMPLATE>"
                "<AR_POOL><AR>" + ar_xml + "</AR></AR_POOL></VNET>")

    def _vm_xml(self, vm: _Vm) -> str:
        """The full body, compact, like ``one.vm.info`` (and infoextended) returns it."""
        history = ("<HISTORY_RECORDS>" + "".join(self._history_xml(r) for r in vm.history)
                   + "</HISTORY_RECORDS>") if vm.history else "<HISTORY_RECORDS/>"
        return (self._vm_header(vm, full=True)
                + "<MONITORING></MONITORING><SCHED_ACTIONS></SCHED_ACTIONS>"
                + self._template_xml(vm)
                + "<USER_TEMPLATE>" + _items_xml(vm.user_template) + "</USER_TEMPLATE>"
                + history
                + "<BACKUPS><BACKUP_CONFIG/><BACKUP_IDS></BACKUP_IDS></BACKUPS></VM>")

    def _vm_short_xml(self, vm: _Vm) -> str:
        """The reduced body of ``one.vmpool.info`` (vm_pool.xsd): short NICs, aliases
        listed as NICs, a few USER_TEMPLATE keys, only the last HISTORY."""
        parts = [self._vm_header(vm, full=False), "<TEMPLATE>"]
        for key in ("CPU", "MEMORY", "VCPU"):
            if key in vm.known:
                parts.append(f"<{key}>{_esc(vm.known[key])}</{key}>")
        for disk in vm.known.get("DISK", []):
            parts.append("<DISK>" + "".join(f"<{k}>{_cdata(disk[k])}</{k}>"
                                            for k in _SHORT_DISK_KEYS if k in disk) + "</DISK>")
        for nic in sorted(vm.all_nics(), key=lambda n: int(n["NIC_ID"])):
            parts.append("<NIC>" + "".join(f"<{k}>{_cdata(nic[k])}</{k}>"
                                           for k in _SHORT_NIC_KEYS if k in nic) + "</NIC>")
        graphics = vm.known.get("GRAPHICS")
        if graphics:
            parts.append("<GRAPHICS>" + "".join(f"<{k}>{_cdata(graphics[k])}</{k}>"
                                                for k in ("LISTEN", "PORT", "TYPE")
                                                if k in graphics) + "</GRAPHICS>")
        parts.append("</TEMPLATE><MONITORING/><USER_TEMPLATE>")
        parts.append(_items_xml((n, v) for n, v in vm.user_template
                                if n in _SHORT_USER_TEMPLATE_KEYS))
        parts.append("</USER_TEMPLATE>")
        if vm.history:
            rec = vm.history[-1]
            parts.append(
                f"<HISTORY_RECORDS><HISTORY><OID>{rec['OID']}</OID><SEQ>{rec['SEQ']}</SEQ>"
                f"<HOSTNAME>{_cdata(rec['HOSTNAME'])}</HOSTNAME><HID>{rec['HID']}</HID>"
                f"<CID>{rec['CID']}</CID><DS_ID>{rec['DS_ID']}</DS_ID>"
                f"<VM_MAD>{_cdata(rec['VM_MAD'])}</VM_MAD><TM_MAD>{_cdata(rec['TM_MAD'])}"
                f"</TM_MAD><ACTION>{_cdata(rec['ACTION'])}</ACTION></HISTORY></HISTORY_RECORDS>")
        else:
            parts.append("<HISTORY_RECORDS/>")
        parts.append("</VM>")
        return "".join(parts)

    # ----------------------------------------------------------------------------------
    # Hooks
    # ----------------------------------------------------------------------------------
    def _hook(self, hook_id: int) -> _Hook:
        hook = self._hooks.get(hook_id)
        if hook is None:
            raise _Failure(NO_EXISTS, f"Error getting hook [{hook_id}].", hook_id)
        return hook

    @staticmethod
    def _validate_hook(hook_type: str, attrs: Dict[str, str]) -> None:
        if not attrs.get("COMMAND"):
            raise _Failure(ALLOCATE, "No COMMAND for Hook.")
        if hook_type == "state":
            resource = attrs.get("RESOURCE", "").upper()
            if resource not in ("VM", "HOST", "IMAGE", "NET"):
                raise _Failure(ALLOCATE, f"Invalid resource type: {resource or '(none)'}")
            on = attrs.get("ON", "").upper()
            if on != "CUSTOM" and on not in HOOK_ON_STATES:
                raise _Failure(ALLOCATE, f"Invalid ON value: {on or '(none)'}")
            if resource == "VM" and on == "CUSTOM":
                if attrs.get("STATE", "").upper() not in _STATE_NUM or \
                        attrs.get("LCM_STATE", "").upper() not in _LCM_NUM:
                    raise _Failure(ALLOCATE, "Invalid or missing STATE/LCM_STATE for CUSTOM hook.")
        elif hook_type == "api":
            if not attrs.get("CALL"):
                raise _Failure(ALLOCATE, "API hooks require a CALL attribute.")
        else:
            raise _Failure(ALLOCATE, f"Invalid Hook type: {hook_type}")

    @staticmethod
    def _stored_hook_problem(hook_type: str, attrs: Dict[str, str]) -> str:
        """What oned's post-update check says of a stored template ("" when it is fine)."""
        if not attrs.get("COMMAND"):
            return "The COMMAND attribute is not defined."
        if hook_type == "state" and attrs.get("RESOURCE", "").upper() == "VM":
            if attrs.get("STATE", "") not in _STATE_NUM:
                return "The STATE attribute is not defined or it's invalid."
            if attrs.get("LCM_STATE", "") not in _LCM_NUM:
                return "The LCM_STATE attribute is not defined or it's invalid."
        if hook_type == "api" and not attrs.get("CALL"):
            return "The CALL attribute is not defined or it's invalid."
        return ""

    @staticmethod
    def _normalise_hook(hook_type: str, items: TemplateItems) -> TemplateItems:
        """What oned 7.4 stores from an allocated template (NOTES, "Hook registration"):
        NAME/TYPE leave it, a VM state hook's ON becomes STATE + LCM_STATE, REMOTE is
        always there. Other resources keep their template as given (not observed)."""
        attrs = {n: v for n, v in items if isinstance(v, str)}
        drop = {"NAME", "TYPE"}
        extra: TemplateItems = []
        if hook_type == "state" and attrs.get("RESOURCE", "").upper() == "VM":
            on = attrs.get("ON", "").upper()
            state, lcm = ((attrs.get("STATE", "").upper(), attrs.get("LCM_STATE", "").upper())
                          if on == "CUSTOM" else HOOK_ON_STATES[on])
            drop |= {"ON", "STATE", "LCM_STATE"}
            extra += [("STATE", state), ("LCM_STATE", lcm)]
        # Observed: REMOTE="NO" added to templates without it. A given value is kept as
        # YES/NO (the simulator's choice: oned reads it as a boolean).
        remote = attrs.get("REMOTE", "")
        drop.add("REMOTE")
        extra.append(("REMOTE", "YES" if remote.strip().upper() == "YES" else "NO"))
        return [(n, v) for n, v in items if n not in drop] + extra

    def _allocate_hook(self, template_text: str) -> int:
        try:
            items = parse_template(template_text)
        except TemplateParseError as exc:
            raise _Failure(ALLOCATE, f"Parse error: {exc}") from None
        attrs = {name: value for name, value in items if isinstance(value, str)}
        name = attrs.get("NAME", "")
        if not name:
            raise _Failure(ALLOCATE, "No NAME in template for Hook.")
        hook_type = attrs.get("TYPE", "").lower()
        self._validate_hook(hook_type, attrs)
        for hook in self._hooks.values():
            if hook.name == name:  # the exact text of a real oned 7.4.0
                raise _NameTaken(f"NAME is already taken by Hook {hook.id}.")
        hook_id = self._next_hook_id
        self._next_hook_id += 1
        self._hooks[hook_id] = _Hook(hook_id, name, hook_type,
                                     self._normalise_hook(hook_type, items))
        return hook_id

    @staticmethod
    def _hook_record_xml(record: _HookRecord) -> str:
        parts = [f"<HOOK_EXECUTION_RECORD><HOOK_ID>{record.hook_id}</HOOK_ID>"
                 f"<EXECUTION_ID>{record.execution_id}</EXECUTION_ID>"
                 f"<TIMESTAMP>{record.timestamp}</TIMESTAMP>"
                 f"<ARGUMENTS>{_esc(record.arguments)}</ARGUMENTS>"
                 f"<EXECUTION_RESULT><COMMAND>{_esc(record.command)}</COMMAND>"
                 f"<STDOUT>{base64.b64encode(record.stdout).decode()}</STDOUT>"
                 f"<STDERR>{base64.b64encode(record.stderr).decode()}</STDERR>"
                 f"<CODE>{record.code}</CODE></EXECUTION_RESULT>"]
        if record.remote_host:
            parts.append(f"<REMOTE_HOST>{_esc(record.remote_host)}</REMOTE_HOST>")
        if record.retry:
            parts.append("<RETRY>yes</RETRY>")
        parts.append("</HOOK_EXECUTION_RECORD>")
        return "".join(parts)

    def _hook_xml(self, hook: _Hook, with_log: bool) -> str:
        xml = (f"<HOOK><ID>{hook.id}</ID><NAME>{_esc(hook.name)}</NAME>"
               f"<TYPE>{_esc(hook.type)}</TYPE><TEMPLATE>{_items_xml(hook.template)}</TEMPLATE>")
        if with_log:
            xml += ("<HOOKLOG>" + "".join(self._hook_record_xml(r) for r in hook.log)
                    + "</HOOKLOG>")
        return xml + "</HOOK>"


# --------------------------------------------------------------------------------------
# Standalone use, for the lab: python -m tests.support.onesim --help
# --------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    """Serve a simulator (and, with --hooks-dir, run its hooks) until SIGINT/SIGTERM.

    The first line on stdout is the endpoint URL, so a lab script can read it and go.
    """
    import argparse
    import signal as signal_module
    import sys

    parser = argparse.ArgumentParser(prog="python -m tests.support.onesim",
                                     description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2633)
    parser.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD",
                        help="repeatable; oneadmin defaults to oneadmin:opennebula")
    parser.add_argument("--network", action="append", default=[],
                        metavar="NAME=CIDR[,FIRST_LEASE[,BRIDGE[,GATEWAY]]]",
                        help="repeatable; CIDR 'l2' makes an L2 network")
    parser.add_argument("--hooks-dir", help="run hooks with a HookExecutionManager whose "
                                            "remotes_dir is this directory")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="repeatable; environment for hooks")
    args = parser.parse_args(argv)

    users = dict(user.split(":", 1) for user in args.user)
    simulator = OneSimulator(users=users or None, host=args.host, port=args.port)
    for spec in args.network:
        name, _, rest = spec.partition("=")
        cidr, first, bridge, gateway = (rest.split(",") + ["", "", "", ""])[:4]
        simulator.add_network(name, None if cidr == "l2" else cidr, first or None,
                              bridge=bridge or None, gateway=gateway)
    stop = threading.Event()
    for signum in (signal_module.SIGINT, signal_module.SIGTERM):
        signal_module.signal(signum, lambda *_: stop.set())
    with simulator:
        print(simulator.url, flush=True)
        manager = None
        if args.hooks_dir:
            from .hem import HookExecutionManager   # hem imports this module
            env = dict(item.split("=", 1) for item in args.env)
            env.setdefault("ONE_XMLRPC", simulator.url)
            manager = HookExecutionManager(simulator, remotes_dir=args.hooks_dir,
                                           env=env).start()
        try:
            stop.wait()
        finally:
            if manager is not None:
                manager.stop()
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
