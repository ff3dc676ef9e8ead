"""The viewer's page on a viser server: the field from the dragged camera, the latest training
view, the curves, the recipe and status, and (for a live run) pause and checkpoint buttons.

Callbacks from the page (camera, slider, buttons) only record what changed; rendering happens
in :meth:`ViewerPage.refresh`, called by whoever owns the field (the training thread between
steps, or ``sjc view``'s loop), and only when a page is connected and its camera moved or a
step finished, at a bounded rate.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any

import numpy as np

from sjc_core.render.cameras import look_at
from sjc_core.viewer.camera import page_intrinsics, viser_to_c2w
from sjc_core.viewer.pictures import PageRender, render_page

MIN_SIZE, MAX_SIZE, DEFAULT_SIZE = 64, 256, 128
STEP_REFRESH_SECONDS = 1.0  # at most one step-driven refresh a second ...
RENDER_SHARE = 0.03  # ... and at most this share of the time spent on them (render, pictures, sending)
CAMERA_REFRESH_SECONDS = 0.05  # while the camera moves: at most 20 pictures a second
MAX_CURVE_POINTS = 2000


class ViewerPage:
    """The page of one field on one server (see the module doc for who calls what)."""

    def __init__(self, server: Any, field: Any, prior: Any, radius: float, recipe_toml: str, title: str,
                 controls: bool, fov_deg: float = 50.0, checkpoint_button: bool = True, language: str = "toml") -> None:
        self.server, self.field, self.prior = server, field, prior
        self._lock = threading.Lock()
        self._seen: dict[int, tuple] = {}  # client id -> the camera it was last rendered from
        self._last_camera_render = 0.0
        self._last_step_render = 0.0
        self.refresh_seconds = 0.0  # what the last step-driven refresh cost (the live observer adds its part)
        self._curves: dict[str, tuple[list[float], list[float]]] = {}
        self._plots: dict[str, Any] = {}
        self._curves_dirty = False
        self._last_curve_update = 0.0
        self.paused = threading.Event()
        self.checkpoint_asked = threading.Event()
        self.last_render: PageRender | None = None
        self._noted: set[str] = set()

        server.scene.set_up_direction("+y")  # sjc's world is y-up
        eye = look_at(np.array([0.0, 0.35, 1.0]) * radius / np.linalg.norm([0.0, 0.35, 1.0]))[:3, 3]
        server.initial_camera.position = tuple(eye)
        server.initial_camera.look_at = (0.0, 0.0, 0.0)
        server.initial_camera.up = (0.0, 1.0, 0.0)
        self._eye = tuple(float(v) for v in eye)
        self._fov = math.radians(fov_deg)  # the training cameras' (square pictures: vertical = horizontal)
        server.on_client_connect(self._place_camera)
        gui = server.gui
        gui.add_markdown(f"**{title}**")
        self.status = gui.add_markdown("starting")
        with gui.add_folder("Field from your camera"):
            self.size = gui.add_slider("resolution", min=MIN_SIZE, max=MAX_SIZE, step=16, initial_value=DEFAULT_SIZE)
            self.view_image = gui.add_image(np.zeros((8, 16, 3), np.uint8), label="picture | depth", format="png")
        if controls:
            with gui.add_folder("Training"):
                self.pause_button = gui.add_button("pause training")
                self.pause_button.on_click(lambda _: self._toggle_pause())
                if checkpoint_button:
                    self.checkpoint_button = gui.add_button("write a checkpoint now")
                    self.checkpoint_button.on_click(lambda _: self.checkpoint_asked.set())
                self.training_label = gui.add_markdown("training view: none yet")
                self.training_image = gui.add_image(np.zeros((8, 16, 3), np.uint8), label="scored | depth | denoised target", format="png")
        self.curves_folder = gui.add_folder("Curves")
        with gui.add_folder("Recipe", expand_by_default=False):
            gui.add_markdown(f"```{language}\n{recipe_toml}\n```")
        self.size.on_update(lambda _: self._forget_cameras())

    # --- called from the page's threads: record only -------------------------------------
    def _toggle_pause(self) -> None:
        if self.paused.is_set():
            self.paused.clear()
            self.pause_button.label = "pause training"
        else:
            self.paused.set()
            self.pause_button.label = "resume training"

    def _place_camera(self, client: Any) -> None:
        """Start each page at the training cameras' distance, looking at the origin, y up."""
        with client.atomic():
            client.camera.up_direction = (0.0, 1.0, 0.0)
            client.camera.position = self._eye
            client.camera.look_at = (0.0, 0.0, 0.0)
            client.camera.fov = self._fov

    def _forget_cameras(self) -> None:
        with self._lock:
            self._seen.clear()

    # --- called by the owner of the field ------------------------------------------------
    def connected(self) -> bool:
        return bool(self.server.get_clients())

    def refresh(self, step_finished: bool) -> bool:
        """Render for each page whose camera moved, or (``step_finished``) for all pages when a
        step-driven refresh is due; returns whether anything was rendered."""
        clients = self.server.get_clients()
        if not clients or self.field is None:
            return False
        now = time.monotonic()
        step_due = step_finished and self.step_refresh_due()
        camera_due = now - self._last_camera_render >= CAMERA_REFRESH_SECONDS
        rendered = False
        size = int(self.size.value)
        for client_id, client in list(clients.items()):
            camera = client.camera
            if not usable(camera):  # a page not laid out yet reports a zero-sized view
                continue
            key = (tuple(np.round(camera.wxyz, 6)), tuple(np.round(camera.position, 6)), round(camera.fov, 6),
                   round(camera.aspect, 4), size)
            with self._lock:
                moved = self._seen.get(client_id) != key
            if not (step_due or (moved and camera_due)):
                continue
            K, height, width = page_intrinsics(camera.fov, camera.aspect, size)
            try:
                picture = render_page(self.field, self.prior, K, viser_to_c2w(camera.wxyz, camera.position), height, width)
            except Exception as exc:  # noqa: BLE001 - the page must never stop the run
                self._note(f"cannot render for the page ({type(exc).__name__}: {exc})")
                with self._lock:
                    self._seen[client_id] = key
                continue
            client.scene.set_background_image(picture.rgb, format="png")
            self.view_image.image = picture.side_by_side()
            self.last_render = picture
            with self._lock:
                self._seen[client_id] = key
            rendered = True
        if rendered:
            self._last_camera_render = time.monotonic()
            if step_due:
                self._last_step_render = self._last_camera_render
                self.refresh_seconds = self._last_camera_render - now
        return rendered

    def _note(self, line: str) -> None:
        if line not in self._noted:  # each problem once, not once a frame
            self._noted.add(line)
            print(f"sjc: note: viewer: {line}", file=sys.stderr, flush=True)

    def step_refresh_due(self) -> bool:
        """Whether a step-driven refresh (of the training view too) would happen now."""
        return time.monotonic() - self._last_step_render >= max(STEP_REFRESH_SECONDS, self.refresh_seconds / RENDER_SHARE)

    def set_status(self, text: str) -> None:
        self.status.content = text

    def set_training_view(self, picture: np.ndarray, caption: str) -> None:
        self.training_label.content = caption
        self.training_image.image = picture

    def add_points(self, step: int, values: dict[str, float]) -> None:
        """New curve points (host numbers the loop already read); drawn by :meth:`draw_curves`."""
        for name, value in values.items():
            if value is None or not np.isfinite(value):
                continue
            steps, ys = self._curves.setdefault(name, ([], []))
            steps.append(float(step))
            ys.append(float(value))
        self._curves_dirty = True

    def draw_curves(self, force: bool = False) -> None:
        """Send the curves to the page, at most once a second (thinned to MAX_CURVE_POINTS)."""
        now = time.monotonic()
        if not self._curves_dirty or not (force or now - self._last_curve_update >= 1.0):
            return
        if not force and not self.connected():
            return
        self._curves_dirty, self._last_curve_update = False, now
        for name, (steps, ys) in list(self._curves.items()):
            stride = max(1, len(steps) // MAX_CURVE_POINTS)
            data = (np.asarray(steps[::stride]), np.asarray(ys[::stride]))
            if name in self._plots:
                self._plots[name].data = data
                continue
            with self.curves_folder:
                self._plots[name] = self.server.gui.add_uplot(
                    data, ({"label": "step"}, {"label": name, "stroke": "#1f5fa8", "width": 1.5}),
                    title=name, aspect=2.0, scales={"x": {"time": False}},
                )


def usable(camera: Any) -> bool:
    """A camera a picture can be rendered for: finite pose, a field of view, a non-empty view."""
    try:
        return (
            bool(np.all(np.isfinite(camera.wxyz))) and float(np.linalg.norm(camera.wxyz)) > 0
            and bool(np.all(np.isfinite(camera.position)))
            and math.isfinite(camera.fov) and 0 < camera.fov < math.pi
            and math.isfinite(camera.aspect) and camera.aspect > 0
        )
    except (ZeroDivisionError, TypeError, ValueError):
        return False
