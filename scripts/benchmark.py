#!/usr/bin/env python
"""Benchmark the generation step: vqclip's fast path and the notebooks' baseline, side by side.

    python scripts/benchmark.py                                   # sizes 256-1024, cutn 32 and 64
    python scripts/benchmark.py --sizes 256 --cutn 32 --json docs/benchmarks/cpu.json

A thin wrapper over vqclip.benchmark (see its docstring and docs/benchmarks.md).
"""
import sys

from vqclip.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
