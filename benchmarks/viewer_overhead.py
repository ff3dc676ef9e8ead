"""Training speed of the demo recipe with and without a connected, idle viewer page (issue 25).

Both runs happen in one process, one after the other and then again in the other order
(plain, viewer, viewer, plain by default), with ``torch.set_num_threads`` fixed, so that the
two conditions share the machine's state. The viewer run is ``sjc run --viewer``'s path (a
viser server on a free local port, the live observer in the loop) with one websocket client
that connects like a browser, reports one camera and then only listens: an idle page. Each
run trains ``--steps`` steps into a temporary folder (the turntable at the end is not timed:
``wall_seconds`` of the run summary covers the training loop only).

Prints one JSON object: steps/s of each run, their medians per condition, and the ratio
viewer / plain (the issue's target: at least 0.90).

    python benchmarks/viewer_overhead.py                     # demo recipe, 300 steps a run
    python benchmarks/viewer_overhead.py --steps 20 --repeats 1   # smoke test (~30 s)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def idle_client(port: int, stop: threading.Event) -> threading.Thread:
    """A page that connects, reports one camera looking at the origin, and then only listens."""

    async def session() -> None:
        import msgspec
        import viser
        import websockets
        from viser import _messages

        from sjc_core.render.cameras import look_at
        from sjc_core.viewer.camera import c2w_to_viser

        wxyz, position = c2w_to_viser(look_at(np.array([0.0, 0.5, 1.4])))
        async with websockets.connect(f"ws://127.0.0.1:{port}", subprotocols=[f"viser-v{viser.__version__}"],
                                      max_size=None) as ws:
            camera = _messages.ViewerCameraMessage(
                wxyz=tuple(map(float, wxyz)), position=tuple(map(float, position)), fov=float(np.radians(55)),
                near=0.01, far=100.0, image_height=600, image_width=800, look_at=(0.0, 0.0, 0.0),
                up_direction=(0.0, 1.0, 0.0),
            )
            await ws.send(msgspec.msgpack.encode(camera.as_serializable_dict()))
            while not stop.is_set():
                try:
                    await asyncio.wait_for(ws.recv(), timeout=0.2)
                except asyncio.TimeoutError:
                    continue

    thread = threading.Thread(target=lambda: asyncio.run(session()), daemon=True)
    thread.start()
    return thread


def one_run(recipe_path: Path, steps: int, out: Path, viewer: bool) -> float:
    """Steps per second of one run of the recipe (training loop only)."""
    from sjc_core.plugins import load_registry
    from sjc_core.recipes.recipe import load_recipe
    from sjc_core.runs import engine

    recipe = load_recipe(recipe_path, load_registry(), [f"steps={steps}", f"output={out.as_posix()}"])
    run_dir = out / ("viewer" if viewer else "plain")
    log = io.StringIO()
    if not viewer:
        with redirect_stderr(log):
            summary = engine.run(recipe, run_dir, stream=log)
        return summary.step / summary.wall_seconds
    from sjc_core.viewer.server import stop_server
    from sjc_core.viewer.session import open_live

    port = free_port()
    server, observer = open_live(recipe, "127.0.0.1", port, "benchmark", log)
    stop = threading.Event()
    client = idle_client(port, stop)
    deadline = time.monotonic() + 30
    while not server.get_clients() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.get_clients():
        raise RuntimeError("the idle page did not connect")
    try:
        with redirect_stderr(log):
            summary = engine.run(recipe, run_dir, stream=log, observer=observer)
    finally:
        stop.set()
        client.join(timeout=5)
        stop_server(server)
    return summary.step / summary.wall_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "demo.toml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs (the order alternates)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs: dict[str, list[float]] = {"plain": [], "viewer": []}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.repeats):
            order = (False, True) if index % 2 == 0 else (True, False)
            for viewer in order:
                out = Path(tmp) / f"pair{index}"
                speed = one_run(args.recipe, args.steps, out, viewer)
                runs["viewer" if viewer else "plain"].append(round(speed, 3))
                print(f"{'viewer' if viewer else 'plain '} {speed:.2f} steps/s", file=sys.stderr)
    plain, viewer = statistics.median(runs["plain"]), statistics.median(runs["viewer"])
    print(json.dumps({
        "recipe": str(args.recipe), "steps": args.steps, "threads": args.threads, "torch": torch.__version__,
        "steps_per_s": runs, "median_plain": plain, "median_viewer_idle": viewer,
        "ratio_viewer_to_plain": round(viewer / plain, 4),
    }))


if __name__ == "__main__":
    main()
