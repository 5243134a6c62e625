"""Fetch named VQGAN models into the vqclip cache ahead of time, and say where each file went.

    python scripts/download_models.py vqgan_imagenet_f16_16384 wikiart_16384 [--cache-dir DIR]
    python scripts/download_models.py all
    python scripts/download_models.py --list

A thin wrapper over `vqclip.registry`; an interrupted download resumes when run again.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from vqclip.errors import VQClipError
from vqclip.registry import ensure_model, format_model_table, load_registry


def main(argv: Optional[List[str]] = None) -> int:
    """Download the named models; exit status 0 when all arrived, 2 when any could not be fetched."""
    parser = argparse.ArgumentParser(description="Download named VQGAN models into the vqclip cache.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="registry model names, or 'all' (without names: list the models)")
    parser.add_argument("--cache-dir", default=None,
                        help="cache folder (default: $VQCLIP_CACHE, else the user cache dir + vqclip)")
    parser.add_argument("--list", action="store_true", help="list the models and what is cached, then exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        if args.list or not args.names:
            print(format_model_table(args.cache_dir))
            return 0
        names = sorted(load_registry()) if args.names == ["all"] else args.names
    except VQClipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        try:
            config, checkpoint = ensure_model(name, args.cache_dir, progress=not args.no_progress)
        except VQClipError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
            continue
        print(f"{name}\n  config:     {config}\n  checkpoint: {checkpoint}")
    return status


if __name__ == "__main__":
    sys.exit(main())
