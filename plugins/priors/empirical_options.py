"""The empirical prior's options and registration, without torch (see
:mod:`sjc_plugins.priors.empirical` for the prior itself)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sjc_core.errors import SjcError
from sjc_core.fit.datasets import check_dataset_memory
from sjc_core.fit.transforms import IMAGE_EXTENSIONS, read_transforms, resolve_image_path, transforms_path
from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.values import MAX_PATH_LENGTH, Flag, Float, Int, PathText, SetText

if TYPE_CHECKING:
    from sjc_core.contracts import BuildContext
    from sjc_plugins.priors.empirical import EmpiricalPrior

ViewConditioning = Literal["none", "label", "kernel"]


class EmpiricalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    images: PathText = Field(
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="folder of png/jpg images, or of a posed set (transforms_train.json / transforms.json)",
    )
    resolution: Int = Field(64, gt=0, le=1024, description="images are resized to resolution x resolution (at most 1024)")
    sigma_min: Float = Field(
        0.01, ge=1e-6, le=1e6, description="smallest sigma of the noise ladder (geometric; 1e-6..1e6)"
    )
    sigma_max: Float = Field(80.0, ge=1e-6, le=1e6, description="largest sigma of the noise ladder (geometric; 1e-6..1e6)")
    count: Int = Field(1000, ge=2, le=10_000, description="number of sigmas in the noise ladder (2..10000)")
    view_conditioning: ViewConditioning = Field(
        "none",
        description="none: every image; label: images with the training view's label; "
        "kernel: images whose camera is within kernel_width_deg (needs cameras)",
    )
    kernel_width_deg: Float = Field(
        20.0, gt=0, le=180, description="kernel conditioning: angular radius of the hard cut (degrees)"
    )
    kernel_min_images: Int = Field(
        3,
        gt=0,
        le=100_000,
        description="kernel conditioning: nearest images used when none lies within the width (at most 100000)",
    )
    overhead_below: Float = Field(
        30.0,
        ge=0,
        le=180,
        description="label conditioning: polar draw below this is 'overhead' (match camera.overhead_below; 0..180)",
    )
    background: tuple[Float, Float, Float] = Field(
        (1.0, 1.0, 1.0), description="RGB in [0, 1] that transparent pixels are composited on"
    )
    z_up: Flag = Field(False, description="posed sets: the data's world is z-up (Blender); turn it to y-up")
    scale: float | Literal["auto"] = Field(
        1.0,
        description="posed sets: factor on camera positions (0 < scale <= 1e6), or 'auto' (mean camera distance -> 1.5)",
    )
    center: Flag = Field(False, description="posed sets: move the point the cameras look at to the origin")
    chunk_size: Int = Field(
        512, gt=0, le=65_536, description="images per chunk of the streamed softmax (memory vs speed; at most 65536)"
    )
    precision: Literal["float32", "float64"] = Field(
        "float32", description="arithmetic of the distance and softmax computation"
    )

    @field_validator("scale", mode="before")
    @classmethod
    def _scale_or_auto(cls, value: Any) -> Any:
        """One error line for any bad value (a plain union would report one per member)."""
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        number = value
        if isinstance(value, SetText):  # typed after --set; a quoted "2" in a file stays a string
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ValueError("expected a positive number or 'auto'")
        if not (math.isfinite(number) and 0 < number <= 1e6):
            raise ValueError("must be a finite number in (0, 1e6] or 'auto'")
        return float(number)

    @model_validator(mode="after")
    def _check(self) -> "EmpiricalOptions":
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min: {self.sigma_min} must be below sigma_max {self.sigma_max}")
        if any(not 0.0 <= c <= 1.0 for c in self.background):
            raise ValueError("background: each channel must lie in [0, 1]")
        return self

    def preflight(self, ctx: BuildContext) -> None:
        """What building the prior checks first: the folder exists and holds images or a
        transforms file whose pictures fit in memory, and camera conditioning has cameras
        (only the transforms file and the first picture's header are read)."""
        folder = Path(self.images).expanduser()
        if not folder.is_absolute():
            folder = Path(ctx.base_dir) / folder
        if not folder.exists():
            raise SjcError(f"prior.images: {folder}: no such folder")
        if not folder.is_dir():
            raise SjcError(f"prior.images: {folder}: not a folder")
        transforms = transforms_path(folder, "train")
        if transforms is not None:  # the cameras file parses and names images that exist (none is read)
            try:
                frames = read_transforms(transforms)["frames"]
                check_dataset_memory(folder, transforms, [file_path for file_path, _ in frames])  # one header read
            except SjcError as exc:
                raise SjcError(*(f"prior.images: {problem}" for problem in exc.problems)) from None
            for index, (file_path, _) in enumerate(frames):
                if resolve_image_path(folder, file_path) is None:
                    raise SjcError(
                        f"prior.images: {folder / file_path}: image not found (frames[{index}].file_path in "
                        f"{transforms.name})"
                    )
            return
        if not any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir()):
            raise SjcError(
                f"prior.images: {folder}: no images (png/jpg) and no transforms_train.json / transforms.json in it"
            )
        if self.view_conditioning != "none":
            raise SjcError(
                f"prior.view_conditioning: '{self.view_conditioning}' needs cameras, but {folder} has no "
                "transforms_train.json / transforms.json (use 'none')"
            )


@hookimpl
def register_priors(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="empirical",
        factory=build_empirical,
        description="Exact optimal denoiser of an image folder (no weights; optional camera conditioning)",
        options=EmpiricalOptions,
    )


def build_empirical(options: EmpiricalOptions, ctx: BuildContext) -> EmpiricalPrior:
    """The registered factory: imports the prior (and torch) on first use."""
    from sjc_plugins.priors.empirical import build_empirical as build

    return build(options, ctx)
