"""A frozen VQGAN built from the published taming-transformers files (model YAML + Lightning .ckpt).

`taming.models.vqgan` cannot be imported beside pytorch-lightning 2.x, and constructing it would
also build the training loss (LPIPS downloads VGG weights). So we build the same modules ourselves
from taming's building blocks, under the state_dict key names the published checkpoints use, and
load strictly the keys we use. Not for training: see vqclip.shapes.train for that.
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Dict

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from vqclip.checkpoints import safe_load, state_dict_of
from vqclip.errors import CheckpointError, looked_up

log = logging.getLogger(__name__)

VQMODEL = "taming.models.vqgan.VQModel"
GUMBELVQ = "taming.models.vqgan.GumbelVQ"
ALLOWED_TARGETS = (VQMODEL, GUMBELVQ)
# Nested `target:` names the published model YAMLs carry (the training loss, Gumbel's temperature
# schedule). vqclip never builds them; any other name is refused as a sign of a tampered file.
ALLOWED_NESTED_TARGETS = ("taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                          "taming.modules.losses.vqperceptual.DummyLoss",
                          "taming.lr_scheduler.LambdaWarmUpCosineScheduler")
_DDCONFIG_KEYS = ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels",
                  "resolution", "z_channels")


def quiet_construct(fn, *args: Any, **kwargs: Any) -> Any:
    """Call a taming constructor with its stdout chatter ("Working with z of shape ...") captured."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args, **kwargs)
    for line in buf.getvalue().splitlines():
        log.debug("taming: %s", line)
    return out


