#!/usr/bin/env python
"""Train the shapes-world demo VQGAN and CLIP and export them (see docs/shapes_training.md).

    python scripts/train_shapes.py --out checkpoints/shapes --parallel    # both models, then harden the CLIP
    python scripts/train_shapes.py --out /tmp/shapes --only harden      # only harden the CLIP already there
    python scripts/train_shapes.py --out /tmp/shapes --only noise       # only its second, noised phase
    python scripts/train_shapes.py --quick --out /tmp/shapes-quick     # a few steps, tiny models

All the work is in vqclip.shapes.train; this maps arguments onto its configs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from vqclip.shapes.harden import HardenConfig, noise_phase, quick_harden_config
from vqclip.shapes.train import ClipTrainConfig, VQGANTrainConfig, quick_configs, train_all


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, print the metrics as JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("checkpoints/shapes"), help="folder for the exported files")
    p.add_argument("--only", choices=("vqgan", "clip", "harden", "noise"),
                   help="train just one of the two models, or only fine-tune the CLIP already in --out "
                        "(harden: both phases; noise: the second, noised phase only)")
    p.add_argument("--harden", action=argparse.BooleanOptionalAction, default=None,
                   help="after training both models, fine-tune the CLIP against its own maxima, then "
                        "again on noised views (vqclip.shapes.harden, docs/shapes.md); on by default "
                        "unless --only picks one model")
    p.add_argument("--harden-rounds", type=int, help="override the number of hardening rounds")
    p.add_argument("--quick", action="store_true", help="tiny models, a few steps: checks the pipeline only")
    p.add_argument("--parallel", action="store_true", help="train the two models in two processes at once")
    p.add_argument("--threads", type=int, default=0, help="torch threads per model (0: torch's default, "
                                                          "or cores / 2 with --parallel; the hardening "
                                                          "after a --parallel run uses torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vqgan-steps", type=int, help="override the VQGAN's number of steps")
    p.add_argument("--clip-steps", type=int, help="override the CLIP's number of steps")
    p.add_argument("--clip-noise", type=float, help="train the CLIP on views noised up to this std ([0, 1] "
                                                    "scale), ramped up with its cutouts; default 0: off")
    p.add_argument("--clip-distractors", type=float, metavar="SHARE",
                   help="share of the CLIP's training images that are distractors (ellipses, rectangles, "
                        "blobs, pairs, each with its own caption; vqclip.shapes.distractors); default 0: none")
    p.add_argument("--clip-name", help="CLIP model name (the JSON's file stem); default shapes-clip")
    p.add_argument("--clip-width", type=int, help="the CLIP image tower's base width (ModifiedResNet); default 16")
    p.add_argument("--clip-layers", type=int, nargs=4, metavar="DEPTH",
                   help="blocks in each of the image tower's 4 stages; default 1 1 1 1")
    args = p.parse_args(argv)

    if args.harden_rounds is not None and args.harden_rounds < 1:
        p.error(f"--harden-rounds must be at least 1, got {args.harden_rounds} (use --no-harden to skip)")
    if args.clip_noise is not None and not args.clip_noise >= 0:
        p.error(f"--clip-noise must be 0 or more, got {args.clip_noise}")
    if args.clip_distractors is not None and not 0 <= args.clip_distractors <= 1:
        p.error(f"--clip-distractors takes a share between 0 and 1, got {args.clip_distractors}")
    if args.clip_width is not None and (args.clip_width < 2 or args.clip_width % 2):
        p.error(f"--clip-width must be an even number of at least 2 (its stem is half as wide), got {args.clip_width}")
    if args.clip_layers is not None and min(args.clip_layers) < 1:
        p.error(f"--clip-layers takes 4 stage depths of at least 1, got {' '.join(map(str, args.clip_layers))}")
    if args.harden and args.only in ("vqgan", "clip"):
        p.error(f"--harden needs both models; with --only {args.only} there is nothing to harden against "
                "(use --only harden on a folder holding both)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    vq, clip = quick_configs() if args.quick else (VQGANTrainConfig(), ClipTrainConfig())
    vq = dataclasses.replace(vq, seed=args.seed, **({"steps": args.vqgan_steps} if args.vqgan_steps else {}))
    clip = dataclasses.replace(clip, seed=args.seed, **({"steps": args.clip_steps} if args.clip_steps else {}),
                               **({"name": args.clip_name} if args.clip_name else {}),
                               **({"noise": args.clip_noise} if args.clip_noise is not None else {}),
                               **({"distractors": args.clip_distractors} if args.clip_distractors is not None else {}),
                               **({"vision_width": args.clip_width} if args.clip_width else {}),
                               **({"vision_layers": tuple(args.clip_layers)} if args.clip_layers else {}))
    harden = quick_harden_config() if args.quick else HardenConfig()
    harden = dataclasses.replace(harden, seed=args.seed,
                                 **({"rounds": args.harden_rounds} if args.harden_rounds else {}))
    phases = [("harden", harden), ("noise", noise_phase(dataclasses.replace(harden, rounds=1), quick=args.quick))]
    only = args.only
    if only == "noise":
        phases = phases[1:]
    elif not (only == "harden" or (only is None and args.harden is not False)):
        phases = []
    metrics = train_all(args.out, vq if only in (None, "vqgan") else None, clip if only in (None, "clip") else None,
                        parallel=args.parallel, threads=args.threads,
                        harden=phases,
                        clip_for_harden=clip)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
