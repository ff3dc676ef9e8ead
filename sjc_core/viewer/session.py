"""Opening the viewer for a run: live beside training (``sjc run --viewer``), or on a run
folder's last checkpoint (``sjc view RUN_DIR``), which it only reads.

``sjc view`` takes no lock and writes nothing into the folder: a run still training there,
``sjc render`` or ``sjc export-mesh`` go on undisturbed; it shows the checkpoint it loaded.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from sjc_core.files import locks
from sjc_core.inputs import read_regular
from sjc_core.recipes import toml_out
from sjc_core.recipes.recipe import Recipe
from sjc_core.runs.engine import LoadedRun, load_run
from sjc_core.runs.folder import read_status
from sjc_core.viewer.live import LiveFitObserver, LiveObserver
from sjc_core.viewer.page import ViewerPage
from sjc_core.viewer.server import start_server

MAX_METRICS_BYTES = 256 << 20
MESH_SUFFIXES = (".glb", ".ply", ".obj")


def open_live(recipe: Recipe, host: str, port: int, title: str, stream: TextIO | None = None) -> tuple[Any, LiveObserver]:
    """A server and the observer that feeds its page from the training loop."""
    server = start_server(host, port, f"sjc: {title}", stream)
    camera = recipe.settings.camera
    page = ViewerPage(server, None, None, camera.radius, toml_out.dumps(recipe.resolved()), title,
                      controls=True, fov_deg=sum(camera.fov_range) / 2)
    page.set_status("building the models...")
    return server, LiveObserver(page, recipe.settings.steps)


def open_live_fit(settings_text: str, steps: int, host: str, port: int, title: str,
                  stream: TextIO | None = None) -> tuple[Any, LiveFitObserver]:
    """A server and the observer that feeds its page from ``sjc fit``'s loop."""
    server = start_server(host, port, f"sjc fit: {title}", stream)
    page = ViewerPage(server, None, None, 1.5, settings_text, title, controls=True, checkpoint_button=False,
                      language="json")
    page.set_training_view(np.zeros((8, 16, 3), np.uint8), "sjc fit: every step draws rays from all pictures")
    page.set_status("reading the pictures...")
    return server, LiveFitObserver(page, steps)


def open_run(run_dir: Path, registry: Any, host: str, port: int, stream: TextIO | None = None) -> tuple[Any, ViewerPage]:
    """A server whose page shows a run folder's last checkpoint, turntable, curves and mesh."""
    stream = stream or sys.stderr
    run = load_run(run_dir, registry)
    holder = locks.lock_holder(run.folder.root)
    if holder is not None:
        print(f"sjc: note: {run_dir} is in use ({holder}); showing its checkpoint of step {run.step}", file=stream)
    title = run.folder.root.name
    server = start_server(host, port, f"sjc: {title}", stream)
    page = ViewerPage(server, run.parts.field, run.parts.prior, run.plan.radius, toml_out.dumps(run.recipe.resolved()),
                      title, controls=False, fov_deg=sum(run.plan.fov_range) / 2)
    page.set_status(_status_line(run))
    for step, values in read_curves(run.folder.metrics):
        page.add_points(step, values)
    page.draw_curves(force=True)
    _add_turntable(server, run)
    mesh = _add_mesh(server, run.folder.root)
    if mesh:
        print(f"viewer: showing the mesh {mesh}", file=stream)
    return server, page


def serve(page: ViewerPage, stop: Callable[[], bool] | None = None, tick: float = 0.03) -> None:
    """Answer the page's camera until ``stop()`` (or Ctrl-C)."""
    while stop is None or not stop():
        page.refresh(step_finished=False)
        page.draw_curves()
        time.sleep(tick)


def _status_line(run: LoadedRun) -> str:
    state = read_status(run.folder).get("state", "unknown")  # no or damaged status: the checkpoint still shows
    return f"{state} run, checkpoint of step {run.step} / {run.recipe.settings.steps}"


def read_curves(metrics: Path) -> list[tuple[int, dict[str, float]]]:
    """(step, {term: value, sigma, lr}) of each record of metrics.jsonl; damaged lines skipped."""
    if not metrics.is_file():
        return []
    points = []
    for line in read_regular(metrics, MAX_METRICS_BYTES).decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
            values = {k: float(v) for k, v in (record.get("terms") or {}).items()}
            values.update(sigma=float(record["sigma"]), lr=float(record.get("lr", 0.0)))
            points.append((int(record["step"]), values))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return points


def _add_turntable(server: Any, run: LoadedRun) -> None:
    """The run's turntable video, frame by frame under a slider (when the run wrote one)."""
    video = run.folder.final / "turntable.mp4"
    if not video.is_file():
        return
    from sjc_core.files.pictures import read_video_frames

    frames = read_video_frames(video)
    if not frames:
        return
    with server.gui.add_folder("Turntable", expand_by_default=False):
        image = server.gui.add_image(np.asarray(frames[0]), label=f"turntable ({len(frames)} frames)", format="jpeg")
        slider = server.gui.add_slider("frame", min=0, max=len(frames) - 1, step=1, initial_value=0)

    def show(_: Any) -> None:
        image.image = np.asarray(frames[int(slider.value)])

    slider.on_update(show)


def _add_mesh(server: Any, root: Path) -> Path | None:
    """The newest exported mesh under RUN_DIR/mesh (needs trimesh, the mesh extra)."""
    folder = root / "mesh"
    found = sorted((p for p in folder.glob("*") if p.suffix in MESH_SUFFIXES and p.is_file()),
                   key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not found:
        return None
    try:
        import trimesh

        mesh = trimesh.load(found[-1], force="mesh")
        handle = server.scene.add_mesh_trimesh("/mesh", mesh, visible=False)
    except Exception as exc:  # noqa: BLE001 - the mesh is a bonus: one note, the page still shows the field
        print(f"sjc: note: cannot show {found[-1]} ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    with server.gui.add_folder("Mesh"):
        toggle = server.gui.add_checkbox(f"show {found[-1].name}", initial_value=False)

    def show(_: Any) -> None:
        handle.visible = bool(toggle.value)

    toggle.on_update(show)
    return found[-1]
