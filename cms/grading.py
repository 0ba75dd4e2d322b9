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
import hashlib
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
GRADER_VERSION = 2  # raise when a rule below changes what a solution grades as: cached verdicts are then redone


MINUSES = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2012": "-", "\ufe63": "-", "\uff0d": "-"})
# the final answer after ####: a number (thousands commas allowed) or a fraction of two, then at most a unit
FINAL = re.compile(r"(-?(?:\d[\d,]*(?:\.\d+)?|\.\d+))(?:\s*/\s*(-?\d[\d,]*(?:\.\d+)?))?\.?(?:\s*[A-Za-z%][^\d]*)?")


def gsm8k_answer(text: str) -> Optional[str]:
    """The final answer of a GSM8K-style solution, normalised, or None: the whole expression on the line
    after the last ``####``, when it is a number or a fraction (``3/4``), optionally followed by a unit.
    Anything else there (``3^2``, ``12 then 13``) is no answer, and so is a solution without ``####``
    (one cut off before it is not kept for a number it happened to write last)."""
    if "####" not in text:
        return None
    line = text.rsplit("####", 1)[1].strip().split("\n", 1)[0].translate(MINUSES).replace("$", "").strip()
    m = FINAL.fullmatch(line)
    if m is None:
        return None
    number, denominator = (g.replace(",", "") if g else g for g in m.groups())
    return f"{number}/{denominator}" if denominator else number


def _as_decimal(text: str) -> Optional[Decimal]:
    """The exact value of a number or a fraction ``a/b`` (None when it is neither, or b is 0)."""
    try:
        top, _, bottom = text.translate(MINUSES).replace(",", "").replace("$", "").strip().rstrip(".").partition("/")
        value = Decimal(top) / Decimal(bottom) if bottom else Decimal(top)
        return value if value.is_finite() else None
    except (InvalidOperation, ZeroDivisionError):
        return None


def grade_gsm8k(text: str, gold: str) -> str:
    pred = gsm8k_answer(text)
    a, b = (_as_decimal(pred) if pred else None), _as_decimal(gold)
    return CORRECT if a is not None and b is not None and a == b else WRONG


# math-verify's own timeouts (signal alarms) cost half of its time and do not stop
# every hang; MATH items are graded in worker processes that are killed on overrun.
NO_TIMEOUT = {"parsing_timeout": None}


def verify(gold, pred) -> bool:
    from math_verify import verify as math_verify

    return bool(math_verify(gold, pred, timeout_seconds=None))


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
    pred = math_answer(answer)
    return CORRECT if pred and verify(_gold_math(gold), pred) else WRONG


THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
UNBRACED_FRAC = re.compile(r"\\([dt]?frac)\s*(\\[a-zA-Z]+|[0-9a-zA-Z])\s*(\\[a-zA-Z]+|[0-9a-zA-Z])")
UNBRACED_SQRT = re.compile(r"\\sqrt\s*(\\[a-zA-Z]+|[0-9a-zA-Z])")
UNIT = re.compile(r"(?<=\S)\s*\\(?:text|mbox|mathrm)\s*\{\s*[a-zA-Z][a-zA-Z ]*\}\s*$")
BASE = re.compile(r"\s*([0-9A-Za-z]+)_\{?(\d+)\}?\s*")


def normalise_math(answer: str) -> str:
    """An answer as math-verify should read it: no trailing period (``5.``), no thin spaces or thousands
    commas (``111,\\!111`` would be the set {111}), braces around one-token ``\\frac``/``\\sqrt``
    arguments (``\\frac \\pi4`` would be 2), no trailing unit (``\\text{ square inches}``)."""
    a = answer.strip()
    if a.endswith(".") and not a.endswith(".."):
        a = a[:-1].rstrip()
    a = re.sub(r"\\!\s*", "", a)
    if a.startswith("\\$"):
        a = a[2:].lstrip()
    if THOUSANDS.fullmatch(a):
        a = a.replace(",", "")
    a = UNBRACED_FRAC.sub(lambda m: f"\\{m[1]}{{{m[2]}}}{{{m[3]}}}", a)
    a = UNBRACED_SQRT.sub(lambda m: f"\\sqrt{{{m[1]}}}", a)
    return UNIT.sub("", a)


