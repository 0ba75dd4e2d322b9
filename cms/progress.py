"""Progress of the long loops (training, sampling, grading, evaluation).

On a terminal: one tqdm bar per phase. Anywhere else (nohup, ``tee``, SLURM
logs) a bar's carriage returns pile up on one line or not at all, so a log line
is written every ``CMS_PROGRESS_EVERY`` seconds (30) instead, and one when such a
phase ends: a file shows the run is alive and how far it got.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings

from tqdm import tqdm

log = logging.getLogger("cms.progress")


def interval_s() -> float:
    return float(os.environ.get("CMS_PROGRESS_EVERY", 30))


def on_terminal() -> bool:
    return sys.stderr.isatty()


def bar(total: int | None, desc: str | None, unit: str = "it"):
    """A progress bar for one phase: tqdm on a terminal, periodic log lines elsewhere; none
    without a ``desc`` (the caller shows the phase's progress)."""
    if desc is None:
        return LogLines(total, "", unit, quiet=True)
    if on_terminal():
        return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    return LogLines(total, desc, unit)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class LogLines:
    """The part of tqdm's interface cms uses, as log lines at a steady interval."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", quiet: bool = False):
        self.quiet, self.total, self.desc, self.unit, self.n, self.postfix, self.lines = quiet, total, desc, unit, 0, "", 0
        self.start = self.last = time.monotonic()

    def _line(self, now: float) -> str:
        elapsed = now - self.start
        done = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        left = ""
        if self.total and 0 < self.n < self.total:
            left = f", ~{_clock(elapsed / self.n * (self.total - self.n))} left"
        return f"{self.desc}: {done}{pct} in {_clock(elapsed)}{left}{', ' + self.postfix if self.postfix else ''}"

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        if not self.quiet and now - self.last >= interval_s():
            self.last, self.lines = now, self.lines + 1
            log.info(self._line(now))

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def close(self) -> None:
        if self.lines:  # a phase shorter than the interval stays quiet
            finished = self.total is None or self.n >= self.total
            log.info(self._line(time.monotonic()) + (" - done" if finished else ""))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def quiet() -> None:
    """Silence what is not for the user: Lightning's per-Trainer banners (accelerator availability, tips,
    'max_steps reached'), transformers' bars for every local checkpoint it reads or writes, and library
    warnings about their own internals. cms's own log lines, downloads' bars and every error stay."""
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # 'Loading weights', 'Writing model shards'
    enable_progress_bars()  # ...which also silenced the hub's: a download keeps its bar
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        r".*The `srun` command is available on your system but is not used.*",  # cms starts srun itself where it should
        r".*does not have many workers.*",  # cms's batches are built in the main process on purpose
        r".*smaller than the logging interval.*",
        r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
