"""Parse OpenNebula VM documents (``one.vm.info``, hook ``$TEMPLATE``, pools) into frozen values.

The parser is lenient about shape, because real documents from 5.2 to 7.4 differ (see
tests/data/opennebula/samples), and strict about the few values the floating-IP logic relies on
(IDs, states, NIC addresses): a wrong value there raises :class:`VmXmlError` rather than
silently steering a NAT rule. It is also hardened: no DTD, no entities, no network, a size cap.

Design choices (documented here because callers depend on them):

* Namespaces are dropped: oned emits none, pyone-era fixtures carry ``xmlns`` on the root.
* Text values are kept exactly (CDATA content, leading/trailing spaces, newlines); an empty
  element (``<X/>``, ``<X></X>``, empty CDATA) is ``""`` in mappings and ``None`` in the
  optional typed NIC fields.
* ``Vm.user_template`` holds only flat (single) attributes, as ``str``. Vector attributes
  (an element with children, e.g. ``HOOK_VARS=[BACKUP=yes]``) are kept apart in
  ``Vm.user_vectors`` so that every ``user_template`` value really is a ``str``.
* Keys are upper-cased. When a key repeats, the first occurrence wins (like oned's
  ``Template::get``).
* ``Vm.nics`` and ``Vm.aliases`` are sorted by NIC_ID (also when a Vm is built by hand),
  which is what "first NIC" means.
* ``Vm.reduced`` is True for the short bodies of ``one.vmpool.info`` (5.8+): there NIC_ALIAS
  entries appear as plain NICs and user attributes inside NICs are gone, so such a ``Vm`` must
  not be used to decide floating IPs (re-read with ``one.vm.info`` or ``infoextended``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from types import MappingProxyType
from typing import Mapping, Optional, Tuple, Union

from lxml import etree

from ..addresses import ipv4_from_text

__all__ = [
    "MAX_XML_BYTES",
    "MAX_POOL_XML_BYTES",
    "VmXmlError",
    "Nic",
    "NicAlias",
    "Vm",
    "parse_vm",
    "parse_vm_pool",
    "safe_xml_root",
    "state_name",
    "lcm_state_name",
    "STATE_NAMES",
    "LCM_STATE_NAMES",
]

#: A single VM body is a few KiB to a few hundred KiB; 4 MiB is far above any real one.
MAX_XML_BYTES = 4 * 1024 * 1024
#: ``one.vmpool.infoextended`` carries full bodies of many VMs.
MAX_POOL_XML_BYTES = 64 * 1024 * 1024

# --- STATE (VirtualMachine::VmState) -------------------------------------------------------
INIT = 0
PENDING = 1
HOLD = 2
ACTIVE = 3
STOPPED = 4
SUSPENDED = 5
DONE = 6
POWEROFF = 8
UNDEPLOYED = 9
CLONING = 10
CLONING_FAILURE = 11

STATE_NAMES: Mapping[int, str] = MappingProxyType({
    INIT: "INIT", PENDING: "PENDING", HOLD: "HOLD", ACTIVE: "ACTIVE", STOPPED: "STOPPED",
    SUSPENDED: "SUSPENDED", DONE: "DONE", 7: "FAILED", POWEROFF: "POWEROFF",
    UNDEPLOYED: "UNDEPLOYED", CLONING: "CLONING", CLONING_FAILURE: "CLONING_FAILURE",
})

# --- LCM_STATE (VirtualMachine::LcmState), meaningful when STATE=ACTIVE --------------------
LCM_INIT = 0
PROLOG = 1
BOOT = 2
RUNNING = 3
MIGRATE = 4
EPILOG = 11
SHUTDOWN = 12
UNKNOWN = 16
HOTPLUG = 17
SHUTDOWN_POWEROFF = 18
HOTPLUG_NIC = 25
SHUTDOWN_UNDEPLOY = 29
HOTPLUG_NIC_POWEROFF = 65
BACKUP = 69
BACKUP_POWEROFF = 70
RESTORE = 71

_LCM_ORDER = """
LCM_INIT PROLOG BOOT RUNNING MIGRATE SAVE_STOP SAVE_SUSPEND SAVE_MIGRATE PROLOG_MIGRATE
PROLOG_RESUME EPILOG_STOP EPILOG SHUTDOWN CANCEL FAILURE CLEANUP_RESUBMIT UNKNOWN HOTPLUG
SHUTDOWN_POWEROFF BOOT_UNKNOWN BOOT_POWEROFF BOOT_SUSPENDED BOOT_STOPPED CLEANUP_DELETE
HOTPLUG_SNAPSHOT HOTPLUG_NIC HOTPLUG_SAVEAS HOTPLUG_SAVEAS_POWEROFF HOTPLUG_SAVEAS_SUSPENDED
SHUTDOWN_UNDEPLOY EPILOG_UNDEPLOY PROLOG_UNDEPLOY BOOT_UNDEPLOY HOTPLUG_PROLOG_POWEROFF
HOTPLUG_EPILOG_POWEROFF BOOT_MIGRATE BOOT_FAILURE BOOT_MIGRATE_FAILURE PROLOG_MIGRATE_FAILURE
PROLOG_FAILURE EPILOG_FAILURE EPILOG_STOP_FAILURE EPILOG_UNDEPLOY_FAILURE
PROLOG_MIGRATE_POWEROFF PROLOG_MIGRATE_POWEROFF_FAILURE PROLOG_MIGRATE_SUSPEND
PROLOG_MIGRATE_SUSPEND_FAILURE BOOT_UNDEPLOY_FAILURE BOOT_STOPPED_FAILURE
PROLOG_RESUME_FAILURE PROLOG_UNDEPLOY_FAILURE DISK_SNAPSHOT_POWEROFF
DISK_SNAPSHOT_REVERT_POWEROFF DISK_SNAPSHOT_DELETE_POWEROFF DISK_SNAPSHOT_SUSPENDED
DISK_SNAPSHOT_REVERT_SUSPENDED DISK_SNAPSHOT_DELETE_SUSPENDED DISK_SNAPSHOT
DISK_SNAPSHOT_REVERT DISK_SNAPSHOT_DELETE PROLOG_MIGRATE_UNKNOWN
PROLOG_MIGRATE_UNKNOWN_FAILURE DISK_RESIZE DISK_RESIZE_POWEROFF DISK_RESIZE_UNDEPLOYED
HOTPLUG_NIC_POWEROFF HOTPLUG_RESIZE HOTPLUG_SAVEAS_UNDEPLOYED HOTPLUG_SAVEAS_STOPPED
BACKUP BACKUP_POWEROFF RESTORE
""".split()
LCM_STATE_NAMES: Mapping[int, str] = MappingProxyType(dict(enumerate(_LCM_ORDER)))


def state_name(state: Optional[int]) -> str:
    """Name of a STATE code; never raises, so it is safe in log lines about odd documents."""
    name = STATE_NAMES.get(state) if isinstance(state, int) else None
    return name if name is not None else f"UNKNOWN({state})"


def lcm_state_name(lcm: Optional[int]) -> str:
    """Name of an LCM_STATE code. 16 is the real state ``UNKNOWN``; unknown codes give
    ``UNKNOWN(99)`` (newer oned versions add codes that pyone's enum lacks)."""
    name = LCM_STATE_NAMES.get(lcm) if isinstance(lcm, int) else None
    return name if name is not None else f"UNKNOWN({lcm})"


class VmXmlError(ValueError):
    """A VM document could not be used; the message is one line naming field and value."""


IPv4OrNone = Optional[IPv4Address]


def _frozen_map(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class Nic:
    """One ``TEMPLATE/NIC``. ``attrs`` has every flat child (upper-case keys), including
    attributes the user put in the NIC vector such as ``FLOATING_IP``. ``ip6`` is the first
    non-empty of IP6, IP6_GLOBAL, IP6_ULA (static v6 ARs use IP6, IP4_6 ARs IP6_GLOBAL)."""

    nic_id: int
    ip: IPv4OrNone = None
    ip6: Optional[str] = None
    mac: Optional[str] = None
    network: Optional[str] = None
    network_id: Optional[int] = None
    attrs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.attrs, MappingProxyType):
            object.__setattr__(self, "attrs", _frozen_map(self.attrs))


@dataclass(frozen=True)
class NicAlias:
    """One ``TEMPLATE/NIC_ALIAS``: a secondary address on the parent NIC's interface. Its
    NIC_ID comes from the same counter as the NICs' (hence gaps in NIC_IDs)."""

    nic_id: int
    parent_id: Optional[int] = None
    alias_id: Optional[int] = None
    parent: Optional[str] = None
    ip: IPv4OrNone = None
    ip6: Optional[str] = None
    mac: Optional[str] = None
    network: Optional[str] = None
    network_id: Optional[int] = None
    attrs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.attrs, MappingProxyType):
            object.__setattr__(self, "attrs", _frozen_map(self.attrs))


