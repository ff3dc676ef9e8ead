"""The batch folder on disk: which folder ``sjc batch`` may write into, and its run logs.

The same rules as ``sjc run`` and ``sjc fit`` (:func:`sjc_core.runs.folder.check_target_folder`):
a new or empty folder, or one an earlier ``sjc batch`` wrote (its ``batch.json``), is used;
any other folder (a user's ``index.html`` and ``batch.json`` would be overwritten) is refused
with one line. Nothing is written through a symbolic link inside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TextIO

from sjc_core.errors import SjcError
from sjc_core.files import atomic, locks
from sjc_core.inputs import MAX_STATE_BYTES, read_regular

BATCH_FILE = "batch.json"
GALLERY_FILE = "index.html"
LOG_DIR = "logs"
CHOOSE = "choose another folder with --out"


def is_batch_folder(out: Path) -> bool:
    """Whether an earlier ``sjc batch`` wrote here: its ``batch.json`` (a user's own is no proof)."""
    try:
        document = json.loads(read_regular(out / BATCH_FILE, MAX_STATE_BYTES))
    except (SjcError, ValueError):
        return False
    return isinstance(document, dict) and isinstance(document.get("runs"), list) and "counts" in document


def check_batch_folder(out: Path, keys: list[str]) -> None:
    """May ``sjc batch`` write into ``out`` (run folders ``keys``)? One line when it may not."""
    from sjc_core.runs.folder import check_target_folder  # lazily: it imports torch, Ray's tracker must not

    if out.is_dir():
        atomic.refuse_links(out, (locks.LOCK_NAME, BATCH_FILE, GALLERY_FILE, LOG_DIR, *keys))
        if is_batch_folder(out):
            return
    check_target_folder(out, "a batch folder", CHOOSE)


def open_log(out: Path, key: str) -> TextIO:
    """``OUT/logs/KEY.log`` for appending, never through a link (workers write these too)."""
    path = out / LOG_DIR / f"{key}.log"
    atomic.refuse_links(out, (LOG_DIR, f"{LOG_DIR}/{key}.log"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | atomic.NOFOLLOW, 0o666)
    except OSError as exc:
        raise atomic.WriteError(path, exc) from None
    return os.fdopen(fd, "a", buffering=1)
