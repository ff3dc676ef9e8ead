"""The Zero123 prior: a latent denoiser conditioned on one picture and the relative camera.

Zero123 (Zero-1-to-3) and Stable Zero123 are Stable Diffusion UNets fine-tuned to draw an
object from a new camera, given one picture of it. In the diffusers layout a model folder
(or hub id) holds ``unet`` (8 input channels: the 4 noisy latent channels, then the 4
channels of the input picture's VAE latent), ``vae``, ``image_encoder`` (CLIP vision with
projection), ``feature_extractor`` (only its normalisation is read), ``scheduler`` and the
camera projection: ``cc_projection`` (diffusers' community pipeline) or
``clip_camera_projection`` (the ashawkey/DreamGaussian conversions), one linear layer from
[CLIP image embedding, 4 pose features] to the UNet's cross-attention width.

Conditioning, as the published models expect it (threestudio's and DreamGaussian's
guidance, diffusers' Zero1to3 pipeline):

- the picture (composited on white), resized to the UNet's picture size (256 for the real
  models), gives its CLIP ``image_embeds`` (bicubic resize to the encoder's input size and
  CLIP normalisation, as zero123's own image embedder) and the *mode* of its VAE posterior,
  unscaled (the UNet's extra channels never saw the scaling factor);
- each view's pose relative to the picture's camera (:func:`relative_pose`): Zero123
  ``[polar - polar_in, sin(az - az_in), cos(az - az_in), radius - radius_in]`` with the
  polar angle from the up axis in radians; Stable Zero123 replaces the last entry with the
  input camera's own polar angle (radians);
- ``cc_projection([image_embeds, pose])`` is the single cross-attention token;
- classifier-free guidance's unconditional branch is a zero token and a zero latent (the
  published samplers zero the projected embedding, not the CLIP one).

The picture's embedding and latent are computed once at build (after which the image
encoder leaves the accelerator); each distinct pose's projected token is cached. Denoising
is the Stable Diffusion prior's VP->VE conversion with sigma snapped on the device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sjc_core.contracts import BuildContext, CameraHint, View
from sjc_core.errors import SjcError
from sjc_plugins.priors._diffusion_common import (
    VpLadder,
    batch_sigma,
    load_pretrained,
    load_scheduler,
    resolve_dtype,
    resolve_for_loading,
    square_size,
)
from sjc_plugins.priors._sd_placement import (
    HOST,
    Placement,
    decode_latents,
    indexed_device,
    place,
    place_unet,
    plan_placement,
    return_cached_memory,
)
from sjc_plugins.priors._zero123_loading import (  # noqa: F401 (re-exported)
    CLIP_MEAN,
    CLIP_STD,
    PROJECTION_FOLDERS,
    load_clip_normalisation,
    load_projection,
)
from sjc_plugins.priors.zero123_options import DEFAULT_MODEL, Zero123Options  # noqa: F401 (re-exported: the options live there)
from sjc_plugins.reference_picture import Picture, ReferenceCamera, polar_azimuth_radius

POSE_FEATURES = 4
CACHE_LIMIT = 4096  # projected pose tokens kept (a test path repeats its poses)


def relative_pose(eye: Sequence[float], reference: ReferenceCamera, encoding: str) -> tuple[float, float, float, float]:
    """The 4 pose features of a camera at ``eye`` relative to the picture's camera.

    The azimuth enters through its sine and cosine, so any multiple of 360 degrees between
    the two cameras (the wrap-around) gives the same features.
    """
    polar, azimuth, radius = polar_azimuth_radius(eye)
    ref_polar, ref_azimuth, ref_radius = reference.polar_azimuth_radius()
    d_azimuth = azimuth - ref_azimuth
    last = ref_polar if encoding == "stable-zero123" else radius - ref_radius
    return (polar - ref_polar, math.sin(d_azimuth), math.cos(d_azimuth), last)


def view_eye(view: View | None) -> tuple[float, float, float] | None:
    """The camera position of a view (host data: the trainer builds poses on the CPU)."""
    if view is None or view.c2w is None:
        return None
    pose = np.asarray(view.c2w, dtype=np.float64).reshape(4, 4)
    return float(pose[0, 3]), float(pose[1, 3]), float(pose[2, 3])


@dataclass(frozen=True)
class ImageCondition:
    """What the UNet receives besides the noisy latent, for one relative pose.

    ``embedding`` [1, 1, D]: the projected [CLIP embedding, pose] token; ``latent``
    [1, 4, h, w]: the picture's VAE latent (both on the UNet's device, in its dtype).
    ``guided``: classifier-free guidance runs (the zero branch is added in ``denoise``).
    """

    pose: tuple[float, float, float, float]
    embedding: torch.Tensor
    latent: torch.Tensor
    guided: bool


class Zero123Prior:
    """D(x; sigma) over Zero123 latents [B, 4, h, w] given the input picture and a camera.

    Build it with :func:`assemble_zero123` (or the registry), which places the parts and
    encodes the picture; ``reference`` and ``picture`` are what the ``reference-view`` loss
    reads, ``camera_hint`` makes training cameras use the picture's distance and FoV.
    """

    value_range = None

    def __init__(
        self,
        unet: Any,
        vae: Any,
        image_encoder: Any,
        projection: torch.nn.Linear,
        ladder: VpLadder,
        options: Zero123Options,
        picture: Picture,
        placement: Placement | None = None,
        clip_normalisation: tuple[Sequence[float], Sequence[float]] = (CLIP_MEAN, CLIP_STD),
    ) -> None:
        self.unet, self.vae, self.image_encoder, self.projection = unet, vae, image_encoder, projection
        self.ladder, self.options, self.picture = ladder, options, picture
        if placement is None:  # as given: every part stays where it is
            here, home = torch.device(unet.device), torch.device(vae.device)
            encoder = torch.device(image_encoder.device)
            placement = Placement(here, unet.dtype, torch.contiguous_format, encoder, image_encoder.dtype, encoder, home, home)
        self.placement = placement
        self.clip_normalisation = clip_normalisation
        self.channels = int(unet.config.out_channels)
        self.resolution = square_size(unet.config.sample_size, "UNet")
        self.sigmas = ladder.sigmas.to(torch.float32)
        self.prediction_type = ladder.prediction_type
        self.guidance_scale = float(options.guidance_scale)
        self.pose_encoding = options.resolved_pose_encoding()
        self.reference = options.reference_camera()
        self.camera_hint = CameraHint(radius=self.reference.distance, fov_deg=self.reference.fov_deg)
        self.picture_size = self.resolution * 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_embedding: torch.Tensor | None = None  # [1, 1, P] float32 on the UNet's device
        self.image_latent: torch.Tensor | None = None  # [1, 4, h, w] in the UNet's dtype
        # The latent of the picture's plain background (white behind an RGBA picture): fields
        # start their background there (field.background_from_prior).
        self.plain_background: tuple[float, ...] | None = None
        self._cache: dict[tuple[float, ...], ImageCondition] = {}

    @property
    def device(self) -> torch.device:
        return self.placement.device

    # ------------------------------------------------------------------ the picture, once
    def picture_tensor(self) -> torch.Tensor:
        """The picture [1, 3, S, S] in [0, 1] at the UNet's picture size (antialiased resize)."""
        rgb = torch.from_numpy(np.ascontiguousarray(self.picture.rgb)).permute(2, 0, 1)[None].float()
        return resize(rgb, self.picture_size)

    @torch.no_grad()
    def encode_picture(self) -> None:
        """The picture's CLIP embedding and VAE latent (once), then the image encoder rests on the CPU."""
        picture = self.picture_tensor()
        where = self.placement.text_device
        self.image_encoder.to(where)
        pixels = clip_pixels(picture, int(self.image_encoder.config.image_size), *self.clip_normalisation)
        embeds = self.image_encoder(pixels.to(device=where, dtype=self.image_encoder.dtype)).image_embeds
        self.image_embedding = embeds.float().to(self.device).reshape(1, 1, -1)
        with visiting(self.vae, where, self.placement.vae_home):
            latent = self.vae.encode((2 * picture - 1).to(where)).latent_dist.mode()
        self.image_latent = latent.to(device=self.device, dtype=self.placement.dtype)
        backdrop = torch.tensor(self.picture.background, dtype=torch.float32).view(1, 3, 1, 1).expand_as(picture)
        self.plain_background = tuple(float(v) for v in self.encode_rgb(backdrop).mean(dim=(0, 2, 3)))
        if where != HOST:
            self.image_encoder.to(HOST)
            return_cached_memory(where)
        self._cache.clear()

    # ------------------------------------------------------------------ conditioning
    def pose_features(self, view: View | None) -> tuple[float, float, float, float]:
        """The view's pose relative to the picture's camera (no view: the picture's own camera)."""
        eye = view_eye(view)
        return relative_pose(self.reference.eye() if eye is None else eye, self.reference, self.pose_encoding)

    def condition(self, view: View | None) -> ImageCondition:
        pose = self.pose_features(view)
        key = tuple(round(value, 12) for value in pose)
        cached = self._cache.get(key)
        if cached is None:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            cached = self._cache[key] = self._project(pose)
        return cached

    @torch.no_grad()
    def _project(self, pose: tuple[float, float, float, float]) -> ImageCondition:
        if self.image_embedding is None or self.image_latent is None:
            self.encode_picture()
        features = torch.tensor(pose, dtype=torch.float32).to(self.device, non_blocking=True).view(1, 1, POSE_FEATURES)
        token = self.projection(torch.cat([self.image_embedding, features], dim=-1))
        return ImageCondition(pose, token.to(self.placement.dtype), self.image_latent, self.guidance_scale != 1.0)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: ImageCondition | None) -> torch.Tensor:
        """Snap sigma to the ladder, run the (guided) UNet once, return D in x's dtype.

        Nothing here reads a value back to the host: snapping runs on the device.
        """
        cond = cond if cond is not None else self.condition(None)
        device, dtype = self.placement.device, self.placement.dtype
        batch = x.shape[0]
        timesteps, snapped = self.ladder.snap(batch_sigma(sigma, batch, x.device))
        x32 = x.float()
        x_in = VpLadder.network_input(x32, snapped).to(device=device, dtype=dtype)
        t = timesteps.to(device)
        latent = cond.latent.expand(batch, -1, -1, -1)
        token = cond.embedding.expand(batch, -1, -1)
        if not cond.guided:
            prediction = self.unet(torch.cat([x_in, latent], dim=1), t, encoder_hidden_states=token).sample.float()
        else:
            inputs = torch.cat([torch.cat([x_in, torch.zeros_like(latent)], dim=1), torch.cat([x_in, latent], dim=1)])
            tokens = torch.cat([torch.zeros_like(token), token])
            both = self.unet(inputs, torch.cat([t, t]), encoder_hidden_states=tokens).sample.float()
            uncond, conditional = both.chunk(2)
            prediction = uncond + self.guidance_scale * (conditional - uncond)
        return self.ladder.denoised(x32, snapped, prediction.to(x32.device)).to(x.dtype)

    # ------------------------------------------------------------------ pictures <-> latents
    @torch.no_grad()
    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Decode latents [B, 4, h, w] to pictures in [0, 1] (the decoder visits the device)."""
        return decode_latents(self.vae, self.placement, x)

    @torch.no_grad()
    def encode_rgb(self, pictures: torch.Tensor) -> torch.Tensor:
        """Pictures [B, 3, H, W] in [0, 1] -> the latents this prior scores (scaled posterior mode).

        The ``reference-view`` loss compares a latent field's render with this.
        """
        config = self.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        where = self.placement.decode_device
        sized = resize(pictures.float(), self.picture_size).to(where)
        with visiting(self.vae, where, self.placement.vae_home):
            mode = self.vae.encode(2 * sized - 1).latent_dist.mode()
        return ((mode - shift) * config.scaling_factor).float().to(pictures.device)


@contextlib.contextmanager
def visiting(module: torch.nn.Module, where: torch.device, home: torch.device) -> Iterator[None]:
    """``module`` on ``where`` for the block, back home afterwards (also on errors)."""
    if torch.device(where) == torch.device(home):
        yield
        return
    module.to(where)
    try:
        yield
    finally:
        module.to(home)


def resize(pictures: torch.Tensor, size: int) -> torch.Tensor:
    """Square pictures [B, C, H, W] to size x size (antialiased when shrinking)."""
    if pictures.shape[-1] == size and pictures.shape[-2] == size:
        return pictures
    return F.interpolate(pictures, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def clip_pixels(picture: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """CLIP's input for pictures in [0, 1]: bicubic resize (align_corners, no antialias, as
    zero123's image embedder) and per-channel normalisation."""
    resized = F.interpolate(picture, size=(size, size), mode="bicubic", align_corners=True)
    mean_t = torch.tensor(mean, dtype=resized.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=resized.dtype).view(1, -1, 1, 1)
    return (resized - mean_t) / std_t


