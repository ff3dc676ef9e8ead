"""The text encoders of single-file Stable Diffusion checkpoints, as transformers ``CLIPTextModel``s.

SD 1.x holds OpenAI's CLIP ViT-L/14 text model in transformers' own layout
(``cond_stage_model.transformer.*``, activation quick_gelu); SD 2.x holds OpenCLIP's ViT-H/14 text
tower (``cond_stage_model.model.*``: fused q/k/v ``in_proj``, ``resblocks``, activation gelu) and
conditions on its penultimate layer followed by the final layer norm, which is a
``CLIPTextModel`` one layer shorter. Widths, depth and vocabulary come from the tensors; heads
from the shipped rule (64 channels each). diffusers' converters rename the keys.
"""

from __future__ import annotations

from typing import Any

from sjc_core.errors import SjcError
from sjc_plugins.priors.ldm_checkpoint import (
    CLIP_PREFIX,
    OPEN_CLIP_PREFIX,
    LdmFile,
    LdmKind,
    Shapes,
    block_indices,
    ldm_defaults,
    load_strict,
    strip_prefix,
)


def text_config(shapes: Shapes, kind: LdmKind) -> Any:
    """A ``CLIPTextConfig`` sized from the text tower's tensors (SD 2.x: up to its penultimate layer)."""
    from transformers import CLIPTextConfig

    rules = ldm_defaults()[kind.version]
    if kind.text_encoder == "open_clip":
        tower = strip_prefix(shapes, OPEN_CLIP_PREFIX)
        vocab, width = tower["token_embedding.weight"]
        positions = tower["positional_embedding"][0]
        layers = len(block_indices(tower, r"transformer\.resblocks\.(\d+)\."))
        inner = tower["transformer.resblocks.0.mlp.c_fc.weight"][0]
    else:
        tower = strip_prefix(shapes, CLIP_PREFIX)
        tower = {k.removeprefix("text_model."): s for k, s in tower.items()}
        vocab, width = tower["embeddings.token_embedding.weight"]
        positions = tower["embeddings.position_embedding.weight"][0]
        layers = len(block_indices(tower, r"encoder\.layers\.(\d+)\."))
        inner = tower["encoder.layers.0.mlp.fc1.weight"][0]
    if rules["text_layer"] == "penultimate":
        layers -= 1
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=inner,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // rules["text_head_channels"]),
        max_position_embeddings=positions,
        hidden_act=rules["text_hidden_act"],
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=1,
    )


def build_text_encoder(checkpoint: LdmFile, kind: LdmKind) -> Any:
    """A ``CLIPTextModel`` with the file's text weights (OpenCLIP's tower converted, its last layer
    left out: SD 2.x conditions on the penultimate layer, then the final layer norm)."""
    from diffusers.loaders import single_file_utils as convert
    from transformers import CLIPTextModel

    if kind.text_encoder == "none":
        raise SjcError(f"prior.model: '{checkpoint.path}' holds no text encoder (cond_stage_model.*)")
    config = text_config(checkpoint.shapes, kind)
    model = CLIPTextModel(config)
    if kind.text_encoder == "open_clip":
        dropped = f"{OPEN_CLIP_PREFIX}transformer.resblocks.{config.num_hidden_layers}."
        kept = {k: v for k, v in checkpoint.tensors.items() if not k.startswith(dropped)}
        state = convert.convert_open_clip_checkpoint(model, kept)
    else:
        state = convert.convert_ldm_clip_checkpoint(checkpoint.tensors)
        state = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}
    ignored = ("text_projection.weight", "text_model.embeddings.position_ids", "logit_scale")
    state = {k: v for k, v in state.items() if k not in ignored}
    if not any(key.startswith("text_model.") for key in model.state_dict()):  # transformers 5's names
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    load_strict(model, state, "text encoder", checkpoint.path)
    return model
