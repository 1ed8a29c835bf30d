"""Seeded random weights for the tiny test models (shared by the BERT and Llama fixtures)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def randomize_(model: torch.nn.Module, *, seed: int, init_std: float, is_norm_gain: Callable[[str], bool]
               ) -> torch.nn.Module:
    """Overwrite every parameter in name order: norm gains 1 + 0.2·N(0,1), biases 0.1·N(0,1), the rest
    ``init_std``·N(0,1), so norms and biases matter. Same seed → same weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if is_norm_gain(name):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(init_std * torch.randn(p.shape, generator=gen))
    return model
