"""The OpenNebula front-end side: hooks, ``ipfloater-one``. Needs the ``[frontend]`` extra.

The console scripts enter through :func:`cli_main` and :func:`hook_main` so that a router
installed with ``[router]`` only (no pyone, no lxml) gets one line saying what to install
instead of a traceback.
"""

import sys

FRONTEND_MODULES = ("pyone", "lxml")


def _entry(module: str, prog: str) -> int:
    try:
        main = __import__(f"{__name__}.{module}", fromlist=["main"]).main
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in FRONTEND_MODULES:
            raise
        sys.stderr.write(f"{prog}: {exc.name} is not installed: the OpenNebula side needs "
                         "pip install 'one-ipfloater[frontend]'\n")
        return 1
    return main()


def cli_main() -> int:
    return _entry("cli", "ipfloater-one")


def hook_main() -> int:
    return _entry("hook", "ipfloater-hook")
