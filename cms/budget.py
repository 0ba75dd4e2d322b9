"""Sampling budgets: how many solutions per question each generator may draw.

Sampling a solution of W tokens from a model of P parameters costs 2*P*W FLOPs
(Kaplan et al.; the forward pass only). Three ways to match WC against SE:

- ``compute``: equal FLOPs, so S_WC = S_SE * P_SE / P_WC (Gemma2 9B vs 27B: 3x);
  or a budget given directly in FLOPs per question, S = B / (2 * P * W).
- ``number``: the same S for both models.
- ``price``: equal dollars, S_WC = S_SE * price_SE / price_WC (per output token).

All functions here are pure: parameter counts come from ``cms.models.count_params``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MATCHES = ("compute", "number", "price")


class BudgetError(ValueError):
    """A budget that cannot be honoured, with the reason and the fix in its message."""


def sample_flops(params: float, tokens: float) -> float:
    """FLOPs to sample ``tokens`` tokens from a model of ``params`` parameters."""
    return 2.0 * params * tokens


@dataclass(frozen=True)
class Plan:
    """What one generator may draw per question, and what that is expected to cost."""

    match: str
    role: str
    samples_per_question: int
    generator_params: int
    assumed_solution_tokens: int
    planned_flops_per_question: float


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
) -> int:
    """Samples per question for ``role`` ('wc' or 'se') under one budget.

    ``params`` maps 'wc' and 'se' to parameter counts; ``prices`` maps them to
    dollars per million output tokens (price matching only). Ratio-based budgets
    round to the nearest whole sample (9.24e9 vs 27.2e9 gives the paper's 3x);
    a budget in FLOPs is floored so it is never exceeded. ``ratio`` fixes WC's
    samples per SE sample (e.g. 3 for the paper's 3x) instead of deriving it.
    """
    if role not in ("wc", "se"):
        raise BudgetError(f"unknown generator role {role!r}: use model=wc or model=se")
    if match not in MATCHES:
        raise BudgetError(f"unknown budget match {match!r}: use one of {', '.join(MATCHES)}")
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
        elif ratio is not None:
            samples = round(se_samples * ratio)
        elif match == "compute":
            samples = round(se_samples * params["se"] / params["wc"])
        else:
            prices = prices or {}
            if not prices.get("wc") or not prices.get("se"):
                raise BudgetError(
                    "budget.match=price needs a price for both models: set family.wc.price_per_mtok and "
                    "family.se.price_per_mtok (dollars per million output tokens)"
                )
            samples = round(se_samples * prices["se"] / prices["wc"])
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
    return Plan(
        match=budget.get("match", "compute"),
        role=role,
        samples_per_question=s,
        generator_params=int(params[role]),
        assumed_solution_tokens=solution_tokens,
        planned_flops_per_question=s * sample_flops(params[role], solution_tokens),
    )


def spent(params: float, generated_tokens: int, n_samples: int) -> dict[str, float]:
    """What a finished sampling pass actually cost, from its real token counts."""
    return {
        "spent_flops": sample_flops(params, generated_tokens),
        "mean_solution_tokens": generated_tokens / n_samples if n_samples else 0.0,
    }
