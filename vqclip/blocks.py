"""Coarse-to-fine latents: for a while, the latent grid moves in square blocks of tokens.

With `latent_block=k`, the random start draws one codebook token per k x k block, and for the first
`latent_block_steps` of the run the gradient of the latent is averaged over each block (then spread
back), so every token of a block gets the same update and the block stays one token: the optimiser
arranges a few large regions (the layout) before single tokens may change (the detail). Adam's
per-element state stays identical within a block too, so this needs no second parameter.
`block_noise` draws the exploration noise of `optim.noise` the same way, one draw per block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vqclip.errors import ConfigError


def check_block(block: int, grid: tuple[int, int]) -> None:
    """The latent grid (h, w) must split into whole blocks; ConfigError naming latent_block otherwise."""
    if block > 1 and (grid[0] % block or grid[1] % block):
        raise ConfigError(f"bad value for config key 'latent_block': {block} does not divide the latent grid "
                          f"{grid[1]}x{grid[0]} (size / the VQGAN's factor); allowed: a divisor of both sides")


def block_tokens(n_embed: int, batch: int, h: int, w: int, block: int,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Random token indices [batch, h, w], one per block x block square."""
    coarse = torch.randint(n_embed, (batch, h // block, w // block), device=device)
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)


def block_mean(grad: torch.Tensor, block: int) -> torch.Tensor:
    """A gradient [B, D, h, w] averaged over each block x block square and spread back over it."""
    if block <= 1:
        return grad
    return F.interpolate(F.avg_pool2d(grad, block), scale_factor=block, mode="nearest")


def block_noise(like: torch.Tensor, block: int) -> torch.Tensor:
    """Standard normal noise shaped like `like` [B, D, h, w], one draw per block x block square (so a
    block of tokens that moves together stays together); per element when `block` is 1."""
    if block <= 1:
        return torch.randn_like(like)
    b, d, h, w = like.shape
    coarse = torch.randn(b, d, h // block, w // block, device=like.device, dtype=like.dtype)
    return F.interpolate(coarse, scale_factor=block, mode="nearest")
