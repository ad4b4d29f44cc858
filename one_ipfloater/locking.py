"""Exclusive flock with a bounded wait: the one lock primitive of both sides.

flock is what every lock of the project is (the per-VM lock of the hooks, the daemon's
one-instance lock, the xtables lock shared with iptables(8)) because the kernel drops
it when the holder's descriptor closes: a killed hook or daemon never leaves a lock
behind. flock itself has no timed wait, and a blocking flock would hang a hook that
OpenNebula is waiting for, so the wait is LOCK_NB tries with a short back-off up to a
deadline, as `iptables -w` waits. Standard library only: the front-end imports it too.
"""

from __future__ import annotations

import fcntl
import time

FIRST_DELAY = 0.005  # seconds before the second try; doubled up to MAX_DELAY
MAX_DELAY = 0.05


def flock_exclusive(fd: int, timeout: float) -> bool:
    """Take an exclusive flock on `fd` within `timeout` seconds (0: one try, no wait).

    True once it is held (until `fd` is closed or unlocked); False if another open file
    description held it the whole time. Errors other than "held" (EBADF...) are raised."""
    deadline = time.monotonic() + max(timeout, 0.0)
    delay = FIRST_DELAY
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))  # flock has no timed wait: back off, try again
            delay = min(delay * 2, MAX_DELAY)
