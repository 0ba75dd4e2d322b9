"""Grading a sampled solution against the gold answer.

GSM8K: the number after the last ``####`` (else the last number in the text),
compared numerically after dropping commas, ``$``, units and trailing dots.
MATH: math-verify (fractions, radicals, tuples, intervals, sets, text). math-verify
can hang on pathological input even with its own timeout (math-verify issue 65:
``\\boxed{5^{5^{5^{5^5}}}}``), so MATH items are graded in worker processes with
a hard per-item limit: a worker that overruns is killed and replaced, and the
item is recorded as ``ungraded``, counted apart from ``wrong``.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing as mp
import re
import signal
import time
from decimal import Decimal, InvalidOperation
from multiprocessing.connection import wait
from pathlib import Path
from typing import Optional, Sequence

from filelock import FileLock

from cms.data import last_boxed
from cms.progress import bar as progress_bar

CORRECT, WRONG, UNGRADED = "correct", "wrong", "ungraded"
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def gsm8k_answer(text: str) -> Optional[str]:
    """The final numeric answer of a GSM8K-style solution, normalised, or None."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    numbers = NUMBER.findall(tail.replace("$", ""))
    if not numbers:
        return None
    number = numbers[0] if "####" in text else numbers[-1]
    return number.replace(",", "").rstrip(".")


def _as_decimal(text: str) -> Optional[Decimal]:
    try:
        return Decimal(text.replace(",", "").replace("$", "").strip().rstrip("."))
    except InvalidOperation:
        return None


def grade_gsm8k(text: str, gold: str) -> str:
    pred = gsm8k_answer(text)
    a, b = (_as_decimal(pred) if pred else None), _as_decimal(gold)
    return CORRECT if a is not None and b is not None and a == b else WRONG


# math-verify's own timeouts (signal alarms) cost half of its time and do not stop
# every hang; MATH items are graded in worker processes that are killed on overrun.
NO_TIMEOUT = {"parsing_timeout": None}


@functools.lru_cache(maxsize=4096)  # S samples of a question share its gold
def _gold_math(gold: str):
    from math_verify import parse

    parsed = parse(f"${gold}$", **NO_TIMEOUT)
    return parsed if parsed else parse(gold, **NO_TIMEOUT)


def math_answer(text: str):
    """math-verify's parse of a solution's final answer: its last ``\\boxed{}`` (the
    same rule that gives the gold answer), else whatever math-verify finds in the text."""
    from math_verify import parse

    boxed = last_boxed(text)
    return parse(f"$\\boxed{{{boxed}}}$", **NO_TIMEOUT) if boxed else parse(text, **NO_TIMEOUT)


@functools.lru_cache(maxsize=65536)  # many samples of a question end in the same answer
def _grade_answer(answer: str, gold: str) -> str:
    from math_verify import verify

    pred = math_answer(answer)
    return CORRECT if pred and verify(_gold_math(gold), pred, timeout_seconds=None) else WRONG


def grade_math(text: str, gold: str) -> str:
    boxed = last_boxed(text)
    return _grade_answer(f"\\boxed{{{boxed}}}" if boxed is not None else text, gold)


GRADERS = {"gsm8k": grade_gsm8k, "math": grade_math}


def final_answer(fmt: str, text: str) -> Optional[str]:
    """The final answer a solution states (GSM8K: the number; MATH: the last box), or None."""
    return gsm8k_answer(text) if fmt == "gsm8k" else last_boxed(text)


def equivalent(fmt: str, a: str, b: str) -> bool:
    """Whether two final answers are the same answer, however written (``0.5`` and ``\\frac{1}{2}``)."""
    if fmt == "gsm8k":
        x, y = _as_decimal(a), _as_decimal(b)
        return x is not None and x == y
    from math_verify import verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout is disabled" warning
    x, y = _gold_math(a), _gold_math(b)
    return bool(x and y and verify(x, y, timeout_seconds=None))


def _worker(conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it kills the workers
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout is disabled" warning
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        fmt, text, gold = job
        try:
            verdict = GRADERS[fmt](text, gold)
        except Exception:  # a grader's crash on odd input is a wrong answer, not a lost job
            verdict = WRONG
        conn.send(verdict)


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.item: Optional[int] = None
        self.started = 0.0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


def grade_in_workers(fmt: str, items: Sequence[tuple[str, str]], workers: int = 1, timeout_s: float = 5.0, progress: bool = True) -> list[str]:
    """Grade (text, gold) pairs in ``workers`` processes, each item under a hard time limit."""
    # fork: workers start in milliseconds with math-verify already imported, and a
    # script calling this needs no ``if __name__ == "__main__"`` guard.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    verdicts: list[Optional[str]] = [None] * len(items)
    pending = list(range(len(items)))[::-1]
    pool = [_Worker(ctx) for _ in range(max(1, min(workers, len(items))))]
    bar = progress_bar(len(items), f"grading ({fmt})" if progress else None, unit="answer")

    def feed(w: _Worker) -> None:
        if pending:
            w.item, w.started = pending.pop(), time.monotonic()
            w.conn.send((fmt, *items[w.item]))
        else:
            w.item = None

    try:
        for w in pool:
            feed(w)
        while any(w.item is not None for w in pool):
            busy = [w for w in pool if w.item is not None]
            deadline = min(w.started for w in busy) + timeout_s
            ready = wait([w.conn for w in busy], timeout=max(0.0, deadline - time.monotonic()))
            for w in busy:
                if w.conn in ready:
                    try:
                        verdicts[w.item] = w.conn.recv()
                    except (EOFError, OSError):  # the worker died (e.g. out of memory): its item is ungraded
                        verdicts[w.item] = UNGRADED
                        w.kill()
                        pool[pool.index(w)] = w = _Worker(ctx)
                elif time.monotonic() - w.started >= timeout_s:
                    verdicts[w.item] = UNGRADED
                    w.kill()
                    pool[pool.index(w)] = w = _Worker(ctx)
                else:
                    continue
                bar.update(1)
                feed(w)
    finally:
        for w in pool:
            w.kill()
        bar.close()
    return verdicts  # type: ignore[return-value]


def grade(fmt: str, items: Sequence[tuple[str, str]], workers: int = 1, timeout_s: float = 5.0, progress: bool = True) -> list[str]:
    """Verdicts (correct / wrong / ungraded) for (text, gold) pairs of one answer format."""
    if fmt == "gsm8k":  # plain numeric parsing: linear in the text, cannot hang
        return [grade_gsm8k(text, gold) for text, gold in items]
    if fmt not in GRADERS:
        raise ValueError(f"unknown answer format {fmt!r}: use one of {', '.join(GRADERS)}")
    return grade_in_workers(fmt, items, workers, timeout_s, progress)


def grade_cached(path: Path, fmt: str, items: Sequence[tuple[str, str]], keys: Sequence[str], workers: int = 1, timeout_s: float = 5.0) -> list[str]:
    """``grade`` with each verdict kept in ``path`` under its key (e.g. question and sample
    index), so cells sharing samples, and budgets sharing a prefix of them, grade each once.
    Processes sharing the file take turns (a lock next to it)."""
    with FileLock(str(path) + ".lock"):
        known = json.loads(path.read_text()) if path.exists() else {}
        todo = [j for j, k in enumerate(keys) if k not in known]
        if todo:
            for j, verdict in zip(todo, grade(fmt, [items[j] for j in todo], workers, timeout_s)):
                known[keys[j]] = verdict
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(known))
            tmp.replace(path)
    return [known[k] for k in keys]
