"""``ipfloater-one install-remotes``: put the hook script where onehem runs it.

onehem runs ``COMMAND = "ipfloater/ipfloater-hook"`` from ``<remotes>/hooks/`` of the
front-end. The script must run with the Python that has this package (often a virtualenv,
which ``/usr/bin/env python3`` would not find), so the installed copy's shebang is the
interpreter running this command. The file is written to a temporary name in the same
folder and renamed over the old one, so onehem never runs half a script; a symlink on the
way is refused, since whoever controls it would choose what oneadmin runs.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Dict, Optional

from .shipped import HOOK_SCRIPT, hook_script

__all__ = ["RemotesError", "default_remotes_dir", "render_hook_script", "install_remotes"]

MODE = 0o755


class RemotesError(ValueError):
    """The script cannot be installed there; one line naming the path."""


def default_remotes_dir() -> Path:
    """``$ONE_LOCATION/var/remotes`` for a self-contained OpenNebula, else the system one."""
    location = os.environ.get("ONE_LOCATION")
    return Path(location) / "var" / "remotes" if location else Path("/var/lib/one/remotes")


def render_hook_script(source: str, python: str) -> str:
    """The script with its first line replaced by a shebang naming ``python``."""
    if not os.path.isabs(python) or any(c.isspace() for c in python):
        raise RemotesError(f"python {python!r}: need an absolute path without spaces "
                           "for a shebang")
    body = source.split("\n", 1)[1] if source.startswith("#!") else source
    return f"#!{python}\n{body}"


def _refuse_symlinks(remotes: Path, target: Path) -> None:
    """No symlink below the remotes folder on the way to ``target``, nor ``target``."""
    part = remotes
    for name in target.relative_to(remotes).parts:
        part = part / name
        if part.is_symlink():
            raise RemotesError(f"{part}: is a symlink; refusing to install through it")


def install_remotes(remotes: Path, python: Optional[str] = None, dry_run: bool = False
                    ) -> Dict[str, str]:
    """Write ``<remotes>/hooks/ipfloater/ipfloater-hook``; returns {path, python, action}
    with action created | updated | unchanged (prefixed "would be " on a dry run)."""
    python = python or sys.executable
    source_path = hook_script()
    if source_path is None:
        raise RemotesError("the hook script is not in this installation of one-ipfloater "
                           "(reinstall the package)")
    remotes = Path(remotes)
    if not remotes.is_dir():
        raise RemotesError(f"--remotes {remotes}: not a directory (is OpenNebula installed? "
                           "set ONE_LOCATION or pass --remotes)")
    target = remotes / HOOK_SCRIPT
    _refuse_symlinks(remotes, target)
    content = render_hook_script(source_path.read_text(encoding="utf-8"), python).encode()
    if target.exists():
        current = target.read_bytes()
        mode = stat.S_IMODE(target.lstat().st_mode)
        action = "unchanged" if current == content and mode == MODE else "updated"
    else:
        action = "created"
    result = {"path": str(target), "python": python, "action": action}
    if dry_run:
        if action != "unchanged":
            result["action"] = f"would be {action}"
        return result
    if action == "unchanged":
        return result
    target.parent.mkdir(mode=MODE, parents=True, exist_ok=True)
    _refuse_symlinks(remotes, target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, MODE)  # whatever the umask
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return result
