"""The pixel priors' options and registration (ffhq, lsun-bedroom, pixel-diffusion),
without torch or diffusers (see :mod:`sjc_plugins.priors.pixel` for the priors).

``model`` is a diffusers folder or hub id, or a guided-diffusion (ADM) checkpoint file such
as the authors' ``release.tar`` ``lsun_ffhq.pt`` / ``lsun_bedroom.pt`` (a name ending in one of
:data:`CHECKPOINT_SUFFIXES`; see :mod:`sjc_plugins.priors.adm_prior`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from sjc_core.errors import SjcError
from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.values import MAX_PATH_LENGTH, Int, PathText
from sjc_plugins.priors.hub import HubOptions

if TYPE_CHECKING:
    from sjc_core.contracts import BuildContext
    from sjc_plugins.priors.adm_prior import AdmPrior
    from sjc_plugins.priors.pixel import PixelPrior

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")

FFHQ_MODEL = "google/ncsnpp-ffhq-256"


BEDROOM_MODEL = "google/ddpm-ema-bedroom-256"


DataRange = Literal["auto", "[-1,1]", "[0,1]"]


def adm_checkpoint(model: str, base_dir: Path) -> Path | None:
    """The ADM checkpoint file ``model`` names (absolute, or relative to the recipe's folder or
    the working directory), or None when it names a diffusers folder or hub id."""
    text = model.strip()
    if not text.lower().endswith(CHECKPOINT_SUFFIXES):
        return None
    path = Path(text).expanduser()
    candidates = [path] if path.is_absolute() else [Path(base_dir) / path, path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
        if candidate.is_dir():
            return None  # a diffusers folder that happens to end in .pt
    looked = " or ".join(f"'{c}'" for c in candidates)
    raise SjcError(f"prior.model: checkpoint file {looked} does not exist")


class PixelOptions(HubOptions):
    model: PathText = Field(
        ...,
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="hub id or local folder of a diffusers UNet2DModel + scheduler, or a guided-diffusion "
        "(ADM) checkpoint file (.pt/.pth/.ckpt/.safetensors)",
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
    num_head_channels: Int = Field(
        64,
        ge=-1,
        le=4096,
        description="ADM checkpoint files only: channels per attention head (the authors' release: 64); "
        "-1 uses num_heads",
    )
    num_heads: Int = Field(
        4, ge=1, le=256, description="ADM checkpoint files only: heads per attention block when num_head_channels = -1"
    )

    def preflight(self, ctx: BuildContext) -> list[str]:
        """An ADM checkpoint file must exist (it needs no diffusers); anything else is a diffusers model."""
        if adm_checkpoint(self.model, ctx.base_dir) is not None:
            return []
        return super().preflight(ctx)


class FfhqOptions(PixelOptions):
    model: PathText = Field(
        FFHQ_MODEL,
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="hub id or local folder of an NCSN++ FFHQ model, or the authors' guided-diffusion "
        "checkpoint (release.tar: guided_ddpm/models/lsun_ffhq.pt)",
    )


class LsunBedroomOptions(PixelOptions):
    model: PathText = Field(
        BEDROOM_MODEL,
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="hub id or local folder of a DDPM LSUN bedroom model, or the authors' guided-diffusion "
        "checkpoint (release.tar: guided_ddpm/models/lsun_bedroom.pt)",
    )


@hookimpl
def register_priors(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="ffhq",
        factory=build_pixel_prior,
        description="FFHQ 256 faces as an unconditional pixel prior: NCSN++ (diffusers), or the authors' "
        "guided-diffusion file",
        options=FfhqOptions,
    )
    register(
        name="lsun-bedroom",
        factory=build_pixel_prior,
        description="LSUN bedroom 256 as an unconditional pixel prior: DDPM (diffusers), or the authors' "
        "guided-diffusion file",
        options=LsunBedroomOptions,
    )
    register(
        name="pixel-diffusion",
        factory=build_pixel_prior,
        description="any diffusers UNet2DModel with a DDPM-family or ScoreSdeVe scheduler, or an unconditional "
        "guided-diffusion checkpoint, as a pixel prior",
        options=PixelOptions,
    )


def build_pixel_prior(options: PixelOptions, ctx: BuildContext) -> PixelPrior | AdmPrior:
    """The registered factory: imports the prior (torch, diffusers) on first use."""
    from sjc_plugins.priors.pixel import build_pixel_prior as build

    return build(options, ctx)
