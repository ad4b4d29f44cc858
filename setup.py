"""Build step of one-ipfloater: everything else is in setup.cfg.

The hook templates (``hooks/``) and the hook script (``remotes/``) stay at the top of the
repository, where operators and the design expect them; the wheel gets a copy in
``one_ipfloater/one/data/`` so that ``ipfloater-one install-hooks`` and ``install-remotes``
work from an installed package with no checkout (see one_ipfloater/one/shipped.py).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = {"hooks": "*.hook", "remotes/hooks/ipfloater": "ipfloater-hook"}


class BuildWithHookData(build_py):
    """build_py plus a copy (not a symlink) of the hook templates and the hook script."""

    def run(self):
        super().run()
        data = Path(self.build_lib) / "one_ipfloater" / "one" / "data"
        for folder, pattern in SHIPPED.items():
            files = sorted((HERE / folder).glob(pattern))
            if not files:
                raise SystemExit(f"setup.py: nothing matches {folder}/{pattern}")
            (data / folder).mkdir(parents=True, exist_ok=True)
            for path in files:
                shutil.copy2(path, data / folder / path.name)


setup(cmdclass={"build_py": BuildWithHookData})
