"""Config checks for the modes, the extra losses and CLIP ensembles (called by `config.validate`).

Everything here runs before any model loads, so a bad story, keyframe, palette or mode fails at
once with one line naming the key and what is allowed.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from vqclip.animate.keyframes import parse_keyframes
from vqclip.animate.schedule import SEPARATOR, resolve_story
from vqclip.errors import ConfigError

if TYPE_CHECKING:
    from vqclip.config import GenerateConfig


def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"bad value for config key '{key}': {value!r}; allowed: {allowed}")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def validate_extras(cfg: "GenerateConfig") -> None:
    """Check `mode` and the story, animation, restyle, losses and clip ensemble keys."""
    from vqclip.config import MODES
    from vqclip.prompts import split_prompts

    _check(cfg.mode in MODES, "mode", ", ".join(MODES), cfg.mode)
    if cfg.mode != "story":
        scenes = [p for p in cfg.prompts if SEPARATOR in p]
        if scenes:
            raise ConfigError(f"prompt {scenes[0]!r} splits scenes with '^', which only mode=story uses; allowed: "
                              "mode=story (with story.steps_per_prompt), or a prompt without '^'")
    if cfg.mode == "story":
        story = resolve_story(cfg)
        for scene in story.scenes:
            split_prompts(scene.prompts)
    if cfg.mode == "interpolate":
        if len(cfg.prompts) < 2 or any("|" in p for p in cfg.prompts):
            raise ConfigError(f"bad value for config key 'prompts': {list(cfg.prompts)!r}; mode=interpolate moves "
                              "through the prompts in order; allowed: two or more prompts, each without '|', "
                              "e.g. \"a red circle\" \"a blue square\"")
    _check_animation(cfg)
    _check_restyle(cfg)
    _check_losses(cfg)
    _check_clip(cfg)


def _check_animation(cfg: "GenerateConfig") -> None:
    a = cfg.animation
    least = 2 if cfg.mode == "interpolate" else 1
    _check(a.frames >= least, "animation.frames", f"an integer >= {least}", a.frames)
    _check(a.steps_per_frame >= 1, "animation.steps_per_frame", "a positive integer", a.steps_per_frame)
    _check(a.fps is None or 0 < a.fps <= 240, "animation.fps", "null or a number in (0, 240]", a.fps)
    parse_keyframes(a.zoom, "animation.zoom", minimum=0.0)
    for key in ("shift_x", "shift_y", "rotate"):
        parse_keyframes(getattr(a, key), f"animation.{key}")


def _check_restyle(cfg: "GenerateConfig") -> None:
    r = cfg.restyle
    _check(0.0 <= r.blend <= 1.0, "restyle.blend", "a number in [0, 1]", r.blend)
    _check(r.max_frames is None or r.max_frames >= 1, "restyle.max_frames", "null or a positive integer", r.max_frames)
    if cfg.mode == "restyle" and not r.video:
        raise ConfigError("mode=restyle needs config key 'restyle.video'; allowed: a path to a video file")


def _check_losses(cfg: "GenerateConfig") -> None:
    from vqclip.losses import parse_color

    s = cfg.losses
    for key in ("tv", "latent_tv", "symmetry", "saturation", "palette", "tones", "frame"):
        _check(getattr(s, key) >= 0, f"losses.{key}", "a number >= 0 (0: off)", getattr(s, key))
    _check(0.0 <= s.saturation_target <= 1.0, "losses.saturation_target", "a number in [0, 1]", s.saturation_target)
    _check(0.0 < s.frame_width <= 0.5, "losses.frame_width", "a number in (0, 0.5]", s.frame_width)
    for i, color in enumerate(s.palette_colors):
        parse_color(color, f"losses.palette_colors[{i}]")
    if s.palette and not s.palette_colors:
        raise ConfigError("config key 'losses.palette' is set but 'losses.palette_colors' is empty; allowed: "
                          "a list of hex colours, e.g. [\"#e63c32\", \"#2850c8\"]")


def _check_clip(cfg: "GenerateConfig") -> None:
    _check(cfg.clip.weight >= 0, "clip.weight", "a number >= 0", cfg.clip.weight)
    for i, extra in enumerate(cfg.clip.extra):
        _check(bool(extra.model), f"clip.extra[{i}].model", "an open_clip model name or model-config JSON path",
               extra.model)
        _check(_finite(extra.weight) and extra.weight > 0, f"clip.extra[{i}].weight", "a finite number > 0",
               extra.weight)
    if cfg.clip.weight == 0 and not cfg.clip.extra:
        raise ConfigError("bad value for config key 'clip.weight': 0 leaves no CLIP guiding; allowed: a number > 0, "
                          "or 0 together with clip.extra models")
