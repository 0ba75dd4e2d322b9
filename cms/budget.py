"""Sampling budgets: how many solutions per question each generator may draw.

Sampling a solution of W tokens from a model of P parameters costs 2*P*W FLOPs
(Kaplan et al.; the forward pass only). Three ways to match WC against SE:

- ``compute``: equal FLOPs, so S_WC = S_SE * P_SE / P_WC (Gemma2 9B vs 27B: 3x);
  or a budget given directly in FLOPs per question, S = B / (2 * P * W).
- ``number``: the same S for both models.
- ``price``: equal dollars, S_WC = S_SE * price_SE / price_WC (per output token).

Rounding (``budget.rounding``): ``ratio`` (the paper's, the default) rounds the
ratio to a whole number first, S_WC = S_SE * round(ratio), so Gemma2's 2.946 gives
3 and ``budget=high`` 30 WC samples; ``samples`` rounds S_SE * ratio (29). Halves
round up in both (a ratio of 2.5 gives 3).

All functions here are pure: parameter counts come from ``cms.models.count_params``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

MATCHES = ("compute", "number", "price")
ROUNDINGS = ("ratio", "samples")


def round_half_up(x: float) -> int:
    """Nearest whole number, halves up (Python's ``round`` sends 2.5 to 2)."""
    return math.floor(x + 0.5)


def exact_ratio(params: dict[str, float], *, match: str, prices: dict[str, float | None] | None = None, ratio: float | None = None) -> float:
    """WC samples per SE sample before rounding: ``ratio`` if given, else P_SE/P_WC (compute) or price_SE/price_WC (price)."""
    if ratio is not None:
        return float(ratio)
    if match == "number":
        return 1.0
    if match == "compute":
        return params["se"] / params["wc"]
    prices = prices or {}
    if not prices.get("wc") or not prices.get("se"):
        missing = " and ".join(f"family.{r}" for r in ("wc", "se") if not prices.get(r))
        raise BudgetError(
            f"budget.match=price needs a price for both models, and {missing} has none: name its row of the price table "
            "(family.<role>.priced_as, conf/prices/) or set family.<role>.price_per_mtok (dollars per million output tokens)"
        )
    return prices["se"] / prices["wc"]


class BudgetError(ValueError):
    """A budget that cannot be honoured, with the reason and the fix in its message."""


def unknown_size(params: dict, match: str, ratio: float | None = None, flops_per_question: float | None = None) -> str | None:
    """Why this budget cannot be computed when a model's parameter count is unknown (None): a hosted model."""
    unknown = [r for r in ("wc", "se") if params.get(r) is None]
    if unknown and match == "compute" and (ratio is None or flops_per_question is not None):
        return (f"budget.match=compute needs both models' parameter counts, and family.{unknown[0]} is a hosted model of unknown size: "
                f"match on price (budget=price, from the price table) or give its size (family.{unknown[0]}.params=<count>)")
    return None


def sample_flops(params: float, tokens: float) -> float:
    """FLOPs to sample ``tokens`` tokens from a model of ``params`` parameters."""
    return 2.0 * params * tokens


@dataclass(frozen=True)
class Plan:
    """What one generator may draw per question, and what that is expected to cost."""

    match: str
    role: str
    samples_per_question: int
    generator_params: int | None  # None: a hosted model of unknown size
    assumed_solution_tokens: int
    planned_flops_per_question: float | None
    ratio_exact: float | None  # WC samples per SE sample before rounding (None: a budget in FLOPs)
    ratio_used: float | None  # S_WC / S_SE as drawn


def samples_per_question(
    role: str,
    params: dict[str, float],
    *,
    match: str = "compute",
    se_samples: int | None = 1,
    flops_per_question: float | None = None,
    prices: dict[str, float | None] | None = None,
    solution_tokens: int = 256,
    max_samples: int = 10_000,
    ratio: float | None = None,
    rounding: str = "ratio",
) -> int:
    """Samples per question for ``role`` ('wc' or 'se') under one budget.

    ``params`` maps 'wc' and 'se' to parameter counts (None: a hosted model of unknown size, which
    only price and number matching can take); ``prices`` maps them to
    dollars per million output tokens (price matching only). Ratio-based budgets
    round by ``rounding`` (see the module docstring); a budget in FLOPs is floored so
    it is never exceeded. ``ratio`` fixes WC's samples per SE sample (e.g. 3 for the
    paper's 3x) instead of deriving it.
    """
    if rounding not in ROUNDINGS:
        raise BudgetError(f"budget.rounding={rounding!r}: use ratio (round the ratio first, as the paper) or samples")
    if role not in ("wc", "se"):
        raise BudgetError(f"unknown generator role {role!r}: use model=wc or model=se")
    if match not in MATCHES:
        raise BudgetError(f"unknown budget match {match!r}: use one of {', '.join(MATCHES)}")
    unknown = unknown_size(params, match, ratio, flops_per_question)
    if unknown:
        raise BudgetError(unknown)
    if flops_per_question is not None:
        if match != "compute":
            raise BudgetError("budget.flops_per_question only makes sense with budget.match=compute")
        per_sample = sample_flops(params[role], solution_tokens)
        samples = math.floor(flops_per_question / per_sample)
        if samples < 1:
            smallest = max(sample_flops(params[r], solution_tokens) for r in ("wc", "se"))
            raise BudgetError(
                f"budget of {flops_per_question:.3g} FLOPs per question buys {flops_per_question / per_sample:.3f} "
                f"samples from the {role.upper()} model ({params[role]:.3g} params x {solution_tokens} tokens "
                f"x 2 = {per_sample:.3g} FLOPs per sample). The smallest budget that gives both models at least "
                f"one sample is budget.flops_per_question={smallest:.4g}."
            )
    else:
        if se_samples is None or se_samples < 1:
            raise BudgetError(
                f"budget.se_samples={se_samples} gives the SE model less than one sample per question; "
                "the smallest budget that works is budget.se_samples=1"
            )
        if role == "se" or match == "number":
            samples = se_samples
        else:
            exact = exact_ratio(params, match=match, prices=prices, ratio=ratio)
            samples = se_samples * round_half_up(exact) if rounding == "ratio" else round_half_up(se_samples * exact)
        samples = max(samples, 1)
    if samples > max_samples:
        raise BudgetError(
            f"this budget asks for {samples} samples per question from the {role.upper()} model, more than "
            f"budget.max_samples_per_question={max_samples}; lower the budget or raise that limit on purpose"
        )
    return samples


def plan(role: str, params: dict[str, float], *, solution_tokens: int, **budget) -> Plan:
    """The sampling plan for one generator: samples per question and planned FLOPs."""
    s = samples_per_question(role, params, solution_tokens=solution_tokens, **budget)
    exact = used = None
    if budget.get("flops_per_question") is None:
        exact = exact_ratio(params, match=budget.get("match", "compute"), prices=budget.get("prices"), ratio=budget.get("ratio"))
        used = samples_per_question("wc", params, solution_tokens=solution_tokens, **budget) / samples_per_question("se", params, solution_tokens=solution_tokens, **budget)
    return Plan(
        match=budget.get("match", "compute"),
        role=role,
        samples_per_question=s,
        generator_params=int(params[role]) if params[role] is not None else None,
        assumed_solution_tokens=solution_tokens,
        planned_flops_per_question=s * sample_flops(params[role], solution_tokens) if params[role] is not None else None,
        ratio_exact=exact,
        ratio_used=used,
    )


def mix(samples_per_question: dict[str, int], mix_se: float, qids: list[str], seed: int) -> dict[str, dict[str, int]]:
    """One compute-matched budget split between the generators (``data.source=mix``): a share ``mix_se``
    of it buys SE samples and the rest WC samples. ``samples_per_question`` is what each role would draw
    alone at this budget (S_SE, and S_WC = S_SE * ratio), so role r draws round(share_r * Q * S_r)
    samples in all, spread over the Q questions as evenly as whole samples allow; which questions get
    the one extra sample is a permutation drawn from (``seed``, role). Returns {role: {qid: samples}}."""
    if not 0.0 <= mix_se <= 1.0:
        raise BudgetError(f"data.mix_se={mix_se} is not a share of the budget: use a number from 0 (all WC) to 1 (all SE)")
    out = {}
    for role, share in (("se", mix_se), ("wc", 1.0 - mix_se)):
        total = round_half_up(share * len(qids) * samples_per_question[role])
        base, extra = divmod(total, len(qids)) if qids else (0, 0)
        order = list(qids)
        random.Random(f"{seed}-{role}").shuffle(order)
        more = set(order[:extra])
        out[role] = {q: base + (q in more) for q in qids}
    return out
