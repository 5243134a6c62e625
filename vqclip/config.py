"""Typed run configuration: dataclass schemas, YAML files and `key=value` overrides.

`load_config(files, overrides)` merges YAML files over the defaults, then omegaconf dotlist
overrides (`steps=500 size=[512,512] cutouts.cutn=64`), checks every value, and returns a real
`GenerateConfig`. Any bad key, type or value raises `ConfigError` with one line naming the key and
what is allowed. This module knows nothing about models or files on disk beyond reading YAML.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, Node, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from vqclip.errors import ConfigError, looked_up
from vqclip.starts import INITS

OPTIMIZERS = ("adam", "adamw", "adagrad", "adamax", "rmsprop", "sgd")
AUGMENTS = ("flip", "affine", "perspective", "jitter", "erasing", "sharpness", "noise", "resized_crop", "zoom_out")
DEVICES = ("auto", "cpu", "cuda", "mps")
ATTENTION = ("sdpa", "taming")
PRECISIONS = ("auto", "float32", "bfloat16")
MODES = ("image", "story", "zoom", "interpolate", "restyle")
MAX_BATCH = 256


def _help(text: str, **kwargs: Any) -> Any:
    """A dataclass field carrying its help text (shown by `--help` and in the README reference)."""
    return field(metadata={"help": text}, **kwargs)


@dataclass
class VQGANConfig:
    """Which VQGAN decodes the latent."""

    # A named model from the registry (see `vqclip models`); downloaded and cached on first use.
    name: Optional[str] = _help("registry model name, e.g. vqgan_imagenet_f16_16384", default="vqgan_imagenet_f16_16384")
    # Overrides `name`: a taming model YAML (local path or http(s) URL).
    config: Optional[str] = _help("taming model YAML: path or http(s) URL (overrides name)", default=None)
    # Overrides `name`: the matching Lightning .ckpt (local path or http(s) URL).
    checkpoint: Optional[str] = _help("taming .ckpt: path or http(s) URL (overrides name)", default=None)


@dataclass
class ExtraCLIPConfig:
    """One more CLIP model in an ensemble (an item of `clip.extra`)."""

    model: str = _help("open_clip model name or model-config JSON path", default="")
    pretrained: Optional[str] = _help("open_clip pretrained tag or local weights file (null: random weights)",
                                      default="openai")
    weight: float = _help("weight of this CLIP's guidance", default=1.0)


@dataclass
class CLIPConfig:
    """Which CLIP model scores the image."""

    # An open_clip model name (`open_clip.list_models()`) or a path to an open_clip model-config JSON.
    model: str = _help("open_clip model name or model-config JSON path", default="ViT-B-32-quickgelu")
    # An open_clip pretrained tag (openai, laion2b_s34b_b79k, ...), a local weights file, or none.
    pretrained: Optional[str] = _help("open_clip pretrained tag or local weights file (null: random weights)", default="openai")
    # The guidance of this model is multiplied by `weight`; 0 turns it off (only with clip.extra models).
    weight: float = _help("weight of this CLIP's guidance (0: off, allowed only with clip.extra)", default=1.0)
    # More CLIP models guiding at once (an ensemble); each sees its own cutouts at its own input size.
    extra: List[ExtraCLIPConfig] = _help("more CLIP models guiding at once: [{model, pretrained, weight}]",
                                           default_factory=list)


@dataclass
class OptimConfig:
    """The optimiser that updates the latent."""

    name: str = _help(f"optimiser: {', '.join(OPTIMIZERS)}", default="adam")
    lr: float = _help("learning rate", default=0.1)
    # Cosine decay from lr to final_lr over the run: big moves first, then refinement.
    final_lr: Optional[float] = _help("learning rate at the last step, reached by cosine decay (null: lr throughout)",
                                      default=None)
    # Langevin-style exploration: fresh noise on the latent after every step lets a run leave a layout it would
    # otherwise only polish (two half shapes, say); scaled by the step's learning rate, so it anneals with it.
    noise: float = _help("std of the Gaussian noise added to the latent after each step, as a multiple of that "
                         "step's learning rate (0: none)", default=0.0)


@dataclass
class CutoutsConfig:
    """How the image is cut up and augmented before CLIP sees it."""

    cutn: int = _help("cutouts per step", default=32)
    # Cutout side = min_side + u**cut_pow * (max_side - min_side), u uniform: >1 favours small cutouts.
    cut_pow: float = _help("cutout size exponent (>1 favours small cutouts)", default=1.0)
    augments: List[str] = _help(f"kornia augmentations by name: {', '.join(AUGMENTS)}",
                                default_factory=lambda: ["flip", "affine", "perspective", "jitter"])
    noise: float = _help("std of the per-cutout Gaussian noise used by the 'noise' augment", default=0.1)
    # true: every cutout of every image resampled by two batched matrix products; false: a Python loop with
    # one crop and resample per cutout, as the original notebooks (slower; kept for comparison).
    batched: bool = _help("resample all cutouts in one batched call (false: one at a time, as the notebooks)",
                          default=True)
    # Smallest cutout side as a fraction of the image's shorter side; 0 keeps CLIP's input size.
    min_size: float = _help("smallest cutout side as a fraction of the image's shorter side, 0..1 "
                            "(0: CLIP's input size)", default=0.0)
    # A share of the cutouts shows the whole composition (the largest centred square).
    whole: float = _help("share of cutouts that show the whole image (largest centred square), 0..1", default=0.0)
    # Wrapped views: each cutout's box shifted by up to this fraction of the image side and read as if the
    # image wrapped around at its edges (a circular shift), so what runs off one edge shows up across the other.
    roll: float = _help("largest shift of each cutout as a fraction of the image side, 0..0.5, the image read "
                        "as wrapping around at its edges (0: off)", default=0.0)
    # Coarse to fine: CLIP sees the image blurred, the blur shrinking linearly to none.
    blur: float = _help("std in pixels of a Gaussian blur of the image CLIP sees at step 0 (0: off)", default=0.0)
    blur_steps: float = _help("fraction of the steps over which that blur shrinks to none, 0..1", default=0.5)
    # Noised views, high to low: every cutout gets Gaussian pixel noise whose std falls from `sigma` at the
    # first step to `sigma_end` at the last (geometrically; linearly when sigma_end is 0). For a CLIP
    # trained on noised images this is what points the gradient at whole scenes early on.
    sigma: float = _help("std of Gaussian pixel noise ([0, 1] scale) on every cutout at the first step (0: off)",
                         default=0.0)
    sigma_end: float = _help("that std at the last step, 0..sigma (geometric decay; linear to 0 when 0)",
                             default=0.0)
    # Spread: each cutout's std drawn log-uniformly between the step's std and a share of the way up to
    # `sigma`, so that some views keep asking for the whole scene while others refine the edges.
    sigma_spread: float = _help("0..1: each cutout's noise std drawn log-uniformly from the step's std up to "
                                "step std * (sigma / step std) ** sigma_spread (0: all at the step's std)",
                                default=0.0)


@dataclass
class OutputConfig:
    """Where and what to write."""

    dir: str = _help("folder under which each run gets a new sub-folder", default="outputs")
    save_every: int = _help("write a frame every N steps (0: no frames)", default=50)
    video: bool = _help("write an mp4 progress video", default=False)
    video_every: int = _help("add a video frame every N steps", default=1)
    fps: int = _help("progress video frames per second", default=30)


@dataclass
class SceneConfig:
    """One scene of a story (an item of `story.scenes`)."""

    prompts: List[str] = _help('the scene\'s text prompts, "text:weight:stop"', default_factory=list)
    # Length in steps; or leave it out and give the next scene a `start`.
    steps: Optional[int] = _help("the scene's length in steps", default=None)
    start: Optional[int] = _help("the step at which the scene begins (instead of the previous scene's length)",
                                 default=None)


@dataclass
class StoryConfig:
    """mode=story: the prompts change over the run, scene by scene."""

    scenes: List[SceneConfig] = _help("scenes in order: [{prompts, steps or start}] (else prompts split on '^')",
                                      default_factory=list)
    # Length of a scene that does not say; the shorthand "a^b^c" uses it for every scene.
    steps_per_prompt: Optional[int] = _help("steps of each scene that gives no length (the '^' shorthand)",
                                            default=None)
    # Over `ramp` steps from a scene's start, its prompts fade in as the previous scene's fade out.
    ramp: int = _help("steps over which prompt weights cross-fade into each new scene (0: switch at once)", default=0)


@dataclass
class AnimationConfig:
    """mode=zoom|interpolate|restyle: a video, one optimised frame after another."""

    frames: int = _help("frames to render (zoom, interpolate; restyle renders the input's frames)", default=60)
    steps_per_frame: int = _help("optimisation steps for every frame after the first (which gets `steps`)",
                                 default=10)
    fps: Optional[float] = _help("video frames per second (null: the input's rate for restyle, else 12)",
                                 default=None)
    gif: bool = _help("also write an animated GIF", default=False)
    save_frames: bool = _help("also write every frame as a PNG under frames/", default=False)
    carry_optimizer: bool = _help("keep the optimiser state from frame to frame (false: a fresh one per frame)",
                                  default=False)
    # Each of these is a number or keyframes "frame: value, frame: value", linearly interpolated.
    zoom: str = _help('zoom: scale per frame (>1 zooms in), a number or keyframes "0: 1.0, 60: 1.05"', default="1.0")
    shift_x: str = _help("zoom: pixels per frame the picture moves right (number or keyframes)", default="0")
    shift_y: str = _help("zoom: pixels per frame the picture moves down (number or keyframes)", default="0")
    rotate: str = _help("zoom: degrees per frame, counter-clockwise (number or keyframes)", default="0")


@dataclass
class RestyleConfig:
    """mode=restyle: every frame of an input video, restyled by the prompts."""

    video: Optional[str] = _help("the input video (any format ffmpeg reads)", default=None)
    # Each frame starts from (1 - blend) * its own encoding + blend * the previous output's latent.
    blend: float = _help("how much of the previous output each frame starts from, 0..1 (temporal stability)",
                         default=0.3)
    max_frames: Optional[int] = _help("restyle at most this many frames from the start (null: all)", default=None)
    audio: bool = _help("copy the input's audio track into the output video when it has one", default=True)


@dataclass
class LossesConfig:
    """Extra loss terms on the image; every weight is 0 (off) by default."""

    tv: float = _help("weight of total variation (smoothness)", default=0.0)
    # On the latent itself (no decoder or straight-through estimate between): piecewise-constant token grids.
    latent_tv: float = _help("weight of total variation of the latent grid (flat regions of one token)", default=0.0)
    symmetry: float = _help("weight of left-right mirror symmetry", default=0.0)
    saturation: float = _help("weight of the distance of the mean saturation to saturation_target", default=0.0)
    saturation_target: float = _help("the mean HSV saturation to keep near, 0..1", default=0.5)
    palette: float = _help("weight of the distance of every pixel to its nearest palette colour", default=0.0)
    palette_colors: List[str] = _help('palette colours as hex, e.g. ["#e63c32", "#2850c8"]', default_factory=list)
    tones: float = _help("weight of the distance of every pixel to the nearest of the image's own tones_k "
                         "dominant colours (few flat colours)", default=0.0)
    tones_k: int = _help("how many dominant colours the tones loss allows", default=2)
    frame: float = _help("weight of the colour variance of the image's outer band (frame_width deep): one flat "
                         "colour around the edges keeps the subject inside the picture", default=0.0)
    frame_width: float = _help("the frame loss's band, as a fraction of the shorter side, in (0, 0.5]", default=0.0625)


@dataclass
class GenerateConfig:
    """Everything a generation run needs; `load_config` builds one from defaults, YAML and overrides."""

    # Text prompts in the syntax "text:weight:stop"; several in one string separated by "|".
    prompts: List[str] = _help('text prompts, "text:weight:stop", "|" separates several', default_factory=list)
    # Image prompts, the same syntax with a path or URL as the text.
    image_prompts: List[str] = _help('image prompts, "path:weight:stop"', default_factory=list)
    init_image: Optional[str] = _help("start from this image (encoded by the VQGAN) instead of random tokens", default=None)
    init_weight: float = _help("pull the latent toward its starting point with this weight", default=0.0)
    # Without init_image: random codebook tokens, or a made image encoded by the VQGAN (vqclip.starts).
    init: str = _help(f"start without init_image: {', '.join(INITS)} (flat: init_color everywhere; "
                      "smooth: low-frequency colour noise), encoded by the VQGAN", default="random")
    init_color: str = _help('colour of init=flat, hex "#rrggbb"', default="#808080")
    init_cells: int = _help("init=smooth: random colours per image side (fewer: larger colour patches)", default=4)
    init_amount: float = _help("init=smooth: contrast of the colour patches around mid-grey, 0..1 (1: full range)",
                               default=0.5)
    init_candidates: int = _help("draw this many starts per image (init random or smooth) and keep the one with "
                                 "the lowest first-step loss (1: the first drawn)", default=1)
    race: int = _help("optimise this many copies of each image, each from its own drawn start, for the first "
                      "race_steps of the run, then keep the copy with the lowest loss (1: off)", default=1)
    race_steps: float = _help("race > 1: fraction of the steps the copies run before one is kept, 0..1 "
                              "(exclusive)", default=0.25)
    race_halving: bool = _help("race > 2: successive halving, the race cut in rounds that each keep the "
                               "lower-loss half of each image's copies (rounded up; 4 -> 2 -> 1), the last at "
                               "race_steps, so later rounds run fewer copies (false: every copy to the end)",
                               default=False)
    # Coarse to fine in the latent: early on, whole blocks of tokens move together (vqclip.blocks).
    latent_block: int = _help("for the first latent_block_steps, the latent moves in blocks of this many tokens "
                              "per side (layout before detail; 1: off)", default=1)
    latent_block_steps: float = _help("fraction of the steps during which latent_block applies, 0..1", default=0.5)
    seed: Optional[int] = _help("random seed (null: pick one and record it)", default=None)
    size: List[int] = _help("[width, height] in pixels; multiples of the VQGAN's downsampling factor",
                            default_factory=lambda: [256, 256])
    steps: int = _help("optimisation steps", default=300)
    device: str = _help(f"device: {', '.join(DEVICES)} (auto: cuda if available, else cpu)", default="auto")
    # sdpa: the decoder's attention through scaled_dot_product_attention (same weights; memory not
    # quadratic in the latent size); taming: taming's own bmm + softmax, as the original notebooks.
    attention: str = _help("decoder attention: sdpa (fused, lean) or taming (the original)", default="sdpa")
    # bfloat16 runs the decoder and CLIP under autocast; the latent, the codebook lookup, the loss
    # and the optimiser stay float32. auto: bfloat16 on CUDA devices that support it, and on CPUs
    # with native bfloat16 instructions (avx512_bf16 / amx_bf16); else float32.
    precision: str = _help(f"compute precision of decoder and CLIP: {', '.join(PRECISIONS)}", default="auto")
    # null: on for CUDA (where NHWC convolutions are faster), off on the CPU.
    channels_last: Optional[bool] = _help("decoder in channels_last memory format (null: on for CUDA, off on CPU)",
                                          default=None)
    # Recompute each decoder block's activations during the backward pass instead of keeping them:
    # a little slower, far less memory. null: on from CHECKPOINT_PIXELS (768x768) up.
    grad_checkpointing: Optional[bool] = _help("recompute decoder activations in backward to save memory "
                                               "(null: on from 768x768)", default=None)
    compile: bool = _help("torch.compile the decoder and CLIP image tower (slow first step)", default=False)
    # Several images in one run, each with its own latent, sharing every decoder and CLIP call.
    batch_size: int = _help("images optimised together (several starts of the same prompts)", default=1)
    # One entry per image ("text:weight:stop|..."); `prompts` then guide every image as well.
    batch_prompts: List[str] = _help("one prompt per image of the batch (sets the batch size); prompts "
                                     "apply to all", default_factory=list)
    mode: str = _help(f"what to make: {', '.join(MODES)} (see docs/animation.md)", default="image")
    vqgan: VQGANConfig = field(default_factory=VQGANConfig)
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    cutouts: CutoutsConfig = field(default_factory=CutoutsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    story: StoryConfig = field(default_factory=StoryConfig)
    animation: AnimationConfig = field(default_factory=AnimationConfig)
    restyle: RestyleConfig = field(default_factory=RestyleConfig)
    losses: LossesConfig = field(default_factory=LossesConfig)
    # Where downloaded models live (null: $VQCLIP_CACHE, else the user's cache folder).
    cache_dir: Optional[str] = _help("download cache folder (null: $VQCLIP_CACHE or the user cache dir)", default=None)


def iter_fields(cls: type = GenerateConfig, prefix: str = "") -> Iterable[tuple[str, str, Any]]:
    """Yield (dotted key, help text, default) for every leaf config field, for `--help` and docs."""
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
            yield from iter_fields(_SECTIONS[f.name], key + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        yield key, f.metadata.get("help", ""), default


_SECTIONS = {"vqgan": VQGANConfig, "clip": CLIPConfig, "optim": OptimConfig, "cutouts": CutoutsConfig,
             "output": OutputConfig, "story": StoryConfig, "animation": AnimationConfig, "restyle": RestyleConfig,
             "losses": LossesConfig}
_LIST_ITEMS = {SceneConfig: "story.scenes", ExtraCLIPConfig: "clip.extra"}


def _field_type(key: str) -> Any:
    """The declared type of config key `key` (dotted; list items as `[i]`), or None if unknown."""
    tp: Any = GenerateConfig
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        tp = _strip_optional(tp)
        if part.startswith("["):
            args = typing.get_args(tp)
            if typing.get_origin(tp) not in (list, tuple) or not args:
                return None
            tp = args[0]
        elif dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                return None
            tp = hints[part]
        else:
            return None
    return tp


def _strip_optional(tp: Any) -> Any:
    """`X` for `Optional[X]`, else `tp`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) is typing.Union and len(args) == 1 else tp


