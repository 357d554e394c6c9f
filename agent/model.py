"""The `Model` protocol every provider implements, and the request/response it speaks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from tidemark.messages import ContentBlock, Message, StopReason, TextBlock, Usage

__all__ = [
    "Model",
    "ModelRequest",
    "ModelResponse",
    "Purpose",
    "RecommendsSettings",
    "StopReason",
    "TextSink",
    "ToolSpec",
    "model_settings",
]

# Sent as the `X-Tidemark-Purpose` header on every request.
Purpose = Literal["turn", "session-memory", "compact"]

# Receives streamed text deltas (for live progress); may be None.
TextSink = Callable[[str], Awaitable[None] | None]


class ToolSpec(BaseModel):
    """What the model sees of a tool."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    input_schema: dict[str, Any] = Field(default_factory=dict[str, Any])


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One request. A plain dataclass: building it must not revalidate a long transcript."""

    system: str
    messages: Sequence[Message]
    tools: Sequence[ToolSpec] = ()
    max_tokens: int = 4096
    purpose: Purpose = "turn"
    # Index of the last message the provider's prompt cache should mark (besides the last
    # message), e.g. the previous request's end or a memory update's shared prefix.
    cache_breakpoint: int | None = None
    # "any": the reply must call a tool (used to get a small model to act at all);
    # "none": it must not. Memory updates and summaries keep "auto" even so: the API caches
    # message blocks per tool_choice, and they carry the tools only to share that cache.
    tool_choice: Literal["auto", "any", "none"] = "auto"


class ModelResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    content: list[ContentBlock]
    stop_reason: StopReason | None
    usage: Usage
    model: str = ""

    @property
    def text(self) -> str:
        """The reply's text blocks, one per line (empty when it only calls tools)."""
        return "\n".join(b.text for b in self.content if isinstance(b, TextBlock))


class Model(Protocol):
    """A chat model with tool use. Providers: Anthropic (Messages API), local (llama.cpp)."""

    @property
    def name(self) -> str: ...

    @property
    def context_window(self) -> int: ...

    async def generate(
        self, request: ModelRequest, on_text: TextSink | None = None
    ) -> ModelResponse:
        """Send one request (streamed), return the whole response.

        Raises `agent.errors.ModelError` when the request fails after retries.
        """
        ...

    def estimate_tokens(self, text: str) -> int:
        """A fast estimate of how many tokens `text` costs this model."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class RecommendsSettings(Protocol):
    """A model that knows what an agent on it needs (optional beside `Model`).

    The embedded local model asks for a small compaction threshold, short replies, early
    memory updates and the action nudge (`Settings.nudge_without_action`).
    """

    def recommended_settings(self) -> Mapping[str, Any]:
        """`Settings` field values an agent on this model uses unless its caller set them."""
        ...


def model_settings(model: Model) -> dict[str, Any]:
    """The settings `model` asks for: its context window, and what it recommends.

    `Agent` lays the caller's explicit settings over these (`Settings.over`), so the
    library and the command line run a model the same way.
    """
    values: dict[str, Any] = {"context_window": model.context_window}
    if isinstance(model, RecommendsSettings):
        values.update(model.recommended_settings())
    return values
