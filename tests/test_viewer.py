"""The live viewer (issue 25): viser's camera to sjc's, ``sjc view`` answering a page's camera
over viser's own websocket protocol with ``sjc render``'s picture, ``sjc run --viewer`` pausing
and writing a checkpoint from the page, the page in headless Chromium, one line without the
extra or on a taken port, and TensorBoard event files.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_engine import sjc, write_recipe

from sjc_core.render.cameras import intrinsics, look_at
from sjc_core.viewer.camera import (
    c2w_to_viser,
    page_intrinsics,
    quaternion_matrix,
    viser_to_c2w,
)

viser = pytest.importorskip("viser", reason='needs the viewer extra: pip install -e ".[viewer]"')
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import viewer_screenshot


def test_viser_camera_becomes_sjcs_opengl_pose():
    """An OpenCV camera (identity rotation: +z forward, +y down) is sjc's camera turned
    upside down and backwards; look-at poses go through viser's convention and back."""
    pose = viser_to_c2w((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, -2.0))
    assert np.allclose(pose[:3, :3], np.diag([1.0, -1.0, -1.0])) and np.allclose(pose[:3, 3], [0, 0, -2])
    for eye in ([0.0, 0.4, 1.5], [1.2, -0.7, 0.3], [-0.2, 1.4, -0.5], [0.0, 0.0, -1.5]):
        c2w = look_at(np.array(eye))
        wxyz, position = c2w_to_viser(c2w)
        assert np.allclose(viser_to_c2w(wxyz, position), c2w, atol=1e-12)
        forward = quaternion_matrix(wxyz)[:, 2]  # viser's +z looks at the origin
        assert np.allclose(forward, -np.array(eye) / np.linalg.norm(eye))
    K, height, width = page_intrinsics(np.radians(50.0), 1.0, 64)
    assert (height, width) == (64, 64) and np.allclose(K, intrinsics(50.0, 64, 64))
    K, height, width = page_intrinsics(np.radians(50.0), 2.0, 64)  # vertical fov kept on a wide page
    assert (height, width) == (64, 128) and np.isclose(K[1, 1], intrinsics(50.0, 64, 64)[1, 1])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny finished run, written with --tensorboard."""
    root = tmp_path_factory.mktemp("viewer")
    result = sjc("run", str(write_recipe(root)), "--tensorboard")
    assert result.returncode == 0, result.stderr
    return root / "runs" / "tiny-seed3"


def free_port() -> int:
    return viewer_screenshot.free_port()


async def _page_session(port: int, wxyz, position, fov: float, height: int, width: int, clicks: tuple[str, ...] = (),
                        timeout: float = 90.0) -> tuple[np.ndarray, dict[str, str]]:
    """Connect like the browser, send a camera, click buttons by label; return the background
    picture of that camera and the buttons' uuids. (The server places a new page's camera on
    connecting, as a browser then reports: the camera is sent again after the first picture.)"""
    import msgspec
    import websockets
    import zstandard
    from viser import _messages

    async with websockets.connect(f"ws://127.0.0.1:{port}", subprotocols=[f"viser-v{viser.__version__}"],
                                  max_size=None) as ws:
        camera = _messages.ViewerCameraMessage(
            wxyz=tuple(map(float, wxyz)), position=tuple(map(float, position)), fov=float(fov), near=0.01,
            far=100.0, image_height=height, image_width=width, look_at=(0.0, 0.0, 0.0), up_direction=(0.0, 1.0, 0.0),
        )
        await ws.send(msgspec.msgpack.encode(camera.as_serializable_dict()))
        buttons: dict[str, str] = {}
        picture, first, resent = None, None, 0.0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (
            picture is None or time.monotonic() < resent + 3.0 or any(c not in buttons for c in clicks)
        ):
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
            except asyncio.TimeoutError:
                continue
            size, packed = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:16], "little")
            inner = zstandard.ZstdDecompressor().decompress(raw[16:16 + packed], max_output_size=size)
            for message in msgspec.msgpack.decode(inner)["messages"]:
                if message["type"] == "GuiButtonMessage":
                    buttons[message["props"]["label"]] = message["uuid"]
                if message["type"] == "BackgroundImageMessage" and message.get("rgb_data"):
                    import imageio.v3 as iio

                    assert message["format"] == "png"
                    if first is None:  # of the connected page: ask for ours again
                        first = iio.imread(io.BytesIO(bytes(message["rgb_data"])))
                        await ws.send(msgspec.msgpack.encode(camera.as_serializable_dict()))
                        resent = time.monotonic()
                    else:  # the last one after the camera was sent again is of that camera
                        picture = iio.imread(io.BytesIO(bytes(message["rgb_data"])))
        assert picture is not None, "no picture arrived"
        for label in clicks:
            click = _messages.GuiUpdateMessage(uuid=buttons[label], updates={"value": True})
            await ws.send(msgspec.msgpack.encode(click.as_serializable_dict()))
            await asyncio.sleep(0.5)
        return picture, buttons


def page_session(*args, **kwargs) -> tuple[np.ndarray, dict[str, str]]:
    return asyncio.run(_page_session(*args, **kwargs))


def start(args: list[str], marker: str = "viewer: http://") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "sjc_core", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if line.startswith(marker):
            assert "listening on 127.0.0.1:" in line and "this machine only" in line, line
            return process
        if not line and process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {process.stderr.read()}")
    process.kill()
    raise AssertionError("no URL line")


def test_sjc_view_answers_a_camera_with_sjc_renders_picture(finished_run: Path):
    from sjc_core.plugins import load_registry
    from sjc_core.runs.engine import load_run
    from sjc_core.viewer.pictures import render_page

    before = sorted(str(p.relative_to(finished_run)) for p in finished_run.rglob("*"))
    port = free_port()
    process = start(["view", str(finished_run), "--port", str(port)])
    try:
        c2w = look_at(np.array([0.3, 0.6, 1.3]))
        wxyz, position = c2w_to_viser(c2w)
        picture, _ = page_session(port, wxyz, position, np.radians(55.0), 300, 450)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert picture.shape == (128, 192, 3)  # the default resolution, at the page's aspect ratio
    run = load_run(finished_run, load_registry())
    K, height, width = page_intrinsics(np.radians(55.0), 1.5, 128)
    expected = render_page(run.parts.field, run.parts.prior, K, c2w, height, width).rgb
    assert np.array_equal(picture[..., :3], expected)  # the same render path as `sjc render`'s frames
    assert picture.std() > 1.0
    assert sorted(str(p.relative_to(finished_run)) for p in finished_run.rglob("*")) == before  # wrote nothing


def test_run_viewer_pauses_and_writes_a_checkpoint_from_the_page(tmp_path: Path):
    recipe = write_recipe(tmp_path, steps=3000)
    run_dir = tmp_path / "runs" / "tiny-seed3"
    port = free_port()
    process = start(["run", str(recipe), "--viewer", "--port", str(port), "--set", "checkpoint_every=3000"])
    try:
        wxyz, position = c2w_to_viser(look_at(np.array([0.0, 0.5, 1.4])))
        picture, buttons = page_session(port, wxyz, position, np.radians(50.0), 200, 200,
                                        clicks=("pause training", "write a checkpoint now"))
        assert picture.shape == (128, 128, 3) and {"pause training", "write a checkpoint now"} <= set(buttons)
        deadline = time.monotonic() + 60
        while not (run_dir / "checkpoints" / "last.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        from sjc_core.runs.checkpoint import read_checkpoint_step

        kept = read_checkpoint_step(run_dir / "checkpoints" / "last.safetensors")
        status = json.loads((run_dir / "status.json").read_text())
        time.sleep(1.5)  # paused: no step is taken
        assert json.loads((run_dir / "status.json").read_text())["step"] == status["step"] == kept
        assert 0 < kept < 3000
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "viewer: stopped with the run" in err


def test_page_in_headless_chromium_is_not_blank(finished_run: Path, tmp_path: Path):
    if not viewer_screenshot.CHROMIUM.exists():
        pytest.skip("needs Debian's chromium (apt-get install chromium) for a screenshot")
    import imageio.v3 as iio

    # The picture reaches the page over a websocket in real time, which Chromium's virtual
    # clock does not wait for: on a loaded machine a short budget can shoot an empty canvas,
    # so a blank shot is retried with a longer budget before the test fails.
    for budget_ms in (5000, 15000, 30000):
        png = viewer_screenshot.shoot_run(finished_run, tmp_path / f"page-{budget_ms}.png", budget_ms=budget_ms)
        shot = iio.imread(png)[..., :3].astype(np.float64)
        canvas = shot[200:700, 350:800]  # the 3D view, clear of the panel and the notices
        if canvas.std() > 5:
            break
    assert canvas.std() > 5, "the field's picture is not on the page's canvas"


def hide_viser(tmp_path: Path) -> dict[str, str]:
    shim = tmp_path / "shim" / "viser"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    return {**os.environ, "PYTHONPATH": str(shim.parent)}


def test_viewer_without_the_extra_is_one_line_before_training(tmp_path: Path):
    recipe = write_recipe(tmp_path)
    env = hide_viser(tmp_path)
    for args in (["run", str(recipe), "--viewer"], ["view", str(tmp_path)], ["fit", str(tmp_path), "--viewer"]):
        result = subprocess.run([sys.executable, "-m", "sjc_core", *args], capture_output=True, text=True, env=env, check=False,
                                timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and 'pip install "sjc[viewer]"' in lines[0], result.stderr
    assert not (tmp_path / "runs").exists()  # refused before training


def test_a_port_in_use_is_one_line(tmp_path: Path, finished_run: Path):
    recipe = write_recipe(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        for args in (["run", str(recipe), "--viewer", "--port", port], ["view", str(finished_run), "--port", port]):
            result = sjc(*args)
            assert result.returncode == 2
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: --port {port}:") and "in use" in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_tensorboard_event_files(finished_run: Path, tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished_run / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"loss/emptiness", "loss/center-depth", "loss/paas", "sigma", "lr"} <= set(tags["scalars"])
    metrics = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in events.Scalars("sigma")] == [m["step"] for m in metrics]
    assert np.allclose([e.value for e in events.Scalars("loss/paas")], [m["terms"]["paas"] for m in metrics], rtol=1e-6)
    assert [e.step for e in events.Images("view")] == [2, 4, 6]  # view_every = 2
    plain = write_recipe(tmp_path)  # off by default; log.tensorboard turns it on
    assert "[log]\ntensorboard = false" in sjc("validate", str(plain)).stdout
    assert "[log]\ntensorboard = true" in sjc("validate", str(plain), "--set", "log.tensorboard=true").stdout


def test_fit_viewer_and_tensorboard(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_fit import _demo_module

    demo = _demo_module()
    scene = tmp_path / "scene"
    demo.make_demo(scene, demo.DemoSpec(train=8, test=2, size=16, subpixel=1, step_size=0.02))
    out = tmp_path / "fit"
    port = free_port()
    process = start(["fit", str(scene), "--out", str(out), "--steps", "100000", "--grid-size", "16",
                     "--batch-rays", "256", "--eval-every", "0", "--viewer", "--port", str(port), "--tensorboard"])
    try:
        wxyz, position = c2w_to_viser(look_at(np.array([0.0, 0.5, 1.4])))
        picture, buttons = page_session(port, wxyz, position, np.radians(50.0), 100, 100)
        assert picture.shape == (128, 128, 3) and picture.std() > 0
        assert "pause training" in buttons and "write a checkpoint now" not in buttons  # a fit keeps no checkpoints
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert "viewer: stopped with the fit" in err
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"mse", "psnr", "lr"} <= set(events.Tags()["scalars"])


def test_gallery_names_each_runs_viewer_command(tmp_path: Path):
    from sjc_core.batch.gallery import render_gallery

    (tmp_path / "a b-seed0" / "checkpoints").mkdir(parents=True)
    (tmp_path / "a b-seed0" / "checkpoints" / "last.safetensors").write_bytes(b"")
    runs = [{"folder": "a b-seed0", "state": "finished"}, {"folder": "queued-seed1", "state": "queued"}]
    page = render_gallery(tmp_path, {"runs": runs})
    assert "<code>sjc view &#x27;a b-seed0&#x27;</code>" in page  # quoted for the shell, escaped for HTML
    assert page.count("sjc view") == 1  # a run without a checkpoint has nothing to show


def test_a_watched_run_trains_the_same_numbers(tmp_path: Path):
    """Renders for a connected page happen between steps and draw no random numbers: the
    run's records equal an unwatched run's, bit for bit."""
    import threading

    from sjc_core.plugins import load_registry
    from sjc_core.recipes.recipe import load_recipe
    from sjc_core.runs import engine
    from sjc_core.viewer.server import stop_server
    from sjc_core.viewer.session import open_live

    recipe = load_recipe(write_recipe(tmp_path, steps=30), load_registry(), ["view_every=10", "checkpoint_every=10"])
    log = io.StringIO()
    engine.run(recipe, tmp_path / "plain", stream=log)
    port = free_port()
    server, observer = open_live(recipe, "127.0.0.1", port, "watched", log)
    wxyz, position = c2w_to_viser(look_at(np.array([0.0, 0.5, 1.4])))
    def look() -> None:
        try:
            page_session(port, wxyz, position, np.radians(50.0), 64, 64)
        except Exception:  # noqa: BLE001 - the server closes the page when the run ends
            pass

    page = threading.Thread(target=look, daemon=True)
    page.start()
    deadline = time.monotonic() + 30
    while not server.get_clients() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert server.get_clients(), "the page did not connect"
        engine.run(recipe, tmp_path / "watched", stream=log, observer=observer)
        assert observer.page.last_render is not None  # the page was served during training
    finally:
        stop_server(server)
    records = [[json.loads(line)["terms"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
               for name in ("plain", "watched")]
    assert len(records[0]) == 30 and records[0] == records[1]


def test_training_view_shows_the_estimators_denoised_target():
    """The page's training view is scored | depth | the estimator's denoised target."""
    import numpy as np
    import torch

    from sjc_core.recipes.model import PaasConfig
    from sjc_core.training.paas import PaasEstimator
    from sjc_core.viewer.live import with_target

    class Half:
        def denoise(self, x, sigma, cond):  # D(x) = x / 2
            return x / 2

        def to_rgb(self, x):
            return ((x + 1) / 2).clamp(0, 1)

    estimator = PaasEstimator(PaasConfig(n_noise=1))
    picture = np.zeros((16, 32, 3), np.uint8)
    assert with_target(picture, Half(), estimator) is picture  # no step yet: nothing to show
    y = torch.zeros(1, 3, 8, 8)
    estimator.gradient(Half(), y, 1.0, 0.0, None, torch.Generator().manual_seed(0))
    shown = with_target(picture, Half(), estimator)
    assert shown.shape == (16, 48, 3)
    noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = np.round(((noise / 2 + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255)
    panel = shown[:, 32:].astype(float)[::2, ::2]  # the 8x8 target drawn at 16 rows
    assert np.abs(panel - expected).max() <= 1.0
