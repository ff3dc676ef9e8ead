"""Tiny diffusers models, built with random weights and saved in the real on-disk layouts.

The priors load them through the same ``from_pretrained`` calls as the real hub models, so
the tests exercise the real loading code without any download. Every builder is
deterministic (seeded) and fast (a few hundred kB of weights each).

- :func:`build_sd_folder`: a Stable Diffusion pipeline folder (``model_index.json``,
  ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``). The tokenizer is the
  real CLIP BPE vocabulary shipped with ``open_clip_torch`` (found without importing it).
- :func:`build_ddpm_folder`: a ``UNet2DModel`` + ``DDPMScheduler`` pipeline (eps prediction).
- :func:`build_score_sde_folder`: an NCSN++-style ``UNet2DModel`` (Fourier sigma embedding,
  skip blocks) + ``ScoreSdeVeScheduler``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import torch

# Tiny sizes shared by the tests and the benchmark.
SD_LATENT_SIZE = 16
SD_TEXT_HIDDEN = 32
PIXEL_SIZE = 32


def clip_bpe_path() -> Path:
    """``bpe_simple_vocab_16e6.txt.gz`` from the installed ``open_clip`` package (not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip_torch is not installed (pip install --no-deps open_clip_torch)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    raise RuntimeError("open_clip_torch is installed without bpe_simple_vocab_16e6.txt.gz")


def _byte_alphabet() -> list[str]:
    """GPT-2's reversible byte -> printable character map, in its own order (printable bytes first)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = list(keep)
    extra = 0
    for byte in range(256):
        if byte not in keep:
            keep.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The 49408-token CLIP vocabulary and its 48894 merges, in OpenAI's order.

    Order: 256 byte symbols, the same with ``</w>``, one token per merge, then the start
    and end tokens (ids 49406 and 49407), which is the layout of every SD tokenizer.
    """
    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = _byte_alphabet()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def make_clip_tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def _nonzero_output(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Randomise zero-initialised output convolutions so outputs depend on the inputs."""
    for name, param in module.named_parameters():
        if "conv_out" in name and bool((param == 0).all()):
            param.data = torch.randn(param.shape, generator=generator) * 0.05


# The tiny SD UNet's configuration (also what benchmarks/gpu_step.py --tiny builds).
TINY_SD_UNET = dict(
    sample_size=SD_LATENT_SIZE,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=SD_TEXT_HIDDEN,
    attention_head_dim=8,
    norm_num_groups=16,
)


def tiny_vae(latent_size: int):
    """A two-block SD-style VAE (4 latent channels, SD's scaling factor), random weights."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=latent_size * 2,
        scaling_factor=0.18215,
    )


def build_sd_folder(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """A tiny Stable Diffusion folder; ``prediction_type`` 'epsilon' (PNDM, as SD 1.5) or 'v_prediction' (DDIM, as SD 2.x 768)."""
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_SD_UNET)
    vae = tiny_vae(SD_LATENT_SIZE)
    vocab, _ = clip_vocab_and_merges()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=SD_TEXT_HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=1,
        )
    )
    for module in (unet, vae, text_encoder):
        _nonzero_output(module, generator)
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    if prediction_type == "epsilon":
        scheduler = PNDMScheduler(**common, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    else:
        scheduler = DDIMScheduler(
            **common, prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False, steps_offset=1
        )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=make_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    _write_tokenizer_like_the_hub(folder / "tokenizer")
    return folder


def _write_tokenizer_like_the_hub(folder: Path) -> None:
    """SD repositories ship vocab.json + merges.txt (no tokenizer.json): mirror that layout."""
    vocab, merges = clip_vocab_and_merges()
    (folder / "tokenizer.json").unlink(missing_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [" ".join(pair) for pair in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_ddpm_folder(folder: Path, seed: int = 0, size: int = PIXEL_SIZE) -> Path:
    """A tiny DDPM pixel model (eps prediction, linear betas 1e-4..0.02 as google/ddpm-*-256)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
    )
    _nonzero_output(unet, torch.Generator().manual_seed(seed))
    scheduler = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def build_score_sde_folder(folder: Path, seed: int = 0, size: int = PIXEL_SIZE) -> Path:
    """A tiny NCSN++-style VE score model (the layout of google/ncsnpp-ffhq-256, shrunk)."""
    from diffusers import ScoreSdeVeScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        time_embedding_type="fourier",
        down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
        up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"),
        mid_block_scale_factor=2**0.5,
        norm_eps=1e-6,
        norm_num_groups=None,
        resnet_time_scale_shift="default",
    )
    _nonzero_output(unet, torch.Generator().manual_seed(seed))
    scheduler = ScoreSdeVeScheduler(num_train_timesteps=2000, sigma_min=0.01, sigma_max=348.0, snr=0.15)
    # The hub repository's layout: unet/ and scheduler/ plus model_index.json.
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "ScoreSdeVePipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "ScoreSdeVeScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


# -- Zero123 (issue 16) ----------------------------------------------------------------------
ZERO123_LATENT_SIZE = 16  # the UNet's sample size; pictures are 32x32 (the tiny VAE halves)
ZERO123_EMBED = 32  # CLIP image embedding width = the UNet's cross-attention width
ZERO123_CLIP_SIZE = 32  # the tiny image encoder's input size


def build_zero123_folder(folder: Path, projection_folder: str = "cc_projection", seed: int = 0) -> Path:
    """A tiny Zero123 folder in the diffusers layout, random weights.

    ``projection_folder`` picks the layout of the camera projection: ``cc_projection``
    (diffusers' community Zero1to3 pipeline, parameters ``projection.*``, config
    ``in_channel``/``out_channel``) or ``clip_camera_projection`` (the ashawkey conversions
    DreamGaussian loads, parameters ``proj.*``, config ``embedding_dim``/``additional_embeddings``).
    The UNet takes 8 channels (noisy latent + the picture's latent), the image encoder is a
    ``CLIPVisionModelWithProjection``, the scheduler the real models' DDIM configuration.
    """
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel(**{**TINY_SD_UNET, "in_channels": 8, "cross_attention_dim": ZERO123_EMBED})
    vae = tiny_vae(ZERO123_LATENT_SIZE)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=ZERO123_CLIP_SIZE,
            patch_size=8,
            projection_dim=ZERO123_EMBED,
        )
    )
    for module in (unet, vae, image_encoder):
        _nonzero_output(module, generator)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    image_encoder.save_pretrained(folder / "image_encoder")
    scheduler.save_pretrained(folder / "scheduler")
    extractor = folder / "feature_extractor"
    extractor.mkdir(exist_ok=True)
    (extractor / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": ZERO123_CLIP_SIZE, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": ZERO123_CLIP_SIZE,
    }, indent=2))
    in_features = ZERO123_EMBED + 4
    weight = torch.randn(ZERO123_EMBED, in_features, generator=generator) / in_features**0.5
    bias = torch.randn(ZERO123_EMBED, generator=generator) * 0.1
    projection = folder / projection_folder
    projection.mkdir(exist_ok=True)
    if projection_folder == "cc_projection":
        config = {"_class_name": "CCProjection", "in_channel": in_features, "out_channel": ZERO123_EMBED}
        state, index_entry, pipeline = {"projection.weight": weight, "projection.bias": bias}, ["pipeline_zero1to3", "CCProjection"], "Zero1to3StableDiffusionPipeline"
    else:
        config = {"_class_name": "CLIPCameraProjection", "embedding_dim": ZERO123_EMBED, "additional_embeddings": 4}
        state, index_entry, pipeline = {"proj.weight": weight, "proj.bias": bias}, ["zero123", "CLIPCameraProjection"], "Zero123Pipeline"
    (projection / "config.json").write_text(json.dumps({**config, "_diffusers_version": "0.21.4"}, indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, str(projection / "diffusion_pytorch_model.safetensors"))
    index = {
        "_class_name": pipeline,
        "_diffusers_version": "0.21.4",
        projection_folder: index_entry,
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
