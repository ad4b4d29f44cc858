"""Register the hook templates of ``hooks/`` with oned, idempotently by NAME.

``onehook create`` fails on a second run (NAME taken), so installing is: read what is
registered (``one.hookpool.info``), allocate what is missing, ``one.hook.update`` (replace)
what differs, leave the rest. A hook's TYPE cannot be updated, so a changed TYPE is
delete + allocate. Only flat ``KEY = "value"`` templates are accepted: that is all a hook
needs, and it lets the comparison be exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping

from . import rpc
from .vmxml import VmXmlError, safe_xml_root

__all__ = ["HookTemplate", "TemplateError", "parse_hook_template", "read_templates",
           "registered_hooks", "install_hooks", "default_hooks_dir"]

NAME_PREFIX = "ipfloater-"
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

    def text(self) -> str:
        """Template text without NAME and TYPE (what ``one.hook.update`` takes)."""
        return "".join(f'{k} = "{_quote(v)}"\n' for k, v in self.attrs.items())

    def full_text(self) -> str:
        return f'NAME = "{_quote(self.name)}"\nTYPE = "{_quote(self.type)}"\n' + self.text()


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def default_hooks_dir() -> Path:
    """``hooks/`` of a source checkout, else where a package would ship the templates."""
    here = Path(__file__).resolve().parents[2] / "hooks"
    return here if here.is_dir() else Path("/usr/share/one-ipfloater/hooks")


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
    return HookTemplate(name=name, type=kind, attrs=attrs, source=source)


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
        elif dict(old.attrs) != dict(tmpl.attrs):
            action = "updated"
        else:
            action = "unchanged"
        hook_id = old.id if old is not None else None
        if not dry_run:
            if action == "replaced":
                one.hook.delete(old.id)
            if action in ("created", "replaced"):
                hook_id = one.hook.allocate(tmpl.full_text())
            elif action == "updated":
                one.hook.update(old.id, tmpl.text(), 0)
        done.append({"name": tmpl.name, "id": hook_id,
                     "action": action if not dry_run or action == "unchanged"
                     else f"would be {action}"})
    return done
