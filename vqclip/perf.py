"""Speed and memory switches for the loop: precision, memory format, checkpointing, compilation.

Each function here takes a model or a device and a config value and does one thing; `generate`
applies them from the config (`precision`, `channels_last`, `grad_checkpointing`, `compile`).
Only `precision` changes numerics beyond rounding order; the others give the same values.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, ContextManager, Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vqclip.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINT_PIXELS = 768 * 768  # grad_checkpointing=null turns it on from this many pixels


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when this CPU has bfloat16 arithmetic instructions (avx512_bf16 or AMX), so bf16 is faster."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """'auto' | 'float32' | 'bfloat16' -> the dtype the decoder and CLIP compute in on `device`."""
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("bad value for config key 'precision': 'bfloat16', but this CUDA device does not "
                              "support it; allowed here: auto, float32")
        return torch.bfloat16
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    raise ConfigError(f"bad value for config key 'precision': {precision!r}; allowed: auto, float32, bfloat16")


def autocast(device: torch.device, dtype: torch.dtype) -> ContextManager[Any]:
    """Autocast to `dtype` on `device` (a no-op context for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_channels_last(module: nn.Module, enabled: Optional[bool], device: torch.device) -> bool:
    """Put the module's weights in channels_last (enabled; None: on for CUDA) or back in the
    contiguous format; return whether channels_last is on."""
    on = device.type == "cuda" if enabled is None else enabled
    module.to(memory_format=torch.channels_last if on else torch.contiguous_format)
    return on


class Checkpointed(nn.Module):
    """Wraps a block so its activations are recomputed in the backward pass instead of stored."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args: Any) -> Any:
        """The block's output; under autograd, through torch.utils.checkpoint (non-reentrant)."""
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return checkpoint(self.block, *args, use_reentrant=False)
        return self.block(*args)


def checkpoint_decoder(decoder: nn.Module) -> int:
    """Wrap every ResnetBlock and AttnBlock of a taming Decoder in `Checkpointed`; return how many.

    Idempotent. The decoder keeps its weights; only where activations live changes.
    """
    from taming.modules.diffusionmodules.model import AttnBlock, ResnetBlock

    count = 0
    for parent in list(decoder.modules()):
        if isinstance(parent, Checkpointed):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, (ResnetBlock, AttnBlock)):
                setattr(parent, name, Checkpointed(child))
                count += 1
    return count


def uncheckpoint_decoder(decoder: nn.Module) -> int:
    """Undo `checkpoint_decoder`; return how many blocks were unwrapped."""
    count = 0
    for parent in list(decoder.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Checkpointed):
                setattr(parent, name, child.block)
                count += 1
    return count


def wants_checkpointing(enabled: Optional[bool], size: Sequence[int]) -> bool:
    """grad_checkpointing from the config: explicit, or (None) on from CHECKPOINT_PIXELS up."""
    return bool(enabled) if enabled is not None else size[0] * size[1] >= CHECKPOINT_PIXELS


def configure_models(config: Any, models: Any, device: torch.device) -> torch.dtype:
    """Apply a run's speed settings to its (shared) models; return the compute dtype.

    Attention implementation, memory format and decoder checkpointing follow the config each time
    (so one loaded model pair serves runs with different settings); `compile` compiles in place.
    The decoder's residual blocks always run their swish as one fused `F.silu` (the same function).
    """
    from vqclip.models.vqgan import set_attention, set_fused_swish

    set_attention(models.vqgan, config.attention)
    set_fused_swish(models.vqgan)
    use_channels_last(models.vqgan.decoder, config.channels_last, device)
    if wants_checkpointing(config.grad_checkpointing, config.size):
        checkpoint_decoder(models.vqgan.decoder)
    else:
        uncheckpoint_decoder(models.vqgan.decoder)
    if config.compile:
        for module in (models.vqgan.decoder, models.clip.model.visual):
            if not getattr(module, "_vqclip_compiled", False):  # once per model: later runs reuse it
                module.compile(dynamic=False)
                module._vqclip_compiled = True
    return resolve_precision(config.precision, device)
