"""Typed transcript: messages with stable ids and their content blocks."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ContentBlock",
    "ImageBlock",
    "Message",
    "Origin",
    "StopReason",
    "TextBlock",
    "ThinkingBlock",
    "ToolResultBlock",
    "ToolUseBlock",
    "Usage",
    "new_message_id",
    "utc_now",
]

# Why the model stopped, as the Messages API says it (the local provider uses the same).
StopReason = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
]


def utc_now() -> str:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-11-25T12:00:00.123Z``."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:16]


class _Block(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class TextBlock(_Block):
    type: Literal["text"] = "text"
    text: str
    # True once compaction replaced a long assistant text by a one-line stub.
    stubbed: bool = False


class ThinkingBlock(_Block):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""


class ToolUseBlock(_Block):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict[str, Any])
    # True once compaction replaced its long string inputs by one-line stubs.
    stubbed: bool = False


# The most tokens the API bills for one image (it scales larger ones down to about 1.15 MP).
IMAGE_MAX_TOKENS = 1_600


class ImageBlock(_Block):
    """An image inside a tool result: base64 `data` of `media_type` (image/png, ...)."""

    type: Literal["image"] = "image"
    media_type: str
    data: str

    @property
    def size(self) -> int:
        """Its size in bytes, decoded."""
        return len(self.data) * 3 // 4 - self.data[-2:].count("=")

    @property
    def tokens(self) -> int:
        """What the API bills for it: width x height / 750 (PNG and GIF say their size in
        their header), at most `IMAGE_MAX_TOKENS`; other formats count as the most."""
        try:
            head = base64.b64decode(self.data[:44])
        except (binascii.Error, ValueError):
            return IMAGE_MAX_TOKENS
        if head.startswith(b"\x89PNG") and len(head) >= 24:
            width, height = int.from_bytes(head[16:20]), int.from_bytes(head[20:24])
        elif head.startswith(b"GIF8") and len(head) >= 10:
            width = int.from_bytes(head[6:8], "little")
            height = int.from_bytes(head[8:10], "little")
        else:
            return IMAGE_MAX_TOKENS
        return max(1, min(IMAGE_MAX_TOKENS, width * height // 750))

    def placeholder(self) -> str:
        """One line for a model or a view that cannot take the image itself."""
        return f"[image: {self.media_type}, {max(1, round(self.size / 1024))} KB]"


class ToolResultBlock(_Block):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: str  # the result's text (all of it when there are no images)
    is_error: bool = False
    # True once compaction replaced the content by a one-line tombstone.
    tombstoned: bool = False
    # Images that follow the text (MCP tools may return them); a tombstone drops them.
    # (Left out of the transcript's records when there are none.)
    images: tuple[ImageBlock, ...] = Field(default=(), exclude_if=lambda images: not images)

    def text_with_placeholders(self) -> str:
        """The text, then one placeholder line per image: for what cannot take images."""
        return "\n".join([self.content, *(i.placeholder() for i in self.images)]).strip("\n")


ContentBlock = Annotated[
    TextBlock | ThinkingBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")
]

# Who produced a message: the user typed it, the model wrote it, tools answered,
# or the runtime inserted it (memory summary, notices, interruption answers).
Origin = Literal["user", "model", "tools", "runtime"]


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def context_tokens(self) -> int:
        """Everything the request held plus what the response added."""
        return (
            self.input_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
            + self.output_tokens
        )

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def event_keys(self) -> dict[str, int]:
        """As event keys (``input_tokens`` includes the cached parts)."""
        return {
            "input_tokens": self.total_input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
        }


class Message(BaseModel):
    """One transcript entry. ``id`` is stable for the whole life of the session."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(default_factory=new_message_id)
    role: Literal["user", "assistant"]
    origin: Origin
    content: list[ContentBlock]
    created_at: str = Field(default_factory=utc_now)
    # Set on assistant messages: the usage of the response that produced them.
    usage: Usage | None = None
    stop_reason: StopReason | None = None

    @classmethod
    def user_text(cls, text: str, origin: Origin = "user") -> Message:
        return cls(role="user", origin=origin, content=[TextBlock(text=text)])

    @property
    def tool_uses(self) -> list[ToolUseBlock]:
        return [b for b in self.content if isinstance(b, ToolUseBlock)]

    @property
    def tool_results(self) -> list[ToolResultBlock]:
        return [b for b in self.content if isinstance(b, ToolResultBlock)]

    @property
    def text(self) -> str:
        return "\n".join(b.text for b in self.content if isinstance(b, TextBlock))

    @property
    def has_text(self) -> bool:
        return any(isinstance(b, TextBlock) and b.text.strip() for b in self.content)

    @property
    def is_users_own(self) -> bool:
        """The user's own words (task, instructions): never dropped from context."""
        return self.role == "user" and self.origin == "user"
