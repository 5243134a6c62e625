#!/usr/bin/env python
"""Train the shapes-world demo VQGAN and CLIP and export them (see docs/shapes_training.md).

    python scripts/train_shapes.py --out checkpoints/shapes --parallel
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

from vqclip.shapes.train import ClipTrainConfig, VQGANTrainConfig, quick_configs, train_all


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, print the metrics as JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("checkpoints/shapes"), help="folder for the exported files")
    p.add_argument("--only", choices=("vqgan", "clip"), help="train just one of the two models")
    p.add_argument("--quick", action="store_true", help="tiny models, a few steps: checks the pipeline only")
    p.add_argument("--parallel", action="store_true", help="train the two models in two processes at once")
    p.add_argument("--threads", type=int, default=0, help="torch threads per model (0: torch's default, "
                                                          "or cores / 2 with --parallel)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vqgan-steps", type=int, help="override the VQGAN's number of steps")
    p.add_argument("--clip-steps", type=int, help="override the CLIP's number of steps")
    p.add_argument("--clip-name", help="CLIP model name (the JSON's file stem); default shapes-clip")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    vq, clip = quick_configs() if args.quick else (VQGANTrainConfig(), ClipTrainConfig())
    vq = dataclasses.replace(vq, seed=args.seed, **({"steps": args.vqgan_steps} if args.vqgan_steps else {}))
    clip = dataclasses.replace(clip, seed=args.seed, **({"steps": args.clip_steps} if args.clip_steps else {}),
                               **({"name": args.clip_name} if args.clip_name else {}))
    metrics = train_all(args.out, None if args.only == "clip" else vq, None if args.only == "vqgan" else clip,
                        parallel=args.parallel, threads=args.threads)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
