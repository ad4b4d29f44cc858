"""Run a real `ipfloaterd` inside a lab namespace and drive it with the real `ipfloater`
CLI (for the integration tests and the lab demo).

The daemon reports its start on an inherited pipe (`--ready-fd`): one JSON line when
its rules are in place, one when it listens, so nobody has to poll or sleep.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

DEFAULT_SETTINGS = {
    "IP_POOL": "198.51.100.10-198.51.100.40",
    "PRIVATE_IP_RANGES": "10.77.0.0/24",
    "REST_IP": "127.0.0.1",
    "REST_PORT": "7003",
    "PUBLIC_INTERFACE": "pub0",
    "RECONCILE_INTERVAL": "86400",  # (no periodic reconcile during a test: 1 s is the least allowed)
    "LOG_LEVEL": "DEBUG",
    "NAT_BACKEND": "iptables",  # the tests that read rules back read iptables' unless told otherwise
}


class DaemonFailed(RuntimeError):
    """ipfloaterd exited or did not become ready; carries its log."""


class DaemonProcess:
    """One ipfloaterd in namespace `ns`, with its config, state and token under `workdir`."""

    def __init__(self, ns: str, workdir: Path, wrapper: tuple[str, ...] = (), **settings: str):
        self.ns = ns
        self.wrapper = list(wrapper)  # e.g. setpriv ... to drop capabilities
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.settings = {**DEFAULT_SETTINGS, "DB": str(self.workdir / "state.db"),
                         "TOKEN_FILE": str(self.workdir / "token"),
                         "XTABLES_LOCK": str(self.workdir / "xtables.lock"), **settings}
        self.config_path = self.workdir / "ipfloaterd.conf"
        self.extra_config = ""  # config text after [IPFLOATER], e.g. [POOL <name>] sections
        self.log_path = self.workdir / "ipfloaterd.log"
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self.started_at = self.rules_at = self.ready_at = None  # perf_counter, set by start()

    def write_config(self) -> None:
        lines = ["[IPFLOATER]"] + [f"{k} = {v}" for k, v in self.settings.items()]
        self.config_path.write_text("\n".join(lines) + "\n" + self.extra_config, encoding="utf-8")

    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *self.wrapper, sys.executable, "-m", "one_ipfloater.daemon",
                "--config", str(self.config_path), *args]

    def start(self, timeout: float = 20.0) -> "DaemonProcess":
        """Start and wait for the "ready" line. `started_at`, `rules_at` and `ready_at`
        (time.perf_counter) tell when the process was started, when the daemon said its
        rules were in place and when it said it listened."""
        self.write_config()
        read_fd, write_fd = os.pipe()
        log = open(self.log_path, "ab")
        self.started_at = time.perf_counter()
        self.rules_at = self.ready_at = None
        try:
            self.proc = subprocess.Popen(self.argv("--ready-fd", str(write_fd)), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
            log.close()
        ready = None
        try:
            deadline = self.started_at + timeout
            pending = b""
            while ready is None:
                readable, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.perf_counter()))
                chunk = os.read(read_fd, 4096) if readable else b""
                if not chunk:
                    break  # timed out, or the daemon exited (the pipe closed)
                now = time.perf_counter()
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    event = json.loads(line)
                    if event.get("event") == "rules":
                        self.rules_at = now
                    elif event.get("event") == "ready":
                        self.ready_at, ready = now, event
        finally:
            os.close(read_fd)
        if ready is None:
            self.kill()
            raise DaemonFailed(f"ipfloaterd did not become ready:\n{self.log()}")
        self.port = ready["port"]
        return self

    @property
    def token(self) -> str:
        return (self.workdir / "token").read_text(encoding="utf-8").strip()

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def cli(self, *args: str, timeout: float = 30.0, check: bool = False) -> subprocess.CompletedProcess:
        """Run the real `ipfloater` CLI inside the router namespace."""
        env = {**os.environ, "IPFLOATER_TOKEN": self.token}
        argv = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "one_ipfloater.cli",
                "-p", str(self.port or self.settings["REST_PORT"]), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=check)

    def cli_json(self, *args: str):
        proc = self.cli("--json", *args)
        if proc.returncode != 0:
            raise AssertionError(f"ipfloater {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return json.loads(proc.stdout)

    def run_command(self, command: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run `ipfloaterd COMMAND` (flush, check) with this daemon's config."""
        self.write_config()
        return subprocess.run(self.argv(command), capture_output=True, text=True, timeout=timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait: the daemon leaves its rules in place."""
        if not self.running():
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """SIGKILL: a crash, as far as the daemon can tell."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
