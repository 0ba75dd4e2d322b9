"""The default toy grid, fresh (toy models trained, nothing cached), alone on the
machine and beside one CPU-bound process: how much a busy core costs.

Each run gets its own empty cache and output directory and runs the README's
command (``python -m cms.run -m model=wc,se setting=kd,self,w2s``) in ``--code``
(default: this checkout). The other process is a Python busy loop started a
few seconds before the grid and killed after it. Prints both wall times, whether
the two runs wrote the same ``summary.md`` and, on the last line, beside / alone.

    python benchmarks/threads.py [--threads N|auto] [--timeout 1800] [--code DIR] [--only alone|busy]

``--threads`` passes ``threads=...`` to the grid (left out: the code's default,
which is how an older checkout without the setting is measured).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = ["model=wc,se", "setting=kd,self,w2s"]


def grid(code: Path, work: Path, threads: str | None, timeout: float) -> tuple[float, bool, str]:
    """Run the default grid fresh under ``work``; return (seconds, finished, summary.md text)."""
    env = {**os.environ, "CMS_CACHE_DIR": str(work / "cache"), "CMS_OUTPUT_DIR": str(work / "out"),
           "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(code)}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CMS_THREADS"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "cms.run", "-m", *GRID, *([f"threads={threads}"] if threads else [])]
    start = time.perf_counter()
    try:
        subprocess.run(cmd, cwd=code, env=env, check=True, timeout=timeout,
                       stdout=(work / "grid.log").open("w"), stderr=subprocess.STDOUT)
        finished = True
    except subprocess.TimeoutExpired:
        finished = False
    seconds = time.perf_counter() - start
    summaries = sorted((work / "out").glob("multirun/*/summary.md"))
    return seconds, finished, summaries[-1].read_text() if summaries else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default=None, help="threads=... for the grid; left out: the code's default")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before a run is stopped and reported as '>'")
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout to measure (an older commit's worktree)")
    ap.add_argument("--only", choices=["alone", "busy"], default=None)
    args = ap.parse_args()

    times, summaries = {}, {}
    for situation in ("alone", "busy"):
        if args.only and situation != args.only:
            continue
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if situation == "busy" else None
        try:
            if hog:
                time.sleep(5)
            with tempfile.TemporaryDirectory() as tmp:
                seconds, finished, summaries[situation] = grid(args.code.resolve(), Path(tmp), args.threads, args.timeout)
        finally:
            if hog:
                hog.kill()
                hog.wait()
        times[situation] = seconds if finished else float("inf")
        shown = f"{seconds:.0f} s" if finished else f"> {seconds:.0f} s (stopped)"
        print(f"{situation:5s} (threads={args.threads or 'default'}): fresh default grid {shown}", flush=True)
    if len(times) == 2:
        same = summaries["alone"] == summaries["busy"] and summaries["alone"] != ""
        print(f"the two runs wrote {'the same' if same else 'different'} summary.md")
        print(f"beside one CPU-bound process / alone: {times['busy'] / times['alone']:.2f}x")


if __name__ == "__main__":
    main()
