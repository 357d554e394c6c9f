"""Token prices the cost figures use: one table, with its date and source.

Source: Anthropic's pricing page, https://docs.claude.com/en/docs/about-claude/pricing
(model pricing table, row "Claude Sonnet 4.5"), as published 2025-11 (the page's copy dated
2025-11-15). tidemark's default model is claude-sonnet-4-5. Cache writes use the 5-minute
rate (the default TTL). USD per million tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRICES", "PRICES_DATE", "PRICES_SOURCE", "Price", "cost"]

PRICES_DATE = "2025-11-15"
PRICES_SOURCE = "https://docs.claude.com/en/docs/about-claude/pricing"


@dataclass(frozen=True)
class Price:
    input: float
    cache_write: float
    cache_read: float
    output: float


PRICES: dict[str, Price] = {
    "claude-sonnet-4-5": Price(input=3.00, cache_write=3.75, cache_read=0.30, output=15.00),
}


def cost(
    *,
    input_tokens: int,
    cache_write: int,
    cache_read: int,
    output: int,
    model: str = "claude-sonnet-4-5",
) -> float:
    """Dollars for these token counts (input_tokens is the uncached, unwritten part)."""
    p = PRICES[model]
    return (
        input_tokens * p.input
        + cache_write * p.cache_write
        + cache_read * p.cache_read
        + output * p.output
    ) / 1_000_000
