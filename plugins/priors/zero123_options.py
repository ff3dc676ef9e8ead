"""The zero123 prior's options and registration, without torch or diffusers
(see :mod:`sjc_plugins.priors.zero123` for the prior itself)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.values import MAX_PATH_LENGTH, MAX_RADIUS, Flag, Float, PathText
from sjc_plugins.priors.hub import HubOptions
from sjc_plugins.priors.lora_options import LoraOptions
from sjc_plugins.reference_picture import (
    DEFAULT_AZIMUTH,
    DEFAULT_DISTANCE,
    DEFAULT_ELEVATION,
    DEFAULT_FOV,
    Picture,
    ReferenceCamera,
    read_picture,
    resolve_picture_path,
)

if TYPE_CHECKING:
    from sjc_core.contracts import BuildContext
    from sjc_plugins.priors.zero123 import Zero123Prior

DEFAULT_MODEL = "ashawkey/zero123-xl-diffusers"

PoseEncoding = Literal["auto", "zero123", "stable-zero123"]


class Zero123Options(LoraOptions, HubOptions):
    weight_probes: ClassVar[tuple[str, ...]] = ("unet/config.json",)

    model: PathText = Field(
        DEFAULT_MODEL,
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="hub id or local diffusers Zero123 folder (unet, vae, image_encoder, scheduler, cc_projection)",
    )
    image: PathText = Field(
        ...,
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="the input picture (png/jpg, RGBA preferred; relative to the recipe's folder)",
    )
    elevation_deg: Float = Field(
        DEFAULT_ELEVATION, gt=-90, lt=90, description="elevation of the picture's camera above the horizon (degrees)"
    )
    azimuth_deg: Float = Field(
        DEFAULT_AZIMUTH, ge=-720, le=720, description="azimuth of the picture's camera (degrees, the [camera] convention: 0 = front)"
    )
    distance: Float = Field(
        DEFAULT_DISTANCE,
        gt=0,
        le=MAX_RADIUS,
        description="distance of the picture's camera from the origin; training cameras use it (camera.follow_prior)",
    )
    fov_deg: Float = Field(
        DEFAULT_FOV, gt=0, lt=180, description="field of view of the picture (degrees); training cameras use it"
    )
    guidance_scale: Float = Field(
        3.0, ge=1.0, le=1000.0, description="classifier-free guidance scale (1 = no guidance; at most 1000)"
    )
    pose_encoding: PoseEncoding = Field(
        "auto",
        description="zero123: [d polar, sin d azimuth, cos d azimuth, d distance]; stable-zero123: the last entry is the "
        "picture's polar angle; auto: stable-zero123 when the model's name contains 'stable'",
    )
    cpu_offload: Flag = Field(
        False, description="for small GPUs: only the UNet on the GPU; the image encoder and the VAE run on the CPU"
    )

    def reference_camera(self) -> ReferenceCamera:
        return ReferenceCamera(self.elevation_deg, self.azimuth_deg, self.distance, self.fov_deg)

    def picture(self, base_dir: Path | str) -> Picture:
        """The input picture, read and checked (one line if it is missing, unreadable or empty)."""
        return read_picture(resolve_picture_path(self.image, base_dir), "prior.image")

    def resolved_pose_encoding(self) -> str:
        """``auto`` follows DreamGaussian: a model whose name says 'stable' is Stable Zero123."""
        if self.pose_encoding != "auto":
            return self.pose_encoding
        name = Path(self.model.rstrip("/\\")).name.lower()
        return "stable-zero123" if "stable" in name else "zero123"

    def preflight(self, ctx: BuildContext) -> list[str]:
        """The picture is there, readable and shows something; then the weights (a note when
        only this machine's hub cache lacks them), and every LoRA file exists."""
        self.picture(ctx.base_dir)
        self.check_loras(ctx)
        return super().preflight(ctx)


@hookimpl
def register_priors(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="zero123",
        factory=build_zero123,
        description="Zero123 / Stable Zero123 (diffusers format): a latent prior conditioned on one picture and the relative camera",
        options=Zero123Options,
    )


def build_zero123(options: Zero123Options, ctx: BuildContext) -> Zero123Prior:
    """The registered factory: imports the prior (torch, diffusers) on first use."""
    from sjc_plugins.priors.zero123 import build_zero123 as build

    return build(options, ctx)
