"""Estimators over n stored samples per question: coverage@k, diversity@k, pass@1, maj@k.

coverage@k is the unbiased pass@k of Chen et al. (2021): for a question with c
correct samples out of n, the chance that a random k-subset holds at least one,
1 - C(n-c, k) / C(n, k), averaged over questions. diversity@k is, in the same
spirit, the expected number of unique correct solutions in a random k-subset:
a solution seen m times among the n samples appears with probability
1 - C(n-m, k) / C(n, k), summed over the unique correct solutions.
"""

from __future__ import annotations

import math
import statistics
from typing import Callable, Hashable, Optional, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question with ``c`` correct samples out of ``n``."""
    if not 1 <= k <= n:
        raise ValueError(f"k={k} needs 1 <= k <= n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def unique_at_k(n: int, multiplicities: Sequence[int], k: int) -> float:
    """Expected number of distinct correct solutions in a random k-subset of the ``n`` samples;
    ``multiplicities`` holds how often each distinct correct solution was drawn."""
    return sum(pass_at_k(n, m, k) for m in multiplicities)


def curves(questions: dict[Hashable, list[tuple[bool, Hashable]]], ks: Optional[Sequence[int]] = None) -> dict[str, list[float]]:
    """coverage@k and diversity@k for k = 1..n (or ``ks``) over questions that each hold
    n samples given as (correct, solution key); returns {"k", "coverage", "diversity"}."""
    if not questions:
        return {"k": [], "coverage": [], "diversity": []}
    n = min(len(s) for s in questions.values())
    ks = list(ks or range(1, n + 1))
    cov, div = [], []
    for k in ks:
        c_sum = d_sum = 0.0
        for samples in questions.values():
            counts: dict[Hashable, int] = {}
            for correct, key in samples:
                if correct:
                    counts[key] = counts.get(key, 0) + 1
            c_sum += pass_at_k(len(samples), sum(counts.values()), k)
            d_sum += unique_at_k(len(samples), list(counts.values()), k)
        cov.append(c_sum / len(questions))
        div.append(d_sum / len(questions))
    return {"k": ks, "coverage": cov, "diversity": div}


def mean_ci(values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation confidence interval (z=1.96: 95%)."""
    if not values:
        raise ValueError("no values")
    if len(values) == 1:
        return float(values[0]), 0.0
    return statistics.fmean(values), z * statistics.stdev(values) / math.sqrt(len(values))


def majority(answers: Sequence[Optional[str]], equivalent: Callable[[str, str], bool]) -> Optional[int]:
    """Index of a representative of the largest class of equivalent answers (None answers
    take no part); ties go to the class seen first. None when no answer was given."""
    classes: list[list[int]] = []
    for i, a in enumerate(answers):
        if a is None:
            continue
        for cls in classes:
            if equivalent(answers[cls[0]], a):
                cls.append(i)
                break
        else:
            classes.append([i])
    if not classes:
        return None
    return max(classes, key=len)[0]  # max keeps the first of equal lengths


def maj_at_k(answers: Sequence[Optional[str]], correct: Sequence[bool], k: int, equivalent: Callable[[str, str], bool]) -> bool:
    """Whether the majority answer of the first ``k`` samples of a question is correct."""
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@{k} needs at least {k} samples per question, got {len(answers)}")
    winner = majority(answers[:k], equivalent)
    return winner is not None and bool(correct[winner])
