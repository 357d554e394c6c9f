"""The size of the next request: the latest usage as an anchor, estimates for the rest.

Compaction plans in estimated tokens; the calibration (real tokens per estimated token,
from the latest usage) scales its figures so it lands under the real target.
"""

from __future__ import annotations

from collections.abc import Sequence

from tidemark.compaction import CompactionBudget
from tidemark.config import Settings
from tidemark.messages import Message, Usage
from tidemark.tokens import TokenCounter

__all__ = ["TokenMeter"]


class TokenMeter:
    def __init__(self, counter: TokenCounter, preamble_tokens: int) -> None:
        self.counter = counter
        self.preamble_tokens = preamble_tokens  # system prompt and tool definitions
        self.calibration = 1.0
        self._anchor: tuple[int, int] | None = None  # (usage tokens, context length then)

    def note_usage(self, usage: Usage, context_length: int) -> None:
        """The latest response's usage anchors the context size (the rest is estimated)."""
        self._anchor = (usage.context_tokens, context_length)

    def forget(self) -> None:
        """The context was replaced (compaction): the anchor no longer describes it."""
        self._anchor = None

    def context_tokens(self, context: Sequence[Message]) -> int:
        """Estimated input tokens of the next request."""
        if self._anchor is not None and self._anchor[1] <= len(context):
            tokens, length = self._anchor
            return tokens + self.counter.messages(context[length:])
        return self.preamble_tokens + self.counter.messages(context)

    def calibrate(self, context: Sequence[Message]) -> float:
        """Real tokens per estimated token, from the latest usage (kept until a newer one).

        Computed when compaction or an update needs it, not on every turn: it sums the
        estimate of the whole context the usage was measured on.
        """
        if self._anchor is not None and self._anchor[1] <= len(context):
            tokens, length = self._anchor
            estimated = self.preamble_tokens + self.counter.messages(context[:length])
            if tokens > 0 and estimated > 0:
                self.calibration = min(3.0, max(0.5, tokens / estimated))
        return self.calibration

    def budget(self, s: Settings) -> CompactionBudget:
        """The contract's figures, in estimated tokens (scaled by the calibration)."""

        def est(tokens: int) -> int:
            return int(tokens / self.calibration)

        return CompactionBudget(
            # 5% below the target: estimates of single messages vary around the calibration.
            target=est(s.compaction_target * 19 // 20),
            limit=est(s.context_window - s.max_output_tokens),
            preamble=self.preamble_tokens,
            tail_min=est(s.tail_min_tokens),
            tail_max=est(s.tail_max_tokens),
            tail_covered_max=est(s.tail_covered_max_tokens),
        )
