"""The transcript in memory: every message in order, where each one is, the tokens up to it.

Compaction never shrinks it (the context is a separate list), so positions and cumulative
token counts are stable: memory boundaries and update thresholds are measured on it.
"""

from __future__ import annotations

from collections.abc import Callable

from tidemark.messages import Message

__all__ = ["TranscriptIndex"]


class TranscriptIndex:
    def __init__(self, estimate: Callable[[Message], int]) -> None:
        self._estimate = estimate
        self.messages: list[Message] = []
        self.positions: dict[str, int] = {}
        self.cumulative: list[int] = []  # transcript tokens up to and including each message

    def append(self, message: Message) -> None:
        self.positions[message.id] = len(self.messages)
        self.messages.append(message)
        previous = self.cumulative[-1] if self.cumulative else 0
        self.cumulative.append(previous + self._estimate(message))

    @property
    def tokens(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0

    def tokens_through(self, message_id: str | None) -> int:
        """Transcript tokens up to and including `message_id` (0 when it is not known)."""
        position = self.positions.get(message_id) if message_id else None
        return self.cumulative[position] if position is not None else 0

    def tokens_after(self, message_id: str | None) -> int:
        """Transcript tokens after `message_id`: how far the memory lags when it covers it."""
        return self.tokens - self.tokens_through(message_id)