def _describe(tp: Any, key: str = "") -> Optional[str]:
    """A declared config type in words, for the 'allowed:' part of an error; None if unknown."""
    optional = _strip_optional(tp) is not tp
    tp = _strip_optional(tp)
    words = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
    plural = {bool: "true/false values", int: "integers", float: "numbers", str: "text values"}
    if tp in words:
        text = words[tp]
    elif typing.get_origin(tp) in (list, tuple, collections.abc.Sequence):
        item = (typing.get_args(tp) or (None,))[0]
        if dataclasses.is_dataclass(item):
            keys = ", ".join(f.name for f in dataclasses.fields(item))
            text = f"a list of sections (each with keys {keys})"
        else:
            text = f"a list of {plural[item]}" if item in plural else "a list"
    elif dataclasses.is_dataclass(tp):
        keys = ", ".join(f.name for f in dataclasses.fields(tp))
        text = (f"a section with keys {keys}" if key.endswith("]") or not key
                else f"a section of keys ({keys}), set one at a time as {key}.KEY=VALUE")
    else:
        return None
    if optional:
        text = "true, false or null" if tp is bool else text + " or null"
    return text


def _omegaconf_message(exc: OmegaConfBaseException) -> str:
    """Turn an omegaconf exception into one line naming the key and what is allowed."""
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    if isinstance(exc, ConfigKeyError) or type(exc).__name__ == "ConfigAttributeError":
        item = _LIST_ITEMS.get(getattr(exc, "object_type", None))  # a key inside a list item
        if item:
            allowed = ", ".join(f.name for f in dataclasses.fields(getattr(exc, "object_type")))
            return f"unknown config key '{key}' in an item of {item}; allowed keys there: {allowed}"
        parent = key.rsplit(".", 1)[0] if key and "." in key else ""
        section = _SECTIONS.get(parent.split(".")[-1], GenerateConfig) if parent else GenerateConfig
        allowed = ", ".join(f.name for f in dataclasses.fields(section))
        return f"unknown config key '{key}'; allowed keys{' under ' + parent if parent else ''}: {allowed}"
    allowed, where = None, ""
    if key and isinstance(exc, ValidationError):
        allowed = _describe(_field_type(str(key)), str(key))
        owner = getattr(exc, "object_type", None)
        if allowed is None and owner in _LIST_ITEMS:  # a key inside a list item: omegaconf drops the path
            hints = typing.get_type_hints(owner)
            name = str(key).rsplit(".", 1)[-1]
            allowed = _describe(hints[name], name) if name in hints else None
            where = f" in an item of {_LIST_ITEMS[owner]}"
    if allowed:  # omegaconf's own wording ("AnyNode is not a ListConfig...") names neither value nor type
        value = _plain(getattr(exc, "value", None))
        shown = "nothing (null)" if value is None else repr(value)
        return f"bad value for config key '{key}'{where}: {shown}; allowed: {allowed}"
    msg = str(exc).splitlines()[0]
    return f"bad value for config key '{key}': {msg}" if key else f"bad config: {msg}"