class VQGAN(nn.Module):
    """Decoder (+ optional encoder) and codebook of a taming VQModel or GumbelVQ, frozen.

    - `codebook`: [n_embed, embed_dim] vectors that latents are snapped to.
    - `decode(z_q [B, embed_dim, h, w]) -> image [B, 3, h*f, w*f]` in [-1, 1] (not clamped).
    - `encode(image [B, 3, H, W] in [0, 1]) -> z [B, embed_dim, H/f, W/f]` (needs the encoder).
    """

    def __init__(self, params: Dict[str, Any], gumbel: bool, with_encoder: bool) -> None:
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder
        from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

        dd = dict(params["ddconfig"])
        embed_dim, n_embed, z_channels = int(params["embed_dim"]), int(params["n_embed"]), int(dd["z_channels"])
        self.gumbel = gumbel
        self.ddconfig = dd  # kept for the memory estimate (vqclip.memory)
        self.factor = 2 ** (len(dd["ch_mult"]) - 1)
        self.embed_dim, self.n_embed = embed_dim, n_embed
        self.encoder = quiet_construct(Encoder, **dd) if with_encoder else None
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1) if with_encoder else None
        self.decoder = quiet_construct(Decoder, **dd)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        if gumbel:
            self.quantize = GumbelQuantize(z_channels, embed_dim, n_embed=n_embed,
                                           kl_weight=float(params.get("kl_weight", 1e-8)), temp_init=1.0)
        else:
            self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=0.25)

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook [n_embed, embed_dim]."""
        return self.quantize.embed.weight if self.gumbel else self.quantize.embedding.weight

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantised latent [B, embed_dim, h, w] -> image [B, 3, h*f, w*f] in about [-1, 1]."""
        return self.decoder(self.post_quant_conv(z_q))

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image [B, 3, H, W] in [0, 1] -> latent [B, embed_dim, H/f, W/f] of codebook vectors."""
        if self.encoder is None or self.quant_conv is None:
            raise RuntimeError("this VQGAN was loaded without its encoder (load_vqgan(..., with_encoder=True))")
        h = self.quant_conv(self.encoder(image * 2 - 1))
        if self.gumbel:
            idx = self.quantize.proj(h).argmax(1)  # [B, h, w]
            return self.codebook[idx].permute(0, 3, 1, 2)
        from vqclip.ops import vector_quantize
        return vector_quantize(h.movedim(1, -1), self.codebook).movedim(-1, 1)


def _sdpa_attention(self, x: torch.Tensor) -> torch.Tensor:
    """taming's AttnBlock.forward with the same weights, through scaled_dot_product_attention.

    The original builds the full [hw, hw] attention matrix with bmm + softmax; SDPA picks a fused
    kernel whose memory does not grow quadratically with the latent size.
    """
    h = self.norm(x)
    b, c, hh, ww = h.shape
    q, k, v = (conv(h).reshape(b, 1, c, hh * ww).transpose(-1, -2) for conv in (self.q, self.k, self.v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # [b, 1, hw, c]
    return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, hh, ww))


def set_attention(module: nn.Module, attention: str) -> int:
    """Run every taming AttnBlock inside `module` through SDPA ("sdpa") or taming's own code
    ("taming"); the weights are untouched. Returns how many blocks there are."""
    from taming.modules.diffusionmodules.model import AttnBlock

    if attention not in ("sdpa", "taming"):
        raise ValueError(f"attention must be 'sdpa' or 'taming', not {attention!r}")
    blocks = [m for m in module.modules() if isinstance(m, AttnBlock)]
    for block in blocks:
        if attention == "sdpa":
            block.forward = _sdpa_attention.__get__(block, AttnBlock)
        else:
            block.__dict__.pop("forward", None)  # back to the class's own forward
    return len(blocks)


def _fused_resnet_forward(self, x: torch.Tensor, temb: Any) -> torch.Tensor:
    """taming's ResnetBlock.forward with the same weights, its swish (`x * sigmoid(x)`) as one
    `F.silu`: the same function in one kernel, with a one-kernel backward (three kernels each way
    before; the swish was a tenth of a decoder step on the CPU)."""
    h = self.conv1(F.silu(self.norm1(x)))
    if temb is not None:
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
    h = self.conv2(self.dropout(F.silu(self.norm2(h))))
    if self.in_channels != self.out_channels:
        x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
    return x + h


def set_fused_swish(module: nn.Module, fused: bool = True) -> int:
    """Run every taming ResnetBlock inside `module` with its swish as one fused `F.silu` (fused) or
    through taming's own code; the weights and the function are untouched. Returns how many blocks
    there are."""
    from taming.modules.diffusionmodules.model import ResnetBlock

    blocks = [m for m in module.modules() if isinstance(m, ResnetBlock)]
    for block in blocks:
        if fused:
            block.forward = _fused_resnet_forward.__get__(block, ResnetBlock)
        else:
            block.__dict__.pop("forward", None)  # back to the class's own forward
    return len(blocks)


def read_model_config(path: str | Path) -> Dict[str, Any]:
    """Read and check a taming model YAML; return {"target": ..., "params": {...}}."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"VQGAN config not found: {looked_up(path)}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:
        raise CheckpointError(f"VQGAN config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict) or "target" not in model:
        raise CheckpointError(f"VQGAN config {path} has no model.target; expected a taming model YAML")
    target = model["target"]
    if target not in ALLOWED_TARGETS:
        raise CheckpointError(f"VQGAN config {path} names model.target {target!r}; allowed: {', '.join(ALLOWED_TARGETS)}")
    params = model.get("params") or {}
    for where, name in _nested_targets(params, "model.params"):
        if name not in ALLOWED_NESTED_TARGETS:
            raise CheckpointError(f"VQGAN config {path} names {where}.target {name!r}; allowed there: "
                                  f"{', '.join(ALLOWED_NESTED_TARGETS)}")
    missing = [k for k in ("embed_dim", "n_embed", "ddconfig") if k not in params]
    dd = params.get("ddconfig") or {}
    missing += [f"ddconfig.{k}" for k in _DDCONFIG_KEYS if k not in dd]
    if missing:
        raise CheckpointError(f"VQGAN config {path} lacks model.params.{missing[0]}")
    if params.get("remap"):
        raise CheckpointError(f"VQGAN config {path} uses a codebook remap, which vqclip does not support")
    if dd.get("double_z"):
        raise CheckpointError(f"VQGAN config {path} has ddconfig.double_z: true (a KL autoencoder, not a VQGAN)")
    if int(dd["ch"]) % 32:
        raise CheckpointError(f"VQGAN config {path} has ddconfig.ch {dd['ch']}; taming's GroupNorm(32) needs a multiple of 32")
    return {"target": target, "params": params}


def _nested_targets(obj: Any, where: str):
    """Yield (dotted key, value) of every `target` key inside nested dicts and lists."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "target":
                yield where, value
            else:
                yield from _nested_targets(value, f"{where}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _nested_targets(value, f"{where}[{i}]")


def load_vqgan(config_path: str | Path, checkpoint_path: str | Path, *, with_encoder: bool = False,
               device: str | torch.device = "cpu", attention: str = "sdpa") -> VQGAN:
    """Build a frozen VQGAN from a taming model YAML and its .ckpt (loaded safely, keys strictly).

    The encoder is only built and loaded when `with_encoder` is set (init images need it).
    `attention="sdpa"` runs the attention blocks through scaled_dot_product_attention (same
    weights, same result up to rounding); "taming" keeps taming's own bmm + softmax.
    Keys outside the modules used (`loss.*`, the encoder when not needed) are ignored; a missing or
    misshapen key in a used module is an error naming it.
    """
    spec = read_model_config(config_path)
    model = VQGAN(spec["params"], gumbel=spec["target"] == GUMBELVQ, with_encoder=with_encoder)
    sd = state_dict_of(safe_load(checkpoint_path), checkpoint_path)
    prefixes = tuple(name + "." for name, child in model.named_children() if child is not None)
    used = {k: v for k, v in sd.items() if k.startswith(prefixes)}
    expected = model.state_dict()
    missing = [k for k in expected if k not in used]
    if missing:
        raise CheckpointError(f"checkpoint {checkpoint_path} does not match {config_path}: "
                              f"{len(missing)} missing keys, e.g. {missing[0]}")
    unexpected = [k for k in used if k not in expected]
    if unexpected:
        raise CheckpointError(f"checkpoint {checkpoint_path} does not match {config_path}: "
                              f"unexpected key {unexpected[0]}")
    for k, v in used.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"checkpoint {checkpoint_path} does not match {config_path}: key {k} has "
                                  f"shape {tuple(v.shape)}, the config needs {tuple(expected[k].shape)}")
    model.load_state_dict({k: v.float() for k, v in used.items()}, strict=True)
    log.debug("attention through %s in %d blocks", attention, set_attention(model, attention))
    log.info("loaded VQGAN %s (%s, f%d, %d codes)", checkpoint_path, spec["target"].rsplit(".", 1)[1],
             model.factor, model.n_embed)
    return model.eval().requires_grad_(False).to(device)
