"""Grading throughput per core: cms's grader against the library call it wraps.

MATH: cms.grading.grade (worker processes, hard per-item timeout) against plain
in-process math_verify.parse/verify on the same (solution, gold) pairs; GSM8K:
cms's numeric path on the GSM8K reference solutions. Items are the benchmarks'
reference solutions, repeated to --items. The last line is the MATH ratio
cms / raw, both per core.

    python benchmarks/grading.py [--items 2000] [--workers 2]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

from math_verify import parse, verify

from cms import grading
from cms.data import load

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    math = load("math", "test", "math", DATA) + load("math", "train", "math", DATA)
    items = [(r.solution, r.answer) for r in itertools.islice(itertools.cycle(math), args.items)]
    t = time.perf_counter()
    verdicts = grading.grade("math", items, workers=args.workers, timeout_s=5.0, progress=False)
    cms_rate = len(items) / (time.perf_counter() - t) / args.workers
    t = time.perf_counter()
    raw = [verify(parse(f"${gold}$"), parse(text)) for text, gold in items]
    raw_rate = len(items) / (time.perf_counter() - t)

    gsm = [(r.solution, r.answer) for r in load("gsm8k", "train", "gsm8k", DATA) + load("gsm8k", "test", "gsm8k", DATA)]
    gsm = gsm * max(1, 100_000 // len(gsm))
    t = time.perf_counter()
    gsm_verdicts = grading.grade("gsm8k", gsm)
    gsm_rate = len(gsm) / (time.perf_counter() - t)

    print(f"MATH, {len(items)} reference solutions: cms {cms_rate:.0f} items/s per core ({args.workers} workers, "
          f"{verdicts.count(grading.CORRECT)} correct, {verdicts.count(grading.UNGRADED)} ungraded); "
          f"raw math-verify in-process {raw_rate:.0f} items/s ({sum(raw)} correct)")
    print(f"GSM8K, {len(gsm)} reference solutions: cms numeric path {gsm_rate:.0f} items/s on one core "
          f"({gsm_verdicts.count(grading.CORRECT)} correct)")
    print(f"MATH ratio cms/raw per core: {cms_rate / raw_rate:.3f}")


if __name__ == "__main__":
    main()
