"""Train the shapes-world demo models on the CPU with pytorch-lightning, and export them.

Two models, each small enough to run a 100-step generation in seconds on a laptop CPU:

- a VQGAN from taming's own modules (Encoder, Decoder, VectorQuantizer2), trained with L1 + L2 +
  image-gradient L1 (crisp edges) + a commitment loss, on crops of drawn scenes (the model is
  convolutional) and then on whole images; the codebook follows an EMA of its assigned encoder
  outputs and unused codes are restarted on them. Exported as a taming model YAML + a Lightning-style .ckpt under taming's key names.
- a CLIP from open_clip's own classes and a small model-config JSON, trained to pick each image's
  caption among all training captions (plus shorter partial captions, which teach each word on its
  own), first on whole clean images, then more and more on cutouts that mimic the generator's:
  60-100% crops, flips, small rotations, perspective, mild colour jitter, noise and blur. Exported
  as the JSON + a plain state dict.

Both are trained only on `train_scenes()`; `HELD_OUT` combinations are kept for evaluation.
Images are normalised with open_clip's default mean/std, which is what `create_model` puts on
`model.visual.image_mean/std` for a model-config JSON (open_clip does not read a `preprocess_cfg`
from such a JSON: the key is rejected by the model class).

Entry points: `train_vqgan`, `train_clip`, `train_all` (both, optionally in two processes), and the
evaluation helpers `vqgan_psnr`, `clip_zero_shot`, `load_exported_vqgan`, `load_exported_clip`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from vqclip.cutouts import add_noise
from vqclip.models.vqgan import quiet_construct
from vqclip.shapes.world import (COLORS, HELD_OUT, SHAPES, Scene, ShapesDataset, all_scenes, draw,
                                 format_caption, to_tensor, train_scenes)

log = logging.getLogger(__name__)

# open_clip's defaults (OpenAI's), which create_model sets on model.visual.image_mean/image_std.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------

@dataclass
class VQGANTrainConfig:
    """Architecture and schedule of the shapes VQGAN."""

    ch: int = 64  # base channels: a multiple of 32, and 64 so that taming's GroupNorm(32) keeps two
    #               channels per group at full resolution (with one, every channel is standardised per
    #               image just before the output and flat colours become nearly impossible to decode)
    ch_mult: Tuple[int, ...] = (1, 1, 1, 2)  # 4 levels: downsampling factor 8, a 16x16 latent at 128x128
    num_res_blocks: int = 1
    attn_resolutions: Tuple[int, ...] = ()  # the mid block still has one attention layer
    z_channels: int = 64
    embed_dim: int = 32
    n_embed: int = 512
    resolution: int = 128  # image side the model is made for (ddconfig.resolution)
    steps: int = 2400
    batch_size: int = 8
    crop: int = 64  # side of the random crops trained on before the whole-image phase
    whole_fraction: float = 0.5  # last fraction of steps on whole images, batch_size // 4 at a time
    lr: float = 2e-4  # taming's decoder trains much slower (or not at all) at 1e-3
    warmup: int = 50
    edge_weight: float = 1.0  # weight of the L1 loss on horizontal/vertical image differences
    commitment: float = 0.25  # weight of the encoder's commitment loss
    codebook_decay: float = 0.95  # EMA decay of the codebook statistics
    restart_every: int = 50  # steps between restarts of unused codes (0: never)
    seed: int = 0
    precision: str = "bf16-mixed"  # Lightning precision; the quantiser always runs in float32
    log_every: int = 100
    eval_images: int = 64  # images per PSNR measurement


@dataclass
class ClipTrainConfig:
    """Architecture and schedule of the shapes CLIP (the model-config JSON is built from it)."""

    name: str = "shapes-clip"  # model name = the JSON's file stem
    embed_dim: int = 128
    image_size: int = 64
    vision_width: int = 16
    # 4 stage depths: a ModifiedResNet (learns shapes far sooner than a ViT here); an int: a ViT.
    vision_layers: Union[int, Tuple[int, int, int, int]] = (1, 1, 1, 1)
    patch_size: int = 8  # ViT only
    head_width: int = 32
    context_length: int = 16
    text_width: int = 128  # the token embedding (49408 x text_width) dominates the file size
    text_heads: int = 4
    text_layers: int = 3
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    partial_weight: float = 1.0  # weight of the (mean) partial-caption loss
    min_kept: float = 0.7  # a training cutout keeps at least this share of the shape
    clean_fraction: float = 0.15  # first fraction of steps on whole, unaugmented images only
    curriculum: float = 0.45  # fraction of steps by which augmented cutouts have ramped up
    augmented_share: float = 0.8  # share of augmented cutouts after the ramp (the rest: whole images)
    noise: float = 0.0  # Gaussian pixel noise on every view, std drawn per view from [0, noise * ramp]; 0: off
    # Share of the training images that are distractors (vqclip.shapes.distractors: ellipses,
    # rectangles, blobs, pairs, each with its own caption), so that "circle" means a circle. 0: off
    distractors: float = 0.0
    seed: int = 0
    precision: str = "bf16-mixed"
    log_every: int = 100
    eval_images: int = 160  # images per zero-shot measurement

    def model_config(self) -> dict:
        """The open_clip model-config JSON for this architecture."""
        vision = {"image_size": self.image_size, "layers": self.vision_layers, "width": self.vision_width,
                  "patch_size": self.patch_size, "head_width": self.head_width}
        if isinstance(self.vision_layers, (tuple, list)):
            vision["layers"] = list(self.vision_layers)
            del vision["patch_size"]
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": vision,
            "text_cfg": {"context_length": self.context_length, "vocab_size": 49408, "width": self.text_width,
                         "heads": self.text_heads, "layers": self.text_layers},
        }


def quick_configs() -> Tuple[VQGANTrainConfig, ClipTrainConfig]:
    """Tiny models and a few steps: an end-to-end check of the pipeline, not a usable model."""
    vq = VQGANTrainConfig(ch=32, ch_mult=(1, 1, 2), z_channels=16, embed_dim=8, n_embed=32, steps=4, batch_size=4,
                          crop=32, warmup=1, restart_every=2, log_every=2, precision="32-true", eval_images=4)
    cl = ClipTrainConfig(embed_dim=32, image_size=32, vision_width=16, vision_layers=(1, 1, 1, 1),
                         text_width=32, text_heads=2, text_layers=1, steps=4, batch_size=8, warmup=1,
                         log_every=2, precision="32-true", eval_images=16)
    return vq, cl


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------

def _schedule(warmup: int, total: int):
    """Linear warm-up, then cosine decay to 5% of the base learning rate."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))
    return factor


