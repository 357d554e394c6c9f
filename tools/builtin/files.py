"""The file tools: read_file, write_file, edit_file."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ..errors import ToolError
from ..function import tool
from ..interface import ToolContext
from ..workspace import display_path, read_text, resolve_path, split_lines

__all__ = ["edit_file", "read_file", "write_file"]

MAX_READ_CHARS = 30_000
MAX_LINE_CHARS = 2_000
DEFAULT_READ_LINES = 2_000


@tool(name="read_file", read_only=True)
def read_file(
    ctx: ToolContext,
    path: str,
    offset: Annotated[int, Field(ge=1)] = 1,
    limit: Annotated[int, Field(ge=1)] = DEFAULT_READ_LINES,
) -> str:
    """Read a text file. Returns its lines numbered like `cat -n`.

    Args:
        path: File path, relative to the workspace.
        offset: Line number to start at (1 = first line).
        limit: Maximum number of lines to return (default 2000).
    """
    resolved = resolve_path(ctx.workspace, path)
    shown = display_path(ctx.workspace, resolved)
    lines = split_lines(read_text(ctx.workspace, resolved))
    if not lines:
        return f"({shown} is empty)"
    if offset > len(lines):
        raise ToolError(f"offset {offset} is past the end of {shown} ({len(lines)} lines)")
    out: list[str] = []
    size = 0
    last = offset - 1
    for number in range(offset, min(len(lines), offset - 1 + limit) + 1):
        line = lines[number - 1]
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + f"... [line cut at {MAX_LINE_CHARS} characters]"
        entry = f"{number:>6}\t{line}"
        if size + len(entry) + 1 > MAX_READ_CHARS and out:
            break
        out.append(entry)
        size += len(entry) + 1
        last = number
    if last < len(lines):
        reason = (
            f"output is capped at {MAX_READ_CHARS} characters"
            if last < offset - 1 + limit
            else f"limit is {limit} lines"
        )
        out.append(
            f"[showed lines {offset}-{last} of {len(lines)} ({reason}); "
            f"use offset={last + 1} to read more]"
        )
    return "\n".join(out)


@tool(name="write_file", needs_approval=True)
def write_file(ctx: ToolContext, path: str, content: str) -> str:
    """Create a file or overwrite it with new content. Creates missing parent directories.

    Args:
        path: File path, relative to the workspace.
        content: The complete new content of the file.
    """
    resolved = resolve_path(ctx.workspace, path, for_writing=True)
    shown = display_path(ctx.workspace, resolved)
    if resolved.is_dir():
        raise ToolError(f"{shown} is a directory; give a file path")
    existed = resolved.exists()
    resolved.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8")
    resolved.write_bytes(data)
    return f"{'overwrote' if existed else 'created'} {shown} ({len(data)} bytes written)"


@tool(name="edit_file", needs_approval=True)
def edit_file(
    ctx: ToolContext,
    path: str,
    old_string: str,
    new_string: str,
    replace_all: bool = False,
) -> str:
    """Replace exact text in a file. old_string must match the file exactly, including
    spaces and indentation, and must be unique unless replace_all is true.

    Args:
        path: File path, relative to the workspace.
        old_string: The exact text to replace.
        new_string: The text to put in its place.
        replace_all: Replace every occurrence instead of requiring exactly one.
    """
    resolved = resolve_path(ctx.workspace, path, for_writing=True)
    shown = display_path(ctx.workspace, resolved)
    text = read_text(ctx.workspace, resolved)
    if old_string == "":
        raise ToolError("old_string is empty; to create or overwrite a file use write_file")
    if old_string == new_string:
        raise ToolError("old_string and new_string are the same; nothing to change")
    count = text.count(old_string)
    if count == 0:
        raise ToolError(
            f"old_string not found in {shown}; read the file and copy the exact text, "
            "including whitespace and indentation"
        )
    if count > 1 and not replace_all:
        raise ToolError(
            f"old_string occurs {count} times in {shown}; include more surrounding lines "
            "to make it unique, or set replace_all to true"
        )
    resolved.write_bytes(text.replace(old_string, new_string).encode("utf-8"))
    return f"replaced {count} occurrence{'s' if count > 1 else ''} in {shown}"