@dataclass(frozen=True)
class Vm:
    """What the floating-IP logic needs from a VM document. ``vrouter_id`` is
    ``TEMPLATE/VROUTER_ID`` (set on virtual-router instances, whose NICs carry OpenNebula's
    own ``FLOATING_IP`` keepalived attribute)."""

    id: int
    name: str
    uid: int
    gid: int
    uname: str
    state: int
    lcm_state: int
    nics: Tuple[Nic, ...] = ()
    aliases: Tuple[NicAlias, ...] = ()
    user_template: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False)
    user_vectors: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False)
    gname: str = ""
    prev_state: Optional[int] = None
    prev_lcm_state: Optional[int] = None
    vrouter_id: Optional[int] = None
    reduced: bool = False
    template_pool: Optional[str] = None  # TEMPLATE/FLOATING_IP_POOL (set at instantiation)

    def __post_init__(self) -> None:
        if not isinstance(self.user_template, MappingProxyType):
            object.__setattr__(self, "user_template", _frozen_map(self.user_template))
        if not isinstance(self.user_vectors, MappingProxyType):
            object.__setattr__(self, "user_vectors", _frozen_map(
                {k: _frozen_map(v) for k, v in self.user_vectors.items()}))
        object.__setattr__(self, "nics", tuple(sorted(self.nics, key=lambda n: n.nic_id)))
        object.__setattr__(self, "aliases",
                           tuple(sorted(self.aliases, key=lambda n: n.nic_id)))

    @property
    def state_name(self) -> str:
        return state_name(self.state)

    @property
    def lcm_state_name(self) -> str:
        return lcm_state_name(self.lcm_state)

    def nic(self, nic_id: int) -> Optional[Nic]:
        """The NIC (not alias) with that NIC_ID, or None."""
        for n in self.nics:
            if n.nic_id == nic_id:
                return n
        return None


