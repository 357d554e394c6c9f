"""Costs for the benchmarks, from tidemark's one price table (`tidemark.prices`: its date
and source). The benchmarks price claude-sonnet-4-5, tidemark's default model."""

from __future__ import annotations

from tidemark.prices import PRICES_AS_OF, PRICES_SOURCE, price_for

__all__ = ["PRICES_DATE", "PRICES_SOURCE", "cost"]

PRICES_DATE = PRICES_AS_OF
MODEL = "claude-sonnet-4-5"


def cost(
    *, input_tokens: int, cache_write: int, cache_read: int, output: int, model: str = MODEL
) -> float:
    """Dollars for these token counts (`input_tokens` is the uncached part, as the API's)."""
    price = price_for(model)
    if price is None:
        raise KeyError(f"no price for {model}")
    return price.cost(
        uncached_input=input_tokens, output=output, cache_read=cache_read, cache_write=cache_write
    )