def _plain(value: Any) -> Any:
    """An omegaconf container as plain Python (for messages); anything else as it is."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=False)
    if isinstance(value, Node):  # a leaf node (AnyNode, IntegerNode, ...)
        return value._value()
    return value


def _merge(cfg: Any, data: Any, source: str) -> Any:
    """`OmegaConf.merge(cfg, data)`; a list or single value given where the config has a section,
    or a mapping where it has a list (which omegaconf reports without the key), becomes a
    ConfigError naming the key, the source and what is allowed."""
    try:
        return OmegaConf.merge(cfg, data)
    except (TypeError, ValidationError) as exc:
        if isinstance(exc, ValidationError) and getattr(exc, "full_key", None):
            raise  # omegaconf named the key: _omegaconf_message words it
        found = _kind_mismatch(OmegaConf.to_container(cfg, resolve=False),
                               OmegaConf.to_container(data, resolve=False), "")
        if found is None:
            raise ConfigError(f"bad config in {source}: {str(exc).splitlines()[0]}") from None
        key, want, got = found
        allowed = _describe(_field_type(key), key) or f"a {want}"
        raise ConfigError(f"bad value for config key '{key}' in {source}: a {got}; allowed: {allowed}") from None


def _kind_mismatch(have: Any, new: Any, prefix: str) -> Optional[Tuple[str, str, str]]:
    """The first key (dotted) where `new` holds something other than a mapping and `have` a
    mapping, or a mapping where `have` holds a list, with what the config expects and what was
    given; None if there is none."""
    if not (isinstance(have, dict) and isinstance(new, dict)):
        return None
    kinds = {dict: "mapping", list: "list"}
    for key, value in new.items():
        if key not in have:
            continue
        full = f"{prefix}{key}"
        want, got = kinds.get(type(have[key])), kinds.get(type(value), "single value")
        if want and want != got and (want == "mapping" or got == "mapping"):
            return full, want, got
        found = _kind_mismatch(have[key], value, full + ".")
        if found:
            return found
    return None


def _load_yaml(path: str) -> Any:
    """Read one YAML config file, turning parse errors into ConfigError with line and column."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {looked_up(path)}")
    try:
        data = OmegaConf.load(p)
    except Exception as exc:  # yaml.YAMLError and friends; keep the position the parser reports
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, type(OmegaConf.create({}))):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not a {type(data).__name__}")
    return data


