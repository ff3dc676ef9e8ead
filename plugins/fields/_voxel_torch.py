"""The voxel field's render node from torch operations: what CUDA runs, and the CPU without
a C compiler.

One autograd node gives the foreground features [n, C] and weights [n, k] of a sample
bundle: trilinear density at the samples (:mod:`.trilinear`, corner by corner), the
reference's softplus / alpha / exclusive transmittance, features only where a weight
passes the threshold, and an analytic backward (weights, activation slope, one scatter per
corner and channel). Dense plans (GPUs) cover all n*k samples with masks, so no shape
depends on the data and nothing waits for the device; compact plans (CPU) list the in-box
samples and, where few pass the threshold, gather features for those only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from sjc_core.render.samples import SampleBundle
from sjc_core.render.weights import weights_backward, weights_forward
from sjc_plugins.fields.shading import activate, activation_slope
from sjc_plugins.fields.trilinear import Corners, gather_corners, scatter_corners, take_rows, trilinear_corners


def torch_plan(field: Any, bundle: SampleBundle, org: torch.Tensor, direction: torch.Tensor) -> dict[str, Any]:
    """The node's inputs for a bundle: the samples' corners (ray origin and direction in
    voxel units), the in-box mask and the field's constants."""
    u = torch.addcmul(org.t()[:, :, None], direction.t()[:, :, None], bundle.t_dense[None]).reshape(3, -1)
    positions = bundle.positions if bundle.compact else None
    if positions is not None:
        u = u.index_select(1, positions)
    return {
        "n": bundle.n,
        "k": bundle.k,
        "step": bundle.step,
        "corners": trilinear_corners(u, field.grid_size),
        "positions": positions,
        "row_pointer": bundle.row_pointer[:-1] if positions is not None else None,
        "inbox": bundle.inbox,  # bool: multiplying by it promotes, at a quarter of the memory
        "shift": field.density_shift,
        "threshold": field.weight_threshold,
        "activation": field.activation,
    }


class TorchVoxelRender(torch.autograd.Function):
    """Foreground features [n, C] and weights [n, k] of a bundle in one node, from torch
    operations on the grids' device (the path CUDA runs, and the CPU's without a compiler).

    ``plan`` holds the samples' corners. Dense plans (GPUs) cover all n*k samples, with
    out-of-box corner weights zeroed and sub-threshold features masked, so no shape depends
    on the data; compact plans (CPU) list the in-box samples (``positions``) and gather
    features only where the weight passes the threshold. The backward takes gradients of
    both outputs, either of them absent, through any number of backward calls.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, density: torch.Tensor, features: torch.Tensor, d_scale: torch.Tensor, plan: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, k, step = plan["n"], plan["k"], plan["step"]
        channels = features.shape[-1]
        corners, inbox = plan["corners"], plan["inbox"]
        raw_samples = gather_corners(density.detach().reshape(-1, 1), corners)[:, 0]
        positions = plan.get("positions")
        if positions is None:
            raw = raw_samples.view(n, k)
        else:
            raw = raw_samples.new_zeros(n * k).index_put_((positions,), raw_samples).view(n, k)
        scale = torch.exp(d_scale.detach())
        z = raw * scale + plan["shift"]
        sigma = F.softplus(z) * inbox
        w, _, inclusive = weights_forward(sigma, step)
        keep = (w > plan["threshold"]).view(-1)
        table = features.detach().reshape(-1, channels)
        if positions is None:  # dense: every sample, masked
            kept, f_corners, f_mask = None, corners, keep[:, None]
        else:  # compact: feature rows for the samples above the threshold, by dense position
            if 2 * int(keep.sum()) >= positions.shape[0]:  # most pass: all in-box corners, masked
                kept, f_corners = positions, corners
                f_mask = keep.index_select(0, positions)[:, None]
            else:  # few pass: select their corners
                kept = keep.nonzero().squeeze(1)
                rows = plan["row_pointer"].index_select(0, kept)
                f_corners, f_mask = corners.select(rows), None
        feats = activate(gather_corners(table, f_corners), plan["activation"])
        if f_mask is not None:
            feats.mul_(f_mask)  # feats is this node's own temporary (activate may return its input)
        if kept is None:
            rgb = torch.bmm(w[:, None, :], feats.view(n, k, channels)).squeeze(1)
        else:
            w_kept = w.view(-1).index_select(0, kept)
            rgb = feats.new_zeros(n, channels).index_add_(0, kept // k, feats * w_kept[:, None])
        # Every tensor the backward reads goes through save_for_backward, so autograd frees
        # it after the (last) backward even while the outputs live on; ctx keeps scalars only.
        ctx.save_for_backward(
            raw, z, w, inclusive, feats, scale, inbox, positions, kept, f_mask,
            corners.base, corners.wzy, corners.wx, f_corners.base, f_corners.wzy, f_corners.wx,
        )
        ctx.consts = {key: plan[key] for key in ("n", "k", "step", "activation")}
        ctx.size_xyz = corners.size_xyz
        ctx.shapes = (density.shape, features.shape)
        ctx.set_materialize_grads(False)
        return rgb, w

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_rgb: torch.Tensor | None, grad_w: torch.Tensor | None
    ) -> tuple[Any, ...]:
        raw, z, w, inclusive, feats, scale, inbox, positions, kept, f_mask, *corner_parts = ctx.saved_tensors
        corners = Corners(*corner_parts[:3], ctx.size_xyz)
        f_corners = Corners(*corner_parts[3:], ctx.size_xyz)
        plan = ctx.consts
        n, k = plan["n"], plan["k"]
        channels = feats.shape[-1]
        gw = torch.zeros_like(w) if grad_w is None else grad_w.reshape(n, k).clone(memory_format=torch.contiguous_format)
        if grad_rgb is not None:  # d rgb / d w_j = feature_j
            g_rgb = grad_rgb.reshape(n, channels)
            if kept is None:
                gw += torch.bmm(feats.view(n, k, channels), g_rgb[:, :, None]).view(n, k)
            else:
                gw.view(-1).index_add_(0, kept, (feats * take_rows(g_rgb.contiguous(), kept // k)).sum(dim=1))
        dsigma = weights_backward(gw, w, inclusive, plan["step"])
        graw = dsigma * torch.sigmoid(z) * inbox * scale
        grad_scale = (graw * raw).sum() if ctx.needs_input_grad[2] else None
        grad_density = grad_features = None
        if ctx.needs_input_grad[0]:
            per_sample = graw.reshape(-1) if positions is None else graw.reshape(-1).index_select(0, positions)
            grad_density = scatter_corners(corners, per_sample[:, None], ctx.shapes[0].numel()).reshape(ctx.shapes[0])
        if ctx.needs_input_grad[1]:
            if grad_rgb is None:
                grad_features = torch.zeros(ctx.shapes[1], dtype=feats.dtype, device=feats.device)
            else:
                g_rgb = grad_rgb.reshape(n, channels)
                if kept is None:
                    dfeat = (w[:, :, None] * g_rgb[:, None, :]).reshape(n * k, channels)
                else:
                    dfeat = w.view(-1).index_select(0, kept)[:, None] * take_rows(g_rgb.contiguous(), kept // k)
                if f_mask is not None:
                    dfeat.mul_(f_mask)
                slope = activation_slope(feats, plan["activation"])
                if slope is not None:
                    dfeat.mul_(slope)
                table = scatter_corners(f_corners, dfeat, ctx.shapes[1][:-1].numel())
                grad_features = table.reshape(ctx.shapes[1])
        return grad_density, grad_features, grad_scale, None