# --- safe XML ------------------------------------------------------------------------------

def _show(value: object, limit: int = 60) -> str:
    """repr() of a value, shortened: error messages stay on one line and bounded."""
    if isinstance(value, str) and len(value) > limit:
        value = value[: limit - 3] + "..."
    return repr(value)


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_DTD_MARKERS = (b"<!DOCTYPE", b"<!ENTITY")
_FIRST_ELEMENT = re.compile(rb"<[A-Za-z_:\x80-\xff]")


def _prolog(data: bytes) -> bytes:
    """The bytes before the first start tag: the only place a DTD can be. (Scanning the
    whole document would refuse a VM whose user wrote "<!DOCTYPE" in a CDATA value.)"""
    m = _FIRST_ELEMENT.search(data)
    return data[: m.start()] if m else data


def safe_xml_root(data: Union[bytes, str], *, max_bytes: int = MAX_XML_BYTES,
                  what: str = "document") -> etree._Element:
    """Parse untrusted XML into an element with namespaces stripped from every tag.

    Refuses DTDs (hence entity bombs and external entities) before and after parsing, never
    touches the network, and caps the size. Raises :class:`VmXmlError` with one line."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise VmXmlError(f"{what}: expected bytes or str, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise VmXmlError(f"{what} is too large: {len(data)} bytes (limit {max_bytes})")
    if not data.strip():
        raise VmXmlError(f"{what} is empty")
    prolog = _prolog(data)
    if any(m in prolog for m in _DTD_MARKERS):  # cheap early exit; the real check is below
        raise VmXmlError(f"{what} has a DTD or entity declaration; refused")
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
        dtd_validation=False, remove_comments=True, remove_pis=True, strip_cdata=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise VmXmlError(f"{what} is not well-formed XML: {_one_line(exc)}") from None
    except ValueError as exc:  # e.g. lxml refusing an encoding declaration
        raise VmXmlError(f"{what} cannot be parsed: {_one_line(exc)}") from None
    if root is None:
        raise VmXmlError(f"{what} has no root element")
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        # A DTD the prolog scan missed (UTF-16, or hidden after a comment holding "<A").
        # Entities were not expanded (resolve_entities=False), so parsing it was harmless.
        raise VmXmlError(f"{what} has a DTD or entity declaration; refused")
    for el in root.iter():
        if not isinstance(el.tag, str):  # entity references left unresolved, etc.
            raise VmXmlError(f"{what} contains an entity reference; refused")
        if "}" in el.tag:
            el.tag = el.tag.rsplit("}", 1)[1]
    return root


# --- field helpers -------------------------------------------------------------------------

_INT_RE = re.compile(r"-?[0-9]+")


def _text(el: Optional[etree._Element]) -> Optional[str]:
    """Text of a leaf element ('' when empty), None when the element is absent."""
    if el is None:
        return None
    return el.text or ""


def _int(text: Optional[str], path: str, *, required: bool) -> Optional[int]:
    if text is None or text.strip() == "":
        if required:
            raise VmXmlError(f"{path}: missing" if text is None else f"{path}: empty")
        return None
    t = text.strip()
    if not _INT_RE.fullmatch(t):
        raise VmXmlError(f"{path}: {_show(text)} is not an integer")
    return int(t)


def _opt(text: Optional[str]) -> Optional[str]:
    return text if text else None


def _ipv4(text: Optional[str], path: str) -> IPv4OrNone:
    if text is None or text.strip() == "":
        return None
    try:
        return ipv4_from_text(text.strip())
    except ValueError:
        raise VmXmlError(f"{path}: {_show(text)} is not an IPv4 address") from None


def _flat_children(el: etree._Element) -> dict:
    """Leaf children as {UPPER_KEY: text}; first occurrence of a key wins."""
    out: dict = {}
    for child in el:
        if len(child):
            continue
        out.setdefault(child.tag.upper(), child.text or "")
    return out


def _first_ip6(attrs: Mapping[str, str]) -> Optional[str]:
    for key in ("IP6", "IP6_GLOBAL", "IP6_ULA"):
        v = attrs.get(key, "").strip()
        if v:
            return v
    return None


def _nic_common(el: etree._Element, where: str) -> dict:
    attrs = _flat_children(el)
    return dict(
        nic_id=_int(attrs.get("NIC_ID"), f"{where}/NIC_ID", required=True),
        ip=_ipv4(attrs.get("IP"), f"{where}/IP"),
        ip6=_first_ip6(attrs),
        mac=_opt(attrs.get("MAC", "").strip()),
        network=_opt(attrs.get("NETWORK")),
        network_id=_int(attrs.get("NETWORK_ID"), f"{where}/NETWORK_ID", required=False),
        attrs=MappingProxyType(attrs),
    )


def _vm_from_element(vm: etree._Element, where: str = "VM") -> Vm:
    def req_int(tag: str) -> int:
        return _int(_text(vm.find(tag)), f"{where}/{tag}", required=True)

    vm_id = req_int("ID")
    template = vm.find("TEMPLATE")
    nics = []
    aliases = []
    vrouter_id = None
    template_pool = None
    if template is not None:
        pool_el = template.find("FLOATING_IP_POOL")
        template_pool = pool_el.text or "" if pool_el is not None and not len(pool_el) else None
        for i, el in enumerate(template.findall("NIC")):
            nics.append(Nic(**_nic_common(el, f"{where}/TEMPLATE/NIC[{i}]")))
        for i, el in enumerate(template.findall("NIC_ALIAS")):
            p = f"{where}/TEMPLATE/NIC_ALIAS[{i}]"
            common = _nic_common(el, p)
            a = common["attrs"]
            aliases.append(NicAlias(
                parent_id=_int(a.get("PARENT_ID"), f"{p}/PARENT_ID", required=False),
                alias_id=_int(a.get("ALIAS_ID"), f"{p}/ALIAS_ID", required=False),
                parent=_opt(a.get("PARENT")),
                **common))
        vrouter_id = _int(_text(template.find("VROUTER_ID")), f"{where}/TEMPLATE/VROUTER_ID",
                          required=False)
    seen: dict = {}
    for n in (*nics, *aliases):
        if n.nic_id in seen:
            raise VmXmlError(f"{where}/TEMPLATE: NIC_ID {n.nic_id} appears twice")
        seen[n.nic_id] = n

    flat: dict = {}
    vectors: dict = {}
    ut = vm.find("USER_TEMPLATE")
    if ut is not None:
        for child in ut:
            key = child.tag.upper()
            if len(child):
                if key not in flat:
                    vectors.setdefault(key, MappingProxyType(_flat_children(child)))
            elif key not in vectors:
                flat.setdefault(key, child.text or "")

    return Vm(
        id=vm_id,
        name=_text(vm.find("NAME")) or "",
        uid=req_int("UID"),
        gid=req_int("GID"),
        uname=_text(vm.find("UNAME")) or "",
        gname=_text(vm.find("GNAME")) or "",
        state=req_int("STATE"),
        lcm_state=req_int("LCM_STATE"),
        prev_state=_int(_text(vm.find("PREV_STATE")), f"{where}/PREV_STATE", required=False),
        prev_lcm_state=_int(_text(vm.find("PREV_LCM_STATE")), f"{where}/PREV_LCM_STATE",
                            required=False),
        nics=tuple(nics),
        aliases=tuple(aliases),
        user_template=MappingProxyType(flat),
        user_vectors=MappingProxyType(vectors),
        vrouter_id=vrouter_id,
        reduced=vm.find("PERMISSIONS") is None,
        template_pool=template_pool,
    )


def parse_vm(xml: Union[bytes, str], *, max_bytes: int = MAX_XML_BYTES) -> Vm:
    """Parse one ``<VM>`` document (``one.vm.info`` or a state hook's decoded ``$TEMPLATE``)."""
    root = safe_xml_root(xml, max_bytes=max_bytes, what="VM document")
    if root.tag != "VM":
        raise VmXmlError(f"document root is <{root.tag}>, expected <VM>")
    return _vm_from_element(root)


def parse_vm_pool(xml: Union[bytes, str], *, max_bytes: int = MAX_POOL_XML_BYTES
                  ) -> Tuple[Vm, ...]:
    """Parse a ``<VM_POOL>`` (``one.vmpool.info*``). One bad VM body fails the whole pool:
    a partial view could make the caller release addresses of VMs it did not see."""
    root = safe_xml_root(xml, max_bytes=max_bytes, what="VM pool document")
    if root.tag != "VM_POOL":
        raise VmXmlError(f"document root is <{root.tag}>, expected <VM_POOL>")
    out = []
    for i, el in enumerate(root):
        if el.tag != "VM":
            raise VmXmlError(f"VM_POOL child {i} is <{el.tag}>, expected <VM>")
        out.append(_vm_from_element(el, f"VM_POOL/VM[{i}]"))
    return tuple(out)
