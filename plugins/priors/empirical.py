"""The empirical prior: the exact optimal denoiser of a finite image set.

For images x_1..x_N and Gaussian noise of level sigma, the minimum-MSE denoiser is

    D(x; sigma) = sum_i softmax_i(-|x - x_i|^2 / (2 sigma^2)) x_i.

It needs no weights, so it makes ``sjc run`` useful offline. The softmax is evaluated in
log space and streamed over chunks of images (the running-maximum trick), so a few
thousand 64x64 images cost one chunk of memory per call, not one copy per noise. Since
|x|^2 is the same for every i it drops out of the softmax; what remains,
``(x . x_i - |x_i|^2 / 2) / sigma^2``, is computed on mean-centred data, which keeps the
float32 dot products far from cancellation (``precision = "float64"`` for the careful).

With a transforms file in the folder (NeRF-synthetic layout, read by
:mod:`sjc_core.fit.transforms`), the images carry cameras and the prior can condition on the
training camera (``view_conditioning``): ``label`` keeps the images with the same view
label, ``kernel`` keeps those whose camera direction lies within ``kernel_width_deg`` of
the training camera's. The kernel is a hard cut on purpose: added in log space, an
angular weight is swamped by pixel distances of 1e2..1e6 and changes nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from sjc_core.contracts import BuildContext, CameraHint, View
from sjc_core.errors import SjcError
from sjc_core.fit.datasets import load_posed_images, read_image
from sjc_core.fit.poses import camera_directions
from sjc_core.fit.transforms import IMAGE_EXTENSIONS, transforms_path
from sjc_core.render.cameras import camera_angles, view_label
from sjc_core.training.paas import geometric_ladder
from sjc_plugins.priors.empirical_options import EmpiricalOptions, ViewConditioning  # noqa: F401 (re-exported)

# PAAS range. Lower end 0.1, not 0.01: the 1/sigma factor of the PAAS gradient lets the
# smallest sigmas dominate Adamax's step size, and raising the floor to 0.1 gained ~1 dB
# in the prototype. Upper end 20 for 64x64x3 images in [-1, 1]: the posterior over
# images stays selective while sigma is below the typical distance between two images,
# which is 30..80 here (per-pixel RMS difference 0.3..0.7 times sqrt(12288) ~ 111); at 20
# the noise term of the logits, |x_i - x_j| / sigma, is still 1.5..4, so the largest
# sigmas give a coarse, informative pull toward the nearest few images, whereas beyond
# ~50 D collapses to the candidate set's mean whatever the render is (pure 1/sigma-damped
# averaging). Distances grow as sqrt(dimension), so other resolutions scale it likewise.
DEFAULT_PAAS_SIGMA_MIN = 0.1
DEFAULT_PAAS_SIGMA_MAX_64 = 20.0
REFERENCE_DIMENSION = 3 * 64 * 64
_CACHE_LIMIT = 4096


def label_of_pose(c2w: np.ndarray, overhead_below: float = 30.0) -> str:
    """The view label a camera at this pose would have been given by the training sampler."""
    azimuth, polar_draw = camera_angles(c2w)
    return view_label(float(azimuth[0]), float(polar_draw[0]), overhead_below)


class EmpiricalPrior:
    """D(x; sigma) of a fixed image set, optionally restricted to the images near a camera.

    ``images`` [N, 3, R, R] in [-1, 1]; ``c2w`` [N, 4, 4] (or None) the cameras they were
    taken with; ``fov_deg`` their horizontal field of view.
    """

    channels = 3
    value_range = (-1.0, 1.0)

    def __init__(
        self,
        images: torch.Tensor,
        *,
        c2w: np.ndarray | None = None,
        fov_deg: float | None = None,
        sigmas: torch.Tensor | None = None,
        view_conditioning: ViewConditioning = "none",
        kernel_width_deg: float = 20.0,
        kernel_min_images: int = 3,
        overhead_below: float = 30.0,
        chunk_size: int = 512,
        precision: Literal["float32", "float64"] = "float32",
        default_sigma_range: tuple[float, float] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be [N, 3, R, R], got {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("the image set is empty")
        if view_conditioning != "none" and c2w is None:
            raise ValueError(f"view_conditioning '{view_conditioning}' needs the images' cameras")
        self.resolution = int(images.shape[-1])
        self.count = int(images.shape[0])
        self.sigmas = geometric_ladder(0.01, 80.0, 1000) if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64)
        self.view_conditioning = view_conditioning
        self.kernel_width_deg = float(kernel_width_deg)
        self.kernel_min_images = int(kernel_min_images)
        self.overhead_below = float(overhead_below)
        self.chunk_size = int(chunk_size)
        self.dtype = torch.float64 if precision == "float64" else torch.float32
        self.device = torch.device(device)

        self._data, self._mean, self._half_sq = _centred(images, self.device, self.dtype, self.chunk_size)

        if default_sigma_range is None:
            dimension = self._data.shape[1]
            high = DEFAULT_PAAS_SIGMA_MAX_64 * math.sqrt(dimension / REFERENCE_DIMENSION)
            default_sigma_range = (DEFAULT_PAAS_SIGMA_MIN, high)
        low, high = default_sigma_range
        ladder_low, ladder_high = float(self.sigmas.min()), float(self.sigmas.max())
        self.default_sigma_range = (min(max(low, ladder_low), ladder_high), max(min(high, ladder_high), ladder_low))

        self.camera_hint: CameraHint | None = None
        self.directions: np.ndarray | None = None
        self.labels: list[str] | None = None
        if c2w is not None:
            c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
            if c2w.shape[0] != self.count:
                raise ValueError(f"{c2w.shape[0]} cameras for {self.count} images")
            self.directions, radii = camera_directions(c2w)
            azimuth, polar_draw = camera_angles(c2w)
            self.labels = [view_label(float(a), float(v), self.overhead_below) for a, v in zip(azimuth, polar_draw)]
            if fov_deg is not None:
                self.camera_hint = CameraHint(radius=float(radii.mean()), fov_deg=float(fov_deg), poses=c2w)
        self._cache: dict[Any, torch.Tensor | None] = {}
        self.plain_background = plain_background(images)

    # -- conditioning -------------------------------------------------------------------
    def condition(self, view: View | None) -> torch.Tensor | None:
        """Indices of the candidate images for this camera, or None for all of them."""
        if self.view_conditioning == "none" or view is None:
            return None
        if self.view_conditioning == "label":
            label = view.label
            if label is None and view.c2w is not None:
                label = label_of_pose(_as_numpy(view.c2w), self.overhead_below)
            if label is None:
                return None
            key: Any = ("label", label)
            if key not in self._cache:
                self._remember(key, self._label_indices(label))
            return self._cache[key]
        if view.c2w is None:
            return None
        direction, _ = camera_directions(_as_numpy(view.c2w).reshape(1, 4, 4))
        key = ("kernel", *np.round(direction[0], 7).tolist())
        if key not in self._cache:
            self._remember(key, self._kernel_indices(direction[0]))
        return self._cache[key]

    def _remember(self, key: Any, value: torch.Tensor | None) -> None:
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = value

    def _label_indices(self, label: str) -> torch.Tensor | None:
        """Images carrying ``label``; every image when none does (rather than nothing)."""
        assert self.labels is not None
        chosen = [i for i, own in enumerate(self.labels) if own == label]
        return torch.tensor(chosen, dtype=torch.long) if chosen else None

    def _kernel_indices(self, direction: np.ndarray) -> torch.Tensor:
        """Images whose camera lies within the kernel width; else the nearest few."""
        assert self.directions is not None
        angles = self.angles_to(direction)
        inside = np.flatnonzero(angles <= self.kernel_width_deg)
        if inside.size == 0:
            inside = np.sort(np.argsort(angles, kind="stable")[: self.kernel_min_images])
        return torch.from_numpy(inside.astype(np.int64))

    def angles_to(self, direction: np.ndarray) -> np.ndarray:
        """Angle in degrees between each image's camera direction and ``direction``."""
        assert self.directions is not None
        d = np.asarray(direction, dtype=np.float64).reshape(3)
        d = d / max(float(np.linalg.norm(d)), 1e-12)
        return np.degrees(np.arccos(np.clip(self.directions @ d, -1.0, 1.0)))

    # -- the denoiser -------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Posterior mean over the candidate images, for every x [B, 3, R, R]."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, self.resolution, self.resolution):
            raise ValueError(f"expected x of shape [B, 3, {self.resolution}, {self.resolution}], got {tuple(x.shape)}")
        batch = x.shape[0]
        if not torch.is_tensor(sigma) and bool((np.asarray(sigma) <= 0).any()):  # tensors: no read-back, no device wait
            raise ValueError("sigma must be positive: a scalar or one per image")
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).to(self.device, non_blocking=True)
        if s.numel() == 1:
            s = s.expand(batch)
        if s.numel() != batch:
            raise ValueError("sigma must be positive: a scalar or one per image")
        scale = (1.0 / s.pow(2)).to(self.dtype)[:, None]  # [B, 1]
        query = (x.detach().to(self.device, torch.float64).reshape(batch, -1) - self._mean).to(self.dtype)

        best = torch.full((batch,), -math.inf, dtype=self.dtype, device=self.device)
        total = torch.zeros(batch, dtype=self.dtype, device=self.device)
        acc = torch.zeros_like(query)
        for rows, half_sq in self._chunks(cond):
            logits = (query @ rows.T - half_sq.to(self.dtype)[None]) * scale  # [B, n]
            new_best = torch.maximum(best, logits.max(dim=1).values)
            rescale = torch.exp(best - new_best)
            weights = torch.exp(logits - new_best[:, None])
            total = total * rescale + weights.sum(dim=1)
            acc = acc * rescale[:, None] + weights @ rows
            best = new_best
        out = (acc / total[:, None]).double() + self._mean
        return out.reshape(x.shape).to(dtype=x.dtype, device=x.device)

    def _chunks(self, cond: torch.Tensor | None):  # type: ignore[no-untyped-def]
        """(rows, half squared norms) per chunk; views for all images, small copies for subsets."""
        step = self.chunk_size
        if cond is None:
            for start in range(0, self.count, step):
                yield self._data[start : start + step], self._half_sq[start : start + step]
            return
        index = torch.as_tensor(cond, dtype=torch.long).reshape(-1).to(self.device, non_blocking=True)
        if index.numel() == 0:
            raise ValueError("empty conditioning set")
        for start in range(0, index.numel(), step):
            part = index[start : start + step]
            yield self._data.index_select(0, part), self._half_sq.index_select(0, part)

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> [0, 1]."""
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` of the set, [3, R, R] in [-1, 1] (for tests and pictures)."""
        row = self._data[index].double() + self._mean
        return row.reshape(3, self.resolution, self.resolution).float()


