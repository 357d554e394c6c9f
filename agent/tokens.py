"""Token estimates: per message (cached by id), and the context size of the next request."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from tidemark.messages import Message, TextBlock, ThinkingBlock, ToolResultBlock, ToolUseBlock
from tidemark.model import ToolSpec

__all__ = ["TokenCounter", "chars_estimate", "image_tokens", "message_text"]

# Framing the API adds around each message and block (role, type, ids).
_MESSAGE_OVERHEAD = 4
_BLOCK_OVERHEAD = 8


def chars_estimate(text: str) -> int:
    """About four characters per token: the usual estimate for English and code."""
    return (len(text) + 3) // 4


def message_text(message: Message) -> str:
    """The text a model reads of a message (used to estimate its size)."""
    parts: list[str] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, ThinkingBlock):
            parts.append(block.thinking)
        elif isinstance(block, ToolUseBlock):
            parts.append(block.name + json.dumps(block.input, ensure_ascii=False))
        elif isinstance(block, ToolResultBlock):  # pyright: ignore[reportUnnecessaryIsInstance]
            parts.append(block.content)
    return "\n".join(parts)


def image_tokens(message: Message) -> int:
    """What the images in a message's tool results cost (not text: the API bills pixels)."""
    return sum(
        image.tokens
        for block in message.content
        if isinstance(block, ToolResultBlock)
        for image in block.images
    )


class TokenCounter:
    """Estimates message sizes with the model's estimator; each message is counted once.

    Keyed by id, content length and stubbed blocks, so a tombstoned or stubbed copy of a
    message is recounted (a stubbed tool input keeps its keys, so its length alone would not
    tell).
    """

    def __init__(self, estimate: Callable[[str], int] = chars_estimate) -> None:
        self.estimate = estimate
        self._cache: dict[tuple[str, int, int], int] = {}

    def message(self, message: Message) -> int:
        key = (
            message.id,
            sum(_block_len(b) for b in message.content),
            sum(
                1 for b in message.content if isinstance(b, TextBlock | ToolUseBlock) and b.stubbed
            ),
        )
        cached = self._cache.get(key)
        if cached is None:
            cached = (
                self.estimate(message_text(message))
                + image_tokens(message)
                + _MESSAGE_OVERHEAD
                + _BLOCK_OVERHEAD * len(message.content)
            )
            self._cache[key] = cached
        return cached

    def messages(self, messages: Sequence[Message]) -> int:
        return sum(self.message(m) for m in messages)

    def each(self, messages: Sequence[Message]) -> list[int]:
        return [self.message(m) for m in messages]

    def preamble(self, system: str, tools: Sequence[ToolSpec]) -> int:
        """System prompt and tool definitions: sent with every request."""
        tool_text = json.dumps([t.model_dump() for t in tools], ensure_ascii=False)
        return self.estimate(system) + self.estimate(tool_text)


def _block_len(block: object) -> int:
    if isinstance(block, TextBlock):
        return len(block.text)
    if isinstance(block, ToolResultBlock):
        return len(block.content) + sum(len(i.data) for i in block.images)
    if isinstance(block, ToolUseBlock):
        return len(block.input)
    if isinstance(block, ThinkingBlock):
        return len(block.thinking)
    return 0
