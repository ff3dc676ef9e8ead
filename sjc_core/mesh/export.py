"""``sjc export-mesh`` on a run folder: load the field, extract, clean up, colour or texture, write.

Loading builds only what the export needs. Checkpoints record the prior's channels and
value range and the camera radius (``run_info``, see :mod:`sjc_core.runs.checkpoint`), which is
all the field and the threshold probe need: geometry-only export, field colours and
field-baked textures build the field alone, never the prior (for Stable Diffusion, its
weights). Only colours from decoded views build the prior, and so does every export from
a checkpoint written before ``run_info`` existed.

Outputs: vertex-coloured PLY, OBJ or GLB (``RUN_DIR/mesh/mesh.FORMAT``); with
``texture=N``, OBJ + MTL + PNG and GLB with the texture inside
(``RUN_DIR/mesh/textured.{obj,mtl,png,glb}``, or one of them with ``fmt`` / ``out``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sjc_core.errors import SjcError
from sjc_core.mesh.extract import (
    COLOR_MODES,
    FORMATS,
    ProgressFn,
    _report,
    extract_mesh,
    native_voxel,
    to_trimesh,
    write_mesh,
)

if TYPE_CHECKING:
    from sjc_core.plugins import Registry
    from sjc_core.recipes.recipe import Recipe
    from sjc_core.runs.folder import RunFolder


@dataclass
class MeshRun:
    """What the export needs of a run: its field, and its prior only when one was built."""

    folder: RunFolder
    recipe: Recipe
    field: Any
    prior: Any | None
    step: int
    value_range: tuple[float, float] | None
    radius: float
    render_size: int | None  # known once the prior is built


def colour_mode(colors: str, value_range: tuple[float, float] | None) -> str:
    """``auto``: the field's own colours for pixel priors, decoded views for latent ones."""
    if colors not in COLOR_MODES:
        raise SjcError(f"--colors: {colors!r} is not one of {', '.join(COLOR_MODES)}")
    if colors == "auto":
        return "features" if value_range is not None else "views"
    if colors == "features" and value_range is None:
        raise SjcError("--colors features: this prior's field holds latents, not colours; use --colors views")
    return colors


def load_mesh_run(run_dir: Path, registry: Registry, colors: str) -> MeshRun:
    """The run's field with its last checkpoint; the prior only for ``views`` colours or old checkpoints."""
    from dataclasses import replace

    from sjc_core.contracts import BuildContext
    from sjc_core.devices import resolve_device
    from sjc_core.runs.checkpoint import load_field_state
    from sjc_core.runs.engine import read_run

    folder, recipe, snapshot = read_run(run_dir, registry)  # checked before anything is built
    device = resolve_device(recipe.settings.device)
    info = snapshot.run_info
    if info is not None and "radius" in info and colour_mode(colors, info["value_range"]) != "views":
        # the field exactly as the run's build_components makes it, with the prior's part from the checkpoint
        ctx = BuildContext(device=device, base_dir=recipe.base_dir, seed=recipe.settings.seed)
        ctx = replace(ctx, channels=int(info["channels"]), value_range=info["value_range"])
        field = recipe.field.info.factory(recipe.field.options, ctx).to(device)
        load_field_state(folder.checkpoint, field, snapshot.field_state)
        return MeshRun(folder, recipe, field, None, snapshot.step, info["value_range"], float(info["radius"]), None)
    from sjc_core.training.trainer import build_components, camera_plan

    parts = build_components(recipe, device)
    load_field_state(folder.checkpoint, parts.field, snapshot.field_state)
    plan = camera_plan(recipe, parts.prior)
    return MeshRun(folder, recipe, parts.field, parts.prior, snapshot.step, getattr(parts.prior, "value_range", None),
                   plan.radius, plan.render_size)