def _centred(
    images: torch.Tensor, device: torch.device, dtype: torch.dtype, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean-centred rows [N, D] (dtype), the float64 mean [D] and half squared norms [N].

    Works chunk by chunk, so building the prior costs about one copy of the data set
    (no float64 copy of all of it).
    """
    count = images.shape[0]
    chunk = min(chunk, 64)  # float64 temporaries of 64 rows: a few MB whatever the set's size
    flat = images.detach().reshape(count, -1)
    mean = torch.zeros(flat.shape[1], dtype=torch.float64, device=device)
    for start in range(0, count, chunk):
        mean += flat[start : start + chunk].to(device, torch.float64).sum(dim=0)
    mean /= count
    data = torch.empty(flat.shape, dtype=dtype, device=device)
    half_sq = torch.empty(count, dtype=torch.float64, device=device)
    for start in range(0, count, chunk):
        rows = flat[start : start + chunk].to(device, torch.float64) - mean
        data[start : start + chunk] = rows.to(dtype)
        # norms of the rows actually stored, so |x_i|^2 matches the dot products exactly
        half_sq[start : start + chunk] = 0.5 * data[start : start + chunk].double().pow(2).sum(dim=1)
    return data, mean, half_sq


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


# -- loading ----------------------------------------------------------------------------
def _square(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """[3, H, W] in [0, 1] -> centre-cropped to a square, resized (anti-aliased) to resolution."""
    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[:, top : top + side, left : left + side]
    if side != resolution:
        image = F.interpolate(
            image[None], size=(resolution, resolution), mode="bilinear", antialias=side > resolution, align_corners=False
        )[0]
    return image.clamp(0.0, 1.0)


def plain_background(images: torch.Tensor, tolerance: float = 0.04, share: float = 0.95) -> tuple[float, ...] | None:
    """The colour that the images' borders share, or None when they share none.

    A border pixel counts when every channel lies within ``tolerance`` (value units, [-1, 1])
    of the per-channel median of all border pixels; ``share`` of them must count, so an
    object that touches the frame here and there still leaves a plain backdrop. Fields
    start their background and colours at this colour (``BuildContext.backdrop``).
    """
    ring = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0], images[..., 1:-1, -1]], dim=-1)
    pixels = ring.permute(1, 0, 2).reshape(images.shape[1], -1).float()
    median = pixels.median(dim=1).values
    inside = ((pixels - median[:, None]).abs() <= tolerance).all(dim=0)
    if float(inside.float().mean()) < share:
        return None
    return tuple(round(float(v), 4) for v in median)


def _cropped_fov(fov_deg: float, height: int, width: int) -> float:
    """Horizontal field of view after cropping a wide picture to its central square."""
    if width <= height:
        return fov_deg
    return math.degrees(2 * math.atan(math.tan(math.radians(fov_deg) / 2) * height / width))


def load_folder(folder: Path, options: EmpiricalOptions) -> tuple[torch.Tensor, np.ndarray | None, float | None]:
    """Images [N, 3, R, R] in [-1, 1], their cameras [N, 4, 4] or None, and their field of view."""
    if not folder.exists():
        raise SjcError(f"prior.images: {folder}: no such folder")
    if not folder.is_dir():
        raise SjcError(f"prior.images: {folder}: not a folder")
    res = options.resolution
    if transforms_path(folder, "train") is not None:
        posed = load_posed_images(
            folder,
            "train",
            resolution=res,
            background=options.background,
            z_up=options.z_up,
            scale=options.scale,
            center=options.center,
            box_half=None,
        )
        pictures = torch.from_numpy(posed.images).permute(0, 3, 1, 2)
        fov = _cropped_fov(posed.fov_deg, posed.height, posed.width)
        images = torch.stack([_square(p, res) for p in pictures]) if pictures.shape[-2] != res else pictures
        return images.mul_(2.0).sub_(1.0), posed.c2w, fov

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SjcError(
            f"prior.images: {folder}: no images (png/jpg) and no transforms_train.json / transforms.json in it"
        )
    images = torch.empty(len(files), 3, res, res)
    for index, path in enumerate(files):  # one picture at a time: full-size images never pile up
        picture = torch.from_numpy(read_image(path, options.background)).permute(2, 0, 1)
        images[index] = _square(picture, res)
    return images.mul_(2.0).sub_(1.0), None, None


def build_empirical(options: EmpiricalOptions, ctx: BuildContext) -> EmpiricalPrior:
    folder = Path(options.images).expanduser()
    if not folder.is_absolute():
        folder = ctx.base_dir / folder
    images, c2w, fov = load_folder(folder, options)
    if options.view_conditioning != "none" and c2w is None:
        raise SjcError(
            f"prior.view_conditioning: '{options.view_conditioning}' needs cameras, but {folder} has no "
            "transforms_train.json / transforms.json (use 'none')"
        )
    return EmpiricalPrior(
        images,
        c2w=c2w,
        fov_deg=fov,
        sigmas=geometric_ladder(options.sigma_min, options.sigma_max, options.count),
        view_conditioning=options.view_conditioning,
        kernel_width_deg=options.kernel_width_deg,
        kernel_min_images=options.kernel_min_images,
        overhead_below=options.overhead_below,
        chunk_size=options.chunk_size,
        precision=options.precision,
        device=ctx.device,
    )


