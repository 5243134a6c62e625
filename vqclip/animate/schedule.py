"""Story schedules: which prompts guide which steps, and how their weights cross-fade.

A story is a list of scenes, each with its own prompts. Give it as `story.scenes` in YAML, or as
one prompt string with scenes separated by `^` (`"a sunrise^a storm^a starry night"`); prompt
strings without `^` stay active for the whole story. Scene lengths are given in one of two ways:

- every scene has a `start` (the first 0): a scene lasts until the next one starts; the last one
  lasts its `steps`, else `story.steps_per_prompt`, else until the run's `steps`;
- no scene has a `start`: a scene lasts its `steps`, else `story.steps_per_prompt`; scenes with
  neither share what is left of the run's `steps` equally (the last one takes the remainder).

Pure Python, so config checks can resolve a story before any model loads.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence

from vqclip.errors import ConfigError

if TYPE_CHECKING:
    from vqclip.config import GenerateConfig

SEPARATOR = "^"


@dataclass(frozen=True)
class Scene:
    """One resolved scene: its prompt strings and its steps [start, end)."""

    prompts: List[str]
    start: int
    end: int

    @property
    def steps(self) -> int:
        """The scene's length in steps."""
        return self.end - self.start


@dataclass(frozen=True)
class Story:
    """A resolved story: scenes in order, prompts active throughout, and the total length in steps."""

    scenes: List[Scene]
    global_prompts: List[str]
    ramp: int

    @property
    def total(self) -> int:
        """Steps in the whole story."""
        return self.scenes[-1].end

    def weights(self, step: int) -> List[float]:
        """Each scene's weight factor at `step` (see `scene_weights`)."""
        return scene_weights([s.start for s in self.scenes], self.ramp, step)


def scene_weights(starts: Sequence[int], ramp: int, step: int) -> List[float]:
    """Weight factor per scene at `step`: 1 for the current scene and 0 for the others, except during
    the `ramp` steps after a scene's start, where it fades in (1/(ramp+1), 2/(ramp+1), ...) while
    the previous scene fades out by the same amount. With ramp 0 the switch is at the start step."""
    current = max(0, bisect.bisect_right(list(starts), step) - 1)
    out = [0.0] * len(starts)
    alpha = 1.0 if current == 0 else min(1.0, (step - starts[current] + 1) / (ramp + 1))
    out[current] = alpha
    if current > 0 and alpha < 1.0:
        out[current - 1] = 1.0 - alpha
    return out


def _positive(value: Optional[int], key: str) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"bad value for config key '{key}': {value!r}; allowed: a positive integer")


def resolve_story(cfg: "GenerateConfig") -> Story:
    """Resolve the config's story into scenes with start and end steps; ConfigError naming the key."""
    st = cfg.story
    _positive(st.steps_per_prompt, "story.steps_per_prompt")
    if st.ramp < 0:
        raise ConfigError(f"bad value for config key 'story.ramp': {st.ramp!r}; allowed: an integer >= 0")
    shorthand = [p for p in cfg.prompts if SEPARATOR in p]
    global_prompts = [p for p in cfg.prompts if SEPARATOR not in p]
    if st.scenes and shorthand:
        raise ConfigError(f"prompt {shorthand[0]!r} splits scenes with '^' but story.scenes is also given; "
                          "allowed: one of the two")
    if len(shorthand) > 1:
        raise ConfigError(f"prompts {shorthand[0]!r} and {shorthand[1]!r} both split scenes with '^'; "
                          "allowed: one story string, e.g. \"a sunrise^a storm^a starry night\"")
    if st.scenes:
        prompts = [list(s.prompts) for s in st.scenes]
        steps = [s.steps for s in st.scenes]
        starts = [s.start for s in st.scenes]
        names = [f"story.scenes[{i}]" for i in range(len(st.scenes))]
    elif shorthand:
        prompts = [[p] for p in shorthand[0].split(SEPARATOR)]
        steps, starts = [None] * len(prompts), [None] * len(prompts)
        names = [f"scene {i} of {shorthand[0]!r}" for i in range(len(prompts))]
    else:
        raise ConfigError("mode=story needs scenes; allowed: story.scenes: [{prompts, steps}], or one prompt "
                          "with scenes separated by '^', e.g. \"a sunrise^a storm^a starry night\"")
    for name, ps in zip(names, prompts):
        if not ps or not all(isinstance(p, str) and p.strip() for p in ps):
            raise ConfigError(f"{name} has no prompt text; allowed: a list of prompts \"text:weight:stop\"")
    for i, (n, s) in enumerate(zip(steps, starts)):
        _positive(n, f"story.scenes[{i}].steps")
        if s is not None and s < 0:
            raise ConfigError(f"bad value for config key 'story.scenes[{i}].start': {s!r}; allowed: an integer >= 0")
    if any(s is not None for s in starts):
        bounds = _by_starts(starts, steps, st.steps_per_prompt, cfg.steps)
    else:
        bounds = _by_lengths(steps, st.steps_per_prompt, cfg.steps)
    scenes = [Scene(p, a, b) for p, (a, b) in zip(prompts, bounds)]
    for i, scene in enumerate(scenes[1:], 1):
        if st.ramp >= scene.steps:
            raise ConfigError(f"bad value for config key 'story.ramp': {st.ramp} is not shorter than scene {i} "
                              f"({scene.steps} steps); allowed: 0 .. {min(s.steps for s in scenes[1:]) - 1}")
    return Story(scenes, global_prompts, st.ramp)


