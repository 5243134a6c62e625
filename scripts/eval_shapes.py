#!/usr/bin/env python
"""Score the generator on the shapes world: success rate on seen and held-out scenes.

    python scripts/eval_shapes.py [--config configs/shapes.yaml] [--seeds 0 1 2] [key=value ...]
    python scripts/eval_shapes.py --merge seed0.json seed1.json seed2.json --json eval.json
    python scripts/eval_shapes.py --oracle --seeds 0    # the same optimisation, guided by pixels not CLIP
    python scripts/eval_shapes.py --screen --seeds 0    # quick: every 2nd prompt, one batched run
    python scripts/eval_shapes.py --copies 8 --part 0/2 --json copies0.json   # races replayed (below)
    python scripts/eval_shapes.py --replay copies0.json copies1.json

Prints a markdown table and writes JSON (--json) and an example grid (--grid). --merge combines
reports of separate runs (e.g. one process per seed) into one. --copies K runs every prompt as K
independent copies, keeps the race's score of each at --check-steps and reads each at the end;
--replay prints, from such reports, how often one copy, any of k copies and a race of k copies
picked at each check step read right (vqclip.shapes.replay). A thin wrapper over
vqclip.shapes.quality and vqclip.shapes.replay.
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
from vqclip.shapes.replay import copies_report, merge_copies, race_table


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
    parser.add_argument("--copies", type=int, default=None, metavar="K",
                        help="run each prompt as K independent copies (race off) and keep their race scores")
    parser.add_argument("--check-steps", type=int, nargs="+", default=[12, 25, 50, 75],
                        help="--copies: the steps at which each copy's race score is kept")
    parser.add_argument("--part", default="0/1", metavar="I/N",
                        help="--copies: only the prompts whose index %% N is I (one process per part)")
    parser.add_argument("--replay", type=Path, nargs="+", default=None, metavar="JSON",
                        help="print the race table of these --copies reports instead of running")
    parser.add_argument("--race-sizes", type=int, nargs="+", default=[2, 4, 8],
                        help="--replay: the race sizes to tabulate")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    if args.screen is not None and args.screen < 1:
        parser.error(f"--screen takes a stride of at least 1, got {args.screen}")
    modes = [name for name, on in (("--screen", args.screen is not None), ("--oracle", args.oracle),
                                    ("--merge", args.merge), ("--copies", args.copies is not None),
                                    ("--replay", args.replay)) if on]
    if len(modes) > 1:
        parser.error(f"{' and '.join(modes)} cannot be combined")
    if args.copies is not None and args.copies < 1:
        parser.error(f"--copies takes a number of copies of at least 1, got {args.copies}")
    try:
        part, parts = (int(v) for v in args.part.split("/"))
        if not 0 <= part < parts:
            raise ValueError
    except ValueError:
        parser.error(f"--part takes I/N with 0 <= I < N (e.g. 0/2), got {args.part!r}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.replay:
            copies = merge_copies([p.read_text() for p in args.replay])
            print(race_table(copies, args.race_sizes))
            return 0
        if args.merge:
            report = merge_reports([p.read_text() for p in args.merge])
            return _print(report, args.json)
        cfg = load_config(args.config or ["configs/shapes.yaml"], args.overrides)
        if args.oracle:
            return _print(oracle_report(cfg, args.seeds, args.n_seen), args.json)
        if args.copies is not None:
            copies = copies_report(cfg, args.copies, args.check_steps, args.n_seen, part=part, parts=parts)
            print(race_table(copies, args.race_sizes))
            if args.json:
                args.json.write_text(copies.to_json())
            return 0
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