def _from_dotlist(overrides: Sequence[str]) -> Any:
    """omegaconf's dotlist parsing, with a value YAML cannot read reported as a ConfigError naming it."""
    import yaml

    for item in overrides:
        try:
            OmegaConf.from_dotlist([item])
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"bad override {item!r}: its value is not valid YAML ({problem})") from None
    return OmegaConf.from_dotlist(list(overrides))


def load_config(files: Sequence[str] = (), overrides: Sequence[str] = (),
                prompts: Optional[Sequence[str]] = None) -> GenerateConfig:
    """Build a checked GenerateConfig: defaults <- YAML files (in order) <- dotlist overrides.

    `prompts`, when given (the CLI's positional prompt), replaces the `prompts` key.
    Raises ConfigError with one line naming the offending key and what is allowed.
    """
    try:
        return _load_config(files, overrides, prompts)
    except ConfigError as exc:  # keys and values typed by a user may hold newlines: keep the message one line
        raise ConfigError(one_line(str(exc))) from None


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped, so an error stays one line."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


def _load_config(files: Sequence[str], overrides: Sequence[str], prompts: Optional[Sequence[str]]) -> GenerateConfig:
    """load_config's body (see there)."""
    try:
        cfg = OmegaConf.structured(GenerateConfig)
        for path in files:
            cfg = _merge(cfg, _load_yaml(path), f"config file {path}")
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override '{bad[0]}' is not of the form key=value (e.g. steps=100)")
        cfg = _merge(cfg, _from_dotlist(overrides), "overrides")
        if prompts is not None:
            cfg.prompts = list(prompts)
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(_omegaconf_message(exc)) from None
    except ValueError as exc:  # from_dotlist on malformed values
        raise ConfigError(f"bad override: {exc}") from None
    assert isinstance(obj, GenerateConfig)
    validate(obj)
    return obj


