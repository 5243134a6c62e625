#!/usr/bin/env python
"""Score the generator on the shapes world: success rate on seen and held-out scenes.

    python scripts/eval_shapes.py [--config configs/shapes.yaml] [--seeds 0 1 2] [key=value ...]
    python scripts/eval_shapes.py --merge seed0.json seed1.json seed2.json --json eval.json
    python scripts/eval_shapes.py --oracle --seeds 0    # the same optimisation, guided by pixels not CLIP
    python scripts/eval_shapes.py --screen --seeds 0    # quick: every 2nd prompt, one batched run

Prints a markdown table and writes JSON (--json) and an example grid (--grid). --merge combines
reports of separate runs (e.g. one process per seed) into one. A thin wrapper over
vqclip.shapes.quality.
"""
import argparse
import contextlib
import logging
import sys
import tempfile
from pathlib import Path

from vqclip.config import load_config
from vqclip.errors import VQClipError
from vqclip.shapes.quality import example_grid, merge_reports, oracle_report, run_benchmark, screen_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--config", action="append", default=None, help="YAML config (default configs/shapes.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-seen", type=int, default=16, help="how many seen scenes to evaluate")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--grid", type=Path, default=None, help="write a grid of example outputs here")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep every generated image in DIR (default: a temporary folder, deleted)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="merge these JSON reports instead of running")
    parser.add_argument("--oracle", action="store_true",
                        help="replace the CLIP by the pixel distance to a drawing of each caption "
                             "(vqclip.shapes.oracle): what the optimisation itself can reach")
    parser.add_argument("--screen", type=int, nargs="?", const=2, default=None, metavar="EVERY",
                        help="quick screen: every EVERY-th prompt of each split (default 2), all made "
                             "together in one batched run per seed; noisier than the full run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    if args.screen is not None and args.screen < 1:
        parser.error(f"--screen takes a stride of at least 1, got {args.screen}")
    if args.screen is not None and (args.oracle or args.merge):
        parser.error("--screen cannot be combined with --oracle or --merge")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.merge:
            report = merge_reports([p.read_text() for p in args.merge])
            return _print(report, args.json)
        cfg = load_config(args.config or ["configs/shapes.yaml"], args.overrides)
        if args.oracle:
            return _print(oracle_report(cfg, args.seeds, args.n_seen), args.json)
        # the images go to --keep, or to a temporary folder deleted afterwards (the writer makes the folder)
        with contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory() as tmp:
            if args.screen is not None:
                report = screen_report(cfg, args.seeds, args.n_seen, args.screen, image_dir=Path(tmp))
            else:
                report = run_benchmark(cfg, args.seeds, args.n_seen, image_dir=Path(tmp), progress=False)
            if args.grid:
                first_seed = [s for s in report.samples if s.seed == args.seeds[0]]
                example_grid(first_seed).save(args.grid)
        if not args.keep:
            for s in report.samples:
                s.path = None
    except VQClipError as exc:
        print(f"eval_shapes: error: {exc}", file=sys.stderr)
        return 2
    return _print(report, args.json)


def _print(report, json_path) -> int:
    print(report.table())
    print(f"\nseconds per image: {report.seconds_per_image:.2f}")
    if json_path:
        json_path.write_text(report.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
