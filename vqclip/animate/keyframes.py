"""Keyframed numbers: `"1.02"` (a constant) or `"0: 1.0, 60: 1.05, 120: 1.0"` (frame: value pairs).

Between keyframes the value is interpolated linearly; before the first keyframe it holds the first
value, after the last the last value. Pure Python, so config checks can use it before any model loads.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

from vqclip.errors import ConfigError

_SYNTAX = 'a number, or keyframes "frame: value, frame: value" with increasing frames >= 0'


@dataclass(frozen=True)
class Keyframes:
    """A value per frame, from sorted (frame, value) keyframes."""

    points: Tuple[Tuple[int, float], ...]

    def __call__(self, frame: float) -> float:
        """The value at `frame`: linear between keyframes, held before the first and after the last."""
        frames = [f for f, _ in self.points]
        i = bisect.bisect_right(frames, frame)
        if i == 0:
            return self.points[0][1]
        if i == len(self.points):
            return self.points[-1][1]
        (f0, v0), (f1, v1) = self.points[i - 1], self.points[i]
        return v0 + (v1 - v0) * (frame - f0) / (f1 - f0)

    def values(self, count: int) -> List[float]:
        """The values at frames 0 .. count-1."""
        return [self(i) for i in range(count)]


def _number(text: str, key: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"bad value for config key '{key}': {spec!r}; allowed: {_SYNTAX}") from None
    if not math.isfinite(value):
        raise ConfigError(f"bad value for config key '{key}': {spec!r} has {text.strip()!r}; allowed: finite numbers")
    return value


def parse_keyframes(spec: str | float | int, key: str = "value", minimum: Optional[float] = None) -> Keyframes:
    """Parse a constant or `"frame: value, ..."` keyframes; ConfigError naming `key` when malformed.

    `minimum`, when given, is an exclusive lower bound every value must exceed (e.g. 0 for a zoom).
    """
    text = str(spec).strip()
    if not text:
        raise ConfigError(f"bad value for config key '{key}': empty; allowed: {_SYNTAX}")
    if ":" not in text:
        points: List[Tuple[int, float]] = [(0, _number(text, key, text))]
    else:
        points = []
        for part in text.split(","):
            frame_text, sep, value_text = part.partition(":")
            if not sep or not frame_text.strip() or not value_text.strip():
                raise ConfigError(f"bad value for config key '{key}': {text!r}; allowed: {_SYNTAX}")
            frame = _number(frame_text, key, text)
            if frame != int(frame) or frame < 0:
                raise ConfigError(f"bad value for config key '{key}': {text!r} has frame {frame_text.strip()!r}; "
                                  "allowed: whole frame numbers >= 0")
            if points and frame <= points[-1][0]:
                raise ConfigError(f"bad value for config key '{key}': {text!r}; allowed: frames in increasing order")
            points.append((int(frame), _number(value_text, key, text)))
    if minimum is not None:
        low = [v for _, v in points if v <= minimum]
        if low:
            raise ConfigError(f"bad value for config key '{key}': {text!r} has {low[0]:g}; "
                              f"allowed: values > {minimum:g}")
    return Keyframes(tuple(points))
