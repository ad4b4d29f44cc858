"""Files the daemon opens (DB and its -wal/-shm, TOKEN_FILE, lock files) that nobody
else can swap, plant or read.

The rule, in the spirit of sshd's StrictModes:

- Every directory on the way, from / down (symbolic links on the way resolved, each
  link owned by root or by us), is owned by root or by us and not writable by group or
  others, except that an ancestor with the sticky bit (/tmp, /run/lock) is accepted:
  others cannot rename or delete what is ours there. The file's own directory gets no
  such exception: others could plant a -wal link or a lock file in it beforehand.
- The file itself is never followed if it is a symbolic link (lstat before, O_NOFOLLOW
  on open, fstat after), is a regular file with one link, owned by root or by us, not
  writable by group or others; a secret (the token) is not readable by them either.
- Files we create are created 0600 (O_EXCL where it matters), directories 0700.

A directory that only root or we can write is what makes a check before an open sound:
nobody else can replace the file in between. Problems are refused, never repaired:
a token that others could read may have been read, so it needs a new one anyway.
"""

from __future__ import annotations

import errno
import os
import stat

MAX_LINKS = 40  # symbolic links followed on the way to one file, as the kernel's limit


class UnsafePath(ValueError):
    """A path refused; the message is one line naming the config key, the path and why."""


def _trusted_owner(uid: int) -> bool:
    return uid == 0 or uid == os.geteuid()


def _check_dir(key: str, path: str, st: os.stat_result, own_dir: bool) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{key}: {path} is not a directory")
    if not _trusted_owner(st.st_uid):
        raise UnsafePath(f"{key}: directory {path} is owned by uid {st.st_uid}, not by root or uid {os.geteuid()}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 and (own_dir or not mode & stat.S_ISVTX):
        who = "group and others" if mode & 0o022 == 0o022 else "group" if mode & 0o020 else "others"
        raise UnsafePath(f"{key}: directory {path} is writable by {who} (mode {mode:04o}): "
                         f"chmod go-w it or choose another path")


def check_parent(key: str, path: str) -> str | None:
    """Check the directories leading to `path` (absolute); creates nothing.

    Returns the first missing directory (the daemon creates it and what follows, 0700),
    or None when the file's directory exists."""
    if not path.startswith("/"):
        path = os.path.join(os.getcwd(), path)
    parts = [p for p in os.path.dirname(path).split("/") if p]
    current = "/"
    _check_dir(key, current, os.lstat(current), own_dir=False)
    links = 0
    while parts:
        name = parts.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)  # `current` holds no link: this is its real parent
            continue
        candidate = os.path.join(current, name)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            return candidate
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise UnsafePath(f"{key}: {path}: more than {MAX_LINKS} symbolic links on the way")
            if not _trusted_owner(st.st_uid):
                raise UnsafePath(f"{key}: {candidate} is a symbolic link owned by uid {st.st_uid}, "
                                 f"not by root or uid {os.geteuid()}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = "/"
            parts[:0] = [p for p in target.split("/") if p]
            continue
        _check_dir(key, candidate, st, own_dir=False)
        current = candidate
    # the file's own directory, wherever links and ".." led: no sticky-bit exception
    _check_dir(key, current, os.lstat(current), own_dir=True)
    return None


def _check_file_stat(key: str, path: str, st: os.stat_result, secret: bool) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{key}: {path} is a symbolic link (refused: it could point anywhere)")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"{key}: {path} is not a regular file")
    if not _trusted_owner(st.st_uid):
        raise UnsafePath(f"{key}: {path} is owned by uid {st.st_uid}, not by root or uid {os.geteuid()}")
    if st.st_nlink > 1:
        raise UnsafePath(f"{key}: {path} has {st.st_nlink} hard links (another name can change it)")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise UnsafePath(f"{key}: {path} is writable by group or others (mode {mode:04o}): chmod 600 it")
    if secret and mode & 0o077:
        raise UnsafePath(f"{key}: {path} is readable by group or others (mode {mode:04o}): chmod 600 it "
                         f"and consider a new token (it may have been read)")


def check_file(key: str, path: str, secret: bool = False) -> bool:
    """Check `path` and the directories leading to it; creates nothing. True if the file
    exists, False if it does not (yet); UnsafePath if it is refused."""
    if check_parent(key, path) is not None:
        return False
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    _check_file_stat(key, path, st, secret)
    return True


def make_parent(key: str, path: str) -> None:
    """Check the directories leading to `path` and create the missing ones, 0700."""
    if check_parent(key, path) is None:
        return
    prefix = ""
    for name in os.path.dirname(path).split("/"):
        if name:
            prefix += "/" + name
            try:  # one by one: os.makedirs gives the intermediate ones the umask's mode
                os.mkdir(prefix, 0o700)
            except FileExistsError:
                pass
    check_parent(key, path)  # what was just made (and anything raced in) passes the same rule


def open_file(key: str, path: str, flags: int, secret: bool = False, create: bool = False) -> int:
    """Open `path` without following a link at its end, after checking the directories
    leading to it; `create`: make it (0600) and its missing directories (0700) when it
    does not exist. The open file is checked again through its descriptor."""
    if create:
        make_parent(key, path)
        flags |= os.O_CREAT
    elif check_parent(key, path) is not None:
        raise FileNotFoundError(2, "No such file or directory", path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a symbolic link
            raise UnsafePath(f"{key}: {path} is a symbolic link (refused: it could point anywhere)") from None
        raise
    try:
        _check_file_stat(key, path, os.fstat(fd), secret)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_new(key: str, path: str, data: bytes) -> None:
    """Create `path` holding `data`, 0600, whole or not at all: the data goes to a
    temporary file beside it, which is then linked to the name (failing if the name
    exists: nothing is ever overwritten) and fsynced with its directory."""
    make_parent(key, path)
    directory = os.path.dirname(path)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temporary, path)
    finally:
        os.unlink(temporary)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
