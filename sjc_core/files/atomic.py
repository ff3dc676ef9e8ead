"""Atomic writes: every file goes to a temporary file in its folder and is renamed into place.

An interrupted run never leaves a half-written checkpoint or image behind. Temporary files
are named ``.sjc-tmp.*`` so that those a killed process leaves behind can be recognised and
removed (:func:`remove_stale_temps`, called once a folder's lock is taken).

A write that fails (full disk, no permission, a file where a folder should be) raises
:class:`WriteError`, a one-line :class:`~sjc_core.errors.SjcError` naming the file and the
cause; the file it would have replaced is left as it was.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sjc_core.errors import SjcError

TEMP_PREFIX = ".sjc-tmp."  # every temporary file of an atomic write starts with this


# errno values that mean "the disk or the folder refuses": no fallback can help
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


class WriteError(SjcError):
    """Writing ``path`` failed; one line naming the file and the cause."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        self.path = Path(path)
        self.errno = getattr(cause, "errno", None)
        super().__init__(f"{path}: cannot write ({os_cause(cause)})")


def os_cause(exc: BaseException) -> str:
    """The readable cause of an OSError ('No space left on device'), else its text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def describe_os_error(exc: OSError) -> str:
    """One line for any OSError: the file it names, then the cause."""
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    where = " -> ".join(names)
    return f"{where}: {os_cause(exc)}" if where else os_cause(exc)


@functools.lru_cache(maxsize=1)
def process_umask() -> int:
    """The process umask (read once: setting it to read it is not thread-safe)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file has ``path``'s own name inside a private folder ``.sjc-tmp.*`` beside
    it, so writers that make temporary files of their own next to their target (safetensors
    does) make them in there too: a process killed mid-write leaves only ``.sjc-tmp.*``
    behind, which :func:`remove_stale_temps` recognises. The result gets the permissions of
    a plainly created file (0666 less the umask), not mkstemp's owner-only 0600, so run
    folders can be shared like any other output.
    """
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:  # a file where a folder should be
            raise NotADirectoryError(errno.ENOTDIR, f"Not a directory: {exc.filename} is a file") from None
        tmp_dir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.stem}.", dir=path.parent))
    except OSError as exc:
        raise WriteError(path, exc) from None
    tmp = tmp_dir / path.name
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~process_umask())
            os.replace(tmp, path)
        except OSError as exc:
            raise WriteError(path, exc) from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON record (metrics are appended, never rewritten).

    A record that cannot be written whole (full disk) is cut off again, so the file keeps
    only whole lines; the failure is a :class:`WriteError`.
    """
    line = memoryview((json.dumps(record) + "\n").encode("utf-8"))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise WriteError(path, exc) from None
    try:
        size = os.fstat(fd).st_size
        try:
            while line:
                line = line[os.write(fd, line):]
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise WriteError(path, exc) from None
    finally:
        os.close(fd)


def remove_stale_temps(root: Path) -> tuple[int, int]:
    """Remove what atomic writes left under ``root`` when killed: (entries, bytes removed).

    Call it only while holding ``root``'s lock: then no other sjc process is writing there,
    and every ``.sjc-tmp.*`` entry was left by a process that died mid-write.
    """
    count = size = 0
    for folder, dirnames, names in os.walk(root):
        for name in [d for d in dirnames if d.startswith(TEMP_PREFIX)]:
            dirnames.remove(name)  # not walked into: removed whole
            stale = Path(folder) / name
            size += sum(p.stat().st_size for p in stale.rglob("*") if p.is_file() and not p.is_symlink())
            shutil.rmtree(stale, ignore_errors=True)
            count += 1
        for name in names:
            if name.startswith(TEMP_PREFIX):  # a file: older versions wrote those
                stale = Path(folder) / name
                try:
                    size += stale.lstat().st_size
                    stale.unlink()
                    count += 1
                except OSError:
                    pass
    return count, size
