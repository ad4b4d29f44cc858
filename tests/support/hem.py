"""An emulation of OpenNebula's Hook Execution Manager (onehem) for the simulator.

Why it exists: the floating-IP driver is a set of OpenNebula hooks. To test it, and to
demo it in the lab, something has to run those hooks the way onehem does: same argument
expansion ($TEMPLATE / $API, base64 of the re-serialised XML, ARGUMENTS_STDIN), up to ten
at a time, in no guaranteed order, with TIMEOUT, and with an execution log like
``onehook log``. Facts follow tests/data/opennebula/NOTES.md and
samples/oned-7.4-behaviour.md.

Tests synchronise with :meth:`HookExecutionManager.wait_idle`, never with sleeps::

    with OneSimulator(users={"oneadmin": "pw"}) as sim, \\
            HookExecutionManager(sim, remotes_dir="remotes/hooks",
                                 env={"ONE_XMLRPC": sim.url}) as hem:
        sim.create_hook('NAME=h TYPE=api CALL="one.vm.update" COMMAND=x ARGUMENTS="$API" '
                        'ARGUMENTS_STDIN=yes')
        ...
        hem.wait_idle(30)
"""

from __future__ import annotations

import base64
import dataclasses
import os
import random
import signal
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from lxml import etree

from .onesim import HOOK_ON_STATES, ApiEvent, HookSpec, OneSimulator, RetryEvent, StateEvent

__all__ = ["HookExecutionManager", "HookExecution", "HookIdleTimeout",
           "DEFAULT_REMOTES_DIR", "TIMEOUT_EXIT_CODE"]

DEFAULT_REMOTES_DIR = "/var/lib/one/remotes/hooks"
TIMEOUT_EXIT_CODE = 255
MAX_PARALLEL = 10


class HookIdleTimeout(TimeoutError):
    """wait_idle() gave up while hooks were still queued or running."""


@dataclasses.dataclass(frozen=True)
class HookExecution:
    """One hook run, the data ``onehook log`` / ``onehook show`` would show."""

    hook_id: int
    hook_name: str
    execution_id: int            # EXECUTION_ID in the simulator's HOOKLOG (-1: hook gone)
    event: Any                   # the StateEvent / ApiEvent / RetryEvent that caused it
    command: str
    argv: Tuple[str, ...]        # arguments given on the command line (empty with STDIN)
    arguments: str               # the expanded ARGUMENTS string (what HOOKLOG stores)
    stdin: Optional[bytes]
    exit_code: int
    stdout: bytes
    stderr: bytes
    start: float
    end: float
    timed_out: bool = False
    remote_host: str = ""
    retry: bool = False

    @property
    def success(self) -> bool:
        return self.exit_code == 0


@dataclasses.dataclass
class _Job:
    hook: HookSpec
    event: Any
    command: str
    arguments: str
    use_stdin: bool
    timeout: Optional[float]
    remote_host: str
    retry: bool = False


def _reserialise(xml: str, lenient: bool) -> str:
    """onehem parses what oned sent and prints it again: 2-space indent, CDATA kept, no
    XML declaration, no trailing newline. ``lenient`` mirrors its recovering parser,
    which is how unescaped '<' and '&' in API parameters get dropped."""
    parser = etree.XMLParser(strip_cdata=False, remove_blank_text=True, recover=lenient,
                             resolve_entities=False, no_network=True)
    try:
        root = etree.fromstring(xml.encode("utf-8"), parser)
    except etree.XMLSyntaxError:
        root = None
    if root is None:
        return xml
    return etree.tostring(root, pretty_print=True, encoding="unicode").rstrip("\n")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _is_yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "true", "1")


