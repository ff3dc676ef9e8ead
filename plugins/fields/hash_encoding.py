"""Multi-resolution hash encoding (instant-NGP), in plain PyTorch so it runs on any device.

Level ``l`` has ``N_l = floor(N_min * b**l)`` cells per axis, ``b = exp((ln N_max - ln N_min)
/ (L - 1))``, hence ``N_l + 1`` vertices per axis. A level whose ``(N_l + 1)**3`` vertices fit
in the table is indexed densely (``x + y*(N_l+1) + z*(N_l+1)**2``); finer levels use the
spatial hash ``(x * 1) xor (y * 2654435761) xor (z * 805459861) mod T``. A point in [0, 1]^3
gets, per level, the trilinear blend of its cell's 8 vertex vectors; the levels are
concatenated into ``[N, L * F]``.

The forward and backward passes are one ``torch.autograd.Function`` that keeps only the
input points for backward and recomputes corner indices there: the autograd version would
hold 8 index and weight tensors of ``[N, L]`` per call, about 0.75 KB a point, which is
gigabytes for a 64x64 render with 250 samples per ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

PRIMES = (1, 2654435761, 805459861)
INIT_SCALE = 1e-4  # instant-NGP draws table entries from U(-1e-4, 1e-4)

# The 8 cell corners as (dx, dy, dz) bits, in the order x fastest.
CORNERS = tuple((c & 1, (c >> 1) & 1, (c >> 2) & 1) for c in range(8))


@dataclass(frozen=True)
class HashGridSpec:
    """Sizes of a hash grid; everything else (resolutions, offsets) derives from these."""

    levels: int
    features: int
    log2_table_size: int
    base_resolution: int
    max_resolution: int

    @property
    def table_size(self) -> int:
        return 1 << self.log2_table_size

    @property
    def growth(self) -> float:
        """The per-level scale b (1 for a single level)."""
        if self.levels == 1:
            return 1.0
        return math.exp((math.log(self.max_resolution) - math.log(self.base_resolution)) / (self.levels - 1))

    def resolutions(self) -> list[int]:
        """Cells per axis of each level, N_l = floor(N_min * b**l).

        A relative 1e-9 guards the floor against rounding: with N_min = 4, N_max = 64 and
        5 levels, 4 * b**1 is 7.999999999999998 in floating point but 8 exactly.
        """
        b = self.growth
        return [int(math.floor(self.base_resolution * b**level * (1 + 1e-9))) for level in range(self.levels)]

    def dense(self) -> list[bool]:
        """Whether each level's vertices fit in the table without hashing."""
        return [(n + 1) ** 3 <= self.table_size for n in self.resolutions()]

    def level_sizes(self) -> list[int]:
        """Table entries each level owns: its vertex count when dense, else T."""
        return [(n + 1) ** 3 if d else self.table_size for n, d in zip(self.resolutions(), self.dense())]

    def offsets(self) -> list[int]:
        """Start row of each level in the flat table.

        Hashed levels come first, so each one starts at a multiple of T (the index code
        relies on that); the dense levels follow, coarsest first.
        """
        sizes, dense = self.level_sizes(), self.dense()
        out = [0] * self.levels
        total = 0
        for want_dense in (False, True):
            for level in range(self.levels):
                if dense[level] == want_dense:
                    out[level] = total
                    total += sizes[level]
        return out

    @property
    def total_entries(self) -> int:
        return sum(self.level_sizes())

    @property
    def output_dim(self) -> int:
        return self.levels * self.features

    def tcnn_config(self) -> dict[str, object]:
        """The same grid as a tiny-cuda-nn ``HashGrid`` encoding config."""
        return {
            "otype": "HashGrid",
            "n_levels": self.levels,
            "n_features_per_level": self.features,
            "log2_hashmap_size": self.log2_table_size,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.growth,
        }


def spatial_hash(corners: torch.Tensor, table_size: int) -> torch.Tensor:
    """The instant-NGP spatial hash of integer vertices [..., 3] (int64) modulo T.

    T is a power of two, so ``mod T`` keeps the low bits; int64 products keep the same low
    32 bits as the uint32 arithmetic of the CUDA implementation, so indices agree with it.
    """
    h = corners[..., 0] * PRIMES[0]
    h = h ^ (corners[..., 1] * PRIMES[1])
    h = h ^ (corners[..., 2] * PRIMES[2])
    return h & (table_size - 1)


def dense_index(corners: torch.Tensor, resolution: int) -> torch.Tensor:
    """Row-major index of integer vertices [..., 3] in a (resolution+1)^3 lattice, x fastest."""
    side = resolution + 1
    return corners[..., 0] + corners[..., 1] * side + corners[..., 2] * (side * side)


