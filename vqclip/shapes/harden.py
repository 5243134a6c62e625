"""Harden the demo CLIP against what the generator finds: fine-tuning with hard negatives.

A CLIP trained on clean scenes picks the right caption for a real drawing, but a generator that
maximises the similarity of an image to *one* caption finds textures the CLIP scores as high as a
real drawing (docs/shapes.md). The fix is to show the CLIP such images as negatives while it is
fine-tuned (pytorch-lightning) on fresh scenes with its usual caption losses: a margin loss makes
each caption's cosine to a fresh drawing of it beat its cosine to each negative by `margin`.
Four sources of negatives, each tied to a training caption:

- `sampled` (the default, and the one that helps): the CLIP's own climbing buffer
  (`vqclip.shapes.sampler`): low-resolution images moved a few Adam steps up their caption's
  cosine with the current CLIP at every step, so that they follow its maxima as it changes. Those
  the network-free evaluator reads as their caption's scene are left out. Far cheaper than the
  generator (no VQGAN), so the CLIP sees thousands of its own maxima.
- `runs`: generator runs kept going alongside the fine-tuning (`vqclip.shapes.runs`), each one step
  of the generator's own method per fine-tuning step with the current CLIP; their images that the
  evaluator does not read as their caption's scene are negatives like the buffer's.
- `generated`: each round, the generator (`vqclip.generate`, the method of `configs/shapes.yaml`,
  fewer steps) makes images for training captions with the current CLIP; those the evaluator
  does not read as a scene of the world join a pool.
- `negatives`: drawn procedurally by `vqclip.shapes.negatives` in the colours of the batch's
  scenes (with `generated_share` of them taken from the pool instead).

With `noise`, every view the CLIP is trained on (drawings and negatives) gets Gaussian pixel noise
of a std drawn per view from [0, noise]. A classifier of noised images has input gradients that
point from a noised image towards the clean images of its class (the difference of the two
posterior means, over the noise variance), so the generator, noising its cutouts the same way
(`cutouts.sigma`), is pulled from a texture towards a scene. The shipped CLIP ran the defaults,
then `noise_phase` of them (600 more steps, noise up to 1.0). With `climb_noise`, the climbing
buffer also climbs on views noised that way, so that its negatives are the maxima of the noised
CLIP, which the generator climbs to; in that phase it did not raise the generator's success rate
(docs/shapes.md).

Optionally (`adv_eps`), the drawings are also moved to their worst case within a small pixel
budget before the CLIP sees them (adversarial training); `freeze_text` fine-tunes the image tower
only.

Only training captions are used; `HELD_OUT` stays unseen. Entry point: `harden_clip`.

`scripts/train_shapes.py` runs it after training; the shipped CLIP was fine-tuned with the defaults
of `HardenConfig` (climbing negatives only), then with `noise_phase` of them. The generated and
drawn negatives, the generator runs and the adversarial training are options that did not raise
the generator's success rate (docs/shapes.md).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from vqclip.shapes.evaluate import read_image
from vqclip.shapes.negatives import draw_negative
from vqclip.shapes.sampler import NegativeSampler, random_views
from vqclip.shapes.world import draw_item, to_tensor, train_scenes

log = logging.getLogger(__name__)

SHAPES_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "shapes.yaml"  # in a source checkout


@dataclass
class HardenConfig:
    """Rounds, generator settings and fine-tuning schedule of the hardening phase."""

    rounds: int = 1
    generated: int = 0  # images the generator makes per round, for training captions (0: none)
    generate_steps: int = 60  # generator steps per image
    snapshot_every: int = 20  # also keep the image every this many steps (the path there fails too)
    generate_batch: int = 16  # images optimised together
    generator_config: str = str(SHAPES_CONFIG)  # the method whose failures are collected
    steps: int = 800  # fine-tuning steps per round
    batch_size: int = 32  # fresh scenes per step
    negatives: int = 0  # drawn (and pooled generated) negatives per step
    generated_share: float = 0.5  # of the negatives, from the generated pool (once it has any)
    margin: float = 0.2  # a caption's cosine to its drawing must beat that to its negative by this
    negative_weight: float = 2.0  # weight of the margin loss against the negatives
    sampled: int = 32  # negatives per step from the CLIP's own climbing buffer (vqclip.shapes.sampler); 0: off
    buffer: int = 256  # entries in that buffer
    sample_steps: int = 5  # Adam steps each picked entry climbs per fine-tuning step
    sample_lr: float = 0.1  # their step size (logit units)
    sample_res: Tuple[int, ...] = (8, 16, 32)  # resolutions the entries are drawn at
    reinit: float = 0.05  # chance that a picked entry starts over
    sample_noise: float = 0.5  # share of entries that start as random palette colours, not a drawn negative
    runs: int = 0  # generator runs kept going alongside (vqclip.shapes.runs), one step each per step; 0: off
    freeze_text: bool = True  # fine-tune the image tower only (the text tower and logit scale stay as trained)
    adv_eps: float = 0.0  # adversarial training: worst-case pixel change (L-inf, [0, 1] scale); 0: off
    adv_steps: int = 2  # projected-gradient steps that find the worst case
    noise: float = 0.0  # Gaussian pixel noise on every view, std drawn per view from [0, noise] ([0, 1] scale); 0: off
    climb_noise: float = 0.0  # the same on the climbing buffer's views while it climbs; 0: off
    lr: float = 3e-4
    warmup: int = 20
    weight_decay: float = 0.05
    seed: int = 0
    precision: str = "bf16-mixed"
    log_every: int = 50


def check_harden_config(cfg: HardenConfig) -> None:
    """Raise ValueError naming the first field of `cfg` outside its allowed range."""
    counts = ("rounds", "generate_steps", "snapshot_every", "generate_batch", "steps", "batch_size", "buffer",
              "sample_steps")
    for name in counts:
        if int(getattr(cfg, name)) < 1:
            raise ValueError(f"HardenConfig.{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("generated", "negatives", "sampled", "runs"):
        if int(getattr(cfg, name)) < 0:
            raise ValueError(f"HardenConfig.{name} must be 0 or more, got {getattr(cfg, name)}")
    if cfg.negatives + cfg.sampled + cfg.runs < 1:
        raise ValueError("HardenConfig needs negatives, sampled or runs (or several) at least 1, got "
                         f"{cfg.negatives}, {cfg.sampled} and {cfg.runs}")
    if not cfg.sample_res or min(cfg.sample_res) < 2:
        raise ValueError(f"HardenConfig.sample_res must be resolutions of at least 2, got {cfg.sample_res}")
    for name in ("reinit", "sample_noise"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"HardenConfig.{name} must be in 0..1, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.generated_share <= 1.0:
        raise ValueError(f"HardenConfig.generated_share must be in 0..1, got {cfg.generated_share}")
    for name in ("margin", "negative_weight", "adv_eps", "lr", "sample_lr", "noise", "climb_noise"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"HardenConfig.{name} must be 0 or more, got {getattr(cfg, name)}")


NOISE_STEPS = 600  # the second fine-tuning phase: this many steps on noised views
NOISE_MAX = 1.0  # their noise std, drawn per view from [0, NOISE_MAX]


def noise_phase(cfg: HardenConfig, quick: bool = False) -> HardenConfig:
    """The second phase of the shipped recipe: `cfg` run again on views noised up to `NOISE_MAX`,
    for `NOISE_STEPS` steps (`quick`: `cfg`'s own steps)."""
    return replace(cfg, noise=NOISE_MAX, **({} if quick else {"steps": NOISE_STEPS}))


def quick_harden_config() -> HardenConfig:
    """One tiny round: an end-to-end check of the pipeline."""
    return HardenConfig(rounds=1, generated=2, generate_steps=2, snapshot_every=1, generate_batch=2, steps=3,
                        batch_size=4, negatives=4, sampled=2, buffer=4, sample_steps=1, runs=2, adv_eps=8 / 255,
                        warmup=1,
                        log_every=1, precision="32-true")


def _fresh(scenes, index: List[int], rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fresh drawings [N, 3, 128, 128] and their shape masks [N, 128, 128] of `scenes[i]` for each i."""
    images, masks = zip(*(draw_item(scenes[i], rng, 128) for i in index))
    return torch.stack(images), torch.stack(masks)


def _harden_module_class():
    from vqclip.shapes.train import ClipModule

    class HardenModule(ClipModule):
        """The CLIP module, fine-tuned with generated and procedural negatives (see the module doc)."""

        def __init__(self, clip_cfg, json_path: Path, weights: Path, cfg: HardenConfig) -> None:
            super().__init__(clip_cfg, json_path)
            sd = torch.load(weights, map_location="cpu", weights_only=True)
            self.model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
            self.hcfg = cfg
            self.pool_images = torch.zeros(0, 3, 128, 128, dtype=torch.uint8)
            self.pool_scenes: List[int] = []
            self.round = 0
            self.sampler = (NegativeSampler(self.scenes, cfg.buffer, cfg.sample_res, cfg.sample_lr, cfg.reinit,
                                            cfg.seed, cfg.sample_noise) if cfg.sampled else None)
            self.sampled_scenes = 0.0
            self.runs = None  # GeneratorRuns, set by harden_clip when cfg.runs asks for them
            self.run_scenes = 0.0
            self.noise_gen = torch.Generator().manual_seed(cfg.seed + 77)
            self.text_frozen = cfg.freeze_text  # then the caption embeddings are computed once (ClipModule.text_of)
            if cfg.freeze_text:
                for name, param in self.model.named_parameters():
                    if not name.startswith("visual."):
                        param.requires_grad_(False)

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            h = self.hcfg
            rng = np.random.default_rng((h.seed, self.round, batch_idx))
            images, masks, target = batch["image"], batch["mask"], batch["scene"]
            n_batch = len(target)
            text = self.caption_text()  # every training caption, once per step
            n_pool = min(len(self.pool_scenes), round(h.negatives * h.generated_share)) if self.pool_scenes else 0
            pick = rng.integers(len(self.pool_scenes), size=n_pool) if n_pool else np.zeros(0, int)
            # Negatives that get a fresh drawing of their own caption next to them (pooled, sampled).
            own = [self.pool_scenes[i] for i in pick]
            negs = [self.pool_images[torch.from_numpy(pick)].float() / 255] if n_pool else []
            sampled, climbed = self.sampled_negatives(text.detach())
            ran, ran_scenes = self.run_negatives(text.detach())
            sampled, climbed = torch.cat([sampled, ran]), climbed + ran_scenes
            own += climbed
            if own:
                extra, extra_masks = _fresh(self.scenes, own, rng)
                images, masks = torch.cat([images, extra]), torch.cat([masks, extra_masks])
                target = torch.cat([target, torch.tensor(own, dtype=target.dtype)])
            # Procedural negatives in the colours of random drawings of the batch, each paired with it.
            world = np.flatnonzero(target[:n_batch].numpy() < len(self.scenes))  # not the distractors
            pair_drawn = world[rng.integers(len(world), size=h.negatives - n_pool)] if len(world) else \
                np.zeros(0, int)
            drawn = [draw_negative(self.scenes[int(target[i])], rng) for i in pair_drawn]
            negs += [torch.stack([to_tensor(d) for d in drawn])] if drawn else []
            # pooled first, then drawn (both through training cutouts), then sampled (generator-style crops)
            pair = torch.cat([torch.arange(n_batch, n_batch + n_pool), torch.from_numpy(pair_drawn),
                              torch.arange(n_batch + n_pool, len(target))]).long()
            x = self.views(images, masks, 1.0)
            if h.adv_eps > 0:
                x = self.worst_case(x, target, text.detach())
            xn = [self.views(torch.cat(negs), torch.ones(sum(len(n) for n in negs), 128, 128), 1.0)] if negs else []
            if len(sampled):
                xn.append(self.generator_views(sampled))
            seen = torch.cat([x, *xn])
            if h.noise > 0:  # noised views: the CLIP's gradient at noisy images points to its captions' drawings
                sigma = torch.rand(len(seen), 1, 1, 1, generator=self.noise_gen) * h.noise
                seen = seen + sigma * torch.randn(seen.shape, generator=self.noise_gen) / self.std
            emb = F.normalize(self.model.encode_image(seen).float(), dim=-1)
            img, neg = emb[:len(x)], emb[len(x):]
            loss, info = self.caption_loss(img, target, text)
            self.progress = {"loss": 0.0, **info}
            if self.sampler is not None:  # share of the climbed entries that had become their scene
                self.progress["sampled_scenes"] = self.sampled_scenes
            if self.runs is not None:  # share of the generator runs' images read as their scene
                self.progress["run_scenes"] = self.run_scenes
            if len(neg):
                # Each negative must score below a drawing of its caption by `margin` (cosine): the
                # generator climbs the absolute cosine, so a ranking that is right by a hair is not enough.
                txt = text[target[pair]]
                mine, theirs = (img[pair] * txt).sum(-1), (neg * txt).sum(-1)
                loss_neg = F.relu(theirs - mine + h.margin).mean()
                loss = loss + h.negative_weight * loss_neg
                self.progress.update({"neg": float(loss_neg.detach()), "neg_cos": float(theirs.detach().mean()),
                                      "beats": float((mine > theirs + h.margin).float().mean())})
            self.progress["loss"] = float(loss.detach())
            return loss

        def generator_views(self, images: torch.Tensor) -> torch.Tensor:
            """Normalised CLIP inputs of 128x128 images [N, 3, 128, 128], one generator-style crop each."""
            small = F.interpolate(images, size=(self.cfg.image_size,) * 2, mode="area")
            return (random_views(small, self.cfg.image_size) - self.mean) / self.std

        def sampled_negatives(self, text: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
            """Climb `sampled` entries of the sampler with the current CLIP (`text`: its detached
            `caption_text()`); return those the evaluator does not read as their caption's scene
            ([N, 3, 128, 128]) and their captions."""
            h = self.hcfg
            if self.sampler is None:
                return torch.zeros(0, 3, 128, 128), []
            index = self.sampler.pick(h.sampled)
            was_training = self.model.training
            self.model.eval()  # batch-norm statistics of the drawings, not of the climbing images
            self.sampler.climb(index, self.model.encode_image, text, h.sample_steps, self.mean, self.std,
                               self.cfg.image_size, h.climb_noise)
            self.model.train(was_training)
            images = self.sampler.render(index, 128)
            scenes = [int(self.sampler.scene[i]) for i in index]
            images, scenes, self.sampled_scenes = self.not_their_scene(images, scenes)
            return images, scenes

        def run_negatives(self, text: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
            """One step of every generator run with the current CLIP (`text`: its detached
            `caption_text()`); return the images the runs showed that the evaluator does not read as
            their caption's scene ([N, 3, 128, 128]) and their captions."""
            if self.runs is None:
                return torch.zeros(0, 3, 128, 128), []
            was_training = self.model.training
            self.model.eval()
            frozen = [p for p in self.model.visual.parameters() if p.requires_grad]
            for p in frozen:  # the runs need gradients for their latents only
                p.requires_grad_(False)
            try:
                images, scenes = self.runs.step(self.model.encode_image, text, self.mean, self.std)
            finally:
                for p in frozen:
                    p.requires_grad_(True)
                self.model.train(was_training)
            images, scenes, self.run_scenes = self.not_their_scene(images, scenes)
            return images, scenes

        def not_their_scene(self, images: torch.Tensor, scenes: List[int]) -> Tuple[torch.Tensor, List[int], float]:
            """Of `images` ([N, 3, H, W] in [0, 1], made for captions `scenes`), those the evaluator does
            not read as their caption's scene, their captions, and the share that it does read so."""
            pixels = images.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            keep = [k for k, (a, s) in enumerate(zip(pixels, scenes)) if not read_image(a).matches(self.scenes[s])]
            return images[keep], [scenes[k] for k in keep], 1 - len(keep) / max(1, len(scenes))

        def worst_case(self, x: torch.Tensor, target: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
            """Normalised inputs `x` moved, within `adv_eps` per pixel, to where the CLIP is most
            wrong about their captions (`txt`: detached `caption_text()`; projected gradient ascent): adversarial training, which for
            image classifiers is known to make input gradients look more like the class. Here it
            did not help the generator (docs/shapes.md)."""
            h = self.hcfg
            scale = self.model.logit_scale.exp().clamp(max=100).detach()
            eps = h.adv_eps / self.std  # per channel, in normalised units
            delta = (torch.rand_like(x) * 2 - 1) * eps
            for _ in range(h.adv_steps):
                delta.requires_grad_(True)
                with torch.enable_grad():
                    emb = F.normalize(self.model.encode_image(x + delta).float(), dim=-1)
                    grad, = torch.autograd.grad(F.cross_entropy(scale * emb @ txt.T, target), delta)
                delta = (delta.detach() + grad.sign() * eps * (2.5 / h.adv_steps)).clamp(-eps, eps)
                # stay inside the valid pixel range [0, 1]
                pixels = (x + delta) * self.std + self.mean
                delta = (pixels.clamp(0, 1) - self.mean) / self.std - x
            return (x + delta).detach()

        def configure_optimizers(self):
            h = self.hcfg
            return self.adamw(h.lr, h.weight_decay, h.warmup, h.steps)

    return HardenModule


def generate_negatives(models, base, cfg: HardenConfig, round_index: int, count: int
                       ) -> Tuple[torch.Tensor, List[int], Dict[str, float]]:
    """Run the generator (`base`: a GenerateConfig, its method; `cfg.generate_steps` steps) for
    `count` training captions with `models`; return the images it made (every `snapshot_every`
    steps and at the end) that the evaluator does not read as any scene of the world (uint8 [N, 3, 128, 128]), the index
    in `train_scenes()` of the caption each was made for, and counts."""
    from vqclip.generate import generate

    scenes = train_scenes()
    rng = np.random.default_rng((cfg.seed, 1000 + round_index))
    chosen = [int(i) for i in rng.choice(len(scenes), size=count, replace=count > len(scenes))]
    base = replace(base, steps=cfg.generate_steps)
    images, kept, made, read_right, read_scene = [], [], 0, 0, 0
    for start in range(0, count, cfg.generate_batch):
        part = chosen[start:start + cfg.generate_batch]
        run_cfg = replace(base, prompts=[], batch_prompts=[scenes[i].caption for i in part], batch_size=len(part),
                          seed=cfg.seed * 7919 + round_index * 101 + start)
        snaps: List[torch.Tensor] = []

        def keep(info: dict) -> None:
            if info.get("final") or (info["step"] and info["step"] % cfg.snapshot_every == 0):
                snaps.append(info["image"].detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu())

        generate(run_cfg, models=models, callbacks=[keep], save=False, progress=False)
        for snap in snaps:
            for i, image in zip(part, snap):
                made += 1
                reading = read_image(image.permute(1, 2, 0).numpy())
                read_right += reading.matches(scenes[i])
                if reading.shape is not None:  # reads as a scene (its own or another): not a negative
                    read_scene += 1
                    continue
                images.append(image)
                kept.append(i)
    stats = {"made": float(made), "read_right": float(read_right), "read_as_a_scene": float(read_scene),
             "negatives": float(len(kept))}
    stacked = torch.stack(images) if images else torch.zeros(0, 3, 128, 128, dtype=torch.uint8)
    return stacked, kept, stats


def harden_clip(out_dir: Path, clip_cfg, cfg: HardenConfig, vqgan_name: str = "vqgan") -> Dict[str, float]:
    """Fine-tune the exported CLIP in `out_dir` (see the module doc), against the generator run
    with the VQGAN exported there when `cfg.generated` asks for its images; overwrite the CLIP's
    weights file; return metrics (per round for the generator's images)."""
    from vqclip.config import load_config
    from vqclip.generate import load_models
    from vqclip.perf import configure_models, resolve_precision
    from vqclip.shapes.runs import GeneratorRuns
    from vqclip.shapes.train import (_LogProgress, _lightning_quiet, _loader, _trainer, clip_metrics, export_clip,
                                     load_exported_clip)

    check_harden_config(cfg)
    out_dir = Path(out_dir)
    json_path, weights = out_dir / f"{clip_cfg.name}.json", out_dir / f"{clip_cfg.name}.pt"
    vq_yaml, vq_ckpt = out_dir / f"{vqgan_name}.yaml", out_dir / f"{vqgan_name}.ckpt"
    uses_generator = bool(cfg.generated or cfg.runs)
    needed = (json_path, weights) + ((vq_yaml, vq_ckpt) if uses_generator else ())  # the VQGAN only for the generator
    for path in needed:
        if not path.is_file():
            raise FileNotFoundError(f"hardening needs the trained models; missing {path}")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    models = base = None
    if uses_generator:
        base = load_config([cfg.generator_config], [])
        base = replace(base, vqgan=replace(base.vqgan, config=str(vq_yaml), checkpoint=str(vq_ckpt)),
                       clip=replace(base.clip, model=str(json_path), pretrained=str(weights)))
        models = load_models(base, progress=False)
    module = _harden_module_class()(clip_cfg, json_path, weights, cfg)
    if cfg.runs:
        device = torch.device("cpu")
        configure_models(base, models, device)  # the generator's memory format and attention
        module.runs = GeneratorRuns(models.vqgan, module.scenes, cfg.runs, base, cfg.seed, clip_cfg.image_size,
                                    resolve_precision(base.precision, device))
    if not cfg.generated:
        models = None  # no rounds of generated images
    metrics: Dict[str, float] = {}
    start = time.time()
    for r in range(cfg.rounds):
        if models is not None:
            models.clip.model.load_state_dict(module.model.state_dict())
            t0 = time.time()
            images, kept, stats = generate_negatives(models, base, cfg, r, cfg.generated)
            module.pool_images = torch.cat([module.pool_images, images])
            module.pool_scenes = module.pool_scenes + kept
            log.info("harden round %d: generator made %d images in %.0f s, %d read right, %d negatives (pool %d)",
                     r + 1, stats["made"], time.time() - t0, stats["read_right"], len(kept), len(module.pool_scenes))
            metrics.update({f"round{r + 1}_{k}": v for k, v in stats.items()})
        module.round = r
        with _lightning_quiet():
            trainer = _trainer(cfg.steps, cfg.precision, [_LogProgress(cfg.log_every, f"harden {r + 1}")])
            trainer.fit(module, _loader(train_scenes(), cfg.steps, cfg.batch_size, cfg.seed + 10 + r,
                                        clip_cfg.distractors))
    metrics["seconds"] = time.time() - start
    module.model.eval()
    export_clip(module, json_path)
    model, tokenizer = load_exported_clip(json_path, weights)
    metrics.update(clip_metrics(model, tokenizer, clip_cfg.eval_images))
    log.info("harden done in %.0f s: %s", metrics["seconds"], metrics)
    return metrics

