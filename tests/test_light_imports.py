"""Listing, help and validation never import torch (issue 14: `sjc --help` took 7-9 s).

Each built-in plugin's entry point is its options-and-registration module; the factory
imports the implementation (and torch) only when a run builds the plugin.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
{body}
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "scipy") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


def heavy_modules_after(body: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(body=body)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    line = [l for l in result.stdout.splitlines() if l.startswith("HEAVY:")][-1]
    return [name for name in line[len("HEAVY:"):].split(",") if name]


@pytest.mark.parametrize(
    "what, body",
    [
        ("registry", "from sjc_core.plugins import load_registry; r = load_registry(); assert len(r.entries) >= 9, r.warnings"),
        ("help", "from sjc_core.cli import build_app; import typer; typer.main.get_command(build_app())"),
        (
            "validate",
            "from pathlib import Path\n"
            "from sjc_core.plugins import load_registry\n"
            "from sjc_core.recipes.preflight import check_ready\n"
            "from sjc_core.recipes.recipe import load_recipe\n"
            "for name in ('demo', 'rose', 'chair', 'ffhq'):\n"
            "    check_ready(load_recipe(Path('recipes') / f'{name}.toml', load_registry()))",
        ),
    ],
)
def test_listing_help_and_validation_import_no_torch(what, body):
    assert heavy_modules_after(body) == [], what


def test_building_a_plugin_imports_its_implementation():
    """The lazy factory really builds the thing (and only then imports torch)."""
    body = (
        "from sjc_core.plugins import load_registry\n"
        "from sjc_core.contracts import BuildContext\n"
        "info = load_registry().get('fields', 'voxel')\n"
        "field = info.factory(info.options(grid_size=8), BuildContext(channels=3))\n"
        "assert type(field).__name__ == 'VoxelField' and field.grid_size == (8, 8, 8)"
    )
    assert heavy_modules_after(body) == ["torch"]
