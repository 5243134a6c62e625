"""The generation loop: one entry point, `generate(config)`, returning a `GenerationResult`.

One step: snap the latent to the codebook (straight-through), decode, clamp to [0, 1] with a
gradient that can pull saturated pixels back, take batched cutouts, augment them, embed them with
CLIP, sum the spherical-distance losses of all prompts, backpropagate into the latent, step the
optimiser, and clamp the latent to the codebook's range. Side effects (files, video, progress
display beyond the bar) belong to callbacks, which receive one dict per step.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vqclip.blocks import block_mean, block_noise, block_tokens, check_block
from vqclip.config import GenerateConfig, batch_count, race_config, race_cuts, race_end, validate
from vqclip.cutouts import (add_noise, build_augments, make_cutouts, make_cutouts_loop, scheduled_blur,
                            scheduled_sigma, spread_sigma)
from vqclip.ensemble import build_guides, check_extra_clip_files, load_extra_clips
from vqclip.errors import ConfigError, NumericalError
from vqclip.images import load_image_tensor, open_image, to_pil
from vqclip.losses import image_loss_terms, parse_color, total_variation
from vqclip.models.clip import ClipModel, check_clip_files, load_clip
from vqclip.models.vqgan import VQGAN, load_vqgan
from vqclip.ops import clamp_with_grad, vector_quantize
from vqclip.perf import autocast, configure_models, resolve_precision, wants_checkpointing
from vqclip.prompts import Target, split_prompts
from vqclip.starts import start_image

log = logging.getLogger(__name__)

Callback = Callable[[Dict[str, Any]], None]
Timer = Callable[[str], ContextManager[Any]]  # timer("decode") wraps one phase of a step
PICK_REPEATS = 4  # init_candidates: each start's first-step loss is averaged over this many draws of the cutouts


def no_timer(phase: str) -> ContextManager[Any]:
    """The default Timer: times nothing."""
    return contextlib.nullcontext()


@dataclass
class Models:
    """The frozen model pair a run uses; load once with `load_models` and pass to many runs."""

    vqgan: VQGAN
    clip: ClipModel
    extra_clips: List[ClipModel] = field(default_factory=list)  # clip.extra: an ensemble


@dataclass
class GenerationResult:
    """What a run produced: final images (PIL), the latent, the loss per step and where files went."""

    images: List[Any]
    z: torch.Tensor
    losses: List[float]
    config: GenerateConfig
    run_dir: Optional[Path] = None
    paths: List[Path] = field(default_factory=list)
    interrupted: bool = False  # stopped early by Ctrl-C/SIGTERM; images are those of the last step
    state_path: Optional[Path] = None  # the resumable state (vqclip.resume), when files were written

    @property
    def seed(self) -> int:
        """The seed the run used (picked at random when the config had none)."""
        return int(self.config.seed)  # type: ignore[arg-type]


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; an unavailable device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"bad value for config key 'device': {name!r}, but no CUDA device is available; allowed: auto, cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("bad value for config key 'device': 'mps' is not available here; allowed: auto, cpu")
    return torch.device(name)


def _resolve_file(spec: str, cache_dir: Optional[str], kind: str, progress: bool) -> str:
    """A local path as is; an http(s) URL downloaded into the cache (verified) and its path returned."""
    if spec.startswith(("http://", "https://")):
        from vqclip.download import fetch_url

        return str(fetch_url(spec, cache_dir, kind=kind, progress=progress))  # type: ignore[arg-type]
    return spec


def vqgan_files(cfg: GenerateConfig, progress: bool = True) -> tuple[str, str]:
    """The (config, checkpoint) paths for the run: explicit paths/URLs, else the named model."""
    if cfg.vqgan.config and cfg.vqgan.checkpoint:
        return (_resolve_file(cfg.vqgan.config, cfg.cache_dir, "config", progress),
                _resolve_file(cfg.vqgan.checkpoint, cfg.cache_dir, "checkpoint", progress))
    from vqclip.registry import ensure_model

    config, checkpoint = ensure_model(cfg.vqgan.name, cfg.cache_dir, progress=progress)  # type: ignore[arg-type]
    return str(config), str(checkpoint)


def load_models(cfg: GenerateConfig, device: Optional[torch.device] = None, progress: bool = True) -> Models:
    """Load (downloading if needed) the VQGAN and CLIP the config names, frozen, on `device`."""
    from vqclip.download import clip_cache_dir

    device = device or resolve_device(cfg.device)
    check_clip_files(cfg.clip.model, cfg.clip.pretrained)  # a missing local file fails before the VQGAN loads
    check_extra_clip_files(cfg)
    config_path, ckpt_path = vqgan_files(cfg, progress)
    from vqclip.memory import check_memory
    from vqclip.models.vqgan import read_model_config

    ddconfig = read_model_config(config_path)["params"]["ddconfig"]
    check_size(cfg.size, 2 ** (len(ddconfig["ch_mult"]) - 1))  # size checks before any weights load
    check_memory(cfg, ddconfig, device, batch=batch_count(cfg) * cfg.race,  # a race holds every copy at once
                 checkpointing=wants_checkpointing(cfg.grad_checkpointing, cfg.size))
    # init images and made starts are encoded; zoom and restyle re-encode frames
    encoder = bool(cfg.init_image) or cfg.init != "random" or cfg.mode in ("zoom", "restyle")
    vqgan = load_vqgan(config_path, ckpt_path, with_encoder=encoder, device=device, attention=cfg.attention)
    clip = load_clip(cfg.clip.model, cfg.clip.pretrained, device=device, cache_dir=clip_cache_dir(cfg.cache_dir))
    return Models(vqgan, clip, load_extra_clips(cfg, device, clip_cache_dir(cfg.cache_dir)))


def check_size(size: Sequence[int], factor: int) -> None:
    """Sizes must be multiples of the VQGAN's downsampling factor; say which size would fit."""
    if any(s % factor for s in size):
        fit = [max(factor, round(s / factor) * factor) for s in size]
        raise ConfigError(f"bad value for config key 'size': {list(size)} is not a multiple of this VQGAN's "
                          f"downsampling factor {factor}; allowed: multiples of {factor}, e.g. size={fit}")


