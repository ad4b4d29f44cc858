"""Per-VM exclusive lock (flock on ``LOCK_DIR/vm-<ID>.lock``).

onehem runs up to ten hooks at once in no guaranteed order, often several for the same
VM (RUNNING after a hotplug plus the attachnic API hook, the driver's own update...).
Holding this lock from "read the VM" to "write back" makes them run one after another,
and since each re-reads the VM inside the lock, the last one acts on the latest VM.
flock works between processes and between threads that open the file separately, and
the kernel drops it when a killed hook's descriptor closes. Lock files are never
deleted: removing one while another process waits on it would split the lock.

The lock directory is trusted only when nobody else can write to it: whoever can plant
a file there can hold every VM's lock forever, or plant a symlink that makes the hook
(oneadmin) create or open files elsewhere. So the directory is created 0700 by the
hook's user when missing, refused when owned by someone else or writable by group or
others, and lock files are opened relative to it without following symlinks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Iterator, Optional

from ..locking import flock_exclusive

__all__ = ["LockError", "vm_lock", "open_lock_dir", "check_lock_dir"]


class LockError(OSError):
    """The lock could not be taken (directory unusable, or held too long by another)."""


def _problem(path: str, what: str) -> LockError:
    return LockError(f"LOCK_DIR: {path}: {what}")


def open_lock_dir(lock_dir: str) -> int:
    """A descriptor of the checked lock directory (created 0700 if missing).

    Raises LockError with one line naming the path and the problem; a refused
    directory is left exactly as it was."""
    lock_dir = os.path.normpath(lock_dir)  # a trailing "/" would make O_NOFOLLOW follow
    created = False
    try:
        os.makedirs(os.path.dirname(lock_dir), exist_ok=True)
        os.mkdir(lock_dir, 0o700)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise _problem(lock_dir, f"cannot create it ({exc.strerror})") from None
    try:
        fd = os.open(lock_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symbolic link" if os.path.islink(lock_dir) else "not a directory"
            raise _problem(lock_dir, f"is {kind}; refusing to use it") from None
        raise _problem(lock_dir, exc.strerror or str(exc)) from None
    try:
        if created:
            os.fchmod(fd, 0o700)  # whatever the umask was
        check_lock_dir(lock_dir, os.fstat(fd))
    except LockError:
        os.close(fd)
        raise
    except OSError as exc:
        os.close(fd)
        raise _problem(lock_dir, exc.strerror or str(exc)) from None
    return fd


def check_lock_dir(lock_dir: str, st: os.stat_result, uid: Optional[int] = None) -> None:
    """Refuse a directory that someone other than ``uid`` (default: us) could write to."""
    uid = os.geteuid() if uid is None else uid
    if not stat.S_ISDIR(st.st_mode):
        raise _problem(lock_dir, "is not a directory")
    if st.st_uid != uid:
        raise _problem(lock_dir, f"is owned by uid {st.st_uid}, not by this user "
                                 f"(uid {uid}); refusing to use it")
    if st.st_mode & 0o022:
        who = " and ".join(w for bit, w in ((0o020, "group"), (0o002, "others"))
                           if st.st_mode & bit)
        raise _problem(lock_dir, f"is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}); "
                                 "chmod 700 it or choose another LOCK_DIR")


def _open_lock_file(dir_fd: int, lock_dir: str, name: str) -> int:
    path = os.path.join(lock_dir, name)
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _problem(path, "is a symbolic link; refusing to follow it") from None
        raise _problem(path, exc.strerror or str(exc)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise _problem(path, "is not a regular file of this user; refusing to use it")
    return fd


@contextlib.contextmanager
def vm_lock(lock_dir: Optional[str], vm_id: int, timeout: float = 60.0) -> Iterator[None]:
    """Hold the VM's lock for the ``with`` body; ``lock_dir`` None locks nothing."""
    if lock_dir is None:
        yield
        return
    name = f"vm-{int(vm_id)}.lock"
    dir_fd = open_lock_dir(lock_dir)
    try:
        fd = _open_lock_file(dir_fd, lock_dir, name)
    finally:
        os.close(dir_fd)
    try:
        if not flock_exclusive(fd, timeout):
            raise LockError(f"VM {vm_id}: another hook held {os.path.join(lock_dir, name)} "
                            f"for over {timeout:g}s")
        yield
    finally:
        os.close(fd)
