"""Atomic writes: every file goes to a temporary file in its folder and is renamed into place.

An interrupted run never leaves a half-written checkpoint or image behind. Temporary files
are named ``.sjc-tmp.*`` so that those a killed process leaves behind can be recognised and
removed (:func:`remove_stale_temps`, called once a folder's lock is taken).

A write that fails (full disk, no permission, a file where a folder should be) raises
:class:`WriteError`, a one-line :class:`~sjc_core.errors.SjcError` naming the file and the
cause; the file it would have replaced is left as it was.

Inside a folder this process holds (:func:`guarded`, entered by the folder lock) nothing is
written through a symbolic link: a link where a subfolder or file of sjc's should be would
send a video, a mesh or a truncation to a user's file elsewhere, so it is refused with
:class:`LinkRefused` (one line naming the link) before anything is written.
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

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # open() flag: fail on a symbolic link instead of following it
TEMP_PREFIX = ".sjc-tmp."  # every temporary file of an atomic write starts with this


# errno values that mean "the disk or the folder refuses": no fallback can help
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


class WriteError(SjcError):
    """Writing ``path`` failed; one line naming the file and the cause."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        self.path = Path(path)
        self.errno = getattr(cause, "errno", None)
        super().__init__(f"{path}: cannot write ({os_cause(cause)})")


class LinkRefused(SjcError):
    """A symbolic link where sjc would write inside a folder it holds (deliberately not a
    :class:`WriteError`: no fallback, such as a GIF for a video, may try again)."""

    def __init__(self, link: Path) -> None:
        self.link = Path(link)
        super().__init__(
            f"{link}: is a symbolic link; sjc does not write through links inside its folders "
            "(remove the link, or choose another folder)"
        )


_GUARDED: list[Path] = []  # folders this process holds, absolute (links in them are not followed)


@contextmanager
def guarded(root: Path) -> Iterator[None]:
    """While the block runs, writes under ``root`` refuse symbolic links (:func:`check_no_links`)."""
    entry = Path(os.path.abspath(root))
    _GUARDED.append(entry)
    try:
        yield
    finally:
        _GUARDED.remove(entry)


def check_no_links(path: Path, root: Path | None = None) -> None:
    """Refuse ``path`` when it, or a folder between ``root`` (else any guarded folder) and
    it, is a symbolic link; the folder itself may be one (the user chose it)."""
    target = Path(os.path.abspath(path))
    roots = [Path(os.path.abspath(root))] if root is not None else list(_GUARDED)
    for base in roots:
        try:
            parts = target.relative_to(base).parts
        except ValueError:
            continue
        current = base
        for part in parts:
            current = current / part
            if current.is_symlink():
                raise LinkRefused(current)


def refuse_links(root: Path, names: tuple[str, ...]) -> None:
    """Refuse when any of ``names`` (paths relative to ``root``) is, or passes, a symbolic link."""
    for name in names:
        check_no_links(root / name, root)


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
    check_no_links(path)  # before any folder is made
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
    check_no_links(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link made after the check
            raise LinkRefused(path) from None
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
