"""The ``prior.lora`` option shared by the priors whose network is a Stable Diffusion UNet
(stable-diffusion, zero123), without torch: a mixin of pydantic options and the path rule.

The adapters themselves load in :mod:`sjc_plugins.priors.lora` (peft, the ``lora`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sjc_core.errors import SjcError
from sjc_core.recipes.values import MAX_PATH_LENGTH, Float, PathText

if TYPE_CHECKING:
    from sjc_core.contracts import BuildContext

MAX_LORAS = 16


class LoraEntry(BaseModel):
    """One LoRA adapter: a kohya or diffusers/peft ``.safetensors`` file and its strength."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    path: PathText = Field(..., min_length=1, max_length=MAX_PATH_LENGTH, description="LoRA file (.safetensors)")
    scale: Float = Field(1.0, ge=-10.0, le=10.0, description="strength: W + scale * (alpha/rank) * B @ A")


class LoraOptions(BaseModel):
    """Mixin: ``lora = ["file.safetensors", ...]`` or ``[{path = ..., scale = ...}, ...]``."""

    lora: list[LoraEntry] = Field(
        default_factory=list,
        max_length=MAX_LORAS,
        description='LoRA adapters merged into the UNet (and the text encoder, where it has one): ["file.safetensors", ...] or '
        '[{path = "file.safetensors", scale = 0.8}, ...] (kohya lora_unet_/lora_te_ or diffusers/peft keys; '
        "needs peft: pip install -e \".[lora]\")",
    )

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_paths(cls, value: Any) -> Any:
        """A bare path is an adapter at scale 1."""
        if isinstance(value, (list, tuple)):
            return [{"path": item} if isinstance(item, str) else item for item in value]
        return value

    def check_loras(self, ctx: BuildContext) -> None:
        """Every LoRA file exists (one line naming the first that does not)."""
        for index, entry in enumerate(self.lora):
            lora_path(entry.path, ctx, f"prior.lora.{index}.path")


def lora_path(text: str, ctx: BuildContext, field: str) -> Path:
    """A LoRA file, relative to the recipe's folder or the working directory; one line when missing."""
    path = Path(text).expanduser()
    candidates = [path] if path.is_absolute() else list(dict.fromkeys([Path(ctx.base_dir) / path, path]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    looked = " or ".join(f"'{c}'" for c in candidates)
    raise SjcError(f"{field}: LoRA file {looked} does not exist")
