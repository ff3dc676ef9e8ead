"""The mvdream prior for ``benchmarks/gpu_step.py --prior mvdream``: random weights, no download.

Full size is MVDream's published UNet (sd-v2-base.yaml's ``unet_config``: SD 2.1-base with the
multi-view self-attention and the 16 -> 1280 camera MLP; 32x32 latents), a one-layer CLIP text
encoder of SD 2's width (1024) and the tests' tiny VAE (neither runs in the step: the prompt is
encoded once at build). ``tiny`` is the tests' tiny MVDream UNet (8x8 latents), for smoke runs.
A step renders ``views`` (4) cameras and makes one UNet call of 4 views x 2 guidance branches.
"""

from __future__ import annotations

from typing import Any

import torch

MVDREAM_UNET = dict(  # bytedance/MVDream mvdream/configs/sd-v2-base.yaml, unet_config.params
    image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_head_channels=64, transformer_depth=1, context_dim=1024,
    use_linear_in_transformer=True, camera_dim=16,
)
TINY_MVDREAM_UNET = dict(
    image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1], num_res_blocks=1,
    channel_mult=[1, 2], num_head_channels=8, transformer_depth=1, context_dim=32, camera_dim=16,
)
SCHEDULER = dict(  # MVDream's: SD 2.1-base's scaled-linear betas, eps prediction
    num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
)


def make_mvdream_prior(prompt: str, tiny: bool, device: torch.device, tokenizer: Any, seed: int = 0) -> tuple[Any, int, int]:
    """(the mvdream plugin's prior around random-weight modules, UNet parameter count, text width)."""
    from diffusers import DDIMScheduler
    from sjc_plugins.priors._diffusion_common import VpLadder, resolve_dtype
    from sjc_plugins.priors.mvdream import MVDreamPrior
    from sjc_plugins.priors.mvdream_options import MVDreamOptions
    from sjc_plugins.priors.mvdream_unet import (
        build_multiview_unet,
        unet_config_from_ldm,
    )
    from tiny_models import tiny_vae  # benchmarks/gpu_step.py puts tests/ on the path
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    params = TINY_MVDREAM_UNET if tiny else MVDREAM_UNET
    with torch.device(device):
        unet = build_multiview_unet(unet_config_from_ldm(params))
    count = sum(p.numel() for p in unet.parameters())
    unet.to(dtype=resolve_dtype("auto", device)).eval().requires_grad_(False)
    width = int(params["context_dim"])
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=1,
        num_attention_heads=max(1, width // 64) if width >= 64 else 4, max_position_embeddings=77,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )).to(device)
    options = MVDreamOptions(model="random-weights", prompt=prompt, guidance_scale=50.0)
    ladder = VpLadder.from_scheduler(DDIMScheduler(**SCHEDULER), "random-weights")
    prior = MVDreamPrior(unet, tiny_vae(int(params["image_size"])), text_encoder, tokenizer, ladder, options, device)
    ladder.on(device)
    return prior, count, width
