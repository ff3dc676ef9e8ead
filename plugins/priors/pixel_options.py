"""The pixel priors' options and registration (ffhq, lsun-bedroom, pixel-diffusion),
without torch or diffusers (see :mod:`sjc_plugins.priors.pixel` for the priors)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.values import MAX_PATH_LENGTH, Int, PathText
from sjc_plugins.priors.hub import HubOptions

if TYPE_CHECKING:
    from sjc_core.contracts import BuildContext
    from sjc_plugins.priors.pixel import PixelPrior

FFHQ_MODEL = "google/ncsnpp-ffhq-256"


BEDROOM_MODEL = "google/ddpm-ema-bedroom-256"


DataRange = Literal["auto", "[-1,1]", "[0,1]"]


class PixelOptions(HubOptions):
    model: PathText = Field(
        ...,
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="hub id or local folder of a diffusers UNet2DModel + scheduler",
    )
    render_resolution: Int = Field(
        64,
        gt=0,
        le=4096,
        description="size the engine renders at before resizing to the model's size (capped at it; at most 4096)",
    )
    data_range: DataRange = Field(
        "auto", description="pixel range the network was trained on; auto: [0,1] for VE score models, else [-1,1]"
    )


class FfhqOptions(PixelOptions):
    model: PathText = Field(
        FFHQ_MODEL, min_length=1, max_length=MAX_PATH_LENGTH, description="hub id or local folder of an NCSN++ FFHQ model"
    )


class LsunBedroomOptions(PixelOptions):
    model: PathText = Field(
        BEDROOM_MODEL,
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="hub id or local folder of a DDPM LSUN bedroom model",
    )


@hookimpl
def register_priors(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="ffhq",
        factory=build_pixel_prior,
        description="NCSN++ FFHQ 256 faces (VE score model, diffusers) as an unconditional pixel prior",
        options=FfhqOptions,
    )
    register(
        name="lsun-bedroom",
        factory=build_pixel_prior,
        description="DDPM LSUN bedroom 256 (diffusers) as an unconditional pixel prior",
        options=LsunBedroomOptions,
    )
    register(
        name="pixel-diffusion",
        factory=build_pixel_prior,
        description="any diffusers UNet2DModel with a DDPM-family or ScoreSdeVe scheduler as a pixel prior",
        options=PixelOptions,
    )


def build_pixel_prior(options: PixelOptions, ctx: BuildContext) -> PixelPrior:
    """The registered factory: imports the prior (torch, diffusers) on first use."""
    from sjc_plugins.priors.pixel import build_pixel_prior as build

    return build(options, ctx)
