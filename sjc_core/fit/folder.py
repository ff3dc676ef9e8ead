"""The output folder of ``sjc fit``: whether a fit may write there, and what an
``--overwrite`` removes (only the files an earlier fit wrote).
"""

from __future__ import annotations

import json
from pathlib import Path

from sjc_core.errors import SjcError
from sjc_core.files import atomic, locks
from sjc_core.inputs import MAX_STATE_BYTES, read_regular
from sjc_core.runs.folder import TENSORBOARD

FIT_FILES = ("metrics.json", "field.safetensors", "train_log.jsonl", "turntable.mp4", "turntable.gif")
HELDOUT = "heldout"


def holds_fit(out_dir: Path) -> bool:
    return any((out_dir / name).exists() for name in FIT_FILES[:3])


def check_fit_folder(out_dir: Path, overwrite: bool, locked: bool = False) -> None:
    """May ``sjc fit`` write into ``out_dir``? The same rules as ``sjc run``'s folders.

    A new or empty folder is fine; a folder holding an earlier fit only with ``overwrite``;
    any other folder, a file, or a folder another process holds is refused (one line).
    """
    from sjc_core.runs.folder import check_target_folder

    choose = "choose another folder with --out"
    if out_dir.is_dir():  # no link where a fit writes or truncates: refused before anything is
        atomic.refuse_links(out_dir, (locks.LOCK_NAME, *FIT_FILES, HELDOUT, TENSORBOARD))
    if not locked and out_dir.is_dir():
        holder = locks.lock_holder(out_dir)
        if holder is not None:
            raise locks.in_use_error(out_dir, holder)
    if out_dir.is_dir() and holds_fit(out_dir):
        if overwrite:
            return
        raise SjcError(f"{out_dir}: already holds a fit{_fit_summary(out_dir)}; pass --overwrite to replace it, or {choose}")
    check_target_folder(out_dir, "a fit folder", choose)


def _fit_summary(out_dir: Path) -> str:
    try:
        metrics = json.loads(read_regular(out_dir / "metrics.json", MAX_STATE_BYTES))  # never a FIFO
        held = metrics.get("psnr_heldout")
        figure = f", held-out PSNR {held:.2f} dB" if isinstance(held, (int, float)) else ""
        return f" ({metrics['steps']} steps{figure})"
    except (SjcError, ValueError, KeyError, TypeError):
        return " (unfinished)" if not (out_dir / "metrics.json").exists() else ""


def remove_earlier_fit(out_dir: Path) -> None:
    """``--overwrite``: remove what an earlier fit wrote (and nothing else)."""
    for name in FIT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    heldout = out_dir / HELDOUT
    if heldout.is_dir() and not heldout.is_symlink():  # never remove pictures behind a link
        for picture in heldout.glob("[0-9][0-9][0-9]_*.png"):
            picture.unlink()
        try:
            heldout.rmdir()
        except OSError:  # the user's own files stay
            pass
