"""How many CPU threads torch uses: chosen per situation, not fixed.

PyTorch's default (one intra-op thread per core) is right for a machine the run
has to itself and badly wrong on a shared one: every parallel region waits for
its slowest thread, and a thread that shares its core with another busy process
is slow. On 2 cores beside one CPU-bound process the fresh default toy grid took
581 s with PyTorch's 2 threads and 284 s with 1 (``benchmarks/threads.py``).

``threads=auto`` (the default) counts the cores this process may run on (its CPU
affinity: a SLURM allocation or ``taskset``), measures over a short window how
busy other processes keep them, and uses the free ones, at least one. An
``OMP_NUM_THREADS`` set by the user wins over the measurement; ``threads=N``
wins over both. Each cell and each toy model's training decides afresh, and the
processes cms starts (fine-tuning ranks) inherit the choice, divided among them.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)
USER_OMP = os.environ.get("OMP_NUM_THREADS")  # read before cms sets it for its own child processes
WINDOW_S = 0.3
_setting: str | int = "auto"  # the last setting applied: refresh() decides again with it


def usable_cores() -> list[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity API
        return list(range(os.cpu_count() or 1))


def _cpu_times(cores: list[int]) -> tuple[float, float] | None:
    """(busy, total) clock ticks of ``cores`` since boot, from /proc/stat; None where there is none."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    wanted, busy, total = {f"cpu{c}" for c in cores}, 0, 0
    for line in lines:
        name, *fields = line.split()
        if name in wanted:
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


def busy_elsewhere(cores: list[int], window_s: float = WINDOW_S) -> float:
    """How many of ``cores`` other processes kept busy over the last ``window_s`` seconds."""
    before, own = _cpu_times(cores), time.process_time()
    if before is None:
        return max(0.0, os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0.0
    time.sleep(window_s)
    after, own = _cpu_times(cores), time.process_time() - own
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return 0.0
    ticks_per_s = total / len(cores) / window_s
    return max(0.0, (busy - own * ticks_per_s) / total * len(cores))


def choose(setting: str | int) -> tuple[int, str]:
    """The thread count for ``threads=<setting>`` and why."""
    if str(setting) != "auto":
        n = int(setting)
        if n < 1:
            raise ValueError(f"threads={setting}: use a count of 1 or more, or threads=auto")
        return n, f"threads={n}"
    if USER_OMP and USER_OMP.isdigit() and int(USER_OMP) > 0:
        return int(USER_OMP), f"OMP_NUM_THREADS={USER_OMP}"
    cores = usable_cores()
    busy = busy_elsewhere(cores)
    n = max(1, len(cores) - round(busy))
    return n, f"threads=auto: {len(cores)} usable core(s), {busy:.1f} kept busy by other processes"


def apply(setting: str | int) -> int:
    """Set torch's intra-op threads for this process; returns the count."""
    import torch

    global _setting
    _setting = setting
    n, why = choose(setting)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    log.info("using %d CPU thread(s) (%s)", n, why)
    return n


def refresh() -> int:
    """Decide again with the last setting (before a long phase: the machine's load may have changed)."""
    return apply(_setting)


def for_children(processes: int = 1) -> dict[str, str]:
    """Environment for ``processes`` child processes sharing this process's threads."""
    import torch

    n = str(max(1, torch.get_num_threads() // max(1, processes)))
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
