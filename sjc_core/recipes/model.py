"""The core recipe tables as pydantic models: the top level, ``[camera]``, ``[paas]`` and ``[log]``.

Apart from :mod:`sjc_core.recipes.recipe` (which loads, overrides and validates whole recipes)
so the fields a user can set sit in one short module: each field's description is the text
``sjc validate`` and the README show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, field_validator, model_validator

from sjc_core.devices import check_device_setting
from sjc_core.errors import shorten
from sjc_core.recipes.values import (
    MAX_AZIMUTH,
    MAX_FPS,
    MAX_LOSSES,
    MAX_LR,
    MAX_N_NOISE,
    MAX_NAME_BYTES,
    MAX_NAME_LENGTH,
    MAX_PATH_LENGTH,
    MAX_RADIUS,
    MAX_RENDER_SIZE,
    MAX_SEED,
    MAX_SIGMA,
    MAX_SPIRAL_ROUNDS,
    MAX_STEPS,
    MAX_TEST_FRAMES,
    STRICT_CONFIG,
    Flag,
    Float,
    Int,
    Line,
    PathText,
    _control_character,
)


def _run_name(value: str) -> str:
    bad = _control_character(value)
    if bad is not None:
        raise ValueError(f"must not contain the control character {bad!r}")
    if "/" in value or "\\" in value:
        raise ValueError("must be one folder name: no '/' or '\\' (the run folder is OUTPUT/NAME-seedSEED)")
    if value in (".", ".."):
        raise ValueError("must be a folder name, not '.' or '..'")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ValueError(f"must be at most {MAX_NAME_BYTES} bytes in UTF-8")
    return value


def check_output_folder(value: str) -> str:
    """``output`` must be able to become a folder: neither it nor a folder above it is a file."""
    path = Path(value)
    for place in (path, *path.parents):
        try:
            if place.exists() and not place.is_dir():
                raise ValueError("is a file, not a folder" if place == path else f"cannot be a folder: {shorten(str(place))} is a file")
        except OSError:  # unreadable: leave it to the run, which reports it in one line
            return value
    return value


def _ordered_pair(value: tuple[float, float], low_limit: float, high_limit: float, *, open_ends: bool = False) -> None:
    low, high = value
    inside = (low_limit < low and high < high_limit) if open_ends else (low_limit <= low and high <= high_limit)
    if not inside:
        left, right = ("(", ")") if open_ends else ("[", "]")
        raise ValueError(f"each end must lie in {left}{low_limit:g}, {high_limit:g}{right} degrees (got [{low:g}, {high:g}])")
    if low > high:
        raise ValueError(f"low end {low:g} is above high end {high:g}")


class CameraConfig(BaseModel):
    """Training-view sampler and test path; defaults are the reference's."""

    model_config = STRICT_CONFIG

    radius: Float = pydantic.Field(
        1.5, gt=0, le=MAX_RADIUS, description=f"distance of training cameras from the origin (at most {MAX_RADIUS:g})"
    )
    fov_range: tuple[Float, Float] = pydantic.Field(
        (40.0, 70.0), description="horizontal field of view drawn uniformly in this range (degrees, inside (0, 180))"
    )
    azimuth_range: tuple[Float, Float] = pydantic.Field(
        (0.0, 360.0), description=f"azimuth range (degrees, each end within [-{MAX_AZIMUTH:g}, {MAX_AZIMUTH:g}])"
    )
    polar_range: tuple[Float, Float] = pydantic.Field(
        (0.0, 100.0), description="range of the polar draw v (degrees, within [0, 180]); polar angle = arccos(1 - 2v/pi)"
    )
    overhead_below: Float = pydantic.Field(
        30.0, ge=0, le=180, description="v below this is labelled 'overhead' (degrees, 0..180)"
    )
    follow_prior: Flag = pydantic.Field(
        True, description="use the prior's own camera radius and field of view when it has posed images"
    )
    poses: Literal["sphere", "prior"] = pydantic.Field(
        "sphere",
        description="sphere: draw training cameras on the sphere (radius, azimuth and polar ranges); prior: draw "
        "among the prior's own cameras (a posed image set), each with the data's field of view",
    )
    resolution: Int | None = pydantic.Field(
        None, gt=0, le=MAX_RENDER_SIZE, description=f"render size (at most {MAX_RENDER_SIZE}); default: the prior's resolution"
    )
    test_path: Literal["spiral", "orbit"] = pydantic.Field("spiral", description="turntable path")
    test_frames: Int = pydantic.Field(
        100,
        gt=0,
        le=MAX_TEST_FRAMES,
        description=f"frames of the turntable video (at most {MAX_TEST_FRAMES}: every frame is held in memory until "
        "the video is written)",
    )
    test_fov: Float = pydantic.Field(60.0, gt=0, lt=180, description="field of view of test views (degrees)")
    spiral_rounds: Int = pydantic.Field(
        3, gt=0, le=MAX_SPIRAL_ROUNDS, description=f"rounds of the spiral test path (at most {MAX_SPIRAL_ROUNDS})"
    )
    orbit_elevation: Float = pydantic.Field(20.0, ge=-90, le=90, description="elevation of the orbit path (degrees)")
    fps: Int = pydantic.Field(20, gt=0, le=MAX_FPS, description=f"frames per second of videos (at most {MAX_FPS})")

    @field_validator("fov_range")
    @classmethod
    def _fov_inside(cls, value: tuple[float, float]) -> tuple[float, float]:
        _ordered_pair(value, 0.0, 180.0, open_ends=True)
        return value

    @field_validator("azimuth_range")
    @classmethod
    def _azimuth_inside(cls, value: tuple[float, float]) -> tuple[float, float]:
        _ordered_pair(value, -MAX_AZIMUTH, MAX_AZIMUTH)
        return value

    @field_validator("polar_range")
    @classmethod
    def _polar_inside(cls, value: tuple[float, float]) -> tuple[float, float]:
        _ordered_pair(value, 0.0, 180.0)
        return value


