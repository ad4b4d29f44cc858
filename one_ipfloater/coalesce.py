"""Coalescing concurrent calls of one set-wise operation into fewer runs (group commit).

A conntrack flush dumps the kernel's whole conntrack table, however few flows it
holds, and runs one at a time; with ten clients releasing addresses at once the
releases queued behind each other's dumps, and the flushes bounded the daemon's
throughput (ANALYSIS.md, figure 3). One dump can serve any number of addresses, so
concurrent callers share runs here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable


class _Batch:
    def __init__(self):
        self.keys: set = set()
        self.done = False
        self.result: dict = {}
        self.error: BaseException | None = None


class Coalescer:
    """Call `work(keys) -> {key: result}` for the keys of every caller, sharing runs.

    A caller adds its keys to the batch being collected. If no run is in progress it runs
    that batch itself; otherwise it waits, and the first of the batch's callers to find no
    run in progress runs the batch. So every caller's keys are in a run that starts after
    the call (as strong as a run per call), and at most one run is in progress.
    """

    def __init__(self, work: Callable[[frozenset], dict]):
        self._work = work
        self._cond = threading.Condition()
        self._collecting = _Batch()
        self._running = False

    def __call__(self, keys: Iterable) -> dict:
        """The results of `keys` (a run's exception is raised in each of its callers)."""
        keys = set(keys)
        with self._cond:
            batch = self._collecting
            batch.keys |= keys
            while self._running and not batch.done:
                self._cond.wait()
            leader = not batch.done
            if leader:  # the batch we joined is still collecting and nothing runs: run it
                self._collecting = _Batch()
                self._running = True
        if leader:
            try:
                batch.result = self._work(frozenset(batch.keys))
            except BaseException as exc:  # handed to every caller of the batch below
                batch.error = exc
            finally:
                with self._cond:
                    batch.done = True
                    self._running = False
                    self._cond.notify_all()
        if batch.error is not None:
            raise batch.error
        return {key: value for key, value in batch.result.items() if key in keys}

    def pending(self) -> int:
        """Keys waiting for the next run (for tests and diagnostics)."""
        with self._cond:
            return len(self._collecting.keys)
