"""Reading a user's input files (recipes, transforms files, pictures): regular files only,
of a bounded size.

A FIFO given as a recipe would block ``open()`` forever, ``/dev/zero`` would be read until
memory runs out, and a huge file would do the same more slowly. Every input is therefore
opened with ``O_NONBLOCK`` (a FIFO opens at once), checked with ``fstat`` to be a regular
file no larger than its limit, and read no further than that limit. Every refusal is one
:class:`~sjc_core.errors.SjcError` line naming the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sjc_core.errors import SjcError

MAX_RECIPE_BYTES = 4 << 20  # 4 MiB: a recipe is a page of settings (prompts included)
MAX_TRANSFORMS_BYTES = 64 << 20  # 64 MiB: some 100,000 frames of a posed set
MAX_PICTURE_BYTES = 512 << 20  # 512 MiB: a 16k x 8k RGBA float picture, uncompressed
MAX_STATE_BYTES = 1 << 20  # status.json, source.json, batch.json: sjc's own small files


def size_text(count: float) -> str:
    """Bytes as a short human figure ('3.7 GB', '512 MB', '12 kB')."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{int(count)} bytes"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _refusal(where: str, mode: int, what: str) -> SjcError:
    return SjcError(f"{where}: is {_kind(mode)}, not a regular file; give {what} as a regular file")


def check_regular(path: Path, limit: int | None, what: str = "it", where: str = "") -> int:
    """``path``'s size when it is a regular file of at most ``limit`` bytes, else one line.

    ``os.stat`` follows links (a link to a real file is fine) and never blocks, so a FIFO or
    a device is refused before anything opens it. ``where`` (a recipe key) starts the line.
    """
    shown = f"{where}: {path}" if where else str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SjcError(f"{shown}: no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise SjcError(f"{shown}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return _checked(shown, info, limit, what)


def _checked(shown: str, info: os.stat_result, limit: int | None, what: str) -> int:
    if not stat.S_ISREG(info.st_mode):
        raise _refusal(shown, info.st_mode, what)
    if limit is not None and info.st_size > limit:
        raise SjcError(f"{shown}: is {size_text(info.st_size)}; {what} may be at most {size_text(limit)}")
    return int(info.st_size)


def read_regular(path: Path, limit: int | None, what: str = "it", where: str = "") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; anything else is one line.

    Opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open file, so what is read
    is what was checked, however the path changes meanwhile.
    """
    shown = f"{where}: {path}" if where else str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SjcError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise SjcError(f"{shown}: is a folder, not a regular file; give {what} as a regular file") from None
    except (OSError, ValueError) as exc:
        raise SjcError(f"{shown}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        _checked(shown, os.fstat(fd), limit, what)
        chunks = []
        left = (limit + 1) if limit is not None else None
        while left is None or left > 0:
            chunk = os.read(fd, 1 << 20 if left is None else min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            if left is not None:
                left -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise SjcError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if limit is not None and len(data) > limit:  # it grew after the check
        raise SjcError(f"{shown}: is more than {size_text(limit)}; {what} may be at most {size_text(limit)}")
    return data
