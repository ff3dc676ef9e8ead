"""Noise from explicit generators, so that results never depend on torch's global state.

Generators: ``None`` (torch's global generator), one ``torch.Generator`` for the whole
batch, or a list of them, one per image; with a list, image i's noise depends only on its
own generator, so an image does not change when the batch around it does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def generators_for(seed: int, count: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per image, image i seeded from (seed, i) so images are independent."""
    gens = []
    for index in range(count):
        state = int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])
        gen = torch.Generator(device=torch.device(device))
        gen.manual_seed(state)
        gens.append(gen)
    return gens


def randn(shape: Sequence[int], like: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Standard normal noise of ``shape`` (first dimension = batch) on ``like``'s device and dtype."""
    shape = tuple(shape)
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"{len(gens)} generators for a batch of {shape[0]}")
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=like.dtype).to(like.device) for g in gens]
    return torch.stack(rows)