def synth(vqgan: VQGAN, z: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Latent z [B, D, h, w] -> image [B, 3, H, W] float32 in [0, 1], quantised straight-through.

    The codebook lookup stays float32 (a rounded distance could pick another code); the decoder
    runs in `dtype` under autocast.
    """
    z_q = vector_quantize(z.movedim(1, -1), vqgan.codebook).movedim(-1, 1)
    with autocast(z.device, dtype):
        image = vqgan.decode(z_q)
    return clamp_with_grad(image.float().add(1).div(2), 0.0, 1.0)


def embed_cutouts(clip: ClipModel, augment: torch.nn.Module, images: torch.Tensor, cfg: GenerateConfig,
                  timer: Timer = no_timer, noise: Union[float, torch.Tensor] = 0.0) -> torch.Tensor:
    """Images [B, 3, H, W] -> float32 CLIP embeddings of their augmented cutouts [B, cutn, D].

    Cutouts are resampled in one batched call (or a loop, `cutouts.batched=false`), augmented, and
    given Gaussian pixel noise of std `noise` (a number, or one std per cutout [B * cutn, 1, 1, 1]);
    CLIP runs in the config's precision. `timer` wraps the "cutouts" and "clip" phases.
    """
    cut = make_cutouts if cfg.cutouts.batched else make_cutouts_loop
    with timer("cutouts"):
        cuts = add_noise(augment(cut(images, cfg.cutouts.cutn, clip.input_size, cfg.cutouts.cut_pow,
                                     cfg.cutouts.min_size, cfg.cutouts.whole, cfg.cutouts.roll)), noise)
    with timer("clip"), autocast(images.device, resolve_precision(cfg.precision, images.device)):
        embeds = clip.encode_image(cuts)
    return embeds.float().view(images.shape[0], cfg.cutouts.cutn, -1)


def build_targets(cfg: GenerateConfig, models: Models, augment: torch.nn.Module, device: torch.device) -> List[Target]:
    """Text and image prompts -> CLIP targets, computed once before the loop.

    `prompts` and `image_prompts` guide every image; entry i of `batch_prompts` guides image i only.
    """
    targets = []
    for p in split_prompts(cfg.prompts):
        targets.append(Target(models.clip.encode_text([p.text]), p.weight, p.stop, name=p.text).to(device))
    for i, spec in enumerate(cfg.batch_prompts):
        for p in split_prompts([spec]):
            targets.append(Target(models.clip.encode_text([p.text]), p.weight, p.stop, name=p.text,
                                  image=i).to(device))
    for p in split_prompts(cfg.image_prompts):
        image = load_image_tensor(p.text, tuple(cfg.size), "image prompt").to(device)
        with torch.no_grad():
            embeds = embed_cutouts(models.clip, augment, image, cfg)[0]
        targets.append(Target(embeds, p.weight, p.stop, name=p.text).to(device))
    return targets


def initial_latent(cfg: GenerateConfig, vqgan: VQGAN, device: torch.device, batch: int = 1) -> torch.Tensor:
    """Random codebook tokens, or the VQGAN encoding of `init_image` or of the `init` starting image
    (vqclip.starts): [batch, D, H/f, W/f]."""
    w, h = cfg.size
    f = vqgan.factor
    if cfg.init_image or cfg.init != "random":
        if cfg.init_image:
            image = load_image_tensor(cfg.init_image, (w, h), "init image").repeat(batch, 1, 1, 1)
        else:  # one made start per image, so a batch of smooth starts differs
            color = parse_color(cfg.init_color, "init_color")
            image = torch.cat([start_image(cfg.init, w, h, color, cfg.init_cells, cfg.init_amount)
                               for _ in range(batch)])
        with torch.no_grad():
            return vqgan.encode(image.to(device))
    check_block(cfg.latent_block, (h // f, w // f))
    tokens = block_tokens(vqgan.n_embed, batch, h // f, w // f, cfg.latent_block, device)
    return vqgan.codebook[tokens].permute(0, 3, 1, 2).contiguous()


def make_optimizer(name: str, params: Sequence[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """An optimiser by config name (see vqclip.config.OPTIMIZERS)."""
    table = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad,
             "adamax": torch.optim.Adamax, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}
    return table[name.lower()](params, lr=lr)


def cosine_lr(lr: float, final_lr: float, step: int, steps: int) -> float:
    """Learning rate at `step` of `steps`: `lr` at the first, `final_lr` at the last, cosine between."""
    t = min(1.0, step / max(1, steps - 1))
    return final_lr + (lr - final_lr) * 0.5 * (1 + math.cos(math.pi * t))


class Run:
    """One optimisation in progress: targets, latent, optimiser; `step()` advances it by one.

    Built by `generate`, and usable directly by drivers that change things between steps
    (animations swap targets or latents). Seeds torch's RNG from `config.seed` when created.
    `pick=False` skips the choice among `config.init_candidates` starts (a resumed run, whose
    latent, optimiser and RNG state are about to be replaced by the saved ones).
    """

    def __init__(self, config: GenerateConfig, models: Models, device: torch.device, pick: bool = True) -> None:
        self.config, self.models, self.device = config, models, device
        self.dtype = configure_models(config, models, device)  # attention, memory format, checkpointing
        self.timer: Timer = no_timer  # the benchmark times each phase through this
        torch.manual_seed(config.seed)  # type: ignore[arg-type]
        self.augment = build_augments(config.cutouts.augments, models.clip.input_size, config.cutouts.noise)
        # race > 1: until race_end, `race` copies of every image in one batch (vqclip.config.race_config),
        # fewer after each cut of a race with race_halving (vqclip.config.race_cuts)
        self.copies = config.race  # copies of each image now (a race's cuts lower it to 1)
        self.race_end = race_end(config) if self.racing else 0
        self.cuts = race_cuts(config)  # the cuts still to come: (step, copies kept)
        self.race_scores: Optional[torch.Tensor] = None  # after a cut: each copy's score then [copies, B]
        self._shown: Optional[torch.Tensor] = None  # during a race: each image's leading copy at the last step
        population = race_config(config)
        self.targets = build_targets(population, models, self.augment, device)
        self.z = initial_latent(config, models.vqgan, device, batch_count(population)).requires_grad_(True)
        self.z_start = self.z.detach().clone()
        self.guides = build_guides(population, models, device)  # clip.extra models, each with its own targets
        self.z_min = models.vqgan.codebook.min(0).values.view(1, -1, 1, 1)
        self.z_max = models.vqgan.codebook.max(0).values.view(1, -1, 1, 1)
        self.opt = make_optimizer(config.optim.name, [self.z], config.optim.lr)
        self.step_index = 0
        self.losses: List[float] = []  # the total loss per step
        self.image_losses: List[float] = []  # the last step's loss of each image
        self.faults = 0  # NaN/inf faults so far: the first lowers the lr, the second stops the run
        self._good: Optional[tuple] = None  # (z, optimiser state, step) that last gave a finite loss
        self.lr_scale = 1.0  # halved by a numerical fault
        self.pick_scores: Optional[torch.Tensor] = None  # init_candidates > 1: each start's score [candidates, B]
        if pick and config.init_candidates > 1:
            self.pick_scores = self.pick_start(config.init_candidates)

    @torch.no_grad()
    def pick_start(self, candidates: int, repeats: int = PICK_REPEATS) -> torch.Tensor:
        """Draw `candidates - 1` more starts per image (`initial_latent`), score each, with the
        current one, by its first-step loss averaged over `repeats` draws of the cutouts and their
        noise, and start each image from its lowest-scoring one; returns the scores [candidates, B]."""
        best = self.z.detach().clone()
        scores = []
        for k in range(candidates):
            z = best if k == 0 else initial_latent(self.config, self.models.vqgan, self.device, best.shape[0])
            self.z.copy_(z)  # loss_terms reads the latent itself (init_weight): each candidate as its own start,
            self.z_start = z  # so that term reads 0 for every one of them
            scores.append(self.mean_loss(synth(self.models.vqgan, z, self.dtype), repeats))
            if k:
                better = scores[-1] < torch.stack(scores[:-1]).min(0).values
                best[better] = z[better]
        chosen = torch.stack(scores).argmin(0)
        log.info("init_candidates=%d: started from candidate %s (0: the first drawn)", candidates, chosen.tolist())
        self.z.copy_(best)
        self.z_start = best.clone()
        return torch.stack(scores)

    @property
    def racing(self) -> bool:
        """Whether the run still holds several copies of each image (a race not yet ended)."""
        return self.copies > 1

    def end_race(self, choose: bool = True) -> None:
        """End the race phase (`race` > 1): keep each image's lowest-scoring copy (`cut_race(1)`)."""
        self.cut_race(1, choose)

    @torch.no_grad()
    def cut_race(self, keep: int, choose: bool = True) -> None:
        """Cut a race to `keep` copies of each image: score every copy by its loss at this step,
        averaged over PICK_REPEATS draws of the cutouts and their noise, and go on with each image's
        `keep` lowest-scoring copies, their optimiser state included (keep 1 ends the race).
        `choose=False` keeps the first copies unscored (a resumed run, whose latent is about to be
        replaced by the saved one)."""
        b, copies = batch_count(self.config), self.copies
        order = torch.arange(copies, device=self.z.device).view(-1, 1).expand(copies, b)
        if choose:
            scores = self.mean_loss(synth(self.models.vqgan, self.z, self.dtype), PICK_REPEATS)
            self.race_scores = scores.view(copies, b)
            order = torch.argsort(self.race_scores, dim=0, stable=True)  # [copies, B], best first
            log.info("race=%d: after %d steps, kept cop%s %s of each image (0: the first)", self.config.race,
                     self.step_index, "y" if keep == 1 else "ies",
                     order[0].tolist() if keep == 1 else order[:keep].t().tolist())
        rows = (order[:keep] * b + torch.arange(b, device=self.z.device)).reshape(-1)  # copy j of image i: j * B + i
        n = self.z.shape[0]
        state = self.opt.state_dict()
        for entry in state["state"].values():  # per-element optimiser state (Adam's moments) follows its copy
            for key, value in entry.items():
                if torch.is_tensor(value) and value.dim() and value.shape[0] == n:
                    entry[key] = value[rows].clone()
        self.z = self.z.detach()[rows].clone().requires_grad_(True)
        self.z_start = self.z_start[rows].clone()
        self.opt = make_optimizer(self.config.optim.name, [self.z], self.config.optim.lr)
        self.opt.load_state_dict(state)
        population = race_config(dataclasses.replace(self.config, race=keep))
        self.targets = build_targets(population, self.models, self.augment, self.device)
        self.guides = build_guides(population, self.models, self.device)
        self.copies = keep
        self.cuts = [cut for cut in self.cuts if cut[1] < keep]
        self._shown = None  # until the next step: each image's best-scoring copy (copy 0 now)

    def mean_loss(self, image: torch.Tensor, repeats: int) -> torch.Tensor:
        """Each image's total loss [B], averaged over `repeats` draws of the cutouts and their noise
        (how candidate starts and racing copies are scored)."""
        return sum(torch.stack(self.loss_terms(image)).sum(0) for _ in range(repeats)) / repeats

    def loss_terms(self, image: torch.Tensor) -> List[torch.Tensor]:
        """Every loss term for the current image [B, 3, H, W]: one [B] tensor per prompt and CLIP
        model (+ init, + the extra image losses)."""
        terms = []
        cut = self.config.cutouts  # CLIP may see the image blurred early on (coarse to fine)
        seen = scheduled_blur(image, cut.blur, self.step_index, cut.blur_steps * self.config.steps) \
            if cut.blur else image
        noise = spread_sigma(scheduled_sigma(cut.sigma, cut.sigma_end, self.step_index, self.config.steps),
                             cut.sigma, cut.sigma_spread, image.shape[0] * cut.cutn, image.device)
        if self.config.clip.weight:  # 0 only with clip.extra: then this model is not run at all
            embeds = embed_cutouts(self.models.clip, self.augment, seen, self.config, self.timer, noise)
            terms = [t(embeds) * self.config.clip.weight for t in self.targets]
        for guide in self.guides:
            terms += guide.terms(seen, self.config, noise)
        if self.config.init_weight:
            mse = F.mse_loss(self.z, self.z_start, reduction="none").flatten(1).mean(1)
            terms.append(mse * (self.config.init_weight / 2))
        terms += image_loss_terms(image, self.config.losses)
        if self.config.losses.latent_tv:
            terms.append(self.config.losses.latent_tv * total_variation(self.z))
        return terms

    def step(self) -> Dict[str, Any]:
        """One optimisation step; returns the callback dict (image is the one before the update).

        A NaN or inf loss or latent is caught at the step it appears: the first time, the last good
        latent and optimiser state are restored, the learning rate is halved and the step is taken
        again; the second time, the last good latent is restored and NumericalError is raised.
        """
        while self.racing and self.step_index >= self.cuts[0][0]:
            self.cut_race(self.cuts[0][1])
        before = (self.z.detach().clone(), copy.deepcopy(self.opt.state_dict()), self.step_index)
        self.opt.zero_grad(set_to_none=True)
        with self.timer("decode"):
            image = synth(self.models.vqgan, self.z, self.dtype)
        terms = self.loss_terms(image)
        per_image = torch.stack(terms).sum(0)  # [B]: images share no latent, so each loss is its own
        loss = per_image.sum()
        value = loss.item()
        if not math.isfinite(value):
            return self._fault(f"the loss is {value}")
        self._good = before  # this latent gave a finite loss
        with self.timer("backward"):
            loss.backward()
        blocked = self.config.latent_block > 1 and self.step_index < self.config.latent_block_steps * self.config.steps
        if blocked:
            self.z.grad = block_mean(self.z.grad, self.config.latent_block)  # layout first (vqclip.blocks)
        optim = self.config.optim
        if optim.final_lr is not None:
            for group in self.opt.param_groups:
                group["lr"] = cosine_lr(optim.lr, optim.final_lr, self.step_index, self.config.steps) * self.lr_scale
        with self.timer("optimizer"):
            self.opt.step()
            with torch.no_grad():
                if optim.noise:  # exploration, annealed with the learning rate (blockwise while the gradient is)
                    eps = block_noise(self.z, self.config.latent_block if blocked else 1)
                    self.z.add_(eps, alpha=optim.noise * self.opt.param_groups[0]["lr"])
                self.z.copy_(self.z.maximum(self.z_min).minimum(self.z_max))  # stay inside the codebook's range
        if not bool(torch.isfinite(self.z).all()):
            return self._fault("the latent has NaN or inf values after the update")
        if self.racing:  # callbacks and the loss report show each image's leading copy
            b = batch_count(self.config)
            leading = per_image.detach().view(self.copies, b).argmin(0)  # [B]: each image's copy
            self._shown = leading * b + torch.arange(b, device=self.z.device)
            value = float(self.shown(per_image.detach()).sum())
        self.losses.append(value)
        self.image_losses = self.shown(per_image.detach()).tolist()
        info = {"step": self.step_index, "z": self.shown(self.z.detach()), "image": self.shown(image.detach()),
                "loss": self.losses[-1], "losses": [float(self.shown(t.detach()).sum()) for t in terms],
                "image_losses": self.image_losses, "final": False}
        self.step_index += 1
        return info

    def _fault(self, what: str) -> Dict[str, Any]:
        """Go back to the start of the last step whose loss was finite (latent, optimiser, step count);
        the first time halve the lr and take that step again, the second time raise NumericalError."""
        self.faults += 1
        step = self.step_index
        if self._good is not None:
            z, opt_state, self.step_index = self._good
            del self.losses[self.step_index:]
            with torch.no_grad():
                self.z.copy_(z)
            self.opt.load_state_dict(copy.deepcopy(opt_state))  # load_state_dict may keep the tensors given
        lr = self.opt.param_groups[0]["lr"]
        if self.faults > 1 or self._good is None:
            raise NumericalError(f"step {step}: {what} (fault {self.faults}, learning rate {lr:g}); stopped with "
                                 f"the last good latent, from step {self.step_index}; try a lower optim.lr")
        self.lr_scale /= 2  # also scales a cosine schedule (optim.final_lr) from here on
        for group in self.opt.param_groups:
            group["lr"] = group["lr"] / 2
        log.warning("step %d: %s; went back to step %d, the last with a finite loss, and halved the learning "
                    "rate to %g (a second fault stops the run)", step, what, self.step_index, lr / 2)
        return self.step()

    def shown(self, batch: torch.Tensor) -> torch.Tensor:
        """The rows of a per-copy tensor [race * B, ...] that stand for the run's images [B, ...]:
        during a race each image's copy that led at the last step (the first copies before any step);
        outside a race the tensor itself."""
        if not self.racing:
            return batch
        rows = self._shown if self._shown is not None else torch.arange(batch_count(self.config), device=batch.device)
        return batch[rows]

    @torch.no_grad()
    def image(self) -> torch.Tensor:
        """The image [B, 3, H, W] in [0, 1] of the current latent (in a race: the copies [race * B, ...])."""
        return synth(self.models.vqgan, self.z, self.dtype)


def prepare(config: GenerateConfig) -> GenerateConfig:
    """Check a config before any model loads; pick and record a seed when it has none."""
    validate(config)
    if not config.prompts and not config.image_prompts and not config.story.scenes and not config.batch_prompts:
        raise ConfigError("no prompt given; allowed: a text prompt (\"a red car\") or image_prompts=[path]")
    for prompts in (config.prompts, config.image_prompts, config.batch_prompts):
        split_prompts(prompts)  # fail on syntax before loading models
    for path, what in [(config.init_image, "init image")] + [(p.text, "image prompt") for p in split_prompts(config.image_prompts)]:
        if path:
            open_image(path, what)  # an unreadable or unusable image fails here, before models load or files are written
    if config.seed is None:
        config = dataclasses.replace(config, seed=secrets.randbelow(2**31))
        log.info("no seed given; using seed %d", config.seed)
    return config


def generate(config: GenerateConfig, *, models: Optional[Models] = None, callbacks: Sequence[Callback] = (),
             progress: bool = True, save: bool = True,
             setup: Optional[Callable[["Run"], None]] = None,
             resume: Optional[tuple] = None) -> GenerationResult:
    """Run VQGAN+CLIP latent optimisation for `config.steps` steps and return the result.

    Args:
        config: a checked `GenerateConfig` (see `load_config`); `seed=None` picks and records one.
        models: preloaded `Models` (else loaded, downloading named models if needed).
        callbacks: called with a dict per step: step, z, image [B,3,H,W] in [0,1] (before the step's
            update), loss (float), losses (per term, floats) and final (True once, after the last
            step, with the image of the final latent).
        progress: show a tqdm bar with the step and loss.
        save: write a run folder (config, frames, video, final PNG) under `config.output.dir`.
        setup: called once with the `Run` before the first step (a story installs its schedule).
        resume: (run folder, state from `vqclip.resume.load_state`): continue that run in its folder
            (use `vqclip.resume.resume(run_dir)`, which checks the config first).
    Returns:
        GenerationResult with the final PIL images, the latent, the loss per step, the config with
        its seed, and the run folder and files written.
    """
    config = prepare(config)
    if config.mode != "image" and not (config.mode == "story" and setup):
        raise ConfigError(f"mode={config.mode} is run by vqclip.animate.run_mode(config), not generate(); "
                          "allowed here: mode=image")
    device = resolve_device(config.device)
    if save:
        from vqclip.outputs import check_output_dir

        check_output_dir(config.output.dir)  # an unwritable folder fails now, not after the models load
    models = models or load_models(config, device, progress)
    check_size(config.size, models.vqgan.factor)
    from vqclip.memory import check_memory
    from vqclip.resume import apply_state, capture_state, save_state

    check_memory(config, models.vqgan.ddconfig, device, batch=batch_count(config) * config.race,
                 checkpointing=wants_checkpointing(config.grad_checkpointing, config.size))
    run = Run(config, models, device, pick=not resume)  # a resumed run gets its saved latent
    if setup:
        setup(run)
    if resume:
        apply_state(run, resume[1])

    from vqclip import __version__
    from vqclip.outputs import RunWriter

    writer = RunWriter(config, __version__, run_dir=resume[0] if resume else None) if save else None
    hooks = list(callbacks) + ([writer] if writer else [])
    from vqclip.interrupt import StopSignal

    bar = tqdm(total=config.steps, initial=run.step_index, disable=not progress, desc="vqclip", unit="step",
               dynamic_ncols=True)
    stop = StopSignal()
    fault: Optional[NumericalError] = None
    state_path = None
    try:
        with stop:
            try:
                _loop(run, config.steps, hooks, bar, stop)
            except NumericalError as exc:  # the run holds the last good latent: write it, then stop
                fault = exc
            if run.racing and fault is None and not stop.requested:
                run.end_race()  # a run no longer than its race keeps each image's best copy now
            resumable = writer is not None and config.mode == "image"  # a story's schedule is not saved
            state = capture_state(run) if resumable else None  # the RNG as it is after the last completed step
            final = run.shown(run.image())  # stopped during a race: the saved state keeps every copy
            z = run.shown(run.z.detach())
            info = {"step": run.step_index, "z": z, "image": final,
                    "loss": run.losses[-1] if run.losses else float("nan"), "losses": [],
                    "image_losses": run.image_losses, "final": True,
                    "interrupted": stop.requested}
            for hook in hooks:
                hook(info)
            if writer and state is not None:
                state_path = save_state(state, writer.run_dir)
                writer.paths.append(state_path)
    except BaseException:
        if writer:
            writer.abort()
        raise
    finally:
        bar.close()
    if fault is not None:
        where = f"; the last good image is {writer.run_dir / 'image.png'}" if writer else ""
        raise NumericalError(f"{fault}{where}") from None
    return GenerationResult(images=[to_pil(img) for img in final], z=z, losses=run.losses,
                            config=config, run_dir=writer.run_dir if writer else None,
                            paths=writer.paths if writer else [], interrupted=stop.requested,
                            state_path=state_path)


def _loop(run: Run, steps: int, hooks: Sequence[Callback], bar: Any, stop: Any) -> None:
    """Step until `steps` or until a stop is requested, feeding every hook and the progress bar."""
    while run.step_index < steps and not stop.requested:
        info = run.step()
        bar.update(1)
        bar.set_postfix(loss=f"{info['loss']:.4f}")
        for hook in hooks:
            hook(info)
