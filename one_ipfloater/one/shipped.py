"""Where the hook templates and the hook script are, in a wheel or in a checkout.

The top-level ``hooks/`` and ``remotes/`` of the repository are the one source (operators
read them there, ``onehook create`` takes them as they are). A wheel carries a copy in
``one_ipfloater/one/data/`` made by ``setup.py``'s build step, because package data cannot
live outside the package and a symlink would not survive every way a wheel is built and
unpacked; an editable install or a checkout reads the top-level folders directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["data_dir", "hooks_dir", "hook_script", "HOOK_SCRIPT"]

# Where the script sits under a remotes folder: COMMAND "ipfloater/ipfloater-hook" of the
# templates is relative to <remotes>/hooks.
HOOK_SCRIPT = Path("hooks") / "ipfloater" / "ipfloater-hook"


def data_dir() -> Optional[Path]:
    """The folder holding ``hooks/`` and ``remotes/``: the installed copy, else the checkout."""
    here = Path(__file__).resolve()
    for candidate in (here.parent / "data", here.parents[2]):
        if (candidate / "hooks").is_dir() and (candidate / "remotes" / HOOK_SCRIPT).is_file():
            return candidate
    return None


def hooks_dir() -> Optional[Path]:
    found = data_dir()
    return found / "hooks" if found else None


def hook_script() -> Optional[Path]:
    found = data_dir()
    return found / "remotes" / HOOK_SCRIPT if found else None
