"""Typed transcript: messages with stable ids and their content blocks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ContentBlock",
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


class ToolResultBlock(_Block):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: str
    is_error: bool = False
    # True once compaction replaced the content by a one-line tombstone.
    tombstoned: bool = False


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
