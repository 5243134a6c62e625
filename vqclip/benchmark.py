"""The speed benchmark: the real generation step on the published architectures, timed by phase.

Builds the published VQGAN ImageNet f16 16384 architecture (its ddconfig) and CLIP ViT-B-32 with
random weights (speed does not depend on the weight values, so nothing is downloaded), then runs
`vqclip.generate.Run.step` with warm-up and reports iterations per second, milliseconds per phase
(decode, cutouts + augment, CLIP forward, backward, optimiser) and peak memory (CUDA max allocated,
or the process's peak resident set on the CPU) for each size and cutout count.

Every size is measured twice in the same process, side by side: `fast` (vqclip's defaults) and
`baseline` (the step as the well-known notebooks run it: a Python loop over cutouts with one
resample each, float32 everywhere, taming's own attention, no checkpointing), so each report
carries its own speed-up ratio. `scripts/benchmark.py` is the command-line wrapper.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import resource
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

from vqclip.config import GenerateConfig, load_config

log = logging.getLogger(__name__)

# model.params of the published vqgan_imagenet_f16_16384 config (taming-transformers).
IMAGENET_F16_16384 = {
    "embed_dim": 256, "n_embed": 16384,
    "ddconfig": {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3,
                 "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16],
                 "dropout": 0.0},
}
CLIP_NAME = "ViT-B-32-quickgelu"  # the architecture of OpenAI's ViT-B/32 weights
# The tiny pair the tests build their fixture files from (decoder ch 32, open_clip ViT of width 64).
TINY_VQGAN = {"embed_dim": 16, "n_embed": 64,
              "ddconfig": {"double_z": False, "z_channels": 16, "resolution": 64, "in_channels": 3, "out_ch": 3,
                           "ch": 32, "ch_mult": [1, 1, 2], "num_res_blocks": 1, "attn_resolutions": [16],
                           "dropout": 0.0}}
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
PHASES = ("decode", "cutouts", "clip", "backward", "optimizer")
MODES = ("baseline", "fast")
# What `baseline` sets: the notebooks' step. Everything else is the same config.
BASELINE_OVERRIDES = ["attention=taming", "precision=float32", "channels_last=false", "grad_checkpointing=false",
                      "cutouts.batched=false", "compile=false"]


@dataclass
class Measurement:
    """One (mode, size, cutn, batch) cell of the benchmark."""

    mode: str
    size: int
    cutn: int
    batch: int
    iters: int = 0
    it_per_s: float = 0.0
    ms: Dict[str, float] = field(default_factory=dict)  # mean milliseconds per phase per step
    peak_memory_mb: float = 0.0
    settings: Dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None  # e.g. out of memory: the cell could not run

    @property
    def images_per_hour(self) -> float:
        """Images of 300 steps per hour at this rate (the batch counts every image)."""
        return self.it_per_s * self.batch * 3600 / 300


def build_models(device: torch.device, tiny: bool = False):
    """The published VQGAN f16 16384 and CLIP ViT-B-32 architectures with random weights, frozen."""
    import open_clip

    from vqclip.generate import Models
    from vqclip.models.clip import ClipModel
    from vqclip.models.vqgan import VQGAN, quiet_construct

    torch.manual_seed(0)
    params = TINY_VQGAN if tiny else IMAGENET_F16_16384
    vqgan = quiet_construct(VQGAN, params, gumbel=False, with_encoder=False)
    with torch.no_grad():  # spread the codebook as a trained one is, so tokens decode to varied images
        vqgan.codebook.normal_(0, 1)
    vqgan = vqgan.eval().requires_grad_(False).to(device)
    name = CLIP_NAME
    if tiny:  # open_clip registers architectures from JSON files: write one for the tiny model
        name = "vqclip-bench-tiny"
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{name}.json")
            with open(path, "w") as f:
                json.dump(TINY_CLIP, f)
            open_clip.add_model_config(path)
    model = open_clip.create_model(name, pretrained=None, device=device)
    clip = ClipModel(model, open_clip.get_tokenizer(name), name).to(device)
    return Models(vqgan, clip)


def bench_config(mode: str, size: int, cutn: int, batch: int = 1, device: str = "cpu",
                 extra: Sequence[str] = ()) -> GenerateConfig:
    """The config of one benchmark cell: vqclip's defaults (fast) or the notebooks' step (baseline)."""
    overrides = [f"size=[{size},{size}]", f"cutouts.cutn={cutn}", f"batch_size={batch}", "seed=0",
                 f"device={device}", "steps=1000000"]
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    overrides += list(extra)  # the caller's settings; the baseline's own come last and always hold
    if mode == "baseline":
        overrides += BASELINE_OVERRIDES
    return load_config([], overrides, prompts=["a watercolor portrait of a teacher"])


class PhaseTimer:
    """A `Run.timer`: accumulates wall time per phase, synchronising CUDA at each boundary."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.total: Dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        """Time one phase (a context manager)."""
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.total[phase] += time.perf_counter() - start


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the peak resident set size (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB; a lifetime peak


def measure(models: Any, cfg: GenerateConfig, mode: str, warmup: int = 1, iters: int = 3) -> Measurement:
    """Time `iters` steps of a Run after `warmup` steps; an out-of-memory error is recorded, not raised."""
    from vqclip.config import batch_count
    from vqclip.errors import ConfigError
    from vqclip.generate import Run, resolve_device
    from vqclip.memory import check_memory
    from vqclip.models.vqgan import set_fused_swish
    from vqclip.perf import wants_checkpointing

    device = resolve_device(cfg.device)
    m = Measurement(mode, cfg.size[0], cfg.cutouts.cutn, batch_count(cfg))
    run = None
    try:
        check_memory(cfg, models.vqgan.ddconfig, device, batch=m.batch,
                     checkpointing=wants_checkpointing(cfg.grad_checkpointing, cfg.size))
    except ConfigError as exc:  # the estimate says it cannot fit: record that instead of swapping or dying
        m.error = "does not fit: " + str(exc).split(" needs ", 1)[-1].split("; allowed")[0]
        log.info("%-8s %4d px cutn %3d batch %3d: %s", mode, m.size, m.cutn, m.batch, m.error)
        return m
    try:
        _reset_peak(device)
        run = Run(cfg, models, device)
        if mode == "baseline":  # the notebooks' decoder: taming's swish, x * sigmoid(x) in three kernels
            set_fused_swish(models.vqgan, fused=False)
        m.settings = {"precision": str(run.dtype).replace("torch.", ""), "attention": cfg.attention,
                      "swish": "fused" if _fused_swish(models) else "taming",
                      "cutouts_batched": cfg.cutouts.batched, "compile": cfg.compile,
                      "channels_last": _channels_last(models), "grad_checkpointing": _checkpointed(models)}
        for _ in range(warmup):
            run.step()
        timer = PhaseTimer(device)
        run.timer = timer
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            run.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        m.iters, m.it_per_s = iters, iters / elapsed
        m.ms = {p: 1000 * timer.total.get(p, 0.0) / iters for p in PHASES}
        m.peak_memory_mb = _peak_mb(device)
    except torch.cuda.OutOfMemoryError:
        m.error = "out of memory"
    except MemoryError:
        m.error = "out of memory"
    finally:
        del run
        if device.type == "cuda":
            torch.cuda.empty_cache()
    log.info("%-8s %4d px cutn %3d batch %3d: %s", mode, m.size, m.cutn, m.batch,
             m.error or f"{m.it_per_s:.3f} it/s, peak {m.peak_memory_mb:.0f} MB")
    return m


def _channels_last(models: Any) -> bool:
    w = next(p for p in models.vqgan.decoder.parameters() if p.dim() == 4)
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def _fused_swish(models: Any) -> bool:
    from taming.modules.diffusionmodules.model import ResnetBlock

    return any(isinstance(m, ResnetBlock) and "forward" in m.__dict__ for m in models.vqgan.decoder.modules())


def _checkpointed(models: Any) -> bool:
    from vqclip.perf import Checkpointed

    return any(isinstance(m, Checkpointed) for m in models.vqgan.decoder.modules())


def cells(sizes: Sequence[int], cutns: Sequence[int], batches: Sequence[int] = (1,)) -> Iterator[tuple]:
    """(size, cutn, batch) in the order they are run."""
    for size in sizes:
        for cutn in cutns:
            for batch in batches:
                yield size, cutn, batch


def run_benchmark(sizes: Sequence[int] = (256, 512, 768, 1024), cutns: Sequence[int] = (32, 64),
                  batches: Sequence[int] = (1,), modes: Sequence[str] = MODES, device: Optional[str] = None,
                  warmup: int = 1, iters: int = 3, tiny: bool = False, extra: Sequence[str] = ()) -> Dict[str, Any]:
    """Measure every cell in every mode side by side; return {"machine", "results", "ratios"}."""
    from vqclip.generate import resolve_device

    dev = resolve_device(device or "auto")
    models = build_models(dev, tiny=tiny)
    results: List[Measurement] = []
    for size, cutn, batch in cells(sizes, cutns, batches):
        for mode in modes:
            cfg = bench_config(mode, size, cutn, batch, str(dev), extra)
            results.append(measure(models, cfg, mode, warmup, iters))
    return {"machine": describe_machine(dev), "models": "tiny" if tiny else
            {"vqgan": "imagenet_f16_16384 architecture (random weights)", "clip": f"{CLIP_NAME} (random weights)"},
            "warmup": warmup, "iters": iters, "results": [_as_dict(m) for m in results],
            "ratios": ratios(results)}


def _as_dict(m: Measurement) -> Dict[str, Any]:
    d = dataclasses.asdict(m)
    d["images_per_hour"] = m.images_per_hour
    return d


def ratios(results: Sequence[Measurement]) -> List[Dict[str, Any]]:
    """fast / baseline speed and baseline / fast peak memory for every cell measured in both modes."""
    by_cell = {(m.size, m.cutn, m.batch, m.mode): m for m in results}
    out = []
    for (size, cutn, batch, mode), fast in by_cell.items():
        base = by_cell.get((size, cutn, batch, "baseline"))
        if mode != "fast" or base is None:
            continue
        row: Dict[str, Any] = {"size": size, "cutn": cutn, "batch": batch}
        if fast.error or base.error:
            row["note"] = f"fast: {fast.error or 'ok'}, baseline: {base.error or 'ok'}"
        else:
            row["speedup"] = fast.it_per_s / base.it_per_s
            row["memory_ratio"] = fast.peak_memory_mb / base.peak_memory_mb
        out.append(row)
    return out


def describe_machine(device: torch.device) -> Dict[str, Any]:
    """The hardware and software the numbers were measured on."""
    info: Dict[str, Any] = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
                            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    return info


def markdown(report: Dict[str, Any]) -> str:
    """The report as markdown: the machine, a table per mode and cell, and the side-by-side ratios."""
    mach = report["machine"]
    where = mach.get("gpu") or f"{mach.get('cpu', 'CPU')}, {mach['threads']} threads"
    lines = [f"Machine: {where}; torch {mach['torch']}, Python {mach['python']}. "
             f"{report['warmup']} warm-up step(s), {report['iters']} timed step(s) per cell.", "",
             "| mode | size | cutn | batch | it/s | decode ms | cutouts ms | CLIP ms | backward ms | optimiser ms "
             "| peak MB | settings |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["results"]:
        if r["error"]:
            lines.append(f"| {r['mode']} | {r['size']} | {r['cutn']} | {r['batch']} | {r['error']} "
                         "| | | | | | | |")
            continue
        s = r["settings"]
        flags = ", ".join([s["precision"], s["attention"], "batched cutouts" if s["cutouts_batched"] else "cutout loop"]
                          + (["fused swish"] if s.get("swish") == "fused" else [])
                          + (["channels_last"] if s["channels_last"] else [])
                          + (["checkpointing"] if s["grad_checkpointing"] else [])
                          + (["compiled"] if s["compile"] else []))
        ms = r["ms"]
        lines.append(f"| {r['mode']} | {r['size']} | {r['cutn']} | {r['batch']} | {r['it_per_s']:.3f} | "
                     + " | ".join(f"{ms[p]:.0f}" for p in PHASES) + f" | {r['peak_memory_mb']:.0f} | {flags} |")
    lines += ["", "| size | cutn | batch | speed-up (fast / baseline) | peak memory (fast / baseline) |",
              "| --- | --- | --- | --- | --- |"]
    for r in report["ratios"]:
        if "note" in r:
            lines.append(f"| {r['size']} | {r['cutn']} | {r['batch']} | {r['note']} | |")
        else:
            lines.append(f"| {r['size']} | {r['cutn']} | {r['batch']} | **{r['speedup']:.2f}x** | "
                         f"{r['memory_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: `python scripts/benchmark.py [--sizes ...] [--cutn ...] [--json F] [--markdown F]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 768, 1024])
    parser.add_argument("--cutn", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (images per run)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny random models (to test the harness)")
    parser.add_argument("--json", default=None, help="write the report as JSON here")
    parser.add_argument("--markdown", default=None, help="write the markdown tables here")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (the baseline keeps its own "
                                                     "attention, precision, memory format, checkpointing, cutouts)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run_benchmark(args.sizes, args.cutn, args.batch, args.modes, args.device, args.warmup, args.iters,
                           args.tiny, args.overrides)
    text = markdown(report)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    return 0
