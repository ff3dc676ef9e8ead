"""Densify and prune a set of splats (3D Gaussian splatting's adaptive density control).

Each step the field adds the norm of every visible splat's screen-space mean gradient to a
running sum (and counts the views it was drawn in). On the schedule's steps, splats whose
mean gradient passes ``grad_threshold`` are cloned (small ones: a copy at the same place,
which the next steps pull apart) or split (large ones: two children drawn inside the
parent's Gaussian, 1/1.6 its size, replacing it); then splats that are nearly transparent or
too large are removed. New splats never take the count past ``max_splats``: the candidates
with the largest gradients go first. The plan is computed here; the field applies it to its
parameters and the optimizer's state (surviving rows keep their moments, new rows start at 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SPLIT_CHILDREN = 2
SPLIT_SHRINK = 1.6  # children's scale = parent's / this (3DGS)


@dataclass(frozen=True)
class DensityRules:
    """The options that drive one pass, in world units."""

    grad_threshold: float
    split_scale: float  # splats larger than this (world units) split
    prune_opacity: float
    prune_scale: float  # splats larger than this (world units) go
    max_splats: int


@dataclass
class DensityPlan:
    """Rows of the old parameters that stay (in order), and new rows appended after them."""

    keep: torch.Tensor  # [K] long
    added: dict[str, torch.Tensor]  # name -> [A, ...]
    cloned: int
    split: int
    pruned: int
    capped: bool = False  # max_splats held back candidates this pass

    @property
    def added_count(self) -> int:
        return next(iter(self.added.values())).shape[0] if self.added else 0


def in_schedule(step: int, start: int, stop: int, every: int) -> bool:
    """Whether ``step`` (1-based, after its update) is a densify/prune step."""
    return step > 0 and start <= step <= stop and step % every == 0


def plan_pass(
    params: dict[str, torch.Tensor],
    grad_sum: torch.Tensor,
    seen: torch.Tensor,
    rules: DensityRules,
    generator: torch.Generator,
) -> DensityPlan:
    """Which splats to clone, split and prune (``params``: means, log_scales, quats,
    opacity_logits and the feature tensors, all with rows = splats)."""
    means = params["means"]
    count = means.shape[0]
    average = grad_sum / seen.clamp(min=1)
    size = params["log_scales"].exp().amax(dim=-1)
    candidates = (average >= rules.grad_threshold) & (seen > 0)
    order = torch.argsort(average, descending=True, stable=True)
    room = max(0, rules.max_splats - count)
    wanted = order[candidates[order]]
    chosen = wanted[:room]  # the cap: largest gradients first
    large = size[chosen] > rules.split_scale
    clone_ids, split_ids = chosen[~large].sort().values, chosen[large].sort().values

    clones = {name: value[clone_ids] for name, value in params.items()}
    children = {name: value[split_ids].repeat_interleave(SPLIT_CHILDREN, 0) for name, value in params.items()}
    if split_ids.numel():
        from sjc_plugins.fields.splat_raster import quaternion_matrices

        quats = torch.nn.functional.normalize(children["quats"], dim=-1)
        stds = children["log_scales"].exp()
        noise = torch.randn(stds.shape, generator=generator, dtype=stds.dtype).to(stds.device)
        offsets = (quaternion_matrices(quats) @ (stds * noise)[:, :, None]).squeeze(-1)
        children["means"] = children["means"] + offsets
        children["log_scales"] = children["log_scales"] - math.log(SPLIT_SHRINK)

    drop = torch.sigmoid(params["opacity_logits"]) < rules.prune_opacity
    drop |= size > rules.prune_scale
    drop[split_ids] = True  # a split splat is replaced by its children
    keep = (~drop).nonzero().squeeze(1)
    added = {name: torch.cat([clones[name], children[name]]) for name in params}
    return DensityPlan(
        keep=keep,
        added=added,
        cloned=int(clone_ids.numel()),
        split=int(split_ids.numel()),
        pruned=int(count - keep.numel() - split_ids.numel()),
        capped=wanted.numel() > room,
    )


def apply_rows(value: torch.Tensor, plan: DensityPlan, added: torch.Tensor | None = None) -> torch.Tensor:
    """``value``'s kept rows followed by ``added`` (zeros of the same row shape when None)."""
    if added is None:
        added = value.new_zeros((plan.added_count, *value.shape[1:]))
    return torch.cat([value[plan.keep], added.to(value.dtype)]).contiguous()
