"""Prompt syntax and the CLIP guidance loss.

A prompt string is `"text:weight:stop"`; several prompts share one string when separated by `|`
(`"a red car:1|rain:-0.5|fog:0.3:0.8"`). Weight and stop are optional and are only taken from the
end of the string when they parse as numbers, so URLs (`https://x.org/a.png:0.5`) and Windows paths
(`C:\\pics\\cat.png`) keep their colons. A negative weight pushes away from the prompt; `stop` is
the distance below which the prompt stops pulling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from vqclip.errors import ConfigError

MAX_ABS_WEIGHT = 1e4


@dataclass(frozen=True)
class ParsedPrompt:
    """One prompt: its text (or image path), weight and stop distance."""

    text: str
    weight: float = 1.0
    stop: float = -math.inf


def _number(s: str) -> float | None:
    try:
        value = float(s)
    except ValueError:
        return None
    return value


def parse_prompt(spec: str) -> ParsedPrompt:
    """Parse one `"text:weight:stop"` prompt; trailing fields count only when they are numbers."""
    numbers: List[float] = []
    text = spec
    for _ in range(2):
        head, sep, tail = text.rpartition(":")
        value = _number(tail.strip()) if sep else None
        if value is None:
            break
        if not head.strip():
            text = ""
            break
        numbers.insert(0, value)
        text = head
    text = text.strip()
    if not text:
        raise ConfigError(f"prompt {spec!r} has no text; allowed: \"text\", \"text:weight\" or \"text:weight:stop\"")
    weight = numbers[0] if numbers else 1.0
    stop = numbers[1] if len(numbers) > 1 else -math.inf
    if not math.isfinite(weight) or abs(weight) > MAX_ABS_WEIGHT:
        raise ConfigError(f"prompt {spec!r} has weight {weight}; allowed: a finite number with |weight| <= {MAX_ABS_WEIGHT:g}")
    if weight == 0:
        raise ConfigError(f"prompt {spec!r} has weight 0, which does nothing; allowed: a non-zero number")
    if math.isnan(stop) or stop == math.inf:
        raise ConfigError(f"prompt {spec!r} has stop {stop}; allowed: a finite number")
    return ParsedPrompt(text, weight, stop)


def split_prompts(specs: Sequence[str]) -> List[ParsedPrompt]:
    """Split each string on `|` and parse every piece; empty pieces are an error."""
    out: List[ParsedPrompt] = []
    for spec in specs:
        if not isinstance(spec, str):
            raise ConfigError(f"prompt {spec!r} is not a string")
        if not spec.replace("|", "").strip():
            raise ConfigError(f"prompt {spec!r} is empty (no text); allowed: \"text\", \"text:weight\", \"a|b\"")
        pieces = spec.split("|")
        for piece in pieces:
            if not piece.strip():
                raise ConfigError(f"prompt {spec!r} has an empty part between '|' separators; allowed: \"a|b\" with text in each part")
            out.append(parse_prompt(piece))
    return out


def spherical_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between the directions of x [..., D] and y [..., D] (0..pi^2/2)."""
    x = F.normalize(x, dim=-1)
    y = F.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).clamp(max=1.0).arcsin().pow(2).mul(2)


class Target(torch.nn.Module):
    """A prompt turned into CLIP embeddings [K, D] with its weight and stop: callable as a loss.

    `forward(embeds [B, N, D]) -> [B]`: mean weighted distance of each image's N cutout embeddings
    to the K target embeddings. Where a distance has fallen below `stop` its gradient is cut, so the
    prompt stops pulling without changing the reported loss. With `image=i` (a batch prompt) the
    target guides image i of the batch only: the other images' entries are 0.
    """

    def __init__(self, embeds: torch.Tensor, weight: float = 1.0, stop: float = -math.inf, name: str = "",
                 image: Optional[int] = None) -> None:
        super().__init__()
        self.register_buffer("embeds", F.normalize(embeds.detach().float(), dim=-1))
        self.weight = float(weight)
        self.stop = float(stop)
        self.name = name
        self.image = image

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Loss per image: |w| * mean(sign(w) * distance), gradient cut below `stop`."""
        if self.image is not None:  # only this image's embeddings: the others get a constant 0
            loss = image_embeds.new_zeros(image_embeds.shape[0])
            return loss.index_put((torch.tensor([self.image], device=loss.device),),
                                  self._loss(image_embeds[self.image:self.image + 1]))
        return self._loss(image_embeds)

    def _loss(self, image_embeds: torch.Tensor) -> torch.Tensor:
        dists = spherical_distance(image_embeds.unsqueeze(-2), self.embeds)  # [B, N, K]
        dists = dists * math.copysign(1.0, self.weight)
        dists = torch.where(dists >= self.stop, dists, dists.detach())
        return abs(self.weight) * dists.flatten(1).mean(dim=1)
