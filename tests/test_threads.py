"""The CPU thread count: chosen from the cores other processes leave free, a count wins, and the
processes cms starts inherit it. (benchmarks/threads.py measures what it saves.)"""

import subprocess
import sys
import time

import pytest
import torch

from cms import threads


@pytest.fixture
def hog():
    """One CPU-bound process on each usable core but one... on a 2-core machine, one."""
    cores = threads.usable_cores()
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(1, len(cores) - 1))]
    time.sleep(1.0)
    yield len(procs)
    for p in procs:
        p.kill()
        p.wait()


def test_a_count_wins_and_nonsense_is_refused(monkeypatch):
    assert threads.choose(3) == (3, "threads=3")
    assert threads.choose("2")[0] == 2
    with pytest.raises(ValueError, match="threads=0: use a count of 1 or more, or threads=auto"):
        threads.choose(0)
    monkeypatch.setattr(threads, "USER_OMP", "1")
    assert threads.choose("auto") == (1, "OMP_NUM_THREADS=1")


@pytest.mark.skipif(len(threads.usable_cores()) < 2, reason="needs 2 or more cores to leave one free")
def test_auto_leaves_the_cores_other_processes_keep_busy(hog, monkeypatch):
    monkeypatch.setattr(threads, "USER_OMP", None)
    cores = len(threads.usable_cores())
    busy = threads.busy_elsewhere(threads.usable_cores(), window_s=0.5)
    assert busy >= hog - 0.4, busy
    n, why = threads.choose("auto")
    assert n <= cores - hog and "kept busy by other processes" in why
    before = torch.get_num_threads()
    try:
        assert threads.apply("auto") == torch.get_num_threads() == n
        assert threads.for_children(1)["OMP_NUM_THREADS"] == str(n)
    finally:
        torch.set_num_threads(before)


def test_own_work_is_not_counted_as_busy():
    """The process deciding is not 'another process': its own threads busy on the cores do not count
    (compared with the same window without them, whatever else this machine runs)."""
    import threading

    cores = threads.usable_cores()
    without = threads.busy_elsewhere(cores, window_s=0.5)
    stop = time.monotonic() + 0.8
    worker = threading.Thread(target=lambda: [None for _ in iter(lambda: time.monotonic() < stop, False)])
    worker.start()
    with_own = threads.busy_elsewhere(cores, window_s=0.5)
    worker.join()
    assert with_own - without < 0.5, (without, with_own)  # the busy thread alone would add ~1


def test_children_share_the_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert threads.for_children(2)["OMP_NUM_THREADS"] == "2"
        assert threads.for_children(8)["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)
