"""Dollars: what a model's tokens cost by cms's own price table (``conf/prices/<version>.yaml``),
what a sampling pass planned to spend and what its API usage says it spent.

A table maps a model to dollars per million input, cached input, output and reasoning tokens, a
batch discount, and the page and date each figure was read from. A card finds its row by
``priced_as`` (else its ``api.model``); a card's ``price_per_mtok`` overrides the output price (a
local model priced by hand). Usage is what the API returned per request: input tokens (of which
cached), output tokens (of which reasoning, as OpenAI counts them), and the provider's own cost
where it reports one (OpenRouter's ``usage.cost``), kept to compare with ours.
"""

from __future__ import annotations

PER = 1_000_000


def entry(card: dict, table: dict) -> dict | None:
    """The card's row of the price table; None when it has none."""
    name = card.get("priced_as") or (card.get("api") or {}).get("model")
    return (table.get("models") or {}).get(name) if name else None


def output_price(card: dict, table: dict) -> float | None:
    """Dollars per million output tokens: the card's ``price_per_mtok``, else its row's ``output``."""
    if card.get("price_per_mtok") is not None:
        return float(card["price_per_mtok"])
    row = entry(card, table)
    return float(row["output"]) if row else None


def cost(row: dict, usage: dict, batch: bool = False) -> float:
    """Dollars for one request's ``usage`` ({input, cached_input, output, reasoning}) at ``row``'s prices."""
    cached, reasoning = usage.get("cached_input") or 0, usage.get("reasoning") or 0
    dollars = ((usage.get("input", 0) - cached) * row["input"] + cached * row.get("cached_input", row["input"])
               + (usage.get("output", 0) - reasoning) * row["output"] + reasoning * row.get("reasoning", row["output"])) / PER
    return dollars * (1 - row.get("batch_discount", 0.0)) if batch else dollars


def planned(output_price: float, samples: int, solution_tokens: int) -> float:
    """What ``samples`` solutions of ``solution_tokens`` output tokens were planned to cost (price matching
    counts output tokens, as the paper does)."""
    return samples * solution_tokens * output_price / PER


def spent(rows: list[dict], row: dict | None, output_price: float | None, batch: bool = False) -> dict:
    """The dollars a pass's stored samples say were spent: from the API's usage at ``row``'s prices, or
    (a local model, no usage) its output tokens at ``output_price``; and the provider's own figure where
    it reported one. None where there is no price."""
    usages = [r["usage"] for r in rows if r.get("usage")]
    totals = {k: sum(u.get(k) or 0 for u in usages) for k in ("input", "cached_input", "output", "reasoning")}
    provider = [u["cost"] for u in usages if u.get("cost") is not None]
    if usages and row:
        ours = sum(cost(row, u, batch) for u in usages)
    else:
        ours = sum(r["tokens"] for r in rows) * output_price / PER if output_price is not None else None
    return {"spent_usd": ours, "provider_usd": sum(provider) if provider else None, "usage_tokens": totals if usages else None}


def together(paid: list[dict]) -> dict:
    """What several passes (``spent``'s answers; a mix of generators) cost together: no total where a pass has no price."""
    if len(paid) == 1:
        return paid[0]
    usd, provider = [p["spent_usd"] for p in paid], [p["provider_usd"] for p in paid if p["provider_usd"] is not None]
    usages = [p["usage_tokens"] for p in paid if p["usage_tokens"]]
    return {"spent_usd": None if None in usd else sum(usd), "provider_usd": sum(provider) if provider else None,
            "usage_tokens": {k: sum(u.get(k) or 0 for u in usages) for k in usages[0]} if usages else None}
