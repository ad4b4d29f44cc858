"""An OpenNebula front-end for the end-to-end tests and the lab: the oned simulator, the
Hook Execution Manager emulation running the REAL hook script, hooks registered with the
REAL `ipfloater-one install-hooks`, all wired to a running ipfloaterd.

The hooks are separate processes that find oned, the daemon and their credentials
through the environment and /etc/one/ipfloater.conf-style file, exactly as on a
front-end; nothing here calls the driver in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from . import onesim
from .hem import HookExecutionManager

REPO = Path(__file__).resolve().parents[2]
HOOKS_DIR = REPO / "hooks"
REMOTES_DIR = REPO / "remotes" / "hooks"
USERS = {"oneadmin": "onepw", "alice": "alicepw", "bob": "bobpw"}


class Frontend:
    """oned (simulated) + onehem (emulated) + our hooks, talking to `daemon_url`."""

    def __init__(self, workdir: Path, daemon_url: str, token: str, network: str = "priv",
                 cidr: str = "10.77.0.0/24", first_lease: str = "10.77.0.11",
                 max_parallel: int = 10, one_timeout: float = 20, daemon_timeout: float = 20):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sim = onesim.OneSimulator(users=dict(USERS)).start()
        self.sim.add_network(network, cidr, first_lease, gateway=cidr.rsplit(".", 1)[0] + ".1")
        auth = self.workdir / "one_auth"
        auth.write_text(f"oneadmin:{USERS['oneadmin']}\n")
        auth.chmod(0o600)
        self.conf = self.workdir / "ipfloater.conf"
        self.conf.write_text("[ONE_IPFLOATER]\n"
                             f"IPFLOATER_URL = {daemon_url}\n"
                             f"IPFLOATER_TOKEN_FILE = {self.workdir / 'token'}\n"
                             f"LOCK_DIR = {self.workdir / 'locks'}\n"
                             f"ONE_TIMEOUT = {one_timeout}\nIPFLOATER_TIMEOUT = {daemon_timeout}\n")
        (self.workdir / "token").write_text(token + "\n")
        (self.workdir / "token").chmod(0o600)
        self.env = {
            "ONE_XMLRPC": self.sim.url, "ONE_AUTH": str(auth), "IPFLOATER_ONE_CONF": str(self.conf),
            # `#!/usr/bin/env python3` in the hook must find the interpreter with the package
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO),
        }
        installed = self.ipfloater_one("install-hooks", "--dir", str(HOOKS_DIR))
        if installed.returncode != 0:
            self.sim.stop()
            raise RuntimeError(f"ipfloater-one install-hooks failed: {installed.stderr}")
        self.hem = HookExecutionManager(self.sim, remotes_dir=str(REMOTES_DIR), env=self.env,
                                        max_parallel=max_parallel).start()

    # -- acting as users and operators -------------------------------------------------

    def pyone(self, user: str = "oneadmin"):
        import pyone
        return pyone.OneServer(self.sim.url, session=f"{user}:{USERS[user]}", timeout=20)

    def instantiate(self, template: str, owner: str = "alice", deploy: bool = True) -> int:
        """What `onetemplate instantiate` + the scheduler do: allocate as the owner, deploy
        as oneadmin (through the XML-RPC API, so API hooks see it)."""
        vm_id = self.pyone(owner).vm.allocate(template)
        if deploy:
            self.pyone().vm.deploy(vm_id, 0)
        return vm_id

    def ipfloater_one(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """The real `ipfloater-one` command, with the front-end's environment."""
        return subprocess.run([sys.executable, "-m", "one_ipfloater.one.cli", *args],
                              env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=timeout)

    def settle(self, timeout: float = 120) -> None:
        """Wait until every hook (and every hook those hooks triggered) has finished."""
        self.hem.wait_idle(timeout)

    def user_template(self, vm_id: int) -> dict:
        return self.sim.user_template(vm_id)

    def address(self, vm_id: int) -> Optional[str]:
        return self.user_template(vm_id).get("FLOATING_IP_ADDRESS") or None

    def failed_hooks(self) -> list:
        return [(e.hook_name, e.exit_code, e.stderr.decode(errors="replace").strip())
                for e in self.hem.executions() if not e.success]

    def close(self) -> None:
        self.hem.stop()
        self.sim.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