def assemble_zero123(
    unet: Any,
    vae: Any,
    image_encoder: Any,
    projection: torch.nn.Linear,
    scheduler: Any,
    options: Zero123Options,
    picture: Picture,
    device: torch.device | str,
    clip_normalisation: tuple[Sequence[float], Sequence[float]] = (CLIP_MEAN, CLIP_STD),
) -> Zero123Prior:
    """Check that the parts fit, place them (as the Stable Diffusion prior places its own),
    encode the picture and wrap everything as a prior."""
    device = indexed_device(device)
    ladder = VpLadder.from_scheduler(scheduler, options.model)
    latent_channels = int(vae.config.latent_channels)
    if int(unet.config.in_channels) != int(unet.config.out_channels) + latent_channels:
        raise SjcError(
            f"prior.model: the UNet of '{options.model}' takes {unet.config.in_channels} input channels; a Zero123 UNet "
            f"takes {int(unet.config.out_channels) + latent_channels} (the noisy latent and the picture's latent)"
        )
    embed = int(image_encoder.config.projection_dim)
    if projection.in_features != embed + POSE_FEATURES or projection.out_features != int(unet.config.cross_attention_dim):
        raise SjcError(
            f"prior.model: the camera projection of '{options.model}' maps {projection.in_features} -> "
            f"{projection.out_features}; the image encoder and the UNet need {embed + POSE_FEATURES} -> "
            f"{unet.config.cross_attention_dim}"
        )
    plan = plan_placement(options, device)
    place_unet(unet, plan)
    projection.to(plan.device).eval().requires_grad_(False)
    place(vae, plan.vae_home, torch.float32).eval().requires_grad_(False)
    place(image_encoder, plan.text_device, plan.text_dtype).eval().requires_grad_(False)
    prior = Zero123Prior(unet, vae, image_encoder, projection, ladder, options, picture, plan, clip_normalisation)
    prior.encode_picture()
    ladder.on(plan.device)
    return prior


def build_zero123(options: Zero123Options, ctx: BuildContext) -> Zero123Prior:
    picture = options.picture(ctx.base_dir)  # bad input is one line before any weight loads
    source = resolve_for_loading(options, ctx, probes=options.weight_probes)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    device = torch.device(ctx.device)
    dtype = resolve_dtype(options.dtype, device)
    scheduler = load_scheduler(source, "scheduler")
    VpLadder.from_scheduler(scheduler, source.ref)  # an unusable schedule fails before gigabytes load
    projection = load_projection(source)
    normalisation = load_clip_normalisation(source)
    unet = load_pretrained(UNet2DConditionModel, source, "unet", "UNet", torch_dtype=dtype)
    vae = load_pretrained(AutoencoderKL, source, "vae", "VAE", torch_dtype=torch.float32)
    encoder = load_pretrained(CLIPVisionModelWithProjection, source, "image_encoder", "image encoder", dtype=dtype)
    if options.lora:  # the UNet's keys only: the image encoder has no LoRA layout
        from sjc_plugins.priors.lora import apply_loras

        apply_loras(unet, None, options.lora, ctx)
    return assemble_zero123(unet, vae, encoder, projection, scheduler, options, picture, device, normalisation)
