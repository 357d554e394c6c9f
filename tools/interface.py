"""What a tool is, what calling it looks like, and what it may use while it runs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "FileAccess",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolImage",
    "ToolOutcome",
    "ToolOutput",
    "describe_call",
    "describe_input",
    "file_access",
]

# What a tool does to the file its `path` input names (a tool's optional `files` attribute).
FileAccess = Literal["read", "write"]


def file_access(tool: object) -> FileAccess | None:
    """The tool's `files` attribute: optional, so tools written before it still conform."""
    access = getattr(tool, "files", None)
    return access if access in ("read", "write") else None


@dataclass(frozen=True)
class ToolCall:
    """One ``tool_use`` block from the model."""

    id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class ToolImage:
    """An image a tool returns: base64 ``data`` of ``media_type`` (``image/png``, ...)."""

    media_type: str
    data: str


@dataclass(frozen=True)
class ToolOutput:
    """What a tool may return instead of a plain string: its text and images."""

    text: str
    images: tuple[ToolImage, ...] = ()


@dataclass(frozen=True)
class ToolOutcome:
    """The ``tool_result`` answering one call."""

    tool_use_id: str
    content: str
    is_error: bool
    duration_ms: float
    images: tuple[ToolImage, ...] = ()


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

    async def run(self, input: dict[str, Any], ctx: ToolContext) -> str | ToolOutput: ...


def describe_input(
    input: Mapping[str, object], *, value_width: int = 80, width: int | None = None, sep: str = " "
) -> str:
    """A call's input on one line, ``path='a.py' limit=50``: strings quoted, other values as
    JSON, each value cut at `value_width` characters and the whole at `width` ("...").

    The one rendering of a tool's input: approval prompts, the status line, the chat, the
    tombstone of a cleared result and `tidemark inspect` all show calls with it.
    """
    parts: list[str] = []
    for key, value in input.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        text = _cut(text, value_width)
        parts.append(f"{key}={text!r}" if isinstance(value, str) else f"{key}={text}")
    joined = sep.join(parts)
    return joined if width is None else _cut(joined, width)


def describe_call(
    name: str, input: Mapping[str, object], *, value_width: int = 80, width: int | None = None
) -> str:
    """``read_file(path='a.py', limit=50)``: the name and `describe_input` in parentheses."""
    return f"{name}({describe_input(input, value_width=value_width, width=width, sep=', ')})"


def _cut(text: str, width: int) -> str:
    """`text` in at most `width` characters, "..." marking a cut."""
    return text if len(text) <= width else text[: width - 3] + "..."
