"""The shapes quality benchmark: generate fixed prompts over several seeds and score them.

Each generated image is read back by the network-free evaluator (`vqclip.shapes.evaluate`); a
success means colour, shape and background are all right. Results are split into scenes seen in
training and held-out scenes, next to chance level (1 in 168 captions), with seconds per image.
`scripts/eval_shapes.py` is the command-line wrapper.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from vqclip.config import GenerateConfig, to_yaml
from vqclip.shapes.evaluate import read_image
from vqclip.shapes.world import HELD_OUT, Scene, all_scenes, train_scenes

log = logging.getLogger(__name__)
CHANCE = 1 / len(all_scenes())


def eval_scenes(n_seen: int = 16) -> Dict[str, List[Scene]]:
    """The fixed evaluation prompts: every held-out scene, and `n_seen` training scenes spread evenly."""
    seen = train_scenes()
    stride = max(1, len(seen) // n_seen)
    return {"seen": seen[::stride][:n_seen], "held_out": list(HELD_OUT)}


@dataclass
class Sample:
    """One generated image and its reading."""

    split: str
    caption: str
    seed: int
    read_as: Optional[str]
    correct: Dict[str, bool]
    seconds: float
    path: Optional[str] = None


@dataclass
class Report:
    """Success rates per split, chance level, timing, and every sample."""

    config: Dict[str, object]
    success: Dict[str, float] = field(default_factory=dict)
    per_attribute: Dict[str, Dict[str, float]] = field(default_factory=dict)
    chance: float = CHANCE
    seconds_per_image: float = 0.0
    samples: List[Sample] = field(default_factory=list)

    def to_json(self) -> str:
        """The report as JSON text."""
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        """A markdown table of the success rates."""
        rows = ["| split | images | success (all three right) | colour | shape | background | chance |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for split in ("seen", "held_out", "all"):
            n = sum(1 for s in self.samples if split == "all" or s.split == split)
            a = self.per_attribute.get(split, {})
            rows.append(f"| {split.replace('_', '-')} | {n} | **{self.success.get(split, 0):.1%}** | "
                        f"{a.get('color', 0):.1%} | {a.get('shape', 0):.1%} | {a.get('background', 0):.1%} | "
                        f"{self.chance:.1%} |")
        return "\n".join(rows)


def _record(config: GenerateConfig, seeds: Sequence[int], n_seen: int) -> Dict[str, object]:
    """What a report keeps of the run's settings (`merge_reports` merges only equal ones)."""
    return {"steps": config.steps, "size": list(config.size), "cutn": config.cutouts.cutn, "lr": config.optim.lr,
            "seeds": list(seeds), "n_seen": n_seen, "yaml": to_yaml(replace(config, prompts=[], seed=None))}


def run_benchmark(config: GenerateConfig, seeds: Sequence[int], n_seen: int = 16,
                  image_dir: Optional[Path] = None, progress: bool = False) -> Report:
    """Generate every evaluation prompt for every seed with `config`; return the scored report."""
    from vqclip.generate import generate, load_models

    models = load_models(config, progress=progress)
    report = Report(config=_record(config, seeds, n_seen))
    for split, scenes in eval_scenes(n_seen).items():
        for scene in scenes:
            for seed in seeds:
                cfg = replace(config, prompts=[scene.caption], seed=seed)
                start = time.perf_counter()
                result = generate(cfg, models=models, save=False, progress=False)
                seconds = time.perf_counter() - start
                image = result.images[0]
                reading = read_image(image)
                path = _save(image, image_dir, scene, seed)
                sample = Sample(split, scene.caption, seed, reading.caption, reading.correct(scene), seconds, path)
                report.samples.append(sample)
                log.info("%-45s seed %d -> %s (%.1fs)", scene.caption, seed, reading.caption, seconds)
    return score(report)


def _save(image, image_dir: Optional[Path], scene: Scene, seed: int) -> Optional[str]:
    """Write `image` (PIL) as `<image_dir>/<caption>-<seed>.png` and return the path; None without a folder."""
    if image_dir is None:
        return None
    image_dir.mkdir(parents=True, exist_ok=True)
    path = str(image_dir / f"{scene.caption.replace(' ', '_')}-{seed}.png")
    image.save(path)
    return path