class HookExecutionManager:
    """Runs the simulator's registered hooks for the events it publishes.

    ``remotes_dir`` resolves relative COMMANDs (onehem uses /var/lib/one/remotes/hooks).
    ``env`` is added to the hook environment (os.environ unless ``inherit_env=False``).
    ``max_parallel`` caps concurrent hooks (10, as onehem). With ``run_in_order=False``
    queued hooks start in random order (``seed`` makes it reproducible), as bursts on a
    real onehem showed; ``True`` starts them first-in first-out.
    """

    def __init__(self, simulator: OneSimulator, *, remotes_dir: str = DEFAULT_REMOTES_DIR,
                 env: Optional[Dict[str, str]] = None, inherit_env: bool = True,
                 max_parallel: int = MAX_PARALLEL, run_in_order: bool = False,
                 seed: Optional[int] = None):
        if max_parallel < 1:
            raise ValueError("max_parallel must be >= 1")
        self._sim = simulator
        self.remotes_dir = str(remotes_dir)
        self.max_parallel = max_parallel
        self.run_in_order = run_in_order
        base_env = dict(os.environ) if inherit_env else {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")}
        base_env.update(env or {})
        self.env = base_env
        self._rng = random.Random(seed)
        self._cond = threading.Condition()
        self._queue: List[_Job] = []
        self._running = 0
        self._peak_running = 0
        self._paused = False
        self._stopping = False
        self._workers: List[threading.Thread] = []
        self._log: List[HookExecution] = []

    # ----------------------------------------------------------------------------------
    # Lifecycle
    # ----------------------------------------------------------------------------------
    def start(self) -> "HookExecutionManager":
        """Subscribe to the simulator and start the worker threads (idempotent)."""
        if self._workers:
            return self
        self._stopping = False
        for index in range(self.max_parallel):
            worker = threading.Thread(target=self._work, name=f"onehem-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        self._sim.add_listener(self._on_event)
        return self

    def stop(self) -> None:
        """Unsubscribe, drop queued hooks and wait for the running ones to finish."""
        self._sim.remove_listener(self._on_event)
        with self._cond:
            self._stopping = True
            self._queue.clear()
            self._cond.notify_all()
        for worker in self._workers:
            worker.join()
        self._workers = []

    def __enter__(self) -> "HookExecutionManager":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------
    # Test controls
    # ----------------------------------------------------------------------------------
    def pause(self) -> None:
        """Keep queueing hooks but start none until :meth:`resume` (to make bursts)."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Block until no hook is queued or running, including hooks queued by API calls
        that running hooks made. Raises :class:`HookIdleTimeout` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HookIdleTimeout(
                        f"hooks still busy after {timeout}s: {len(self._queue)} queued, "
                        f"{self._running} running{' (paused)' if self._paused else ''}")
                self._cond.wait(remaining)

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    @property
    def running(self) -> int:
        with self._cond:
            return self._running

    @property
    def peak_running(self) -> int:
        """The most hooks that ever ran at the same time."""
        with self._cond:
            return self._peak_running

    def executions(self, hook: Union[None, int, str] = None) -> List[HookExecution]:
        """The execution log, in completion order; optionally for one hook (ID or name)."""
        with self._cond:
            log = list(self._log)
        if hook is None:
            return log
        return [e for e in log if e.hook_id == hook or e.hook_name == hook]

    def clear_log(self) -> None:
        with self._cond:
            self._log.clear()

    # ----------------------------------------------------------------------------------
    # Events -> jobs
    # ----------------------------------------------------------------------------------
    def _on_event(self, event: Any) -> None:
        """Called by the simulator with its lock held: match and queue, nothing more."""
        hooks = self._sim.hooks()
        if isinstance(event, RetryEvent):
            jobs = [self._retry_job(hook, event) for hook in hooks if hook.id == event.hook_id]
        else:
            jobs = [self._job(hook, event) for hook in hooks if self._matches(hook, event)]
        if not jobs:
            return
        with self._cond:
            if self._stopping:
                return
            self._queue.extend(jobs)
            self._cond.notify_all()

    @staticmethod
    def _matches(hook: HookSpec, event: Any) -> bool:
        attrs = hook.template
        if isinstance(event, StateEvent):
            if hook.type != "state" or attrs.get("RESOURCE", "").upper() != event.resource:
                return False
            # oned stores a VM hook's ON as STATE/LCM_STATE and onehem matches on those;
            # ON only remains on resources the simulator does not translate.
            on = attrs.get("ON", "").upper()
            if on and on != "CUSTOM":
                wanted = HOOK_ON_STATES.get(on, ("", ""))
            else:
                wanted = (attrs.get("STATE", "").upper(), attrs.get("LCM_STATE", "").upper())
            return wanted == (event.state, event.lcm_state)
        if isinstance(event, ApiEvent):
            return hook.type == "api" and attrs.get("CALL", "") == event.call
        return False

    def _command(self, hook: HookSpec) -> str:
        command = hook.template.get("COMMAND", "")
        return command if os.path.isabs(command) else os.path.join(self.remotes_dir, command)

    @staticmethod
    def _timeout(hook: HookSpec) -> Optional[float]:
        try:
            value = float(hook.template.get("TIMEOUT", ""))
        except ValueError:
            return None
        return value if value > 0 else None

    def _job(self, hook: HookSpec, event: Any) -> _Job:
        """Expand ARGUMENTS: split on spaces, whole tokens $TEMPLATE / $API replaced by the
        base64 of the re-serialised document; anything else (e.g. $ID) stays as written."""
        payload_cache: Dict[str, str] = {}

        def expand(token: str) -> str:
            if token == "$TEMPLATE" and isinstance(event, StateEvent):
                if token not in payload_cache:
                    payload_cache[token] = _b64(_reserialise(event.xml, lenient=False))
                return payload_cache[token]
            if token == "$API" and isinstance(event, ApiEvent):
                if token not in payload_cache:
                    payload_cache[token] = _b64(_reserialise(event.call_info, lenient=True))
                return payload_cache[token]
            return token

        tokens = hook.template.get("ARGUMENTS", "").split()
        remote = _is_yes(hook.template.get("REMOTE", "")) and isinstance(event, StateEvent)
        return _Job(hook=hook, event=event, command=self._command(hook),
                    arguments=" ".join(expand(t) for t in tokens),
                    use_stdin=_is_yes(hook.template.get("ARGUMENTS_STDIN", "")),
                    timeout=self._timeout(hook),
                    remote_host=event.remote_host if remote else "")

    def _retry_job(self, hook: HookSpec, event: RetryEvent) -> _Job:
        return _Job(hook=hook, event=event, command=self._command(hook),
                    arguments=event.arguments,
                    use_stdin=_is_yes(hook.template.get("ARGUMENTS_STDIN", "")),
                    timeout=self._timeout(hook), remote_host=event.remote_host, retry=True)

    # ----------------------------------------------------------------------------------
    # Workers
    # ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (self._paused or not self._queue):
                    self._cond.wait()
                if self._stopping:
                    return
                index = 0 if self.run_in_order else self._rng.randrange(len(self._queue))
                job = self._queue.pop(index)
                self._running += 1
                self._peak_running = max(self._peak_running, self._running)
            execution: Optional[HookExecution] = None
            try:
                execution = self._execute(job)
            finally:
                # log first, then stop counting it: wait_idle() callers see the entry
                with self._cond:
                    if execution is not None:
                        self._log.append(execution)
                    self._running -= 1
                    self._cond.notify_all()

    def _execute(self, job: _Job) -> HookExecution:
        """Run one hook; TIMEOUT kills its whole process group and logs exit code 255."""
        argv: Sequence[str] = () if job.use_stdin else tuple(job.arguments.split())
        stdin = job.arguments.encode("utf-8") if job.use_stdin else None
        start = time.time()
        timed_out = False
        try:
            process = subprocess.Popen(
                [job.command, *argv], env=self.env, start_new_session=True,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            stdout, stderr, code = b"", f"{job.command}: {exc}".encode(), -1
        else:
            try:
                stdout, stderr = process.communicate(stdin, timeout=job.timeout)
                code = process.returncode
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                stdout, stderr = process.communicate()
                code = TIMEOUT_EXIT_CODE
            if code < 0:            # killed by a signal: report it the way a shell would
                code = 128 - code
        end = time.time()
        # The record must reach the simulator before this job stops counting as running,
        # so that one.hook.info right after wait_idle() already shows it.
        execution_id = self._sim.record_hook_execution(
            job.hook.id, arguments=job.arguments, command=job.command, stdout=stdout,
            stderr=stderr, code=code, timestamp=int(start), remote_host=job.remote_host,
            retry=job.retry)
        return HookExecution(
            hook_id=job.hook.id, hook_name=job.hook.name, execution_id=execution_id,
            event=job.event, command=job.command, argv=tuple(argv), arguments=job.arguments,
            stdin=stdin, exit_code=code, stdout=stdout, stderr=stderr, start=start, end=end,
            timed_out=timed_out, remote_host=job.remote_host, retry=job.retry)
