"""One lock per output folder: ``fcntl.flock`` on ``.sjc.lock`` inside it.

The kernel drops the lock when the process ends, however it ends, so a killed run never
leaves a stale lock; a second command on the same folder is refused with the holder named.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:  # POSIX; elsewhere folders are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from sjc_core.errors import SjcError
from sjc_core.files.atomic import NOFOLLOW, LinkRefused, WriteError, guarded, process_umask

LOCK_NAME = ".sjc.lock"  # the lock file inside a locked folder


class FolderInUse(SjcError):
    """Another process holds the folder's lock."""


def lock_holder(root: Path) -> str | None:
    """Who holds ``root``'s lock ('pid 123, sjc run'), or None when it is free; takes nothing.

    Probes with a shared lock, so two probes never disturb each other.
    """
    if fcntl is None:
        return None
    try:
        fd = os.open(root / LOCK_NAME, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW)
    except OSError:  # no lock file (never locked), or a link or special file: no sjc lock
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(fd)
        except OSError:  # a filesystem without locks: nobody can hold one there
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder_text(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"pid {int(info['pid'])}, {info.get('command', 'sjc')}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


def in_use_error(root: Path, holder: str) -> FolderInUse:
    return FolderInUse(f"{root}: in use by another sjc process ({holder}); wait for it to end, or stop it")


@contextmanager
def folder_lock(root: Path, command: str) -> Iterator[None]:
    """Hold ``root``'s lock (``root/.sjc.lock``) for the block; :class:`FolderInUse` if taken.

    ``root`` must exist. The lock file records the holder's pid and ``command`` for the
    message another process shows. It is released when the block ends or the process dies.
    It is opened without following links, and anything but a regular file there is refused
    (:class:`~sjc_core.files.atomic.LinkRefused` or one line): the lock file is truncated, and
    must never be a user's file behind a link. While the block runs, writes under ``root``
    refuse links too (:func:`~sjc_core.files.atomic.guarded`).
    """
    if fcntl is None:  # pragma: no cover - Windows
        with guarded(root):
            yield
        return
    path = root / LOCK_NAME
    fd = _take(root, path)
    try:
        try:  # who holds it, for the message another process shows (best effort)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode("utf-8"), 0)
        except OSError:
            pass
        with guarded(root):
            yield
    finally:
        if _names(path, fd):  # still held: remove it, so that a finished folder keeps no empty lock file
            try:
                os.unlink(path)
            except OSError:
                try:
                    os.ftruncate(fd, 0)
                except OSError:
                    pass
        os.close(fd)  # releases the lock


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` is still the file open as ``fd`` (not removed or replaced meanwhile)."""
    try:
        named, held = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _take(root: Path, path: Path) -> int:
    """Open and lock ``path``; the open descriptor holds the lock.

    The holder removes the file when it lets go, so a process that waited on it may find its
    lock on a file no longer in the folder: it then opens the new one and tries again.
    """
    while True:
        fd = _open_lock_file(path)
        try:
            deadline = time.monotonic() + 0.5  # another process's probe holds a shared lock for microseconds
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise in_use_error(root, _holder_text(fd)) from None
                    time.sleep(0.02)
                except OSError:  # a filesystem without locks (some network mounts): go on unlocked
                    return fd
        except BaseException:
            os.close(fd)
            raise
        if _names(path, fd):
            return fd
        os.close(fd)  # the file was removed by the holder that just let go: take the new one


def _open_lock_file(path: Path) -> int:
    """The lock file, opened without following links; anything but a regular file of one
    name is refused (it is truncated, so it must never be a user's file)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | NOFOLLOW, 0o666 & ~process_umask())
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkRefused(path) from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO without a reader, a folder
            raise SjcError(f"{path}: is not a regular file; sjc keeps its lock there (remove it)") from None
        raise WriteError(path, exc) from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = f"{path}: is not a regular file; sjc keeps its lock there (remove it)"
    elif info.st_nlink > 1:  # a hard link: truncating it would truncate the other name's file
        problem = f"{path}: has {info.st_nlink} names (a hard link); sjc truncates its lock file (remove it)"
    if problem:
        os.close(fd)
        raise SjcError(problem)
    return fd
