"""What the diffusers-backed priors share: loading the weights and VP->VE maths (finding
the weights, and the options, are in :mod:`sjc_plugins.priors.hub`, re-exported here).

VP->VE. A DDPM-family model knows ``alpha_bar_t``; its VE noise level is
``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``, ascending with t, so the ladder index is
the training timestep. The network sees ``x / sqrt(1 + sigma^2)`` at the snapped timestep
and its prediction (epsilon, v or x0) becomes ``D = x - sigma * eps``.

diffusers and transformers are imported lazily: listing plugins must stay fast.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from sjc_core.errors import SjcError
from sjc_core.training.paas import vp_sigmas
from sjc_plugins.priors.hub import (  # noqa: F401 (re-exported for the priors)
    ALLOW_DOWNLOAD_ENV,
    DIFFUSERS_EXTRA,
    HubOptions,
    ModelSource,
    downloads_allowed,
    first_line,
    missing_extras,
    require_extras,
    resolve_for_loading,
    resolve_source,
)

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def loading_error(source: ModelSource, subfolder: str | None, what: str, exc: BaseException) -> SjcError:
    """One line naming the model, the part that failed and why (a network hint when downloading)."""
    where = f"{source.ref}/{subfolder}" if subfolder else source.ref
    hint = ""
    if not source.local_folder and not source.local_files_only:
        hint = " (downloads are on: check the hub id and that huggingface.co, or HF_ENDPOINT, is reachable)"
    return SjcError(f"prior.model: cannot load the {what} from '{where}': {first_line(exc)}{hint}")


@contextlib.contextmanager
def quiet_loading(hide_bars: bool = True) -> Iterator[None]:
    """Silence library chatter while loading (missing accelerate, deprecations, weight-loading bars).

    ``hide_bars=False`` when downloading: a user fetching gigabytes wants to see progress.
    """
    from transformers.utils import logging as transformers_logging

    names = ("diffusers", "transformers", "huggingface_hub")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    transformer_bars = hide_bars and transformers_logging.is_progress_bar_enabled()
    if transformer_bars:
        transformers_logging.disable_progress_bar()
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if transformer_bars:
            transformers_logging.enable_progress_bar()


def load_pretrained(
    cls: Any, source: ModelSource, subfolder: str | None, what: str, weights: bool = True, **extra: Any
) -> Any:
    """``cls.from_pretrained`` on the source, with every loading failure turned into one line.

    ``weights=False`` for tokenizers, which take no ``variant``; ``extra`` goes to
    ``from_pretrained`` as is (the precision: ``torch_dtype`` for diffusers, ``dtype`` for
    transformers).
    """
    kwargs: dict[str, Any] = {"revision": source.revision, "local_files_only": source.local_files_only, **extra}
    if subfolder:
        kwargs["subfolder"] = subfolder
    if weights and source.variant:
        kwargs["variant"] = source.variant
    try:
        with quiet_loading(hide_bars=source.local_files_only):
            return cls.from_pretrained(source.ref, **kwargs)
    except SjcError:
        raise
    except Exception as exc:  # OSError, ValueError, hub errors, bad configs: all user-fixable
        raise loading_error(source, subfolder, what, exc) from None


def load_scheduler(source: ModelSource, subfolder: str | None) -> Any:
    """The scheduler named by the folder's own config (its class decides betas and prediction type)."""
    import diffusers

    config = load_pretrained_config(source, subfolder)
    name = config.get("_class_name", "")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise SjcError(f"prior.model: unknown scheduler class '{name}' in {source.ref}")
    try:
        with quiet_loading():
            return cls.from_config(config)
    except Exception as exc:
        raise SjcError(f"prior.model: cannot build scheduler '{name}' from {source.ref}: {first_line(exc)}") from None


def load_pretrained_config(source: ModelSource, subfolder: str | None) -> dict[str, Any]:
    from diffusers import DDPMScheduler

    kwargs: dict[str, Any] = {"revision": source.revision, "local_files_only": source.local_files_only}
    if subfolder:
        kwargs["subfolder"] = subfolder
    try:
        with quiet_loading():
            return dict(DDPMScheduler.load_config(source.ref, **kwargs))
    except Exception as exc:
        raise loading_error(source, subfolder, "scheduler config", exc) from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def square_size(sample_size: Any, what: str) -> int:
    """A model's ``sample_size`` as one int (priors score square images)."""
    if isinstance(sample_size, (list, tuple)):
        if len(set(sample_size)) != 1:
            raise SjcError(f"prior.model: the {what} is not square (sample_size {list(sample_size)})")
        sample_size = sample_size[0]
    if not isinstance(sample_size, int) or sample_size <= 0:
        raise SjcError(f"prior.model: the {what} has no usable sample_size ({sample_size!r})")
    return sample_size


