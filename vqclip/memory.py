"""Will a run fit? An estimate of the memory a size needs, checked before the run starts.

What grows with the image size is the decoder's activations, kept for the backward pass into the
latent: at each of the decoder's resolution levels, every ResnetBlock keeps about a dozen tensors
of its width (norms, activations, convolution outputs, gradients in flight), and each attention
block keeps its [hw, hw] matrix (quadratic in the number of latent cells). `decoder_bytes` counts those from the
taming `ddconfig`; the cutouts add `cutn` CLIP-sized crops and their augmented copies. The
estimate is checked against the memory free on the device (CPU: MemAvailable; CUDA: free memory)
before the weights load, so an impossible size fails in a second with a message saying what fits.
It is a guide calibrated on the tiny test decoder (see docs/reliability.md), not a guarantee.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import torch

from vqclip.errors import ConfigError

if TYPE_CHECKING:
    from vqclip.config import GenerateConfig

log = logging.getLogger(__name__)

BYTES = 4  # float32
# Fitted to the peak memory of decoder forward+backward on the CPU (tiny and ImageNet-f16-shaped
# decoders, 64..384 px; docs/reliability.md): floats kept per channel x pixel of each ResnetBlock,
# and per entry of each attention block's [hw, hw] matrix.
TENSORS_PER_BLOCK = 12
ATTENTION_PER_BLOCK = 2
# With gradient checkpointing: the input of each block is kept (and its output until the next
# block), and in backward one block at a time is recomputed with its attention matrix and softmax.
TENSORS_PER_BLOCK_CHECKPOINTED = 2
ATTENTION_RECOMPUTED = 3


def decoder_bytes(ddconfig: Dict[str, Any], size: Sequence[int], batch: int = 1, checkpointing: bool = False) -> int:
    """Estimated bytes of decoder activations (forward kept for backward) for `batch` images of [width, height].

    With `checkpointing` (each ResnetBlock and AttnBlock recomputed in backward), only about two
    tensors per block are kept, plus one block's activations and one attention matrix while it is
    recomputed.
    """
    ch_mult = list(ddconfig["ch_mult"])
    ch, blocks = int(ddconfig["ch"]), int(ddconfig["num_res_blocks"]) + 1
    attn_at = {int(r) for r in ddconfig.get("attn_resolutions", [])}
    resolution = int(ddconfig.get("resolution", 256))
    w, h = int(size[0]), int(size[1])
    kept = TENSORS_PER_BLOCK_CHECKPOINTED if checkpointing else TENSORS_PER_BLOCK
    lowest = (w >> (len(ch_mult) - 1)) * (h >> (len(ch_mult) - 1))
    total, widest, attention = 0, 0, [lowest * lowest]  # the mid block's attention always
    for level, mult in enumerate(ch_mult):  # level 0 runs at full size, level l at size / 2**l
        tokens = (w >> level) * (h >> level)
        total += kept * blocks * ch * mult * tokens
        widest = max(widest, ch * mult * tokens)
        # taming places attention by ddconfig.resolution, not the real size (see FACTS): count it so
        if resolution >> level in attn_at:
            attention += [tokens * tokens] * blocks
    if checkpointing:
        total += TENSORS_PER_BLOCK * widest + ATTENTION_RECOMPUTED * max(attention)
    else:
        total += ATTENTION_PER_BLOCK * sum(attention)
    return total * BYTES * batch


def cutout_bytes(cutn: int, cut_size: int = 224, batch: int = 1, size: Sequence[int] = (0, 0)) -> int:
    """Estimated bytes of the cutouts and their augmented copies, plus what the batched resampler
    keeps for backward at image `size` (w, h): its interpolation matrices and the row-resampled
    images (vqclip.cutouts.make_cutouts)."""
    w, h = size
    resampler = cutn * cut_size * (w + h + 3 * w)
    return (8 * cutn * 3 * cut_size * cut_size + resampler) * BYTES * batch


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory free for a run on `device` (None when it cannot be told)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def largest_fitting_size(ddconfig: Dict[str, Any], size: Sequence[int], budget: int, batch: int = 1,
                         checkpointing: bool = False) -> List[int]:
    """The largest size with the aspect of `size`, in multiples of the factor, whose decoder estimate fits."""
    factor = 2 ** (len(ddconfig["ch_mult"]) - 1)

    def scaled(scale: float) -> List[int]:
        return [max(factor, int(s * scale) // factor * factor) for s in size]
    lo, hi = 0.0, 1.0  # the estimate grows with the scale, so bisect on it
    for _ in range(40):
        mid = (lo + hi) / 2
        fits = decoder_bytes(ddconfig, scaled(mid), batch, checkpointing) <= budget
        lo, hi = (mid, hi) if fits else (lo, mid)
    return scaled(lo)


def check_memory(cfg: "GenerateConfig", ddconfig: Dict[str, Any], device: torch.device,
                 free: Optional[int] = None, batch: int = 1, checkpointing: bool = False) -> None:
    """Raise ConfigError when `cfg.size` needs more memory than `device` has free (where it can be told).

    `batch` images are optimised at once; `checkpointing` says whether the decoder recomputes its
    activations in backward.
    """
    free = available_bytes(device) if free is None else free
    if free is None:
        return
    cuts = cutout_bytes(cfg.cutouts.cutn, batch=batch, size=cfg.size)
    need = decoder_bytes(ddconfig, cfg.size, batch, checkpointing) + cuts
    log.debug("memory estimate for size %s: %s, free on %s: %s", cfg.size, _gb(need), device, _gb(free))
    if need <= free:
        return
    fit = largest_fitting_size(ddconfig, cfg.size, free - cuts, batch, checkpointing)
    raise ConfigError(f"bad value for config key 'size': {list(cfg.size)} needs about {_gb(need)} of memory "
                      f"on {device.type} (an estimate), but {_gb(free)} is free; allowed here: about "
                      f"size={fit} or smaller, or fewer cutouts.cutn"
                      + (f", or a smaller race (race={cfg.race} holds that many copies of each image)"
                         if cfg.race > 1 else "") + ", or a device with more memory")