def export_run_mesh(
    run_dir: Path,
    threshold: float | None = None,
    resolution: int | None = None,
    fmt: str | None = None,
    out: Path | None = None,
    colors: str = "auto",
    views: int = 12,
    largest: bool = False,
    progress: ProgressFn | None = None,
    registry: Registry | None = None,
    texture: int | None = None,
    faces: int | None = None,
    smooth: int = 0,
) -> str:
    """Load a run's last checkpoint, extract, clean up, colour (or texture) and write its mesh.

    Returns the one-line summary the CLI prints. ``registry``: the plugin registry to build
    the run's parts with (default: the process's). ``progress``: see :mod:`sjc_core.mesh`;
    this adds the phases ``clean-up``, ``colours``, ``unwrap`` and ``texture``.
    """
    import torch

    from sjc_core.mesh.cleanup import check_cleanup_options, clean_mesh
    from sjc_core.mesh.uv_bake import check_texture_size
    from sjc_core.plugins import default_registry

    if texture is not None:
        check_texture_size(texture)
    check_cleanup_options(faces, smooth)
    targets = _targets(fmt, out, textured=texture is not None)
    _require_mesh_packages(texture=texture is not None)
    if colors not in COLOR_MODES:
        raise SjcError(f"--colors: {colors!r} is not one of {', '.join(COLOR_MODES)}")
    if texture is not None and colors == "none":
        raise SjcError("--texture: a texture needs colours; drop --colors none (or give features or views)")
    run = load_mesh_run(Path(run_dir), registry if registry is not None else default_registry(), colors)
    run.field.eval()
    mode = colour_mode(colors, run.value_range)

    result = extract_mesh(run.field, threshold=threshold, resolution=resolution, largest_only=largest,
                          probe_radius=run.radius, progress=progress)
    cleanup = None
    if faces is not None or smooth:
        result.vertices, result.faces, result.normals, cleanup = clean_mesh(
            result.vertices, result.faces, result.normals, faces, smooth, progress=progress)
    closed = to_trimesh(result).is_watertight
    voxel = native_voxel(run.field, 0.02)
    folder = run.folder.root / "mesh"
    with torch.no_grad():
        if texture is None:
            _vertex_colours(run, result, mode, views, voxel, progress)
            path, kind = targets[0]
            written = [write_mesh(result, out or folder / path, kind)]  # type: ignore[arg-type]
            what = f"colours: {mode}"
        else:
            baked = _bake(run, result, mode, views, voxel, texture, progress)
            from sjc_core.mesh.texture import write_textured

            written = []
            for path, kind in targets:
                written += write_textured(baked, out or folder / path, kind)
            unseen = f", {baked.filled_from_neighbours} seen by no view, filled from neighbours" if mode == "views" else ""
            what = (
                f"colours: {mode}, texture {texture}x{texture} ({baked.mesh.charts} charts, "
                f"{baked.covered / texture**2:.0%} of texels on the surface{unseen})"
            )
    shape = "watertight" if closed else "open"
    if texture is not None:  # what a viewer loading the files sees: seams split the vertices
        shape = (
            f"geometry {shape}; the textured files split it into {len(baked.mesh.vertices)} vertices along "
            f"UV seams, so they load as open meshes (merge vertices by position to weld them)"
        )
    return (
        f"wrote {', '.join(str(p) for p in written)}: {len(result.vertices)} vertices, "
        f"{len(result.faces)} faces, {shape}, {what}, "
        + (f"{cleanup.summary()}, " if cleanup is not None else "")
        + f"threshold {result.threshold:.4g}{' (given)' if threshold is not None else ' (auto)'} "
        f"(density range {result.density_range[0]:.3g} .. {result.density_range[1]:.3g}), "
        f"checkpoint step {run.step}"
    )


def _view_setup(run: MeshRun, views: int) -> tuple[Any, list[Any], Any, int]:
    """Decoded-view renderer, cameras, intrinsics and depth-map size for ``views`` colours."""
    from sjc_core.mesh.colors import decoded_view_renderer
    from sjc_core.mesh.extract import color_views
    from sjc_core.render.cameras import intrinsics

    assert run.prior is not None and run.render_size is not None  # load_mesh_run builds it for views
    fov = run.recipe.settings.camera.test_fov
    render = decoded_view_renderer(run.field, run.prior, run.render_size, fov)
    return render, color_views(run.radius, views), intrinsics(fov, run.render_size, run.render_size), run.render_size


def _vertex_colours(run: MeshRun, result: Any, mode: str, views: int, voxel: float,
                    progress: ProgressFn | None) -> None:
    from sjc_core.mesh.colors import feature_colors, view_colors

    if mode == "features":
        assert run.value_range is not None
        _report(progress, "colours", 0, 1)
        result.colors = feature_colors(run.field, result.vertices, result.normals, run.value_range, inset=voxel / 2)
        _report(progress, "colours", 1, 1)
    elif mode == "views":
        render, poses, K, size = _view_setup(run, views)
        result.colors = view_colors(result.vertices, result.normals, render, poses, K, size,
                                    tolerance=4 * voxel, progress=progress)


def _bake(run: MeshRun, result: Any, mode: str, views: int, voxel: float, size: int,
          progress: ProgressFn | None) -> Any:
    from sjc_core.mesh.texture import bake_from_field, bake_from_views
    from sjc_core.mesh.uv_bake import unwrap

    uv_mesh = unwrap(result.vertices, result.faces, result.normals, size, progress=progress)
    if mode == "features":
        assert run.value_range is not None
        return bake_from_field(run.field, uv_mesh, run.value_range, inset=voxel / 2, progress=progress)
    render, poses, K, render_size = _view_setup(run, views)
    return bake_from_views(uv_mesh, render, poses, K, render_size, tolerance=4 * voxel, progress=progress)


def _targets(fmt: str | None, out: Path | None, textured: bool) -> list[tuple[str, str]]:
    """(file name under RUN_DIR/mesh, format) pairs to write (``out`` replaces the path when given)."""
    if not textured:
        kind = _resolve_format(fmt, out)
        return [(f"mesh.{kind}", kind)]
    if fmt is None and out is None:
        return [("textured.obj", "obj"), ("textured.glb", "glb")]
    if fmt is None and out is not None and out.suffix.lower().lstrip(".") not in ("obj", "glb"):
        raise SjcError(f"--out: {out.name}: a textured mesh is written as .obj or .glb")
    kind = _resolve_format(fmt, out)
    if kind not in ("obj", "glb"):
        raise SjcError(f"--format: {kind} carries no texture; use --format obj or glb with --texture")
    return [(f"textured.{kind}", kind)]


def _resolve_format(fmt: str | None, out: Path | None) -> str:
    if fmt is None:
        suffix = out.suffix.lower().lstrip(".") if out is not None else ""
        fmt = suffix if suffix in FORMATS else "ply"
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise SjcError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if out is not None and out.suffix.lower().lstrip(".") not in ("", fmt):
        raise SjcError(f"--out: {out.name} does not end in .{fmt} (the --format)")
    return fmt


def _require_mesh_packages(texture: bool = False) -> None:
    needed = [("scikit-image", "skimage"), ("trimesh", "trimesh")] + ([("xatlas", "xatlas")] if texture else [])
    missing = [name for name, module in needed if importlib.util.find_spec(module) is None]
    if missing:
        raise SjcError(f"export-mesh needs {' and '.join(missing)}: pip install 'sjc[mesh]'")