class PaasConfig(BaseModel):
    """Perturb-and-average scoring and the sigma schedule."""

    model_config = STRICT_CONFIG

    schedule: Literal["random", "annealed"] = pydantic.Field(
        "random",
        description="random: uniform draw from the ladder; annealed: large to small over training",
    )
    sigma_min: Float | None = pydantic.Field(
        None, gt=0, le=MAX_SIGMA, description=f"lowest sigma (at most {MAX_SIGMA:g}); default: the prior's default range"
    )
    sigma_max: Float | None = pydantic.Field(
        None, gt=0, le=MAX_SIGMA, description=f"highest sigma (at most {MAX_SIGMA:g}); default: the prior's default range"
    )
    var_red: Flag = pydantic.Field(True, description="Eq. 16 (subtract the clean render) instead of Eq. 15")
    n_noise: Int = pydantic.Field(
        1, gt=0, le=MAX_N_NOISE, description=f"noises averaged per step, batched through the prior (at most {MAX_N_NOISE})"
    )

    @model_validator(mode="after")
    def _ordered(self) -> "PaasConfig":
        if self.sigma_min is not None and self.sigma_max is not None and self.sigma_min > self.sigma_max:
            raise ValueError(f"sigma_min: {self.sigma_min} is above sigma_max {self.sigma_max}")
        return self


class LogConfig(BaseModel):
    """Extra records of a run, beside metrics.jsonl and the views (all off by default)."""

    model_config = STRICT_CONFIG

    tensorboard: Flag = pydantic.Field(
        False,
        description="also write TensorBoard event files (each loss term, sigma, lr, the views) under "
        "RUN_DIR/tensorboard/ (needs the viewer extra: pip install \"sjc[viewer]\")",
    )


class RecipeModel(BaseModel):
    """The top level of a recipe. Plugin tables are checked against their plugin's model."""

    model_config = STRICT_CONFIG

    name: Line = pydantic.Field(
        "sjc",
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        description=f"run name, one folder name (no '/', at most {MAX_NAME_LENGTH} characters); "
        "the run folder is OUTPUT/NAME-seedSEED",
    )
    seed: Int = pydantic.Field(0, ge=0, le=MAX_SEED, description="seed of every random draw (0 .. 2**63 - 1)")
    steps: Int = pydantic.Field(10000, gt=0, le=MAX_STEPS, description=f"optimisation steps (at most {MAX_STEPS:,})")
    lr: Float = pydantic.Field(0.05, gt=0, le=MAX_LR, description=f"base learning rate (Adamax; at most {MAX_LR:g})")
    lr_final_ratio: Float = pydantic.Field(
        1.0,
        gt=0,
        le=1,
        description="the learning rate decays exponentially from lr to lr * this by the last step (1: constant)",
    )
    output: PathText = pydantic.Field(
        "runs", min_length=1, max_length=MAX_PATH_LENGTH, description="folder that receives run folders (not a file)"
    )
    device: Annotated[Line, AfterValidator(check_device_setting)] = pydantic.Field(
        "auto", description="auto (cuda when available), cpu, cuda or cuda:N (CUDA_VISIBLE_DEVICES numbers them)"
    )
    view_every: Int = pydantic.Field(
        500, gt=0, le=MAX_STEPS, description="write a training view every N steps"
    )
    log_every: Int = pydantic.Field(
        10,
        gt=0,
        le=MAX_STEPS,
        description="read loss terms back from the device every N steps (progress line, metrics.jsonl: "
        "still one record per step); a NaN is caught at the next such step and no checkpoint keeps it",
    )
    checkpoint_every: Int = pydantic.Field(1000, gt=0, le=MAX_STEPS, description="write a checkpoint every N steps")
    prior: dict[str, Any] = pydantic.Field(description="[prior] table: name + options")
    field: dict[str, Any] = pydantic.Field(default_factory=lambda: {"name": "voxel"}, description="[field] table")
    losses: list[dict[str, Any]] = pydantic.Field(
        default_factory=list, max_length=MAX_LOSSES, description=f"[[losses]] tables (at most {MAX_LOSSES})"
    )
    camera: CameraConfig = pydantic.Field(default_factory=CameraConfig)
    paas: PaasConfig = pydantic.Field(default_factory=PaasConfig)
    log: LogConfig = pydantic.Field(default_factory=LogConfig)

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, value: str) -> str:
        return _run_name(value)

    @field_validator("output")
    @classmethod
    def _output_is_a_folder(cls, value: str) -> str:
        return check_output_folder(value)
