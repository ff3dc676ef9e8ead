"""Generic fixtures shared by the test files.

- ``run_sjc``: run the real CLI (``python -m sjc_core ...``) in a subprocess.
- ``make_venv``: a throw-away virtual environment that sees this environment's packages
  (torch, pydantic, the editable sjc) but installs its own on top.
- ``sample_images``: a folder of a few small PNGs (enough for the empirical prior).
- ``write_dist`` / ``toy_plugins_env``: real (if tiny) installed distributions made of a
  ``*.dist-info`` folder with ``entry_points.txt`` plus a module, on a temporary
  ``PYTHONPATH``; sjc discovers them through ``importlib.metadata`` like any plugin.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import venv
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RunResult = tuple[int, str, str]


def sjc_env(env: dict[str, str | None] | None = None) -> dict[str, str]:
    """The current environment without SJC_PLUGINS, updated by ``env`` (None removes a key)."""
    merged = {k: v for k, v in os.environ.items() if k != "SJC_PLUGINS"}
    merged["PYTHONIOENCODING"] = "utf-8"
    for key, value in (env or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def interrupt_after_logged_steps(process: subprocess.Popen, metrics: Path, steps: int = 3) -> str:
    """Send SIGINT to a running ``sjc`` once ``metrics`` has ``steps`` lines; its stderr."""
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= steps):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    return stderr


def run_sjc_command(
    *args: str,
    env: dict[str, str | None] | None = None,
    cwd: str | Path | None = None,
    python: str | Path | None = None,
    timeout: float = 300,
) -> RunResult:
    """Run ``python -m sjc_core ARGS`` and return (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [str(python or sys.executable), "-m", "sjc_core", *map(str, args)],
        capture_output=True,
        text=True,
        env=sjc_env(env),
        cwd=str(cwd) if cwd is not None else None,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def run_sjc() -> Callable[..., RunResult]:
    """``run_sjc(*args, env=None, cwd=None, python=None) -> (code, stdout, stderr)``."""
    return run_sjc_command


def _site_dirs() -> list[str]:
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]


def create_venv(folder: Path) -> Path:
    """A venv at ``folder`` whose python also sees this interpreter's site-packages.

    Its own site-packages come first, so a package installed into it wins over the one
    installed here. The outer folders are added with ``site.addsitedir`` (not
    ``--system-site-packages``), which also works when the tests themselves run in a venv,
    and processes the outer ``.pth`` files (the editable install of sjc).
    Returns the venv's python.
    """
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(folder)
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    lines = [f"import site; site.addsitedir({d!r})" for d in _site_dirs()]
    (Path(purelib) / "zz_outer_site.pth").write_text("\n".join(lines) + "\n")
    return python


def pip_install(python: Path, *args: str) -> None:
    """``pip install`` into the venv of ``python`` with this interpreter's pip (no network)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"pip install {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="session")
def make_venv(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``make_venv(name) -> python``: a fresh venv (see :func:`create_venv`)."""

    def make(name: str) -> Path:
        return create_venv(tmp_path_factory.mktemp(name) / "venv")

    return make


def write_sample_images(folder: Path, count: int = 4, size: int = 16) -> Path:
    """``count`` distinct small RGB PNGs in ``folder``."""
    import numpy as np

    from sjc_core.files.pictures import write_image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        image = rng.uniform(0, 1, size=(size, size, 3))
        write_image(folder / f"view_{index:03d}.png", (image * 255).astype(np.uint8))
    return folder


@pytest.fixture
def sample_images(tmp_path: Path) -> Path:
    """A folder of four 16x16 PNGs."""
    return write_sample_images(tmp_path / "images")


def write_dist(root: Path, dist: str, module: str, source: str, version: str = "1.0", entry: str | None = None) -> Path:
    """Make ``root`` hold distribution ``dist`` whose ``sjc`` entry point is ``module``.

    Put ``root`` on ``PYTHONPATH`` and ``importlib.metadata`` sees an installed
    distribution; no registry is patched. Returns ``root``.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[sjc]\n{entry or module} = {module}\n")
    return root


TOY_PLUGINS = """
from pydantic import BaseModel, ConfigDict, Field
from sjc_core.hookspecs import hookimpl


class ToyPrior(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field("a hamburger", description="text prompt")
    guidance_scale: float = Field(100.0, ge=1, description="classifier-free guidance scale")
    resolution: int = Field(64, gt=0, description="image size")
    view_dependent: bool = Field(True, description="add the view to the prompt")


class ToyGrid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grid_size: int = Field(32, gt=0, description="cells per side")


class ToyWeight(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(1.0, ge=0, description="loss weight")


def build(options, ctx):
    raise RuntimeError("toy plugins only exist to validate recipes")


@hookimpl
def register_priors(register):
    register(name="toy", factory=build, description="A prior with known options", options=ToyPrior)
    register(name="toy-xl", factory=build, description="A larger toy prior", options=ToyPrior)


@hookimpl
def register_fields(register):
    register(name="toy-grid", factory=build, description="A field with known options", options=ToyGrid)


@hookimpl
def register_losses(register):
    register(name="toy-sparsity", factory=build, description="A loss with a weight", options=ToyWeight)
    register(name="toy-smooth", factory=build, description="Another loss with a weight", options=ToyWeight)
"""


@pytest.fixture(scope="session")
def toy_plugins_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for ``run_sjc`` where only distribution ``sjc-toy`` 0.3 loads.

    It provides priors ``toy`` and ``toy-xl`` (prompt: str, guidance_scale: float >= 1,
    resolution: int > 0, view_dependent: bool), field ``toy-grid`` (grid_size: int > 0) and
    losses ``toy-sparsity`` and ``toy-smooth`` (weight: float >= 0). Recipe tests use it so
    they depend neither on the built-ins' options nor on importing torch (fast). Add the
    built-ins with ``{**toy_plugins_env, "SJC_PLUGINS": None}``.
    """
    root = write_dist(tmp_path_factory.mktemp("toy_dist"), "sjc-toy", "sjc_toy_plugins", TOY_PLUGINS, version="0.3")
    pythonpath = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"PYTHONPATH": pythonpath, "SJC_PLUGINS": "sjc-toy"}