def grade_math(text: str, gold: str) -> str:
    """The last box against the gold answer, both normalised (``normalise_math``); a number with a base
    subscript (``2112_7``) must match digits and base exactly (math-verify ignores the base)."""
    boxed = last_boxed(text)
    answer, gold = (normalise_math(boxed) if boxed is not None else None), normalise_math(gold)
    based = BASE.fullmatch(gold)
    if based:
        m = BASE.fullmatch(answer or "")
        return CORRECT if m and (m[1].lower(), m[2]) == (based[1].lower(), based[2]) else WRONG
    return _grade_answer(f"\\boxed{{{answer}}}" if answer is not None else text, gold)


def gold_changes(fmt: str, golds: Sequence[str]) -> int:
    """How many gold answers the grader reads other than as written (``normalise_math``)."""
    return 0 if fmt != "math" else sum(normalise_math(g) != g.strip() for g in golds)


def _same_math(a: str, b: str) -> str:
    """``grade``'s verdict on whether two final answers are one (for majority votes in workers)."""
    x, y = _gold_math(normalise_math(a)), _gold_math(normalise_math(b))
    return CORRECT if x and y and verify(x, y) else WRONG


GRADERS = {"gsm8k": grade_gsm8k, "math": grade_math}
JOBS = {**GRADERS, "math-same": _same_math}  # what the workers run


def final_answer(fmt: str, text: str) -> Optional[str]:
    """The final answer a solution states (GSM8K: the number; MATH: the last box), or None."""
    return gsm8k_answer(text) if fmt == "gsm8k" else last_boxed(text)


def same_answers(fmt: str, pairs: Sequence[tuple[str, str]], workers: int = 1, timeout_s: float = 5.0) -> dict:
    """{(a, b): True | False | None} for pairs of final answers: whether they are the same answer however
    written (``0.5`` and ``\\frac{1}{2}``); None when math-verify could not compare them in ``timeout_s``
    (the workers are killed, as in ``grade``)."""
    if fmt == "gsm8k":
        return {(a, b): _as_decimal(a) is not None and _as_decimal(a) == _as_decimal(b) for a, b in pairs}
    verdicts = grade_in_workers("math-same", pairs, workers, timeout_s, progress=False)
    return {pair: None if v == UNGRADED else v == CORRECT for pair, v in zip(pairs, verdicts)}


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
            verdict = JOBS[fmt](text, gold)
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


def verdict_key(fmt: str, text: str, gold: str) -> str:
    """A cached verdict's key: what it was graded from and by (``GRADER_VERSION``)."""
    return hashlib.sha256(json.dumps([GRADER_VERSION, fmt, gold, text]).encode()).hexdigest()[:24]


def grade_cached(path: Path, fmt: str, items: Sequence[tuple[str, str]], workers: int = 1, timeout_s: float = 5.0) -> list[str]:
    """``grade`` with each verdict kept in ``path`` under ``verdict_key`` of its (text, gold), so
    cells sharing samples, and budgets sharing a prefix of them, grade each once, and a changed
    grader or sample is graded afresh. An ``ungraded`` verdict is kept with its time limit and
    tried again under a longer ``timeout_s``. Processes sharing the file take turns (a lock next to it)."""
    keys = [verdict_key(fmt, text, gold) for text, gold in items]
    with FileLock(str(path) + ".lock"):
        known = json.loads(path.read_text()) if path.exists() else {}

        def stale(k: str) -> bool:
            v = known.get(k)
            return v is None or (v.startswith(UNGRADED + "@") and float(v.split("@")[1]) < timeout_s)

        todo = [j for j, k in enumerate(keys) if stale(k)]
        if todo:
            for j, verdict in zip(todo, grade(fmt, [items[j] for j in todo], workers, timeout_s)):
                known[keys[j]] = f"{UNGRADED}@{timeout_s}" if verdict == UNGRADED else verdict
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(known))
            tmp.replace(path)
    return [known[k].split("@")[0] for k in keys]
