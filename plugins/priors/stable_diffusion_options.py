"""The stable-diffusion prior's options and registration, without torch or diffusers
(see :mod:`sjc_plugins.priors.stable_diffusion` for the prior itself)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.values import MAX_PATH_LENGTH, Flag, Float, PathText, Text
from sjc_plugins.priors.hub import HubOptions
from sjc_plugins.priors.lora_options import LoraOptions

if TYPE_CHECKING:
    from sjc_core.contracts import BuildContext
    from sjc_plugins.priors.stable_diffusion import StableDiffusionPrior

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


MAX_PROMPT = 2000  # characters; CLIP reads the first 77 tokens of it


MAX_SLICE = 1024  # heads per attention slice


SLICING_CHOICES = (
    "false, true or 'auto' (half the heads of each attention layer at a time), "
    "'max' (one head at a time) or a number of heads per slice (1..1024)"
)


AttentionSlicing = bool | Literal["auto", "max"] | int


class StableDiffusionOptions(LoraOptions, HubOptions):
    weight_probes: ClassVar[tuple[str, ...]] = ("unet/config.json",)
    single_file_suffixes: ClassVar[tuple[str, ...]] = (".safetensors", ".ckpt")

    model: PathText = Field(
        DEFAULT_MODEL,
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="hub id, local diffusers Stable Diffusion folder, or a single-file SD 1.x/2.x checkpoint "
        "(.safetensors, or .ckpt read with weights_only), loaded offline",
    )
    model_kind: Literal["auto", "v1", "v2"] = Field(
        "auto", description="single files: SD v1 or v2; auto: from the text encoder's keys or the context width"
    )
    prediction: Literal["auto", "epsilon", "v_prediction"] = Field(
        "auto",
        description="what the UNet predicts; auto: the scheduler's (folders) or for single files v1 epsilon, "
        "v2 v_prediction at 768 px (epsilon at 512 px for the 2-base release, global_step 875000)",
    )
    prompt: Text = Field(
        ..., min_length=1, max_length=MAX_PROMPT, description=f"text prompt of the object (at most {MAX_PROMPT} characters)"
    )
    negative_prompt: Text = Field(
        "", max_length=MAX_PROMPT, description="prompt of the unconditional branch of guidance"
    )
    inverse_prompt: Text = Field(
        "",
        max_length=MAX_PROMPT,
        description="prompt ism inverts with, unguided (LucidDreamer's inverse_text; its default is empty too): "
        "the DDIM inversion and D(x_s); the negative prompt stays in the guidance at t",
    )
    guidance_scale: Float = Field(
        100.0,
        ge=1.0,
        le=1000.0,
        description="classifier-free guidance scale s, in guidance_convention's form (sjc: 1 = no guidance; at most 1000)",
    )
    guidance_convention: Literal["sjc", "threestudio"] = Field(
        "sjc",
        description="how s mixes the branches: sjc = uncond + s (cond - uncond) (the SJC reference, stable-dreamfusion, "
        "LucidDreamer, diffusers); threestudio = cond + s (cond - uncond), which is sjc's at s + 1: "
        "a threestudio guidance_scale s is sjc's s + 1",
    )
    view_prompts: Flag = Field(True, description="prefix the prompt with the camera's view ('front view of ...')")
    perp_neg: Flag = Field(
        False,
        description="Perp-Neg view guidance against multi-face objects: the positive prompt mixes the nearest view "
        "prompts by azimuth, the other views' prompts guide away perpendicularly (stable-dreamfusion's weights); "
        "2-4 UNet branches per image instead of 2; needs view_prompts",
    )
    perp_neg_weight: Float = Field(
        -2.0, ge=-100.0, le=0.0, description="Perp-Neg's negative weight (stable-dreamfusion: -2; -100..0)"
    )
    perp_neg_front_decay: Float = Field(
        2.0, ge=0.0, le=100.0, description="how fast the front negative fades towards the front (stable-dreamfusion: 2)"
    )
    perp_neg_side_decay: Float = Field(
        10.0, ge=0.0, le=100.0, description="how fast the side negative fades towards the side (stable-dreamfusion: 10)"
    )
    attention_slicing: AttentionSlicing = Field(
        False,
        description=(
            "sliced attention instead of SDPA, for GPUs without efficient SDPA kernels "
            f"(slower; bounds attention memory): {SLICING_CHOICES}"
        ),
    )
    vae_tiling: Flag = Field(
        False,
        description="decode pictures tile by tile (vae.enable_tiling): bounded memory for pictures larger than a tile",
    )
    cpu_offload: Flag = Field(
        False, description="for small GPUs: only the UNet on the GPU; the text encoder and the VAE run on the CPU"
    )
    compile: Flag = Field(False, description="torch.compile the UNet: a warm-up of minutes, then faster steps")

    def preflight(self, ctx: BuildContext) -> list[str]:
        """The hub checks, and every LoRA file exists (one line naming the first that does not)."""
        notes = super().preflight(ctx)
        self.check_loras(ctx)
        return notes

    @classmethod
    def describe_model(cls, path: Path) -> dict[str, Any] | None:
        """``sjc prior-info``: what a Stable Diffusion file or folder is, or None when it is not one."""
        from sjc_plugins.priors.sd_inspect import describe_model

        return describe_model(path)

    @model_validator(mode="after")
    def _perp_neg_needs_view_prompts(self) -> "StableDiffusionOptions":
        if self.perp_neg and not self.view_prompts:
            raise ValueError("perp_neg needs view_prompts = true (it mixes the front, side and back view prompts)")
        return self

    @field_validator("attention_slicing", mode="before")
    @classmethod
    def _slicing_choice(cls, value: Any) -> Any:
        """One error line for any bad value (a plain union would report one per member)."""
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("true", "false"):  # as typed on the command line (--set)
                return text == "true"
            if text in ("auto", "max"):
                return text
            if text.isdigit():
                value = int(text)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or (isinstance(value, int) and 1 <= value <= MAX_SLICE):
            return value
        raise ValueError(f"expected {SLICING_CHOICES}")


@hookimpl
def register_priors(register) -> None:  # type: ignore[no-untyped-def]
    register(
        name="stable-diffusion",
        factory=build_stable_diffusion,
        description="Stable Diffusion (hub id, diffusers folder or single-file checkpoint; LoRA) "
        "as a text-conditioned latent prior",
        options=StableDiffusionOptions,
    )


def build_stable_diffusion(options: StableDiffusionOptions, ctx: BuildContext) -> StableDiffusionPrior:
    """The registered factory: imports the prior (torch, diffusers) on first use."""
    from sjc_plugins.priors.stable_diffusion import build_stable_diffusion as build

    return build(options, ctx)
