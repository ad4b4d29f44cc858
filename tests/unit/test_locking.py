"""locking.flock_exclusive, the one flock helper: held by another process means False
after the bounded wait, released means True, and the lock goes with the descriptor."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from one_ipfloater.locking import flock_exclusive

HOLDER = ("import fcntl, os, sys\n"
          "fd = os.open(sys.argv[1], os.O_RDWR)\n"
          "fcntl.flock(fd, fcntl.LOCK_EX)\n"
          "print('held', flush=True)\n"
          "sys.stdin.read()\n")


@pytest.fixture
def lock_file(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text("")
    fd = os.open(path, os.O_RDWR)
    yield path, fd
    os.close(fd)


def hold_in_child(path):
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "held\n"
    return child


def test_free_lock_is_taken_at_once(lock_file):
    assert flock_exclusive(lock_file[1], 0)


def test_held_by_another_process_is_false_then_true_once_released(lock_file):
    path, fd = lock_file
    child = hold_in_child(path)
    try:
        assert not flock_exclusive(fd, 0)
        assert not flock_exclusive(fd, 0.1)  # the bounded wait ends, the holder still holds
        child.stdin.close()                   # the holder exits: the kernel drops its lock
        assert flock_exclusive(fd, 60)
    finally:
        child.kill()
        child.wait(timeout=60)


def test_held_by_another_descriptor_of_this_process(lock_file):
    path, fd = lock_file
    other = os.open(path, os.O_RDWR)
    try:
        assert flock_exclusive(other, 0)
        assert not flock_exclusive(fd, 0)
    finally:
        os.close(other)
    assert flock_exclusive(fd, 0)  # closing the holder's descriptor released it


def test_other_errors_are_raised(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError):  # EBADF: not mistaken for "held"
        flock_exclusive(fd, 0)