class _LogProgress(pl.Callback):
    """Log the training loss (and anything in `module.progress`) every `every` steps."""

    def __init__(self, every: int, label: str) -> None:
        self.every, self.label, self.start = every, label, time.time()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            extra = " ".join(f"{k} {v:.4g}" for k, v in getattr(module, "progress", {}).items())
            log.info("%s step %d/%d  %s  (%.0f s)", self.label, step, trainer.max_steps, extra, time.time() - self.start)


def _trainer(steps: int, precision: str, callbacks: list) -> pl.Trainer:
    """A quiet CPU Trainer: no logger, no checkpoints, no progress bar."""
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, precision=precision,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks)


@contextlib.contextmanager
def _lightning_quiet():
    """Keep Lightning's banner lines and loader hints out of the output while training."""
    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*bf16.*")
        warnings.filterwarnings("ignore", message=".*could not determine.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _loader(scenes: Sequence[Scene], steps: int, batch_size: int, seed: int,
            distractors: float = 0.0) -> torch.utils.data.DataLoader:
    """A loader over freshly drawn images: every step sees new ones (a `distractors` share of them
    distractors, whose `scene` numbers follow the scenes')."""
    ds = ShapesDataset(scenes, length=steps * batch_size, seed=seed, size=128)
    if distractors:
        from vqclip.shapes.distractors import DistractorMix

        ds = DistractorMix(ds, distractors)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)


# ----------------------------------------------------------------------------------------------
# VQGAN
# ----------------------------------------------------------------------------------------------

def vqgan_params(cfg: VQGANTrainConfig) -> dict:
    """The taming `model.params` for this architecture (published VQModel YAML layout)."""
    return {
        "embed_dim": cfg.embed_dim,
        "n_embed": cfg.n_embed,
        "ddconfig": {"double_z": False, "z_channels": cfg.z_channels, "resolution": cfg.resolution,
                     "in_channels": 3, "out_ch": 3, "ch": cfg.ch, "ch_mult": list(cfg.ch_mult),
                     "num_res_blocks": cfg.num_res_blocks, "attn_resolutions": list(cfg.attn_resolutions),
                     "dropout": 0.0},
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"},
    }


