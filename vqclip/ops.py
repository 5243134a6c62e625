"""Differentiable pieces of the loop that autograd does not give us directly.

- `vector_quantize`: snap each latent vector to its nearest codebook entry, with a straight-through
  gradient, so the optimiser moves a continuous latent while the decoder only ever sees codes.
- `clamp_with_grad`: clamp to a range, but let a gradient through wherever following it would move
  the value back into the range (plain clamp would zero it and leave saturated pixels stuck).
"""
from __future__ import annotations

import torch


def vector_quantize(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest codebook vector for each x [..., D] (codebook [N, D]); gradient passes straight through."""
    flat = x.reshape(-1, x.shape[-1])
    d = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.T
    q = codebook[d.argmin(1)].view_as(x)
    return x + (q - x).detach()


class _ClampWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        # Keep the gradient where descending it moves x toward [lo, hi] (or x is already inside).
        keep = grad * (x - x.clamp(ctx.lo, ctx.hi)) >= 0
        return grad * keep, None, None


def clamp_with_grad(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Clamp x to [lo, hi]; the gradient survives wherever it points back into the range."""
    return _ClampWithGrad.apply(x, lo, hi)
