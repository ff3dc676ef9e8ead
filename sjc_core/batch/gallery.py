"""``index.html`` of a batch: one card per run, readable from disk with no server.

Everything is inline (CSS, no scripts) and every link is relative to the batch folder, so
the folder can be copied or zipped and still opened with a double click. All text from
recipes, errors and file names goes through ``html.escape``. Each run with a checkpoint names
the command that opens its live viewer page (``sjc view``), run from the batch folder.
"""

from __future__ import annotations

import shlex
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sjc_core.runs.progress import format_seconds

GALLERY_FILE = "index.html"

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; background: #f4f4f4; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; }
.meta { color: #555; margin-bottom: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid #ccc; border-radius: 6px; padding: 8px; }
.card h2 { font-size: 14px; margin: 0 0 6px; word-break: break-all; }
.state { display: inline-block; padding: 0 6px; border-radius: 3px; color: #fff; font-size: 12px; }
.finished { background: #2a7d2a; } .failed { background: #b22222; } .interrupted { background: #b8860b; }
.running { background: #1f5fa8; } .queued { background: #777; }
img { display: block; width: 100%; image-rendering: pixelated; background: #ddd; }
img.strip { margin-top: 4px; }
.none { height: 120px; display: flex; align-items: center; justify-content: center; background: #eee; color: #777; }
table { border-collapse: collapse; width: 100%; margin-top: 6px; font-size: 12px; }
td { padding: 1px 4px; vertical-align: top; border-top: 1px solid #eee; }
td:first-child { color: #666; white-space: nowrap; width: 1%; }
.error { color: #b22222; white-space: pre-wrap; word-break: break-word; }
code { font-size: 12px; }
"""


def duration(seconds: float) -> str:
    """``12.3 s`` under a minute (tiny runs), else ``m:ss`` / ``h:mm:ss``."""
    return f"{seconds:.1f} s" if seconds < 60 else format_seconds(seconds)


def _href(*parts: str) -> str:
    """A relative URL from path parts (each quoted, so spaces and '#' survive)."""
    return "/".join(quote(part) for part in parts)


def _picture(out: Path, run: dict[str, Any]) -> str:
    """The turntable's middle view and strip when finished, else the latest training view."""
    folder = run["folder"]
    outputs = run.get("outputs") or {}
    final = out / folder / "final"
    parts = []
    view, strip, video = outputs.get("view"), outputs.get("strip"), outputs.get("turntable")
    if view and (final / view).exists():
        image = f'<img src="{_href(folder, "final", view)}" alt="last view of {escape(folder)}">'
        parts.append(f'<a href="{_href(folder, "final", video)}">{image}</a>' if video else image)
        if strip and (final / strip).exists():
            parts.append(f'<img class="strip" src="{_href(folder, "final", strip)}" alt="turntable strip">')
        return "".join(parts)
    views = sorted((out / folder / "views").glob("step_*.png")) if (out / folder / "views").is_dir() else []
    if views:
        return f'<img src="{_href(folder, "views", views[-1].name)}" alt="latest training view ({escape(views[-1].stem)})">'
    return f'<div class="none">{escape(run.get("state", "queued"))}: no picture</div>'


def _row(label: str, value: str) -> str:
    return f"<tr><td>{escape(label)}</td><td>{value}</td></tr>"


def _card(out: Path, run: dict[str, Any]) -> str:
    folder, state = run["folder"], run.get("state", "queued")
    rows = [
        _row("recipe", f'<a href="{_href(folder, "recipe.toml")}">{escape(str(run.get("recipe", "")))}</a>'
             if (out / folder / "recipe.toml").exists() else escape(str(run.get("recipe", "")))),
        _row("seed", escape(str(run.get("seed", "")))),
    ]
    if run.get("overrides"):
        rows.append(_row("overrides", "<br>".join(f"<code>{escape(o)}</code>" for o in run["overrides"])))
    if run.get("steps"):
        rows.append(_row("steps", escape(f"{run.get('step', 0)} / {run['steps']}")))
    times = [f"{duration(float(run[k]))} {label}" for k, label in (("wall_seconds", "training"), ("total_seconds", "in all"))
             if run.get(k)]
    if times:
        rows.append(_row("wall time", escape(", ".join(times))))
    for name, value in (run.get("final_terms") or {}).items():
        rows.append(_row(f"final {name}", escape(f"{value:.4g}" if isinstance(value, (int, float)) else str(value))))
    if run.get("skipped"):
        rows.append(_row("note", "finished by an earlier invocation"))
    if run.get("error"):
        rows.append(_row("error", f'<span class="error">{escape(str(run["error"]))}</span>'))
    links = []
    turntable = (run.get("outputs") or {}).get("turntable")
    if turntable and (out / folder / "final" / turntable).exists():
        links.append(f'<a href="{_href(folder, "final", turntable)}">turntable</a>')
    if (out / folder).is_dir():
        links.append(f'<a href="{_href(folder)}/">folder</a>')
    if (out / "logs" / f"{folder}.log").exists():
        links.append(f'<a href="{_href("logs", folder + ".log")}">log</a>')
    if links:
        rows.append(_row("files", " · ".join(links)))
    if (out / folder / "checkpoints" / "last.safetensors").exists():  # what `sjc view` shows: the last checkpoint
        command = f"sjc view {shlex.quote(folder)}"
        rows.append(_row("viewer", f"<code>{escape(command)}</code> (in this folder; needs the viewer extra)"))
    return (
        f'<div class="card" id="{escape(folder)}"><h2><span class="state {escape(state)}">{escape(state)}</span> '
        f"{escape(folder)}</h2>{_picture(out, run)}<table>{''.join(rows)}</table></div>"
    )


def render_gallery(out: Path, batch: dict[str, Any]) -> str:
    """The page for a batch.json document whose run folders live under ``out``."""
    counts = batch.get("counts", {})
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    meta = f"{summary} · executor {batch.get('executor', '?')} · updated {batch.get('updated', '')}"
    cards = "\n".join(_card(out, run) for run in batch.get("runs", []))
    title = f"sjc batch: {out.name}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1><div class=\"meta\">{escape(meta)} · "
        f'<a href="{_href("batch.json")}">batch.json</a></div>'
        f'<div class="grid">\n{cards}\n</div></body></html>\n'
    )


def write_gallery(out: Path, batch: dict[str, Any]) -> Path:
    """Write ``out/index.html`` atomically."""
    from sjc_core.files.atomic import write_text  # lazily: importing the gallery should not import torch

    return write_text(out / GALLERY_FILE, render_gallery(out, batch))
