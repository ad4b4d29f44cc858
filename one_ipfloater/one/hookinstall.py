"""Register the hook templates of ``hooks/`` with oned, idempotently by NAME.

``onehook create`` fails on a second run (NAME taken), so installing is: read what is
registered (``one.hookpool.info``), allocate what is missing, ``one.hook.update`` (replace)
what differs, leave the rest. A hook's TYPE cannot be updated, so a changed TYPE is
delete + allocate. Only flat ``KEY = "value"`` templates are accepted: that is all a hook
needs, and it lets the comparison be exact.

oned rewrites every hook it stores (tests/data/opennebula/NOTES.md, "Hook registration"):
a VM state hook's ``ON`` becomes ``STATE`` + ``LCM_STATE``, ``REMOTE = "NO"`` is added, and
``one.hook.update`` does not translate ``ON`` (a replace that sends it fails). So the
templates are compared and sent in the form oned keeps (:func:`stored_form`), and only the
attributes oned keeps are compared: a registered hook never equals its file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping

from . import rpc
from .shipped import hooks_dir
from .vmxml import VmXmlError, safe_xml_root

__all__ = ["HookTemplate", "TemplateError", "parse_hook_template", "read_templates",
           "registered_hooks", "install_hooks", "default_hooks_dir", "stored_form"]

NAME_PREFIX = "ipfloater-"
# ON of a VM state hook -> the (STATE, LCM_STATE) oned stores instead (HookStateVM).
ON_STATES = {
    "RUNNING": ("ACTIVE", "RUNNING"),
    "STOP": ("STOPPED", "LCM_INIT"),
    "DONE": ("DONE", "LCM_INIT"),
    "UNKNOWN": ("ACTIVE", "UNKNOWN"),
}
# What oned keeps of a hook template and what decides how the hook runs: the comparison
# looks at these only (an attribute an operator added elsewhere is left alone).
KEPT = ("COMMAND", "ARGUMENTS", "ARGUMENTS_STDIN", "TIMEOUT", "CALL", "RESOURCE", "STATE",
        "LCM_STATE", "REMOTE")
_LINE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s"]+))\s*')


class TemplateError(ValueError):
    """A hook template that cannot be used; one line naming file and line."""


@dataclass(frozen=True)
class HookTemplate:
    """One hook: NAME, TYPE and the other attributes (upper-case keys)."""

    name: str
    type: str
    attrs: Mapping[str, str]
    source: str

    def full_text(self) -> str:
        """NAME, TYPE and the attributes as written (what ``one.hook.allocate`` takes)."""
        return (f'NAME = "{_quote(self.name)}"\nTYPE = "{_quote(self.type)}"\n'
                + _text(self.attrs))


def _text(attrs: Mapping[str, str]) -> str:
    return "".join(f'{k} = "{_quote(v)}"\n' for k, v in attrs.items())


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def default_hooks_dir() -> Path:
    """The templates shipped with the package (or of the checkout it runs from)."""
    found = hooks_dir()
    if found is None:
        raise TemplateError("the hook templates are not in this installation of "
                            "one-ipfloater (reinstall the package, or pass --dir)")
    return found


def parse_hook_template(text: str, source: str = "<template>") -> HookTemplate:
    """Parse one flat hook template; checks NAME (ipfloater-*), TYPE and COMMAND."""
    attrs: Dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _LINE.fullmatch(stripped)
        if m is None:
            raise TemplateError(f"{source}:{number}: expected KEY = \"value\"")
        key = m.group(1).upper()
        if key in attrs:
            raise TemplateError(f"{source}:{number}: {key} given twice")
        value = m.group(2) if m.group(2) is not None else m.group(3)
        attrs[key] = re.sub(r"\\(.)", r"\1", value)
    name, kind = attrs.pop("NAME", ""), attrs.pop("TYPE", "").lower()
    if not name.startswith(NAME_PREFIX):
        raise TemplateError(f"{source}: NAME {name!r} must start with {NAME_PREFIX!r}")
    if kind not in ("state", "api"):
        raise TemplateError(f"{source}: TYPE {kind!r} is not state or api")
    if not attrs.get("COMMAND"):
        raise TemplateError(f"{source}: COMMAND is missing")
    if kind == "state":
        on = attrs.get("ON", "").upper()
        if on != "CUSTOM" and on not in ON_STATES:
            raise TemplateError(f"{source}: ON {attrs.get('ON', '')!r} is not one of "
                                f"{', '.join(sorted(ON_STATES))}, CUSTOM")
        if on == "CUSTOM" and not (attrs.get("STATE") and attrs.get("LCM_STATE")):
            raise TemplateError(f"{source}: ON \"CUSTOM\" needs STATE and LCM_STATE")
    return HookTemplate(name=name, type=kind, attrs=attrs, source=source)


def stored_form(tmpl: HookTemplate) -> Dict[str, str]:
    """The template as oned keeps it: ON replaced by STATE/LCM_STATE, REMOTE present.
    This is also what an update sends, since oned's update does not translate ON."""
    attrs = dict(tmpl.attrs)
    if tmpl.type == "state" and attrs.get("RESOURCE", "").upper() == "VM":
        on = attrs.pop("ON", "").upper()
        if on == "CUSTOM":
            attrs["STATE"], attrs["LCM_STATE"] = attrs["STATE"].upper(), attrs["LCM_STATE"].upper()
        else:
            attrs["STATE"], attrs["LCM_STATE"] = ON_STATES[on]
    attrs["REMOTE"] = "YES" if attrs.get("REMOTE", "").strip().upper() == "YES" else "NO"
    return attrs


