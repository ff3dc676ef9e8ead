"""One lock per output folder: ``fcntl.flock`` on ``.sjc.lock`` inside it.

The kernel drops the lock when the process ends, however it ends, so a killed run never
leaves a stale lock; a second command on the same folder is refused with the holder named.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:  # POSIX; elsewhere folders are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from sjc_core.errors import SjcError
from sjc_core.files.atomic import WriteError, process_umask

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
        fd = os.open(root / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no lock file: never locked
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
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    path = root / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~process_umask())
    except OSError as exc:
        raise WriteError(path, exc) from None
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
                break
    except BaseException:
        os.close(fd)
        raise
    try:
        try:  # who holds it, for the message another process shows (best effort)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode("utf-8"), 0)
        except OSError:
            pass
        yield
    finally:
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # releases the lock
