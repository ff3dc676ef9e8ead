"""The wheel: what it contains, and that the built-in plugins load from it when installed.

The wheel is built from a copy of the project's sources (so no ``build/`` folder lands in
the repository) and installed into a throw-away venv whose own copy must win over the
editable install the tests run with.
"""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, pip_install, run_sjc_command, sjc_env

BUILTIN_ENTRY_POINTS = {"empirical", "voxel", "emptiness", "center_depth"}
BUILTIN_PLUGINS = {("priors", "empirical"), ("fields", "voxel"), ("losses", "emptiness"), ("losses", "center-depth")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("wheel_src") / "sjc"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for folder in ("sjc_core", "plugins"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel_dist")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("sjc-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_venv(wheel: Path, make_venv) -> Path:
    python = make_venv("wheel_venv")
    pip_install(python, str(wheel))
    return python


def wheel_entry_points(wheel: Path) -> configparser.ConfigParser:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser(delimiters=("=",))
        parser.optionxform = str  # keep names as written
        parser.read_string(archive.read(name).decode())
    return parser


def test_wheel_layout(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/top_level.txt"))
    tops = {name.split("/")[0] for name in names}
    assert {"sjc_core", "sjc_plugins"} <= tops
    # No bare `plugins` package (nor tests, examples...) in site-packages.
    assert not {"plugins", "tests", "examples", "recipes", "benchmarks"} & tops
    assert sorted(top_level.split()) == ["sjc_core", "sjc_plugins"]
    for package in ("sjc_core", "sjc_core/commands", "sjc_plugins", *(f"sjc_plugins/{k}" for k in ("priors", "fields", "losses"))):
        assert f"{package}/__init__.py" in names
    assert "sjc_core/__main__.py" in names and "sjc_core/py.typed" in names
    # Every module and every C kernel source of the source tree made it into the wheel.
    for folder, package in (("sjc_core", "sjc_core"), ("plugins", "sjc_plugins")):
        for pattern in ("*.py", "*.c"):
            for module in (REPO / folder).rglob(pattern):
                assert f"{package}/{module.relative_to(REPO / folder).as_posix()}" in names, module
    assert {"sjc_core/native/csrc/adamax.c", "sjc_plugins/fields/csrc/voxel_render.c"} <= set(names)


def test_wheel_entry_points(wheel: Path) -> None:
    entry_points = wheel_entry_points(wheel)
    assert dict(entry_points["console_scripts"]) == {"sjc": "sjc_core.cli:main"}
    group = dict(entry_points["sjc"])
    assert BUILTIN_ENTRY_POINTS <= set(group)
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["sjc"]
    assert group == declared
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for target in group.values():
        module = target.split(":")[0]
        assert module.startswith("sjc_plugins.")
        assert f"{module.replace('.', '/')}.py" in names, f"entry point {target} has no module in the wheel"


def test_installed_wheel_wins_over_the_editable_install(wheel_venv: Path, tmp_path: Path) -> None:
    code = (
        "import json, sjc_core, sjc_plugins\n"
        "from importlib.metadata import distribution\n"
        "dist = distribution('sjc')\n"
        "print(json.dumps([sjc_core.__file__, sjc_plugins.__file__, str(dist.locate_file(''))]))\n"
    )
    proc = subprocess.run([str(wheel_venv), "-c", code], capture_output=True, text=True, cwd=tmp_path, env=sjc_env())
    assert proc.returncode == 0, proc.stderr
    venv_root = wheel_venv.parent.parent
    for path in json.loads(proc.stdout):
        assert Path(path).is_relative_to(venv_root), path
    proc = subprocess.run([str(wheel_venv), "-c", "import plugins"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0  # nothing installed a top-level `plugins`


def test_builtins_load_from_the_installed_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    code, out, err = run_sjc_command("list-plugins", "--json", python=wheel_venv, cwd=tmp_path)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["warnings"] == []
    rows = {(row["kind"], row["name"]): row for row in payload["plugins"]}
    assert BUILTIN_PLUGINS <= set(rows)
    for key in BUILTIN_PLUGINS:
        assert rows[key]["distribution"] == "sjc" and rows[key]["module"].startswith("sjc_plugins.")
    # The modules really were imported from the venv's copy.
    probe = (
        "import json, sys\n"
        "from sjc_core.plugins import load_registry\n"
        "registry = load_registry()\n"
        "print(json.dumps({m: sys.modules[m].__file__ for m in sorted({i.module for i in registry.entries.values()})}))\n"
    )
    proc = subprocess.run([str(wheel_venv), "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=sjc_env())
    assert proc.returncode == 0, proc.stderr
    files = json.loads(proc.stdout)
    assert files and all(Path(f).is_relative_to(wheel_venv.parent.parent) for f in files.values()), files


def test_native_kernels_build_from_the_installed_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    """The C sources are read from the venv's package data, and build (given a compiler)."""
    from sjc_core.native import build as native

    probe = (
        "import json\n"
        "from sjc_core.training import optim\n"
        "from sjc_plugins.fields import _voxel_native\n"
        "voxel, reason = _voxel_native.kernel_or_reason()\n"
        "print(json.dumps({'files': [optim.__file__, _voxel_native.__file__],\n"
        "                  'sources': [optim.SOURCE, _voxel_native.SOURCE],\n"
        "                  'adamax': optim.fused_library() is not None, 'voxel': voxel is not None, 'why': reason}))\n"
    )
    env = sjc_env({"SJC_CACHE_DIR": str(tmp_path / "cache"), "SJC_NATIVE": None})
    proc = subprocess.run([str(wheel_venv), "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert all(Path(f).is_relative_to(wheel_venv.parent.parent) for f in payload["files"]), payload["files"]
    # The very text of the repository's .c files: same source, same cache key, same library.
    assert payload["sources"] == [
        (REPO / "sjc_core/native/csrc/adamax.c").read_text(encoding="utf-8"),
        (REPO / "plugins/fields/csrc/voxel_render.c").read_text(encoding="utf-8"),
    ]
    if native.compiler() is None or sys.platform == "win32":
        pytest.skip("no C compiler: the sources are shipped but cannot be built here")
    assert payload["adamax"] and payload["voxel"], payload["why"]
    assert len(list((tmp_path / "cache" / "kernels").glob("*.so"))) == 2


def test_console_script_of_the_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    script = wheel_venv.parent / "sjc"
    assert script.is_file()
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, env=sjc_env())
    assert proc.returncode == 0, proc.stderr
    assert "list-plugins" in proc.stdout and "validate" in proc.stdout