def _differs(want: Mapping[str, str], have: Mapping[str, str]) -> bool:
    return any(want.get(key) != have.get(key) for key in KEPT)


def read_templates(directory: Path) -> List[HookTemplate]:
    """Every ``*.hook`` file of ``directory``, sorted by name; NAMEs must be unique."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TemplateError(f"{directory}: not a directory")
    out: List[HookTemplate] = []
    for path in sorted(directory.glob("*.hook")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"{path}: cannot read ({exc})") from None
        out.append(parse_hook_template(text, str(path)))
    if not out:
        raise TemplateError(f"{directory}: no *.hook templates")
    names = [t.name for t in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise TemplateError(f"{directory}: NAME {dup!r} is used by two templates")
    return out


@dataclass(frozen=True)
class Registered:
    id: int
    name: str
    type: str
    attrs: Mapping[str, str]


def registered_hooks(one: Any) -> Dict[str, Registered]:
    """Hooks oned has, by NAME."""
    try:
        root = safe_xml_root(rpc.hookpool_xml(one), what="hook pool")
    except VmXmlError as exc:
        raise ValueError(str(exc)) from None
    out: Dict[str, Registered] = {}
    for hook in root.iterfind("HOOK"):
        template = hook.find("TEMPLATE")
        attrs = {} if template is None else {
            c.tag.upper(): c.text or "" for c in template if not len(c)}
        name = hook.findtext("NAME") or ""
        out[name] = Registered(int(hook.findtext("ID") or -1), name,
                               (hook.findtext("TYPE") or "").lower(), attrs)
    return out


def install_hooks(one: Any, templates: List[HookTemplate], dry_run: bool = False
                  ) -> List[Dict[str, Any]]:
    """Create, update or leave each hook; returns [{name, id, action}] in template order.
    ``action``: created | updated | replaced | unchanged (prefixed "would " on a dry run)."""
    have = registered_hooks(one)
    done: List[Dict[str, Any]] = []
    for tmpl in templates:
        old = have.get(tmpl.name)
        if old is None:
            action = "created"
        elif old.type != tmpl.type:
            action = "replaced"
        elif _differs(stored_form(tmpl), old.attrs):
            action = "updated"
        else:
            action = "unchanged"
        hook_id = old.id if old is not None else None
        if not dry_run:
            if action == "replaced":
                one.call("one.hook.delete", old.id)
            if action in ("created", "replaced"):
                hook_id = one.call("one.hook.allocate", tmpl.full_text())
            elif action == "updated":
                one.call("one.hook.update", old.id, _text(stored_form(tmpl)), 0)
        done.append({"name": tmpl.name, "id": hook_id,
                     "action": action if not dry_run or action == "unchanged"
                     else f"would be {action}"})
    return done
