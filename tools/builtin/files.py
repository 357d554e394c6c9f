"""The file tools: read_file, write_file, edit_file."""

from __future__ import annotations

from typing import Annotated, BinaryIO

from pydantic import Field

from ..errors import ToolError
from ..function import tool
from ..interface import ToolContext
from ..workspace import (
    display_path,
    is_binary,
    open_regular,
    read_text,
    resolve_path,
    write_atomically,
)

__all__ = ["edit_file", "read_file", "write_file"]

MAX_READ_CHARS = 30_000
MAX_LINE_CHARS = 2_000
DEFAULT_READ_LINES = 2_000
# Past the page shown, lines are counted only this far (a log of many GB is not read
# to the end to say how long it is).
MAX_COUNT_BYTES = 256_000_000
_CHUNK = 1 << 20
_LINE_BYTES = MAX_LINE_CHARS * 4 + 4  # enough bytes for MAX_LINE_CHARS characters


@tool(name="read_file", read_only=True, files="read")
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
    with open_regular(ctx.workspace, resolved) as file:
        if is_binary(file.read(8192)):
            raise ToolError(f"{shown} is a binary file; only text files can be read")
        file.seek(0)
        return _page(file, shown, offset, limit)


def _page(file: BinaryIO, shown: str, offset: int, limit: int) -> str:
    """Lines ``offset`` to ``offset + limit - 1``, read without loading the whole file."""
    before = _skip_lines(file, offset - 1)
    out: list[str] = []
    size = 0
    last = offset - 1  # the number of the last line shown
    unshown = 0  # a line read but left out by the character cap
    ended = capped = undecodable = False
    while last < offset - 1 + limit:
        line = _read_line(file)
        if line is None:
            ended = True
            break
        text, cut, bad = _decode_line(line)
        if cut:
            text += f"... [line cut at {MAX_LINE_CHARS} characters]"
        entry = f"{last + 1:>6}\t{text}"
        if size + len(entry) + 1 > MAX_READ_CHARS and out:
            capped, unshown = True, 1
            break
        undecodable = undecodable or bad
        out.append(entry)
        size += len(entry) + 1
        last += 1
    if not out:
        if offset == 1:
            return f"({shown} is empty)"
        raise ToolError(f"offset {offset} is past the end of {shown} ({before} lines)")
    rest = 0 if ended else _count_lines(file)
    total = None if rest is None else last + unshown + rest
    if total is None or total > last:
        reason = (
            f"output is capped at {MAX_READ_CHARS} characters"
            if capped
            else f"limit is {limit} lines"
        )
        of = f"of {total}" if total is not None else f"of a file over {MAX_COUNT_BYTES:,} bytes"
        out.append(
            f"[showed lines {offset}-{last} {of} ({reason}); use offset={last + 1} to read more]"
        )
    if undecodable:
        out.append(
            f"[{shown} is not valid UTF-8 text: bytes that are not UTF-8 are shown as \ufffd; "
            "edit_file keeps them as they are]"
        )
    return "\n".join(out)


def _read_line(file: BinaryIO) -> tuple[bytes, bool] | None:
    """The next line (without its end), at most _LINE_BYTES of it, and whether it was longer."""
    raw = file.readline(_LINE_BYTES)
    if not raw:
        return None
    if raw.endswith(b"\n"):
        return raw[:-1].removesuffix(b"\r"), False
    longer = False
    if len(raw) == _LINE_BYTES:  # skip the rest of a very long line
        while chunk := file.readline(_CHUNK):
            longer = True
            if chunk.endswith(b"\n"):
                break
    return raw, longer


def _decode_line(line: tuple[bytes, bool]) -> tuple[str, bool, bool]:
    """The line's text, whether it was cut, and whether it held bytes that are not UTF-8."""
    raw, longer = line
    try:
        text = raw.decode("utf-8")
        bad = False
    except UnicodeDecodeError as error:
        # A character split by the length cap at the very end is not a decoding problem.
        bad = not (len(raw) == _LINE_BYTES and error.start >= len(raw) - 3)
        text = raw.decode("utf-8", "replace")
    if len(text) > MAX_LINE_CHARS or longer:
        return text[:MAX_LINE_CHARS], True, bad
    return text, False, bad


def _skip_lines(file: BinaryIO, count: int) -> int:
    """Move past ``count`` lines; returns how many there were (fewer at the end of file)."""
    skipped = 0
    last = b"\n"
    while skipped < count:
        chunk = file.read(_CHUNK)
        if not chunk:
            return skipped + (last != b"\n")  # a last line without a newline counts
        last = chunk[-1:]
        newlines = chunk.count(b"\n")
        if skipped + newlines < count:
            skipped += newlines
            continue
        position = -1
        for _ in range(count - skipped):
            position = chunk.index(b"\n", position + 1)
        file.seek(file.tell() - len(chunk) + position + 1)
        return count
    return skipped


def _count_lines(file: BinaryIO) -> int | None:
    """Lines from here to the end; None if that is more than MAX_COUNT_BYTES to read."""
    lines = 0
    read = 0
    last = b"\n"
    while chunk := file.read(_CHUNK):
        read += len(chunk)
        if read > MAX_COUNT_BYTES:
            return None
        lines += chunk.count(b"\n")
        last = chunk[-1:]
    return lines + (last != b"\n")


@tool(name="write_file", needs_approval=True, files="write")
def write_file(ctx: ToolContext, path: str, content: str) -> str:
    """Create a file or overwrite it with new content. Creates missing parent directories.

    Args:
        path: File path, relative to the workspace.
        content: The complete new content of the file.
    """
    resolved = resolve_path(ctx.workspace, path, for_writing=True)
    shown = display_path(ctx.workspace, resolved)
    data = content.encode("utf-8")
    existed = write_atomically(ctx.workspace, resolved, data)
    return f"{'overwrote' if existed else 'created'} {shown} ({len(data)} bytes written)"


@tool(name="edit_file", needs_approval=True, files="write")
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
    edited = text.replace(old_string, new_string).encode("utf-8", "surrogateescape")
    write_atomically(ctx.workspace, resolved, edited)
    return f"replaced {count} occurrence{'s' if count > 1 else ''} in {shown}"
