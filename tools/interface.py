"""What a tool is, what calling it looks like, and what it may use while it runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["Tool", "ToolCall", "ToolContext", "ToolOutcome"]


@dataclass(frozen=True)
class ToolCall:
    """One ``tool_use`` block from the model."""

    id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class ToolOutcome:
    """The ``tool_result`` answering one call."""

    tool_use_id: str
    content: str
    is_error: bool
    duration_ms: float


@dataclass
class ToolContext:
    """What the runtime lends a tool for one run.

    ``workspace`` is resolved on creation; tools never touch anything outside it.
    ``process_registry`` is the file where ``bash`` records the process groups it started,
    so that a later ``reap_leftover_processes`` can end them if the runtime died.
    """

    workspace: Path
    default_timeout: float = 120.0
    process_registry: Path | None = None

    def __post_init__(self) -> None:
        self.workspace = Path(self.workspace).resolve()


@runtime_checkable
class Tool(Protocol):
    """Anything the model can call.

    ``read_only`` calls in one batch run concurrently; ``needs_approval`` marks tools that
    write files or run commands; ``timeout`` (seconds) of ``None`` means the context's default.
    """

    name: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool
    needs_approval: bool
    timeout: float | None

    async def run(self, input: dict[str, Any], ctx: ToolContext) -> str: ...
