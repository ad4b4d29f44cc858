"""Per-VM exclusive lock (flock on ``LOCK_DIR/vm-<ID>.lock``).

onehem runs up to ten hooks at once in no guaranteed order, often several for the same
VM (RUNNING after a hotplug plus the attachnic API hook, the driver's own update...).
Holding this lock from "read the VM" to "write back" makes them run one after another,
and since each re-reads the VM inside the lock, the last one acts on the latest VM.
flock works between processes and between threads that open the file separately, and
the kernel drops it when a killed hook's descriptor closes. Lock files are never
deleted: removing one while another process waits on it would split the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Iterator, Optional

__all__ = ["LockError", "vm_lock"]


class LockError(OSError):
    """The lock could not be taken (directory unusable, or held too long by another)."""


@contextlib.contextmanager
def vm_lock(lock_dir: Optional[str], vm_id: int, timeout: float = 60.0) -> Iterator[None]:
    """Hold the VM's lock for the ``with`` body; ``lock_dir`` None locks nothing."""
    if lock_dir is None:
        yield
        return
    path = os.path.join(lock_dir, f"vm-{int(vm_id)}.lock")
    try:
        os.makedirs(lock_dir, mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LockError(f"LOCK_DIR: {path}: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockError(f"VM {vm_id}: another hook held {path} for over "
                                    f"{timeout:g}s") from None
                time.sleep(delay)  # back-off poll: flock has no timed wait
                delay = min(delay * 2, 0.05)
        yield
    finally:
        os.close(fd)
