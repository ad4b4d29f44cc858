"""Concurrent calls sharing runs of one set-wise operation (the conntrack flushes)."""

import threading
import time

import pytest

from one_ipfloater.coalesce import Coalescer


class BlockingWork:
    """Records each run's keys; the first run blocks until released."""

    def __init__(self):
        self.runs: list[frozenset] = []
        self.first_started = threading.Event()
        self.release = threading.Event()
        self.fail_with: Exception | None = None

    def __call__(self, keys):
        self.runs.append(keys)
        if len(self.runs) == 1:
            self.first_started.set()
            assert self.release.wait(10)
        if self.fail_with is not None and len(self.runs) == 2:
            raise self.fail_with
        return {key: f"done {key}" for key in keys}


def wait_until(condition, timeout=10.0):
    """A bounded poll of an observable condition (no sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def call_in_threads(coalescer, key_sets):
    results, errors = {}, {}

    def call(i, keys):
        try:
            results[i] = coalescer(keys)
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            errors[i] = exc

    threads = [threading.Thread(target=call, args=(i, keys)) for i, keys in enumerate(key_sets)]
    for t in threads:
        t.start()
    return threads, results, errors


def test_a_lone_call_runs_at_once_with_its_keys():
    work = BlockingWork()
    work.release.set()
    assert Coalescer(work)({"a", "b"}) == {"a": "done a", "b": "done b"}
    assert work.runs == [frozenset({"a", "b"})]


def test_calls_arriving_during_a_run_share_the_next_run():
    work = BlockingWork()
    coalescer = Coalescer(work)
    first, first_results, _ = call_in_threads(coalescer, [{"x"}])
    assert work.first_started.wait(10)
    later, results, errors = call_in_threads(coalescer, [{f"k{i}"} for i in range(8)])
    wait_until(lambda: coalescer.pending() == 8)  # all eight joined the next batch
    work.release.set()
    for t in first + later:
        t.join(10)
    assert not errors
    assert work.runs == [frozenset({"x"}), frozenset(f"k{i}" for i in range(8))]  # 9 calls, 2 runs
    assert first_results[0] == {"x": "done x"}
    assert all(results[i] == {f"k{i}": f"done k{i}"} for i in range(8))  # each gets its own keys


def test_an_error_reaches_every_caller_of_its_run_and_the_next_run_works():
    work = BlockingWork()
    work.fail_with = OSError("dump failed")
    coalescer = Coalescer(work)
    first, _, first_errors = call_in_threads(coalescer, [{"x"}])
    assert work.first_started.wait(10)
    later, _, errors = call_in_threads(coalescer, [{"a"}, {"b"}])
    wait_until(lambda: coalescer.pending() == 2)
    work.release.set()
    for t in first + later:
        t.join(10)
    assert not first_errors
    assert sorted(errors) == [0, 1] and all(str(e) == "dump failed" for e in errors.values())
    assert coalescer({"c"}) == {"c": "done c"}  # not stuck after the failure


def test_no_run_starts_while_another_is_in_progress():
    active = []
    overlap = []

    def work(keys):
        active.append(1)
        if len(active) > 1:
            overlap.append(keys)
        sum(range(50_000))  # a run that takes a while, so that callers pile up
        active.pop()
        return dict.fromkeys(keys, True)

    coalescer = Coalescer(work)
    threads, results, errors = call_in_threads(coalescer, [{i} for i in range(40)])
    for t in threads:
        t.join(10)
    assert not errors and not overlap
    assert sorted(k for r in results.values() for k in r) == list(range(40))


@pytest.mark.parametrize("keys", [set(), {"only"}])
def test_results_are_only_the_callers_keys(keys):
    coalescer = Coalescer(lambda batch: {key: 1 for key in batch | {"other"}})
    assert coalescer(keys) == dict.fromkeys(keys, 1)
