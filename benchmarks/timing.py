"""One way to time a function of the daemon from the outside, shared by the timelines
(start_timeline.py, change_timeline.py): no imports beyond `time`, so that a timeline
that times the daemon's own imports does not add to them."""

from __future__ import annotations

import time


def wrap_timed(owner, name: str, record) -> None:
    """Replace `owner.name` by a wrapper that calls `record(start, end)` (perf_counter
    seconds) after each call, whatever the call raised."""
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            record(start, time.perf_counter())

    setattr(owner, name, timed)
