"""Tiny seeded models written in the published on-disk formats, for tests.

- VQGAN: a taming model YAML + a Lightning-1.x-style .ckpt (state_dict under taming's key names,
  plus loss.* keys, optimizer states and a ModelCheckpoint callback key, as the published files have).
- CLIP: an open_clip model-config JSON + a state-dict .pt file.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from vqclip.benchmark import TINY_CLIP, TINY_VQGAN  # one definition of the tiny architectures

TINY_DDCONFIG = TINY_VQGAN["ddconfig"]


def write_vqgan(folder: Path, *, gumbel: bool = False, seed: int = 0, n_embed: int = 64, embed_dim: int = 16) -> tuple[Path, Path]:
    """Write tiny taming-format files (model YAML, Lightning .ckpt); return their paths."""
    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint
    from vqclip.models.vqgan import VQGAN

    folder.mkdir(parents=True, exist_ok=True)
    params = {"embed_dim": embed_dim, "n_embed": n_embed, "ddconfig": dict(TINY_DDCONFIG),
              "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                             "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 0}}}
    if gumbel:
        params["kl_weight"] = 1e-8
        params["temperature_scheduler_config"] = {"target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
                                                  "params": {"warm_up_steps": 0, "max_decay_steps": 1000}}
    target = "taming.models.vqgan.GumbelVQ" if gumbel else "taming.models.vqgan.VQModel"
    cfg_path = folder / ("gumbel.yaml" if gumbel else "model.yaml")
    cfg_path.write_text(yaml.safe_dump({"model": {"base_learning_rate": 4.5e-6, "target": target, "params": params}}))
    torch.manual_seed(seed)
    model = VQGAN(params, gumbel=gumbel, with_encoder=True)
    with torch.no_grad():  # spread the codebook so random tokens decode to varied images
        model.codebook.normal_(0, 1)
    sd = dict(model.state_dict())
    sd["loss.logvar"] = torch.zeros(())
    sd["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    ckpt = {"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.0.8", "state_dict": sd,
            "callbacks": {ModelCheckpoint: {"monitor": "val/rec_loss", "best_model_score": torch.tensor(0.5),
                                            "best_model_path": "logs/last.ckpt"}},
            "optimizer_states": [{"state": {0: {"step": 10, "exp_avg": torch.zeros(3)}},
                                  "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "params": [0]}]}],
            "lr_schedulers": []}
    ckpt_path = folder / ("gumbel.ckpt" if gumbel else "model.ckpt")
    torch.save(ckpt, ckpt_path)
    return cfg_path, ckpt_path


def write_clip(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny open_clip model-config JSON and a state-dict weights file; return their paths."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "tiny-clip.json"
    json_path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(json_path)
    torch.manual_seed(seed)
    model = open_clip.create_model("tiny-clip", pretrained=None)
    weights = folder / "tiny-clip.pt"
    torch.save(model.state_dict(), weights)
    return json_path, weights


def write_openai_archive(folder: Path, seed: int = 0) -> tuple[str, Path, "torch.nn.Module"]:
    """Write a tiny CLIP as OpenAI publishes theirs: a TorchScript archive under OpenAI's key names.

    Returns (open_clip model name, archive path, the source model). OpenAI's loader infers the
    architecture from the tensors (heads = width // 64), so widths here are 64.
    """
    import warnings

    import open_clip
    from torch import nn

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"embed_dim": 32, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}
    json_path = folder / "tiny-openai.json"
    json_path.write_text(json.dumps(cfg))
    open_clip.add_model_config(json_path)
    torch.manual_seed(seed)
    model = open_clip.create_model("tiny-openai", pretrained=None)

    class Archive(nn.Module):  # same children and parameters, a trivial traceable forward
        def __init__(self, src: nn.Module) -> None:
            super().__init__()
            for name, child in src.named_children():
                setattr(self, name, child)
            for name, param in src.named_parameters(recurse=False):
                self.register_parameter(name, param)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.logit_scale

    path = folder / "tiny-openai.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(Archive(model), torch.ones(1)), str(path))
    return "tiny-openai", path, model