def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"bad value for config key '{key}': {value!r}; allowed: {allowed}")


def validate(cfg: GenerateConfig) -> None:
    """Check every value that a type alone cannot (ranges, names, shapes); raise ConfigError."""
    for key, value in _leaves(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"bad value for config key '{key}': {value}; allowed: a finite number")
    _check(len(cfg.size) == 2 and all(isinstance(s, int) and s > 0 for s in cfg.size), "size",
           "[width, height], two positive integers", cfg.size)
    _check(max(cfg.size) <= 8192, "size", "sides of at most 8192 pixels", cfg.size)
    _check(cfg.steps > 0, "steps", "a positive integer", cfg.steps)
    _check(cfg.seed is None or 0 <= cfg.seed < 2**63, "seed", "null or an integer in [0, 2**63)", cfg.seed)
    _check(cfg.init_weight >= 0, "init_weight", "a number >= 0", cfg.init_weight)
    _check(cfg.device in DEVICES or cfg.device.startswith("cuda:"), "device",
           ", ".join(DEVICES) + " or cuda:N", cfg.device)
    _check(cfg.attention in ATTENTION, "attention", ", ".join(ATTENTION), cfg.attention)
    _check(cfg.precision in PRECISIONS, "precision", ", ".join(PRECISIONS), cfg.precision)
    _check(0 < cfg.batch_size <= MAX_BATCH, "batch_size", f"an integer in 1..{MAX_BATCH}", cfg.batch_size)
    if cfg.batch_prompts:
        _check(cfg.batch_size in (1, len(cfg.batch_prompts)), "batch_size",
               f"1 or {len(cfg.batch_prompts)} (the number of batch_prompts)", cfg.batch_size)
        _check(len(cfg.batch_prompts) <= MAX_BATCH, "batch_prompts", f"at most {MAX_BATCH} entries",
               len(cfg.batch_prompts))
    if (cfg.batch_size > 1 or cfg.batch_prompts) and cfg.mode != "image":
        raise ConfigError(f"batch_size/batch_prompts make several images at once, which only mode=image does "
                          f"(mode={cfg.mode}); allowed: mode=image, or batch_size=1 and no batch_prompts")
    _check(cfg.optim.name.lower() in OPTIMIZERS, "optim.name", ", ".join(OPTIMIZERS), cfg.optim.name)
    _check(cfg.optim.lr > 0, "optim.lr", "a number > 0", cfg.optim.lr)
    _check(cfg.optim.final_lr is None or cfg.optim.final_lr > 0, "optim.final_lr", "null or a number > 0",
           cfg.optim.final_lr)
    _check(math.isfinite(cfg.optim.noise) and cfg.optim.noise >= 0, "optim.noise", "a number >= 0", cfg.optim.noise)
    _check(cfg.cutouts.cutn > 0, "cutouts.cutn", "a positive integer", cfg.cutouts.cutn)
    _check(cfg.cutouts.cut_pow > 0, "cutouts.cut_pow", "a number > 0", cfg.cutouts.cut_pow)
    _check(cfg.cutouts.noise >= 0, "cutouts.noise", "a number >= 0", cfg.cutouts.noise)
    _check(0 <= cfg.cutouts.min_size <= 1, "cutouts.min_size", "a number in [0, 1]", cfg.cutouts.min_size)
    _check(0 <= cfg.cutouts.whole <= 1, "cutouts.whole", "a number in [0, 1]", cfg.cutouts.whole)
    _check(0 <= cfg.cutouts.roll <= 0.5, "cutouts.roll", "a number in [0, 0.5]", cfg.cutouts.roll)
    _check(cfg.cutouts.blur >= 0, "cutouts.blur", "a number >= 0", cfg.cutouts.blur)
    _check(0 <= cfg.cutouts.blur_steps <= 1, "cutouts.blur_steps", "a number in [0, 1]", cfg.cutouts.blur_steps)
    _check(cfg.cutouts.sigma >= 0, "cutouts.sigma", "a number >= 0", cfg.cutouts.sigma)
    _check(0 <= cfg.cutouts.sigma_end <= cfg.cutouts.sigma or cfg.cutouts.sigma_end == 0, "cutouts.sigma_end",
           f"a number in [0, cutouts.sigma = {cfg.cutouts.sigma}]", cfg.cutouts.sigma_end)
    _check(0 <= cfg.cutouts.sigma_spread <= 1, "cutouts.sigma_spread", "a number in [0, 1]", cfg.cutouts.sigma_spread)
    _check(not cfg.cutouts.sigma_spread or cfg.cutouts.sigma > 0, "cutouts.sigma_spread",
           "0 unless cutouts.sigma > 0 (it spreads the cutouts' noise; a step whose std is 0 stays clean)",
           cfg.cutouts.sigma_spread)
    _check(cfg.init in INITS, "init", ", ".join(INITS), cfg.init)
    _check(cfg.init_cells >= 1, "init_cells", "an integer >= 1", cfg.init_cells)
    _check(0 <= cfg.init_amount <= 1, "init_amount", "a number in [0, 1]", cfg.init_amount)
    drawn = cfg.init in ("random", "smooth") and not cfg.init_image
    for key in ("init_candidates", "race"):  # both draw several starts per image
        value = getattr(cfg, key)
        _check(value >= 1, key, "an integer >= 1", value)
        _check(value == 1 or drawn, key, "1 unless the start is drawn at random (init=random or init=smooth, "
               "no init_image)", value)
    _check(cfg.race == 1 or cfg.mode == "image", "race", f"1 unless mode=image (mode={cfg.mode})", cfg.race)
    _check(0 < cfg.race_steps < 1, "race_steps", "a number between 0 and 1 (exclusive)", cfg.race_steps)
    _check(cfg.losses.tones_k >= 1, "losses.tones_k", "an integer >= 1", cfg.losses.tones_k)
    _check(cfg.latent_block >= 1, "latent_block", "an integer >= 1", cfg.latent_block)
    _check(0 <= cfg.latent_block_steps <= 1, "latent_block_steps", "a number in [0, 1]", cfg.latent_block_steps)
    from vqclip.losses import parse_color

    parse_color(cfg.init_color, "init_color")
    unknown = [a for a in cfg.cutouts.augments if a not in AUGMENTS]
    _check(not unknown, "cutouts.augments", ", ".join(AUGMENTS), unknown[0] if unknown else None)
    _check(cfg.output.save_every >= 0, "output.save_every", "an integer >= 0", cfg.output.save_every)
    _check(cfg.output.video_every > 0, "output.video_every", "a positive integer", cfg.output.video_every)
    _check(0 < cfg.output.fps <= 240, "output.fps", "an integer in 1..240", cfg.output.fps)
    _check(bool(cfg.output.dir), "output.dir", "a folder path", cfg.output.dir)
    if not (cfg.vqgan.name or (cfg.vqgan.config and cfg.vqgan.checkpoint)):
        raise ConfigError("config key 'vqgan' needs either vqgan.name or both vqgan.config and vqgan.checkpoint")
    if bool(cfg.vqgan.config) != bool(cfg.vqgan.checkpoint):
        raise ConfigError("config keys 'vqgan.config' and 'vqgan.checkpoint' must be given together")
    from vqclip.animate.checks import validate_extras

    validate_extras(cfg)