def ladder_dtype(device: torch.device | str) -> torch.dtype:
    """float64 for noise levels and their arithmetic, except on devices without it (Apple's MPS)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def batch_sigma(sigma: torch.Tensor | float, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """sigma as [batch] on ``device`` (the images' device), in :func:`ladder_dtype` (float64).

    Accepts a number, a 0-d tensor, [B] or [B, 1, 1, 1]. Never a host round trip: a tensor
    already on ``device`` (the engine keeps sigma beside its render) stays there, one
    elsewhere is copied over without blocking, a number is filled in on the device; sizes
    come from shapes, not values. Snapping then runs on that device too.
    """
    device = torch.device(device)
    dtype = ladder_dtype(device)
    if not isinstance(sigma, torch.Tensor):
        return torch.full((batch,), sigma, dtype=dtype, device=device)
    flat = sigma.detach().reshape(-1)
    if flat.device != device:
        if dtype != torch.float64:
            flat = flat.to(dtype)  # narrow where sigma is: the target may have no float64
        flat = flat.to(device, non_blocking=device.type != "cpu")
    flat = flat.to(dtype)
    if flat.numel() == 1:
        return flat.expand(batch).clone()
    if flat.numel() != batch:
        raise ValueError(f"sigma has {flat.numel()} values for a batch of {batch}")
    return flat


@dataclass(frozen=True)
class VpLadder:
    """A VP model's noise levels in VE form, indexed by training timestep (ascending).

    ``sigmas`` is float64 on the CPU: near t = 0, ``1 - alpha_bar`` is tiny and float32 loses
    digits. :meth:`on` keeps one copy per device (float64 where the device has it), so
    snapping runs where sigma lives with no transfer after the first call.
    """

    sigmas: torch.Tensor
    prediction_type: str
    _per_device: dict[torch.device, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_scheduler(cls, scheduler: Any, model_ref: str) -> "VpLadder":
        table = getattr(scheduler, "alphas_cumprod", None)
        if table is None:
            raise SjcError(
                f"prior.model: the scheduler of '{model_ref}' ({type(scheduler).__name__}) has no "
                "alphas_cumprod table; a DDPM-family (VP) scheduler is needed"
            )
        kind = scheduler.config.get("prediction_type", "epsilon")
        if kind not in PREDICTION_TYPES:
            raise SjcError(
                f"prior.model: prediction_type '{kind}' of '{model_ref}' is not supported "
                f"(known: {', '.join(PREDICTION_TYPES)})"
            )
        try:
            sigmas = vp_sigmas(table)
        except ValueError as exc:
            raise SjcError(f"prior.model: the noise schedule of '{model_ref}' is unusable: {exc}") from None
        return cls(sigmas=sigmas, prediction_type=kind)

    def on(self, device: torch.device | str) -> torch.Tensor:
        """The ladder on ``device`` in :func:`ladder_dtype` (copied once, then cached)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        table = self._per_device.get(device)
        if table is None:
            table = self.sigmas.to(device=device, dtype=ladder_dtype(device))
            self._per_device[device] = table
        return table

    def snap(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest ladder tick of each sigma [B], on sigma's device: (timesteps long [B], snapped sigmas [B]).

        Runs entirely on sigma's device (argmin included), in float64 where the device has it,
        so it gives the same ticks as on the CPU and never waits for the host.
        """
        table = self.on(sigma.device)
        index = (sigma.to(table.dtype)[:, None] - table[None, :]).abs().argmin(dim=1)
        return index, table[index]

    @staticmethod
    def network_input(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The VP sample the network was trained on: x / sqrt(1 + sigma^2) (sigma [B])."""
        scale = (1.0 / torch.sqrt(1.0 + sigma**2)).to(device=x.device, dtype=x.dtype)
        return x * scale.view(-1, 1, 1, 1)

    def denoised(self, x: torch.Tensor, sigma: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) from the network's prediction at the snapped sigma [B].

        With a = sqrt(alpha_bar) = 1/sqrt(1+sigma^2) and b = sqrt(1-alpha_bar) = a*sigma, the
        network input is a*x; v = a*eps - b*x0 gives eps = a*v + b*(a*x); an x0 prediction
        gives eps = (a*x - a*x0) / b. Then D = x - sigma * eps.
        """
        s64 = sigma.to(ladder_dtype(sigma.device))  # float64 except where the device lacks it
        a64 = 1.0 / torch.sqrt(1.0 + s64**2)
        shape = (-1, 1, 1, 1)
        s = s64.to(device=x.device, dtype=x.dtype).view(shape)
        a = a64.to(device=x.device, dtype=x.dtype).view(shape)
        b = (a64 * s64).to(device=x.device, dtype=x.dtype).view(shape)
        prediction = prediction.to(x.dtype)
        if self.prediction_type == "epsilon":
            eps = prediction
        elif self.prediction_type == "v_prediction":
            eps = a * prediction + b * (a * x)
        else:  # "sample": the network predicts x0 directly
            return prediction
        return x - s * eps