def screen_report(config: GenerateConfig, seeds: Sequence[int], n_seen: int = 16, every: int = 2,
                  image_dir: Optional[Path] = None) -> Report:
    """A quick, noisier version of `run_benchmark`: every `every`-th evaluation prompt of each
    split, all of them optimised together in one batched run per seed (`batch_prompts`, so the
    random starts differ from one-at-a-time runs); return the scored report. For comparing
    variants before a full benchmark."""
    from vqclip.generate import generate, load_models

    if every < 1:
        raise ValueError(f"screen_report needs every >= 1, got {every}")
    models = load_models(config, progress=False)
    chosen = [(split, scene) for split, scenes in eval_scenes(n_seen).items() for scene in scenes[::every]]
    report = Report(config={**_record(config, seeds, n_seen), "screen_every": every})
    for seed in seeds:
        cfg = replace(config, prompts=[], batch_prompts=[scene.caption for _, scene in chosen],
                      batch_size=len(chosen), seed=seed)
        start = time.perf_counter()
        result = generate(cfg, models=models, save=False, progress=False)
        seconds = (time.perf_counter() - start) / len(chosen)
        for (split, scene), image in zip(chosen, result.images):
            reading = read_image(image)
            report.samples.append(Sample(split, scene.caption, seed, reading.caption, reading.correct(scene),
                                         seconds, _save(image, image_dir, scene, seed)))
    return score(report)


def oracle_report(config: GenerateConfig, seeds: Sequence[int], n_seen: int = 16) -> Report:
    """`run_benchmark`'s report for `vqclip.shapes.oracle.pixel_oracle`: the same prompts and
    seeds, the CLIP replaced by the pixel distance to a drawing of each caption."""
    from vqclip.generate import load_models
    from vqclip.shapes.oracle import pixel_oracle

    models = load_models(config, progress=False)
    report = Report(config={"steps": config.steps, "size": list(config.size), "lr": config.optim.lr,
                            "seeds": list(seeds), "n_seen": n_seen, "guide": "pixel oracle"})
    for seed in seeds:
        for split, scenes in eval_scenes(n_seen).items():
            start = time.perf_counter()
            results = pixel_oracle(config, scenes, seed=seed, models=models)
            seconds = (time.perf_counter() - start) / max(1, len(scenes))
            for r in results:
                report.samples.append(Sample(split, r.scene.caption, seed, r.reading.caption,
                                             r.reading.correct(r.scene), seconds, None))
    return score(report)


def score(report: Report) -> Report:
    """Fill in the success rates, per-attribute rates and seconds per image from the samples."""
    for split in ("seen", "held_out", "all"):
        chosen = [s for s in report.samples if split == "all" or s.split == split]
        report.success[split] = sum(all(s.correct.values()) for s in chosen) / max(1, len(chosen))
        report.per_attribute[split] = {k: sum(s.correct[k] for s in chosen) / max(1, len(chosen))
                                       for k in ("color", "shape", "background")}
    report.seconds_per_image = sum(s.seconds for s in report.samples) / max(1, len(report.samples))
    return report


def merge_reports(texts: Sequence[str]) -> Report:
    """One report from several `Report.to_json` texts of the same config (e.g. one run per seed)."""
    parts = [json.loads(t) for t in texts]
    config = dict(parts[0]["config"])
    config["seeds"] = sorted({seed for p in parts for seed in p["config"]["seeds"]})
    for p in parts[1:]:
        if {k: v for k, v in p["config"].items() if k != "seeds"} != {k: v for k, v in config.items() if k != "seeds"}:
            raise ValueError("cannot merge reports of different configs")
    report = Report(config=config, samples=[Sample(**s) for p in parts for s in p["samples"]])
    report.samples.sort(key=lambda s: (s.split != "seen", s.caption, s.seed))
    return score(report)


def example_grid(samples: Sequence[Sample], columns: int = 8, cell: int = 128):
    """A PIL grid of generated images (each labelled by a thin green/red bar: right or wrong)."""
    from PIL import Image, ImageDraw

    chosen = [s for s in samples if s.path]
    rows = (len(chosen) + columns - 1) // columns
    grid = Image.new("RGB", (columns * cell, rows * (cell + 6)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, s in enumerate(chosen):
        x, y = (i % columns) * cell, (i // columns) * (cell + 6)
        grid.paste(Image.open(s.path).convert("RGB").resize((cell, cell)), (x, y))
        ok = all(s.correct.values())
        draw.rectangle([x, y + cell, x + cell - 1, y + cell + 5], fill=(40, 170, 70) if ok else (220, 40, 40))
    return grid