class _LevelGroup:
    """Levels that share an indexing rule (dense or hashed), processed as one batch.

    Work tensors are level-major, ``[G, N]``, so per-level constants broadcast along the
    outer axis and every inner loop runs over contiguous points. Per-axis index terms are
    computed once for the lower and upper vertex of a cell and combined per corner (xor for
    hashed levels, + for dense ones). The level's table offset is folded into the z term:
    a hashed level starts at a multiple of T, so ``| offset`` after masking is ``+ offset``.
    """

    def __init__(self, levels: list[int], spec: HashGridSpec, hashed: bool, device: torch.device, dtype: torch.dtype):
        res = [spec.resolutions()[i] for i in levels]
        offs = [spec.offsets()[i] for i in levels]
        self.levels = levels
        self.hashed = hashed
        self.mask = spec.table_size - 1
        self.scale = torch.tensor(res, dtype=dtype, device=device)[:, None]  # [G, 1] cells per axis
        self.max_cell = torch.tensor([r - 1 for r in res], dtype=torch.int64, device=device)[:, None]
        self.offset = torch.tensor(offs, dtype=torch.int64, device=device)[:, None]
        mult = [PRIMES if hashed else (1, r + 1, (r + 1) ** 2) for r in res]
        self.mult = torch.tensor(mult, dtype=torch.int64, device=device).T[:, :, None].contiguous()  # [3, G, 1]

    def cells(self, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower cell corner [3, G, N] (int64) and fraction inside the cell [3, G, N].

        ``xt`` is the [3, N] transpose of points already clamped to [0, 1], so truncation
        is floor; the upper bound keeps x = 1 in the last cell (fraction 1).
        """
        pos = xt[:, None, :] * self.scale
        cell = torch.minimum(pos.to(torch.int64), self.max_cell)
        return cell, pos - cell.to(pos.dtype)

    def corner_rows(self, cell: torch.Tensor) -> list[torch.Tensor]:
        """Flat table rows [G, N] (int32) of the 8 corners, in CORNERS order.

        Products are taken in int64; masked (hashed) or final (dense) terms fit in int32,
        which halves the memory traffic of the per-corner combinations.
        """
        terms = []
        for axis in range(3):
            lo = cell[axis] * self.mult[axis]
            hi = lo + self.mult[axis]
            if self.hashed:
                lo, hi = lo & self.mask, hi & self.mask
            if axis == 2:
                if self.hashed:
                    lo, hi = lo | self.offset, hi | self.offset
                else:
                    lo, hi = lo + self.offset, hi + self.offset
            terms.append((lo.to(torch.int32), hi.to(torch.int32)))
        tx, ty, tz = terms
        combine = torch.bitwise_xor if self.hashed else torch.add
        xy = [combine(tx[dx], ty[dy]) for dy in (0, 1) for dx in (0, 1)]
        return [combine(xy[dx + 2 * dy], tz[dz]) for dx, dy, dz in CORNERS]


def _corner_weights(frac: torch.Tensor) -> list[torch.Tensor]:
    """Trilinear weights [G, N] of the 8 corners, in CORNERS order."""
    wx = (1 - frac[0], frac[0])
    wy = (1 - frac[1], frac[1])
    wz = (1 - frac[2], frac[2])
    wxy = [wx[dx] * wy[dy] for dy in (0, 1) for dx in (0, 1)]
    return [wxy[dx + 2 * dy] * wz[dz] for dx, dy, dz in CORNERS]


# Rows of the table are handled as single wide elements where their byte size allows:
# a 1-D gather/scatter of 8-byte elements is several times faster on CPU than moving
# 2-float rows, and with F = 2 a complex view makes ``row * weight`` one vectorised op.
_ROW_VIEWS = {4: torch.int32, 8: torch.int64, 16: torch.complex128}
_PACKED = {(torch.float32, 2): torch.complex64, (torch.float64, 2): torch.complex128}


class _Packed:
    """Per-point feature vectors [G, N, F] in the fastest layout for the table's dtype.

    F = 2: complex [G, N]; F = 1: real [G, N]; otherwise real [G, N, F].
    """

    def __init__(self, dtype: torch.dtype, feats: int):
        self.dtype, self.feats = dtype, feats
        self.complex = _PACKED.get((dtype, feats))

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """Real [G, N, F] (contiguous) to the packed form."""
        if self.complex is not None:
            return t.contiguous().view(self.complex).squeeze(-1)
        return t.squeeze(-1) if self.feats == 1 else t

    def unpack(self, t: torch.Tensor) -> torch.Tensor:
        """Packed form back to real [G, N, F]."""
        if self.complex is not None:
            return torch.view_as_real(t)
        return t.unsqueeze(-1) if self.feats == 1 else t

    def weigh(self, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The weight [G, N] broadcast to the packed form's shape."""
        return w if (self.complex is not None or self.feats == 1) else w.unsqueeze(-1)

    def gather(self, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """table[rows] in packed form."""
        wide = _ROW_VIEWS.get(self.feats * table.element_size())
        flat = rows.reshape(-1)
        if wide is None:
            got = table.index_select(0, flat)
        else:
            got = table.view(wide).view(-1).index_select(0, flat).view(table.dtype)
        return self.pack(got.view(*rows.shape, self.feats))

    def scatter_add(self, grad_table: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
        """grad_table[rows] += values (values in packed form)."""
        flat = rows.reshape(-1)
        if self.complex is not None:
            grad_table.view(self.complex).view(-1).index_add_(0, flat, values.reshape(-1))
        else:
            # index_add_ with an int32 index is slow on CPU; widen it for this path.
            grad_table.index_add_(0, flat.to(torch.int64), values.reshape(-1, self.feats))


class _HashEncodeFn(torch.autograd.Function):
    """Forward: sum over corners of w_c * table[idx_c]; backward recomputes idx_c and w_c."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, groups: list[_LevelGroup]) -> torch.Tensor:  # type: ignore[override]
        ctx.groups = groups
        ctx.save_for_backward(x, table)
        packed = _Packed(table.dtype, table.shape[1])
        xt = x.T.contiguous()
        parts = []
        for group in groups:
            cell, frac = group.cells(xt)
            acc = None
            for rows, w in zip(group.corner_rows(cell), _corner_weights(frac)):
                vals = packed.gather(table, rows)
                w = packed.weigh(vals, w)
                acc = vals * w if acc is None else acc.addcmul_(vals, w)
            parts.append(packed.unpack(acc))  # [G, N, F]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return out.permute(1, 0, 2).reshape(x.shape[0], out.shape[0] * out.shape[2])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        x, table = ctx.saved_tensors
        n, feats = x.shape[0], table.shape[1]
        packed = _Packed(table.dtype, feats)
        levels = sum(len(group.levels) for group in ctx.groups)
        grad_lvl = grad_out.reshape(n, levels, feats).permute(1, 0, 2)  # [L, N, F]
        need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_table = torch.zeros_like(table) if need_table else None
        grad_x = torch.zeros_like(x) if need_x else None
        xt = x.T.contiguous()
        start = 0
        for group in ctx.groups:
            g_real = grad_lvl[start : start + len(group.levels)].contiguous()  # [G, N, F]
            start += len(group.levels)
            g = packed.pack(g_real)
            cell, frac = group.cells(xt)
            rows_all = group.corner_rows(cell)
            if need_table:
                for rows, w in zip(rows_all, _corner_weights(frac)):
                    packed.scatter_add(grad_table, rows, g * packed.weigh(g, w))
            if need_x:
                # d w_c / d f_a = (+1 or -1) * product of the other two axis factors.
                grad_frac = torch.zeros_like(frac)
                fac = [(1 - frac[a], frac[a]) for a in range(3)]
                for rows, corner in zip(rows_all, CORNERS):
                    s = (packed.unpack(packed.gather(table, rows)) * g_real).sum(-1)  # [G, N]
                    f = [fac[a][corner[a]] for a in range(3)]
                    for a in range(3):
                        b, c = [i for i in range(3) if i != a]
                        sign = 1.0 if corner[a] else -1.0
                        grad_frac[a] += sign * s * f[b] * f[c]
                grad_x += (grad_frac * group.scale).sum(1).T
        return grad_x, grad_table, None


class HashEncoding(nn.Module):
    """The pure-PyTorch hash grid: points in [0, 1]^3 [N, 3] -> features [N, L * F].

    Points outside the unit cube are clamped to it. The table is one flat parameter
    ``[total_entries, F]``; level ``l`` owns rows ``offsets[l] : offsets[l] + sizes[l]``.
    """

    def __init__(self, spec: HashGridSpec, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.spec = spec
        table = torch.empty(spec.total_entries, spec.features, dtype=dtype)
        table.uniform_(-INIT_SCALE, INIT_SCALE, generator=generator)
        self.table = nn.Parameter(table)
        self._groups: list[_LevelGroup] | None = None
        self._groups_key: tuple[torch.device, torch.dtype] | None = None

    @property
    def output_dim(self) -> int:
        return self.spec.output_dim

    def level_groups(self) -> list[_LevelGroup]:
        """Dense levels first, then hashed ones; cached per device and dtype."""
        key = (self.table.device, self.table.dtype)
        if self._groups is None or self._groups_key != key:
            dense = self.spec.dense()
            groups = []
            for hashed in (False, True):
                members = [i for i, d in enumerate(dense) if d != hashed]
                if members:
                    groups.append(_LevelGroup(members, self.spec, hashed, key[0], key[1]))
            self._groups, self._groups_key = groups, key
        return self._groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.table.dtype).clamp(0.0, 1.0)
        groups = self.level_groups()
        # The output puts levels in spec order; groups are dense-then-hashed, which is the
        # same order because resolutions grow with the level.
        return _HashEncodeFn.apply(x, self.table, groups)
