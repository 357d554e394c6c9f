"""Token prices for cost figures: one table, with its date and source.

Source: Anthropic's pricing page (the model pricing table), as published 2025-11 (the page's
copy dated 2025-11-15). Cache writes use the 5-minute rate (the default TTL). US dollars
per million tokens. `tidemark inspect` and the benchmarks both price from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PRICES", "PRICES_AS_OF", "PRICES_SOURCE", "Price", "estimate_cost", "price_for"]


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cache_read: float
    cache_write: float

    def cost(self, *, uncached_input: int, output: int, cache_read: int, cache_write: int) -> float:
        """Dollars for one usage, its input in its three parts (the API's `input_tokens` is
        the uncached part)."""
        return (
            uncached_input * self.input
            + output * self.output
            + cache_read * self.cache_read
            + cache_write * self.cache_write
        ) / 1_000_000


PRICES_AS_OF = "2025-11-15"
PRICES_SOURCE = "https://docs.claude.com/en/docs/about-claude/pricing"
# Keyed by model name; dated names and aliases match too ("claude-sonnet-4-5-20250929",
# "claude-sonnet-4-0", "...-latest"), newer models do not ("claude-opus-4-5" is not "-4").
PRICES: dict[str, Price] = {
    "claude-opus-4-1": Price(15.0, 75.0, 1.50, 18.75),
    "claude-opus-4": Price(15.0, 75.0, 1.50, 18.75),
    "claude-sonnet-4-5": Price(3.0, 15.0, 0.30, 3.75),
    "claude-sonnet-4": Price(3.0, 15.0, 0.30, 3.75),
    "claude-3-7-sonnet": Price(3.0, 15.0, 0.30, 3.75),
    "claude-haiku-4-5": Price(1.0, 5.0, 0.10, 1.25),
    "claude-3-5-haiku": Price(0.80, 4.0, 0.08, 1.0),
}


_VERSION_TAIL = re.compile(r"(-\d{8}|-latest|-0)?")


def price_for(model: str) -> Price | None:
    for name, price in PRICES.items():
        if model.startswith(name) and _VERSION_TAIL.fullmatch(model[len(name) :]):
            return price
    return None


def estimate_cost(
    model: str, *, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int
) -> float | None:
    """Dollars for the given usage (`input_tokens` includes the cached parts); None if the
    model is not in the price table."""
    price = price_for(model)
    if price is None:
        return None
    uncached = max(0, input_tokens - cache_read - cache_write)
    return price.cost(
        uncached_input=uncached,
        output=output_tokens,
        cache_read=cache_read,
        cache_write=cache_write,
    )
