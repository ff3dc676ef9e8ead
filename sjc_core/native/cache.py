"""The native-code cache on disk: a private folder, trusted reads and atomic writes.

The trust rules themselves are in :mod:`sjc_core.native`'s docstring. Here is what enforces
them for files: folders are created 0700 and checked (owner, not group/other-writable) before
use, every file operation goes through a descriptor of the checked folder, a file is read
only if it is a regular file of this user that nobody else can write (no symlinks), and a
library is trusted only when its bytes match the sha256 record sjc wrote beside it.
Failures are :class:`NativeUnavailable` (the cache is unusable) or :class:`Rejected` (this
file is not to be used: rebuild it).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shlex
import stat
from pathlib import Path

HASH_SUFFIX = ".sha256"  # the record next to each library: "<sha256 hex>  <file name>\n"
OPEN_FILE = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
OPEN_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


class NativeUnavailable(RuntimeError):
    """A library could not be built or loaded (the reason is the message). ``warn``: the
    reason is worth a line on stderr (an unsafe cache, a bad library that could not be
    replaced), not an ordinary absence such as no compiler."""

    def __init__(self, reason: str, *, warn: bool = False) -> None:
        super().__init__(reason)
        self.warn = warn


class Rejected(Exception):
    """A cached file failed a check or did not load: never (again) used, rebuilt instead."""


def open_private_folder(folder: Path) -> int:
    """Create ``folder`` (and its missing parents) 0700, check it and the cache root (see the
    module docstring) and return an open descriptor of ``folder``: every later file operation
    is relative to it, so renaming a folder afterwards cannot redirect them."""
    try:
        make_private_dirs(folder)
        root_fd = os.open(folder.parent, OPEN_DIR)
    except OSError as exc:
        raise NativeUnavailable(f"cannot create {folder}: {exc.strerror or exc}") from None
    try:
        check_folder(root_fd, folder.parent)
        try:
            fd = os.open(folder.name, OPEN_DIR, dir_fd=root_fd)
        except OSError as exc:
            raise NativeUnavailable(f"cannot open {folder}: {exc.strerror or exc}") from None
    finally:
        os.close(root_fd)
    try:
        check_folder(fd, folder)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private_dirs(folder: Path) -> None:
    missing = []
    path = folder
    while not os.path.lexists(path) and path.parent != path:
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:  # made meanwhile (another sjc process): checked like any other
            continue
        os.chmod(path, 0o700)  # the umask may have taken bits of 0700 too


def check_folder(fd: int, path: Path) -> None:
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise NativeUnavailable(f"{path} is not a folder (remove it)", warn=True)
    if st.st_uid != os.geteuid():
        raise NativeUnavailable(
            f"{path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}); "
            "remove it or set SJC_CACHE_DIR to a folder of your own",
            warn=True,
        )
    if st.st_mode & 0o022:
        who = {0o020: "group", 0o002: "others", 0o022: "group and others"}[st.st_mode & 0o022]
        raise NativeUnavailable(f"{path} is writable by {who} (chmod 700 {shlex.quote(str(path))})", warn=True)


def read_own_file(name: str, dir_fd: int | None, limit: int | None = None) -> bytes | None:
    """The bytes of a regular file owned by this user and writable by nobody else, read
    through one descriptor; None when absent. Raises Rejected."""
    try:
        fd = os.open(name, OPEN_FILE, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise Rejected("is a symbolic link") from None
        raise Rejected(f"cannot be opened ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Rejected("is not a regular file")
        if st.st_uid != os.geteuid():
            raise Rejected(f"is owned by uid {st.st_uid}, not by you")
        if st.st_mode & 0o022:
            raise Rejected("is writable by others than you")
        return file.read(limit) if limit else file.read()


def read_verified(dir_fd: int, filename: str) -> tuple[bytes, str] | None:
    """The cached library's bytes and sha256 once they pass every check; None when there is
    none. Raises Rejected."""
    data = read_own_file(filename, dir_fd)
    if data is None:
        return None
    if not data:
        raise Rejected("is empty")
    try:
        record = read_own_file(filename + HASH_SUFFIX, dir_fd, limit=4096)
    except Rejected as exc:
        raise Rejected(f"has an untrusted hash record: {filename}{HASH_SUFFIX} {exc}") from None
    if record is None:
        raise Rejected("has no hash record (sjc did not build it)")
    digest = hashlib.sha256(data).hexdigest()
    if record.split()[:1] != [digest.encode()]:
        raise Rejected("does not match its recorded sha256")
    return data, digest


def write_atomic(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    tmp = f".tmp-{secrets.token_hex(8)}"
    fd = os.open(tmp, CREATE, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, mode)
            file.write(data)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def store(dir_fd: int, filename: str, data: bytes, digest: str) -> None:
    """Cache a fresh build and its hash record, each replaced atomically (a reader may pair
    an old library with a new record: it then rebuilds). Best effort: the process loads the
    bytes it holds either way."""
    record = f"{digest}  {filename}\n".encode()
    try:
        write_atomic(dir_fd, filename, data, 0o700)
        write_atomic(dir_fd, filename + HASH_SUFFIX, record, 0o600)
    except OSError:
        discard(dir_fd, filename)


def discard(dir_fd: int, filename: str) -> None:
    for entry in (filename, filename + HASH_SUFFIX):
        try:
            os.unlink(entry, dir_fd=dir_fd)
        except OSError:
            pass


def remove_older_builds(dir_fd: int, name: str, keep: str) -> None:
    """Drop this library's builds from earlier sources (a process that still has one loaded
    keeps its mapping); best effort, a file in use elsewhere or gone already is fine."""
    pattern = re.compile(rf"{re.escape(name)}_[0-9a-f]{{16}}\.so(?:{re.escape(HASH_SUFFIX)})?")
    try:
        entries = os.listdir(dir_fd)
    except OSError:
        return
    for entry in entries:
        if pattern.fullmatch(entry) and entry not in (keep, keep + HASH_SUFFIX):
            try:
                os.unlink(entry, dir_fd=dir_fd)
            except OSError:
                pass


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
