"""A screenshot of ``sjc view RUN_DIR``'s page in headless Chromium (the README's docs/viewer.png).

Starts ``sjc view`` on a free local port, waits for its URL line, lets Chromium load the page
(WebGL in software), writes the screenshot and stops the server. The viewer test uses it too.

    python scripts/viewer_screenshot.py runs/demo-seed0 docs/viewer.png
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_view(run_dir: Path, port: int, timeout: float = 120.0) -> subprocess.Popen:
    """``sjc view`` in the background, returned once it prints its URL (or failed)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sjc_core", "view", str(run_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + timeout
    assert process.stderr is not None
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            raise RuntimeError(f"sjc view exited with {process.returncode}")
        if line.startswith("viewer: http://"):
            return process
    process.kill()
    raise RuntimeError("sjc view printed no URL")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _chromium_once(command: list[str], timeout: float) -> bool:
    """Run Chromium once; False when it hung past ``timeout`` (its whole process group is killed).

    Headless Chromium on a loaded machine now and then never lets its virtual-time budget
    run out; killing only the parent would leave its renderer and GPU processes behind.
    """
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "LANG": "C"}, start_new_session=True)
    try:
        process.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return False


def screenshot(url: str, png: Path, size: tuple[int, int] = (1200, 800), budget_ms: int = 15000,
               attempts: int = 3, timeout: float = 90.0) -> Path:
    """Chromium's screenshot of ``url`` after ``budget_ms`` of virtual time (a hung start is retried)."""
    png.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        with tempfile.TemporaryDirectory() as profile:
            command = [
                str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={size[0]},{size[1]}",
                f"--virtual-time-budget={budget_ms}", url,
            ]
            if _chromium_once(command, timeout) and png.is_file():
                return png
    raise RuntimeError(f"chromium wrote no screenshot of {url} in {attempts} tries of {timeout:g} s")


def shoot_run(run_dir: Path, png: Path, budget_ms: int = 15000) -> Path:
    port = free_port()
    process = start_view(run_dir, port)
    try:
        time.sleep(1.0)
        return screenshot(f"http://127.0.0.1:{port}", png, budget_ms=budget_ms)
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("png", type=Path, nargs="?", default=Path("docs/viewer.png"))
    args = parser.parse_args()
    print(f"wrote {shoot_run(args.run_dir, args.png)}")


if __name__ == "__main__":
    main()
