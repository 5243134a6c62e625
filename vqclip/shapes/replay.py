"""Races replayed from independent copies: how much the copies hold, and how well a race picks.

`copies_report` runs every evaluation prompt as `copies` independent copies of one image (one
batched run per prompt, `race` off), keeps each copy's race score (`Run.mean_loss`, the score
`race` ranks copies by) at the check steps, and reads every copy at the end with the evaluator.
Copies in a batch do not interact (the cutouts, the noise and Adam act on each image alone), so a
race of `k` copies picked at step `s` is replayed exactly by any `k` of them: `race_odds` averages,
over every subset of `k` copies, whether the subset's lowest-scoring copy at step `s` reads right,
next to whether any copy of the subset does (what a perfect ranking would give).

`scripts/eval_shapes.py --copies K` is the command-line wrapper; docs/shapes.md uses it.
"""
from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Sequence

from vqclip.config import GenerateConfig
from vqclip.shapes.evaluate import read_image
from vqclip.shapes.quality import eval_scenes

log = logging.getLogger(__name__)


@dataclass
class Prompt:
    """One prompt's copies: which read right at the end, and each copy's race score by step."""

    split: str
    caption: str
    seed: int
    right: List[bool]
    scores: Dict[int, List[float]]  # step -> one score per copy (lower: the race would keep it)
    seconds: float = 0.0


@dataclass
class CopiesReport:
    """Every prompt's copies, and the settings they were made with."""

    config: Dict[str, object]
    prompts: List[Prompt] = field(default_factory=list)

    def to_json(self) -> str:
        """The report as JSON text (`CopiesReport.from_json` reads it back)."""
        return json.dumps(asdict(self), indent=2)

    @staticmethod
    def from_json(text: str) -> "CopiesReport":
        """A report written by `to_json`."""
        data = json.loads(text)
        prompts = [Prompt(p["split"], p["caption"], p["seed"], list(p["right"]),
                          {int(s): list(v) for s, v in p["scores"].items()}, p.get("seconds", 0.0))
                   for p in data["prompts"]]
        return CopiesReport(config=data["config"], prompts=prompts)


def copies_report(config: GenerateConfig, copies: int, check_steps: Sequence[int], n_seen: int = 16,
                  seed_base: int = 1000, part: int = 0, parts: int = 1) -> CopiesReport:
    """Run each evaluation prompt (those with index % `parts` == `part`) as `copies` independent
    copies, seed `seed_base` + the prompt's index, `config`'s method with `race` off; keep each
    copy's race score at `check_steps` and its reading at the end."""
    import torch

    from vqclip.generate import PICK_REPEATS, Run, load_models, resolve_device, synth
    from vqclip.images import to_pil

    if copies < 1:
        raise ValueError(f"copies_report needs copies >= 1, got {copies}")
    bad = [s for s in check_steps if not 0 <= s < config.steps]
    if bad:
        raise ValueError(f"check steps must lie in 0..{config.steps - 1} (the run's steps), got {bad}")
    if not 0 <= part < parts:
        raise ValueError(f"part must lie in 0..{parts - 1}, got {part}")
    base = replace(config, race=1)
    device = resolve_device(base.device)
    models = load_models(base, device, progress=False)
    report = CopiesReport(config={"copies": copies, "check_steps": sorted(set(check_steps)), "n_seen": n_seen,
                                  "seed_base": seed_base, "steps": base.steps})
    scenes = [(split, scene) for split, listed in eval_scenes(n_seen).items() for scene in listed]
    for index, (split, scene) in enumerate(scenes):
        if index % parts != part:
            continue
        start = time.perf_counter()
        cfg = replace(base, prompts=[], batch_prompts=[scene.caption] * copies, batch_size=copies,
                      seed=seed_base + index)
        run = Run(cfg, models, device)
        scores: Dict[int, List[float]] = {}
        for step in range(cfg.steps):
            if step in report.config["check_steps"]:
                with torch.no_grad():
                    image = synth(models.vqgan, run.z, run.dtype)
                    scores[step] = [float(v) for v in run.mean_loss(image, PICK_REPEATS)]
            run.step()
        images = run.image()
        right = [read_image(to_pil(images[i])).matches(scene) for i in range(copies)]
        prompt = Prompt(split, scene.caption, seed_base + index, right, scores, time.perf_counter() - start)
        report.prompts.append(prompt)
        log.info("%-45s %d of %d copies right (%.0fs)", scene.caption, sum(right), copies, prompt.seconds)
    return report


def merge_copies(texts: Sequence[str]) -> CopiesReport:
    """One report from several `CopiesReport.to_json` texts of the same settings (e.g. one per part)."""
    reports = [CopiesReport.from_json(t) for t in texts]
    first = reports[0]
    if any(r.config != first.config for r in reports[1:]):
        raise ValueError("cannot merge copies reports made with different settings")
    prompts = {p.caption: p for r in reports for p in r.prompts}
    order = [scene.caption for listed in eval_scenes(int(first.config["n_seen"])).values() for scene in listed]
    return CopiesReport(config=first.config, prompts=[prompts[c] for c in order if c in prompts])


def race_odds(prompt: Prompt, k: int, step: Optional[int] = None) -> float:
    """Over every subset of `k` of the prompt's copies: the share whose lowest-scoring copy at
    `step` reads right, or with `step` None, the share holding at least one right copy."""
    n = len(prompt.right)
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in 1..{n} (the copies made), got {k}")
    subsets = list(itertools.combinations(range(n), k))
    if step is None:
        hits = sum(any(prompt.right[i] for i in s) for s in subsets)
    else:
        score = prompt.scores[step]
        hits = sum(prompt.right[min(s, key=lambda i: score[i])] for s in subsets)
    return hits / len(subsets)


def race_table(report: CopiesReport, sizes: Sequence[int]) -> str:
    """A markdown table: per split, one copy, any of `k` copies right, and a race of `k` picked at
    each check step (expected success over the subsets, averaged over prompts; "-" for a split
    with no prompts)."""
    rows = ["| | seen | held-out | all |", "| --- | --- | --- | --- |"]

    def line(name: str, k: int, step: Optional[int]) -> str:
        cells = []
        for split in ("seen", "held_out", None):
            chosen = [p for p in report.prompts if split is None or p.split == split]
            cells.append(f"{sum(race_odds(p, k, step) for p in chosen) / len(chosen):.1%}" if chosen else "-")
        return f"| {name} | " + " | ".join(cells) + " |"

    n = int(report.config["copies"])
    rows.append(line("one copy", 1, None))
    for k in sizes:
        if 2 <= k <= n:
            rows.append(line(f"at least one of {k} copies right", k, None))
    for k in sizes:
        if 2 <= k <= n:
            for step in report.config["check_steps"]:
                rows.append(line(f"race of {k}, picked at step {step}", k, int(step)))
    return "\n".join(rows)

