"""`genemask bench ngrams|masking|train|finetune|precision`: side-by-side benchmarks (one module each)."""
from __future__ import annotations

import importlib


def run(args) -> int:
    mod = importlib.import_module(f"genemask.bench.{args.bench}")
    return mod.main(args)