def batch_count(cfg: GenerateConfig) -> int:
    """How many images a run makes: one per batch prompt, else `batch_size` (`race` copies of each are
    optimised at once for the race's steps: see `race_config`)."""
    return len(cfg.batch_prompts) or cfg.batch_size


def race_config(cfg: GenerateConfig) -> GenerateConfig:
    """The config of a run's race phase: `race` copies of every image in one batch (copy k of image i
    is entry k * batch_count + i, with image i's batch prompt); `cfg` itself when race is 1."""
    if cfg.race == 1:
        return cfg
    if cfg.batch_prompts:
        return dataclasses.replace(cfg, batch_prompts=list(cfg.batch_prompts) * cfg.race)
    return dataclasses.replace(cfg, batch_size=cfg.batch_size * cfg.race)


def race_end(cfg: GenerateConfig) -> int:
    """The step at which a race (`race` > 1) keeps one copy per image: race_steps of the steps, at least 1."""
    return max(1, round(cfg.race_steps * cfg.steps))


def race_cuts(cfg: GenerateConfig) -> List[Tuple[int, int]]:
    """A race's cuts as (step, copies kept per image), in order; the last keeps one copy at `race_end`.

    Without `race_halving` that is the only cut. With it (successive halving), each round keeps the
    lower-loss half of the copies, rounded up (race 4: 2 then 1; race 5: 3, 2, 1), at equal shares
    of the race's steps: race 4 over 25 steps cuts to 2 at step 12 (12.5 rounded to even) and to 1 at 25.
    Cuts that round to the same step are made one after the other at that step.
    """
    if cfg.race <= 1:
        return []
    end = race_end(cfg)
    if not cfg.race_halving:
        return [(end, 1)]
    kept = [cfg.race]
    while kept[-1] > 1:
        kept.append((kept[-1] + 1) // 2)
    rounds = len(kept) - 1
    return [(max(1, round(end * r / rounds)), kept[r]) for r in range(1, rounds + 1)]


def _leaves(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """Yield (dotted key, value) for every scalar in a config dataclass."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def to_yaml(cfg: GenerateConfig) -> str:
    """The resolved config as YAML text (written next to every run, and into PNG metadata)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml_text(text: str) -> GenerateConfig:
    """Rebuild a checked GenerateConfig from `to_yaml` output (PNG metadata, a run's config.yaml)."""
    import yaml

    try:
        data = OmegaConf.create(str(text))
    except AssertionError:  # omegaconf asserts when the YAML holds a bare scalar ("0", "text")
        raise ConfigError("saved config must be a mapping of keys, not a single value") from None
    except (yaml.YAMLError, OmegaConfBaseException, ValueError, TypeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"saved config is not valid YAML{where}: {problem}") from None
    if not isinstance(data, type(OmegaConf.create({}))):
        raise ConfigError(f"saved config must be a mapping of keys, not a {type(data).__name__}")
    try:
        cfg = _merge(OmegaConf.structured(GenerateConfig), data, "the saved config")
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(_omegaconf_message(exc)) from None
    assert isinstance(obj, GenerateConfig)
    validate(obj)
    return obj


def apply_overrides(cfg: GenerateConfig, overrides: Sequence[str]) -> GenerateConfig:
    """A copy of `cfg` with dotlist `overrides` applied and checked (e.g. a resumed run's steps=N)."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override '{bad[0]}' is not of the form key=value (e.g. steps=100)")
    try:
        merged = _merge(OmegaConf.structured(cfg), _from_dotlist(overrides), "overrides")
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_omegaconf_message(exc)) from None
    except ValueError as exc:
        raise ConfigError(f"bad override: {exc}") from None
    assert isinstance(obj, GenerateConfig)
    validate(obj)
    return obj
