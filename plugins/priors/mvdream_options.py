"""The mvdream prior's options and registration, without torch or diffusers
(see :mod:`sjc_plugins.priors.mvdream` for the prior itself)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field
from sjc_plugins.priors.hub import HubOptions, resolve_source

from sjc_core.errors import SjcError
from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.values import MAX_PATH_LENGTH, Float, Int, PathText, Text

if TYPE_CHECKING:
    from sjc_plugins.priors.mvdream import MVDreamPrior

    from sjc_core.contracts import BuildContext

DEFAULT_MODEL = "ashawkey/mvdream-sd2.1-diffusers"
DEFAULT_TOKENIZER = "stabilityai/stable-diffusion-2-1-base"
MAX_PROMPT = 2000  # characters; CLIP reads the first 77 tokens of it
MAX_VIEWS = 8


class MVDreamOptions(HubOptions):
    weight_probes: ClassVar[tuple[str, ...]] = ("unet/config.json",)

    model: PathText = Field(
        DEFAULT_MODEL,
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="hub id or local folder of the diffusers-layout MVDream weights (ashawkey/mvdream-sd2.1-diffusers); "
        "with checkpoint set, only its tokenizer/ is read (default then: " + DEFAULT_TOKENIZER + ")",
    )
    checkpoint: PathText | None = Field(
        None,
        max_length=MAX_PATH_LENGTH,
        description="local path of MVDream's original single checkpoint (sd-v2.1-base-4view.pt, .ckpt or .safetensors): "
        "UNet, camera embedding, VAE and OpenCLIP text encoder from it, read with weights_only",
    )
    prompt: Text = Field(..., min_length=1, max_length=MAX_PROMPT, description="text prompt of the object")
    prompt_suffix: Text = Field(
        ", 3d asset", max_length=200, description="appended to the prompt (MVDream's own sampling script: ', 3d asset')"
    )
    negative_prompt: Text = Field("", max_length=MAX_PROMPT, description="prompt of the unconditional branch")
    guidance_scale: Float = Field(
        50.0, ge=1.0, le=1000.0, description="CFG scale s in uncond + s (cond - uncond) (threestudio's MVDream SDS: 50)"
    )
    views: Int = Field(
        4, ge=1, le=MAX_VIEWS, description="views scored together per step, at azimuths 360/views apart (MVDream: 4)"
    )

    def preflight(self, ctx: BuildContext) -> list[str]:
        """As every hub prior's; with ``checkpoint``, that the file exists and that the tokenizer's
        source (``model``, default SD 2.1 base) is a folder or cached (a note when only the cache lacks it)."""
        if not self.checkpoint:
            return super().preflight(ctx)
        given = Path(self.checkpoint).expanduser()
        if not any(c.is_file() for c in ([given] if given.is_absolute() else [Path(ctx.base_dir) / given, given])):
            raise SjcError(f"prior.checkpoint: file '{self.checkpoint}' does not exist")
        source = self.model_copy(update={"model": tokenizer_source(self), "checkpoint": None})
        try:
            resolve_source(source, ctx, TOKENIZER_PROBES)
        except SjcError as missing:
            resolve_source(source.model_copy(update={"allow_download": True}), ctx, TOKENIZER_PROBES)
            return missing.problems
        return []


TOKENIZER_PROBES = ("tokenizer/vocab.json", "tokenizer/tokenizer_config.json")


def tokenizer_source(options: MVDreamOptions) -> str:
    """Where a single checkpoint's tokenizer comes from: ``model``, or SD 2.1 base's when it is left at the default."""
    return DEFAULT_TOKENIZER if options.model == DEFAULT_MODEL else options.model


@hookimpl
def register_priors(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="mvdream",
        factory=build_mvdream,
        description="MVDream multi-view diffusion (SD 2.1 UNet, views attend to each other, camera-conditioned)",
        options=MVDreamOptions,
    )


def build_mvdream(options: MVDreamOptions, ctx: BuildContext) -> MVDreamPrior:
    """The registered factory: imports the prior (torch, diffusers) on first use."""
    from sjc_plugins.priors.mvdream import build_mvdream as build

    return build(options, ctx)