def _by_starts(starts: List[Optional[int]], steps: List[Optional[int]], per_prompt: Optional[int],
               run_steps: int) -> List[tuple[int, int]]:
    """Scene bounds when every scene gives its start step."""
    missing = [i for i, s in enumerate(starts) if s is None]
    if missing:
        raise ConfigError(f"story.scenes[{missing[0]}] has no start while other scenes have one; allowed: a start "
                          "on every scene, or on none (then each scene gives its steps)")
    if starts[0] != 0:
        raise ConfigError(f"bad value for config key 'story.scenes[0].start': {starts[0]}; allowed: 0")
    for i in range(1, len(starts)):
        if starts[i] <= starts[i - 1]:  # type: ignore[operator]
            raise ConfigError(f"bad value for config key 'story.scenes[{i}].start': {starts[i]}; allowed: a step "
                              f"after the previous scene's start {starts[i - 1]}")
    early = [i for i, n in enumerate(steps[:-1]) if n is not None]
    if early:
        raise ConfigError(f"story.scenes[{early[0]}] gives both steps and (through the next scene's start) a "
                          "length; allowed: starts on every scene, steps only on the last")
    last = steps[-1] or per_prompt or (run_steps - starts[-1])  # type: ignore[operator]
    if last < 1:
        raise ConfigError(f"the last scene starts at step {starts[-1]}, not before steps={run_steps}; allowed: "
                          "a larger steps, or steps on the last scene")
    ends = [int(s) for s in starts[1:]] + [int(starts[-1]) + last]  # type: ignore[arg-type]
    return [(int(a), b) for a, b in zip(starts, ends)]  # type: ignore[arg-type]


def _by_lengths(steps: List[Optional[int]], per_prompt: Optional[int], run_steps: int) -> List[tuple[int, int]]:
    """Scene bounds from lengths; scenes without one share the rest of `run_steps` equally."""
    lengths = [n or per_prompt for n in steps]
    open_ = [i for i, n in enumerate(lengths) if n is None]
    if open_:
        left = run_steps - sum(n for n in lengths if n)
        share = left // len(open_)
        if share < 1:
            raise ConfigError(f"bad value for config key 'steps': {run_steps} leaves {max(left, 0)} steps for "
                              f"{len(open_)} scene(s) without a length; allowed: a larger steps, or "
                              "story.steps_per_prompt")
        for i in open_:
            lengths[i] = share
        lengths[open_[-1]] = share + left - share * len(open_)
    bounds, pos = [], 0
    for n in lengths:
        bounds.append((pos, pos + int(n)))  # type: ignore[arg-type]
        pos += int(n)  # type: ignore[arg-type]
    return bounds