class VQGANModule(pl.LightningModule):
    """A taming VQModel's modules under its attribute names, so state_dict keys match the format.

    The codebook is not trained by gradient but as an exponential moving average of the encoder
    outputs assigned to each code (k-means style, much faster to settle), and codes unused for a
    while are moved onto random encoder outputs. The encoder gets the usual commitment loss.
    """

    def __init__(self, cfg: VQGANTrainConfig) -> None:
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder
        from taming.modules.vqvae.quantize import VectorQuantizer2

        if cfg.ch % 32:
            raise ValueError(f"ch must be a multiple of 32 (taming's GroupNorm(32)), got {cfg.ch}")
        self.cfg = cfg
        dd = vqgan_params(cfg)["ddconfig"]
        self.encoder = quiet_construct(Encoder, **dd)
        self.decoder = quiet_construct(Decoder, **dd)
        self.quantize = VectorQuantizer2(cfg.n_embed, cfg.embed_dim, beta=0.25)
        self.quantize.embedding.weight.requires_grad_(False)  # updated by EMA, not by the optimiser
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        # EMA statistics: plain attributes, so they stay out of the exported state dict.
        self.ema_count = torch.zeros(cfg.n_embed)
        self.ema_sum = torch.zeros(cfg.n_embed, cfg.embed_dim)
        self.usage = torch.zeros(cfg.n_embed)
        self.progress: Dict[str, float] = {}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image [B, 3, H, W] in [-1, 1] -> pre-quantisation latent [B, embed_dim, H/f, W/f]."""
        return self.quant_conv(self.encoder(x))

    def forward(self, x: torch.Tensor):
        """Image in [-1, 1] -> (reconstruction, commitment loss, code indices, latent)."""
        h = self.encode(x).float()
        with torch.autocast(device_type=h.device.type, enabled=False):  # distances need float32
            z_q, _, (_, _, idx) = self.quantize(h)  # z_q is straight-through already
            commit = self.cfg.commitment * F.mse_loss(h, z_q.detach())
        return self.decoder(self.post_quant_conv(z_q)), commit, idx, h

    @torch.no_grad()
    def _update_codebook(self, h: torch.Tensor, idx: torch.Tensor) -> None:
        """EMA k-means step on this batch's assignments, then restart codes that went unused."""
        cfg = self.cfg
        vecs = h.detach().float().movedim(1, -1).reshape(-1, cfg.embed_dim)
        idx = idx.flatten()
        counts = torch.bincount(idx, minlength=cfg.n_embed).float()
        sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, vecs)
        d = cfg.codebook_decay
        self.ema_count.mul_(d).add_(counts, alpha=1 - d)
        self.ema_sum.mul_(d).add_(sums, alpha=1 - d)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + cfg.n_embed * 1e-5) * n  # Laplace smoothing
        self.quantize.embedding.weight.data.copy_(self.ema_sum / smoothed[:, None])
        self.usage.mul_(0.99).add_(counts / counts.sum(), alpha=0.01)
        step = self.global_step
        if cfg.restart_every and step > 0 and step % cfg.restart_every == 0:
            dead = self.usage < 0.03 / cfg.n_embed
            if dead.any():
                self._reset(dead, vecs)

    @torch.no_grad()
    def _reset(self, which: torch.Tensor, vecs: torch.Tensor) -> None:
        """Put the codes in mask `which` on random encoder outputs (with a little noise)."""
        k = int(which.sum())
        pick = vecs[torch.randint(len(vecs), (k,))]
        pick = pick + 0.01 * vecs.std() * torch.randn_like(pick)
        self.quantize.embedding.weight.data[which] = pick
        self.ema_sum[which] = pick * self.ema_count.mean().clamp_min(1e-3)
        self.ema_count[which] = self.ema_count.mean().clamp_min(1e-3)
        self.usage[which] = 1.0 / self.cfg.n_embed
        log.debug("restarted %d unused codes", k)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["image"] * 2 - 1
        cfg = self.cfg
        if self.global_step >= int(cfg.steps * (1 - cfg.whole_fraction)):
            x = x[: max(1, cfg.batch_size // 4)]
        elif cfg.crop < x.shape[-1]:
            x = _random_crops(x, cfg.crop)
        if self.global_step == 0:  # start the codebook on encoder outputs, not on noise
            h0 = self.encode(x).detach().float()
            self._reset(torch.ones(cfg.n_embed, dtype=torch.bool), h0.movedim(1, -1).reshape(-1, cfg.embed_dim))
        rec, commit, idx, h = self(x)
        rec = rec.float()
        l1 = (rec - x).abs().mean()
        mse = F.mse_loss(rec, x)
        edge = (rec.diff(dim=-1) - x.diff(dim=-1)).abs().mean() + (rec.diff(dim=-2) - x.diff(dim=-2)).abs().mean()
        loss = l1 + mse + cfg.edge_weight * edge + commit
        self._update_codebook(h, idx)
        with torch.no_grad():
            clamped = F.mse_loss(rec.clamp(-1, 1), x)
            self.progress = {"loss": float(loss.detach()), "l1": float(l1.detach()), "commit": float(commit.detach()),
                             "psnr": float(10 * torch.log10(4 / clamped.clamp_min(1e-10))),
                             "codes": float((self.usage > 0.03 / cfg.n_embed).sum())}
        return loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.cfg.lr, betas=(0.9, 0.99))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(self.cfg.warmup, self.cfg.steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _random_crops(x: torch.Tensor, size: int) -> torch.Tensor:
    """One random `size` x `size` crop of each image in the batch."""
    _, _, h, w = x.shape
    ys = torch.randint(0, h - size + 1, (len(x),)).tolist()
    xs = torch.randint(0, w - size + 1, (len(x),)).tolist()
    return torch.stack([img[:, y:y + size, x0:x0 + size] for img, y, x0 in zip(x, ys, xs)])


def export_vqgan(module: VQGANModule, folder: Path, name: str = "vqgan", global_step: int = 0,
                 epoch: int = 0, half: bool = True) -> Tuple[Path, Path]:
    """Write `<name>.yaml` (taming model YAML) and `<name>.ckpt` (Lightning-style dict); return paths."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path, ckpt_path = folder / f"{name}.yaml", folder / f"{name}.ckpt"
    spec = {"model": {"target": "taming.models.vqgan.VQModel", "params": vqgan_params(module.cfg)}}
    cfg_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    sd = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).clone().contiguous()
          for k, v in module.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": int(epoch), "global_step": int(global_step),
                "pytorch-lightning_version": pl.__version__}, ckpt_path)
    return cfg_path, ckpt_path


def load_exported_vqgan(cfg_path: Path, ckpt_path: Path) -> VQGANModule:
    """Rebuild a VQGAN from an exported YAML and load the .ckpt strictly (float32, eval mode)."""
    spec = yaml.safe_load(Path(cfg_path).read_text())["model"]
    p = spec["params"]
    dd = p["ddconfig"]
    cfg = VQGANTrainConfig(ch=dd["ch"], ch_mult=tuple(dd["ch_mult"]), num_res_blocks=dd["num_res_blocks"],
                           attn_resolutions=tuple(dd["attn_resolutions"]), z_channels=dd["z_channels"],
                           embed_dim=p["embed_dim"], n_embed=p["n_embed"], resolution=dd["resolution"])
    module = VQGANModule(cfg)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    prefixes = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")
    sd = {k: v.float() for k, v in ckpt["state_dict"].items() if k.startswith(prefixes)}
    module.load_state_dict(sd, strict=True)
    return module.eval().requires_grad_(False)


@torch.no_grad()
def vqgan_psnr(module: VQGANModule, scenes: Sequence[Scene], n: int = 64, seed: int = 123) -> float:
    """Mean PSNR (dB, images in [0, 1]) of reconstructions of `n` freshly drawn images of `scenes`."""
    module.eval()
    rng = np.random.default_rng(seed)
    images = torch.stack([to_tensor(draw(scenes[i % len(scenes)], rng)) for i in range(n)])
    psnrs = []
    for chunk in images.split(16):
        rec = (module(chunk * 2 - 1)[0].float().clamp(-1, 1) + 1) / 2
        mse = ((rec - chunk) ** 2).mean(dim=(1, 2, 3))
        psnrs.append(10 * torch.log10(1 / mse.clamp_min(1e-10)))
    return float(torch.cat(psnrs).mean())


def train_vqgan(cfg: VQGANTrainConfig, out_dir: Path, name: str = "vqgan") -> Dict[str, float]:
    """Train the VQGAN, export it to `out_dir`, reload the files and measure them; return metrics."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = VQGANModule(cfg)
    start = time.time()
    with _lightning_quiet():
        trainer = _trainer(cfg.steps, cfg.precision, [_LogProgress(cfg.log_every, "vqgan")])
        trainer.fit(module, _loader(train_scenes(), cfg.steps, cfg.batch_size, cfg.seed))
    seconds = time.time() - start
    cfg_path, ckpt_path = export_vqgan(module, Path(out_dir), name, trainer.global_step, trainer.current_epoch)
    loaded = load_exported_vqgan(cfg_path, ckpt_path)
    metrics = {"train_seconds": seconds, "steps": trainer.global_step,
               "psnr_held_out": vqgan_psnr(loaded, HELD_OUT, cfg.eval_images),
               "psnr_train": vqgan_psnr(loaded, train_scenes(), cfg.eval_images),
               "codes_used": float((module.usage > 0.03 / cfg.n_embed).sum())}
    log.info("vqgan done in %.0f s: %s", seconds, metrics)
    return metrics


# ----------------------------------------------------------------------------------------------
# CLIP
# ----------------------------------------------------------------------------------------------

# Partial captions: each family names some attributes; within a family every image has exactly one
# right caption, so each family is a plain classification problem.
PARTIAL_FAMILIES = {
    "shape": ("a {shape}", ("shape",)),
    "color_shape": ("a {color} {shape}", ("color", "shape")),
    "shape_background": ("a {shape} on a {background} background", ("shape", "background")),
    "color_background": ("something {color} on a {background} background", ("color", "background")),
}
_VALUES = {"color": COLORS, "shape": SHAPES, "background": COLORS}


def _family_captions(template: str, attrs: Tuple[str, ...], shapes: Sequence[str] = SHAPES
                     ) -> List[Tuple[str, Tuple[str, ...]]]:
    """All (caption, key) pairs of a partial-caption family; key = the attribute values (`shapes`:
    the shape names, the world's and any distractors')."""
    values = {**_VALUES, "shape": tuple(shapes)}
    out = [((), {})]
    for a in attrs:
        out = [(k + (v,), {**d, a: v}) for k, d in out for v in values[a]]
    return [(template.format(**d), k) for k, d in out if not ("color" in d and d.get("background") == d["color"])]


def write_clip_config(cfg: ClipTrainConfig, folder: Path) -> Path:
    """Write the open_clip model-config JSON `<folder>/<name>.json`; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cfg.name}.json"
    path.write_text(json.dumps(cfg.model_config(), indent=2) + "\n")
    return path


def _create_clip(json_path: Path, pretrained: Optional[Path] = None) -> Tuple[nn.Module, object]:
    """open_clip model + tokenizer from a model-config JSON (and optionally a state-dict file)."""
    import open_clip

    open_clip.add_model_config(json_path)
    name = Path(json_path).stem
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # open_clip warns about random weights through the root logger
    try:
        model = open_clip.create_model(name, pretrained=str(pretrained) if pretrained else None)
        tokenizer = open_clip.get_tokenizer(name)
    finally:
        logger.setLevel(level)
    return model, tokenizer


class ClipModule(pl.LightningModule):
    """An open_clip CLIP trained to match drawn scenes to their captions, seen through cutouts."""

    def __init__(self, cfg: ClipTrainConfig, json_path: Path) -> None:
        super().__init__()
        if not cfg.noise >= 0:
            raise ValueError(f"ClipTrainConfig.noise must be 0 or more, got {cfg.noise}")
        self.cfg = cfg
        self.model, tokenizer = _create_clip(json_path)
        self.scenes = train_scenes()
        # Caption i is scene i's; with distractors, their captions follow (vqclip.shapes.distractors).
        labels = [(s.color, s.shape, s.background) for s in self.scenes]
        shapes = SHAPES
        if cfg.distractors:
            from vqclip.shapes.distractors import DISTRACTORS, distractor_scenes

            labels += distractor_scenes()
            shapes = SHAPES + DISTRACTORS
        self.captions = [format_caption(*label) for label in labels]
        self.register_buffer("tokens", tokenizer(self.captions), persistent=False)
        named = [dict(zip(("color", "shape", "background"), label)) for label in labels]
        self.families = []
        for fam, (template, attrs) in PARTIAL_FAMILIES.items():
            pairs = _family_captions(template, attrs, shapes)
            index = {k: i for i, (_, k) in enumerate(pairs)}
            target = torch.tensor([index[tuple(n[a] for a in attrs)] for n in named])
            self.register_buffer(f"{fam}_tokens", tokenizer([c for c, _ in pairs]), persistent=False)
            self.register_buffer(f"{fam}_target", target, persistent=False)
            self.families.append(fam)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.augment = _clip_augments()
        self.progress: Dict[str, float] = {}
        self.text_frozen = False  # True: the text tower does not train, so its embeddings are kept (text_of)
        self._text_cache: Dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def views(self, images: torch.Tensor, masks: torch.Tensor, ramp: float) -> torch.Tensor:
        """Normalised CLIP inputs: one training cutout per image (augmented), or with probability
        `1 - augmented_share * ramp` the whole image, plain; with `noise`, each view then gets Gaussian
        pixel noise of a std drawn from [0, noise * ramp]."""
        cfg = self.cfg
        x = training_cutouts(images, masks, cfg.image_size, cfg.min_kept)
        x = self.augment(x).clamp(0, 1)
        plain = torch.rand(len(x), device=x.device) >= cfg.augmented_share * ramp
        if plain.any():
            whole = F.interpolate(images[plain], size=(cfg.image_size,) * 2, mode="bilinear",
                                  antialias=True, align_corners=False)
            x[plain] = whole
        if cfg.noise > 0 and ramp > 0:  # noised views ramp up with the cutouts (see `noise`)
            x = add_noise(x, torch.rand(len(x), 1, 1, 1, device=x.device) * (cfg.noise * ramp))
        return (x - self.mean) / self.std

    def caption_text(self) -> torch.Tensor:
        """Normalised text embeddings of all training captions [len(scenes), D]."""
        return self.text_of("tokens")

    def text_of(self, buffer: str) -> torch.Tensor:
        """Normalised text embeddings of the token buffer named `buffer`; computed once and kept
        while `text_frozen` (a text tower that does not train gives the same embeddings every step)."""
        if self.text_frozen and buffer in self._text_cache:
            return self._text_cache[buffer]
        text = F.normalize(self.model.encode_text(getattr(self, buffer)).float(), dim=-1)
        if self.text_frozen:
            self._text_cache[buffer] = text.detach()
        return text

    def caption_loss(self, img: torch.Tensor, target: torch.Tensor, txt: Optional[torch.Tensor] = None
                     ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Cross-entropy of normalised image embeddings against all training captions (index
        `target`; `txt`: their `caption_text()` when the caller already has it), plus the weighted
        mean of the partial-caption losses; and progress numbers."""
        scale = self.model.logit_scale.exp().clamp(max=100)
        txt = self.caption_text() if txt is None else txt
        logits = scale * img @ txt.T
        loss_full = F.cross_entropy(logits, target)
        loss = loss_full
        parts = []
        for fam in self.families:
            ftxt = self.text_of(f"{fam}_tokens")
            parts.append(F.cross_entropy(scale * img @ ftxt.T, getattr(self, f"{fam}_target")[target]))
        if parts and self.cfg.partial_weight:
            loss = loss + self.cfg.partial_weight * torch.stack(parts).mean()
        return loss, {"full": float(loss_full.detach()), "acc": float((logits.argmax(1) == target).float().mean()),
                      "scale": float(scale.detach())}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        cfg = self.cfg
        # Curriculum: shapes are learnt from whole, clean images first (with cutouts and
        # augmentations from the start, shape stays at chance for hundreds of steps); the share of
        # augmented cutouts then ramps up to `augmented_share`.
        start, end = cfg.clean_fraction * cfg.steps, cfg.curriculum * cfg.steps
        ramp = min(1.0, max(0.0, (self.global_step - start) / max(1.0, end - start)))
        x = self.views(batch["image"], batch["mask"], ramp)
        img = F.normalize(self.model.encode_image(x).float(), dim=-1)
        loss, info = self.caption_loss(img, batch["scene"])
        self.progress = {"loss": float(loss.detach()), "aug": ramp, **info}
        return loss

    def configure_optimizers(self):
        return self.adamw(self.cfg.lr, self.cfg.weight_decay, self.cfg.warmup, self.cfg.steps)

    def adamw(self, lr: float, weight_decay: float, warmup: int, steps: int) -> dict:
        """AdamW (no decay on gains, biases, embeddings and the logit scale) with warm-up and cosine decay."""
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "embedding" in n or "logit_scale" in n else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(warmup, steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _clip_augments() -> nn.Module:
    """Perspective, mild colour jitter (hue barely: it is what tells red from orange), noise, blur."""
    import kornia.augmentation as K

    return nn.Sequential(
        K.RandomPerspective(0.2, p=0.25),  # fills with black wedges, as in the generator
        K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.01, p=0.8),
        K.RandomGaussianBlur((5, 5), (0.1, 1.2), p=0.3),
        K.RandomGaussianNoise(mean=0.0, std=0.03, p=0.5),
    )


def _box_sums(masks: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Sum of each mask [B, H, W] inside integer boxes (x0, y0, side), via an integral image."""
    ii = F.pad(masks.cumsum(1).cumsum(2), (1, 0, 1, 0))
    b = torch.arange(len(masks))
    x1, y1 = x0 + side, y0 + side
    return ii[b, y1, x1] - ii[b, y0, x1] - ii[b, y1, x0] + ii[b, y0, x0]


@torch.no_grad()
def training_cutouts(images: torch.Tensor, masks: torch.Tensor, size: int, min_kept: float = 0.7,
                     tries: int = 4) -> torch.Tensor:
    """One cutout per image [B, 3, size, size]: a 60-100% square crop keeping >= `min_kept` of the
    shape, horizontally flipped half the time and rotated up to 15 degrees, resampled with 2x
    supersampling (bilinear, then 2x2 average): antialiased, like the generator's cutouts."""
    b, _, h, w = images.shape
    total = masks.sum(dim=(1, 2)).clamp_min(1e-6)
    side = torch.full((b,), w, dtype=torch.long)
    x0 = torch.zeros(b, dtype=torch.long)
    y0 = torch.zeros(b, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool)
    for _ in range(tries):
        s = (torch.empty(b).uniform_(0.6, 1.0) * w).long().clamp(1, w)
        cx = (torch.rand(b) * (w - s + 1)).long()
        cy = (torch.rand(b) * (h - s + 1)).long()
        ok = ~done & (_box_sums(masks, cx, cy, s) / total >= min_kept)
        side, x0, y0 = torch.where(ok, s, side), torch.where(ok, cx, x0), torch.where(ok, cy, y0)
        done |= ok
    angle = torch.empty(b).uniform_(-15, 15) * math.pi / 180
    flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
    scale = side.float() / w
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, 0, 2] = (x0.float() + side.float() / 2) * 2 / w - 1
    theta[:, 1, 2] = (y0.float() + side.float() / 2) * 2 / h - 1
    grid = F.affine_grid(theta, (b, 3, 2 * size, 2 * size), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.avg_pool2d(out, 2)


def export_clip(module: ClipModule, json_path: Path, half: bool = True) -> Path:
    """Write the CLIP state dict next to its JSON as `<name>.pt` (float16 by default); return the path."""
    path = Path(json_path).with_suffix(".pt")
    sd = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).clone().contiguous()
          for k, v in module.model.state_dict().items()}
    torch.save(sd, path)
    return path


def load_exported_clip(json_path: Path, weights: Path):
    """The exported CLIP through open_clip (add_model_config + create_model), float32, eval mode."""
    model, tokenizer = _create_clip(Path(json_path), Path(weights))
    return model.float().eval().requires_grad_(False), tokenizer


@torch.no_grad()
def clip_zero_shot(model: nn.Module, tokenizer, scenes: Sequence[Scene], n: int = 160, seed: int = 321,
                   cutouts: bool = False) -> Dict[str, float]:
    """Zero-shot accuracy of `model` on `n` fresh images of `scenes`, choosing among all 168 captions.

    Returns {'all', 'color', 'shape', 'background'}: how often the chosen caption is entirely right,
    and how often each of its attributes is. With `cutouts`, each image is seen through one random
    training-style cutout (60-100% crop, flip, rotation) instead of whole.
    """
    candidates = all_scenes()
    txt = F.normalize(model.encode_text(tokenizer([s.caption for s in candidates])).float(), dim=-1)
    mean = torch.tensor(model.visual.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std).view(1, 3, 1, 1)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    rng = np.random.default_rng(seed)
    truth = [scenes[i % len(scenes)] for i in range(n)]
    images = torch.stack([to_tensor(draw(s, rng)) for s in truth])
    right = {"all": 0, "color": 0, "shape": 0, "background": 0}
    for start in range(0, n, 64):
        chunk = images[start:start + 64]
        if cutouts:
            with torch.random.fork_rng():
                torch.manual_seed(seed + start)
                ones = torch.ones(chunk.shape[0], chunk.shape[2], chunk.shape[3])
                x = training_cutouts(chunk, ones, size, min_kept=0.0)
        else:
            x = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        img = F.normalize(model.encode_image((x - mean) / std).float(), dim=-1)
        pred = (img @ txt.T).argmax(1).tolist()
        for t, p in zip(truth[start:start + 64], pred):
            c = candidates[p]
            right["color"] += c.color == t.color
            right["shape"] += c.shape == t.shape
            right["background"] += c.background == t.background
            right["all"] += c == t
    return {k: v / n for k, v in right.items()}


def clip_metrics(model: nn.Module, tokenizer, n: int) -> Dict[str, float]:
    """`clip_zero_shot` on held-out and training scenes, whole and through a cutout, as flat
    `{zero_shot|cutout}_{held_out|train}_{attribute}` entries."""
    metrics: Dict[str, float] = {}
    for label, scenes in (("held_out", list(HELD_OUT)), ("train", train_scenes())):
        for k, v in clip_zero_shot(model, tokenizer, scenes, n).items():
            metrics[f"zero_shot_{label}_{k}"] = v
        for k, v in clip_zero_shot(model, tokenizer, scenes, n, cutouts=True).items():
            metrics[f"cutout_{label}_{k}"] = v
    return metrics


def train_clip(cfg: ClipTrainConfig, out_dir: Path) -> Dict[str, float]:
    """Train the CLIP, export it to `out_dir`, reload it through open_clip and measure; return metrics."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    json_path = write_clip_config(cfg, Path(out_dir))
    module = ClipModule(cfg, json_path)
    start = time.time()
    with _lightning_quiet():
        trainer = _trainer(cfg.steps, cfg.precision, [_LogProgress(cfg.log_every, "clip")])
        trainer.fit(module, _loader(train_scenes(), cfg.steps, cfg.batch_size, cfg.seed + 1, cfg.distractors))
    seconds = time.time() - start
    weights = export_clip(module, json_path)
    model, tokenizer = load_exported_clip(json_path, weights)
    metrics: Dict[str, float] = {"train_seconds": seconds, "steps": trainer.global_step}
    metrics.update(clip_metrics(model, tokenizer, cfg.eval_images))
    log.info("clip done in %.0f s: %s", seconds, metrics)
    return metrics


# ----------------------------------------------------------------------------------------------
# Both
# ----------------------------------------------------------------------------------------------

def _run_one(kind: str, cfg, out_dir: str, threads: int) -> Dict[str, float]:
    """Train one model in this process with `threads` CPU threads (also the subprocess entry point)."""
    if threads:
        torch.set_num_threads(threads)
    if kind == "vqgan":
        return train_vqgan(cfg, Path(out_dir))
    return train_clip(cfg, Path(out_dir))


def _worker_logging(level: int) -> None:
    """Subprocesses log like the parent: to stderr, at the parent's root level."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")


def train_all(out_dir: Path, vqgan: Optional[VQGANTrainConfig], clip: Optional[ClipTrainConfig],
              parallel: bool = False, threads: int = 0, harden: Sequence[Tuple[str, object]] = (),
              clip_for_harden: Optional[ClipTrainConfig] = None) -> Dict[str, Dict[str, float]]:
    """Train the requested models (None: skip), in two processes when `parallel`; then fine-tune
    the CLIP once for each named `harden` phase, in order (`vqclip.shapes.harden.HardenConfig`s:
    against its own maxima and any other negatives each config asks for, on noised views when it
    says so; `clip_for_harden` names its architecture when `clip` is None). Update
    `<out_dir>/training.json` with the configs, metrics and wall time of each part run; return the
    metrics of this call."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(k, c) for k, c in (("vqgan", vqgan), ("clip", clip)) if c is not None]
    start = time.time()
    results: Dict[str, Dict[str, float]] = {}
    in_parallel = parallel and len(jobs) > 1
    if in_parallel:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        per = threads or max(1, torch.get_num_threads() // len(jobs))
        with ProcessPoolExecutor(len(jobs), mp_context=mp.get_context("spawn"),
                                 initializer=_worker_logging, initargs=(logging.getLogger().level,)) as pool:
            futures = {k: pool.submit(_run_one, k, c, str(out_dir), per) for k, c in jobs}
            results = {k: f.result() for k, f in futures.items()}
    else:
        results = {k: _run_one(k, c, str(out_dir), threads) for k, c in jobs}
    walls = {"+".join(k for k, _ in jobs): time.time() - start} if jobs else {}
    if harden:
        from vqclip.shapes.harden import harden_clip

        if threads and not in_parallel:  # after two parallel trainings, hardening alone gets every core
            torch.set_num_threads(threads)
    for name, phase in harden:
        t0 = time.time()
        results[name] = harden_clip(out_dir, clip or clip_for_harden or ClipTrainConfig(), phase)
        walls[name] = time.time() - t0
        jobs.append((name, phase))
    _update_report(out_dir / "training.json", results, {k: dataclasses.asdict(c) for k, c in jobs}, walls)
    log.info("trained %s in %.0f s", ", ".join(results), time.time() - start)
    return results


def _update_report(path: Path, metrics: dict, configs: dict, walls: Dict[str, float]) -> None:
    """Merge this call's parts into training.json, keeping the parts it did not run (a CLIP
    hardened later keeps the record of how the models it started from were trained)."""
    report = json.loads(path.read_text()) if path.is_file() else {}
    if not isinstance(report.get("wall_seconds", {}), dict):  # files written before hardening existed
        report["wall_seconds"] = {"vqgan+clip": report["wall_seconds"]}
    for key, new in (("wall_seconds", walls), ("metrics", metrics), ("configs", configs)):
        report[key] = {**report.get(key, {}), **new}
    path.write_text(json.dumps(report, indent=2) + "\n")
