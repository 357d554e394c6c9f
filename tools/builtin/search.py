"""The search tools: list_files and grep."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from ..errors import ToolError
from ..function import tool
from ..interface import ToolContext
from ..workspace import (
    display_path,
    file_kind,
    glob_to_regex,
    is_binary,
    open_regular,
    resolve_path,
    split_lines,
    stat_path,
    walk_files,
)

__all__ = ["grep", "list_files"]

MAX_LIST_ENTRIES = 1_000
MAX_GREP_CHARS = 30_000
MAX_GREP_LINE_CHARS = 500
MAX_GREP_FILE_BYTES = 10_000_000


@tool(name="list_files", read_only=True)
def list_files(ctx: ToolContext, path: str = ".", pattern: str | None = None) -> str:
    """List files (recursively) as paths relative to the workspace, sorted.
    Skips .git and .tidemark.

    Args:
        path: Directory to list, relative to the workspace (default: the whole workspace).
        pattern: Glob to filter files, relative to path, e.g. "**/*.py" or "src/*.ts".
            A pattern without "/" such as "*.md" matches file names at any depth.
    """
    root = resolve_path(ctx.workspace, path)
    _check_root(ctx, root, path)
    matcher = glob_to_regex(pattern) if pattern else None
    found: list[str] = []
    total = 0
    for file in walk_files(ctx.workspace, root, links=True):
        if matcher is not None:
            relative = file.relative_to(root).as_posix() if root.is_dir() else file.name
            if not matcher.match(relative):
                continue
        total += 1
        if len(found) < MAX_LIST_ENTRIES:
            found.append(display_path(ctx.workspace, file))
    if not found:
        what = f" matching {pattern!r}" if pattern else ""
        return f"no files{what} under {display_path(ctx.workspace, root)}"
    if total > len(found):
        found.append(
            f"[showed {len(found)} of {total} files; narrow the path or pattern to see the rest]"
        )
    return "\n".join(found)


@tool(name="grep", read_only=True)
def grep(ctx: ToolContext, pattern: str, path: str = ".", glob: str | None = None) -> str:
    """Search file contents with a regular expression (Python syntax).
    Returns matching lines as `file:line: text`. Skips binary files, .git and .tidemark.

    Args:
        pattern: Regular expression, e.g. "def \\w+\\(" or "TODO".
        path: File or directory to search, relative to the workspace (default: everything).
        glob: Only search files matching this glob, e.g. "*.py" or "src/**/*.ts".
    """
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ToolError(f"invalid regex {pattern!r}: {error}") from None
    root = resolve_path(ctx.workspace, path)
    _check_root(ctx, root, path)
    matcher = glob_to_regex(glob) if glob else None
    out: list[str] = []
    size = 0
    for file in walk_files(ctx.workspace, root):
        if matcher is not None:
            relative = file.relative_to(root).as_posix() if root.is_dir() else file.name
            if not matcher.match(relative):
                continue
        try:
            with open_regular(ctx.workspace, file) as opened:
                data = opened.read(MAX_GREP_FILE_BYTES + 1)
        except ToolError:  # changed since the walk saw it
            continue
        if len(data) > MAX_GREP_FILE_BYTES:
            continue
        if is_binary(data):
            continue
        shown = display_path(ctx.workspace, file)
        for number, line in enumerate(split_lines(data.decode("utf-8", "replace")), 1):
            if not regex.search(line):
                continue
            if len(line) > MAX_GREP_LINE_CHARS:
                line = line[:MAX_GREP_LINE_CHARS] + "..."
            entry = f"{shown}:{number}: {line}"
            if size + len(entry) + 1 > MAX_GREP_CHARS:
                out.append(
                    f"[output capped at {MAX_GREP_CHARS} characters after {len(out)} matches; "
                    "narrow the pattern, path or glob to see the rest]"
                )
                return "\n".join(out)
            out.append(entry)
            size += len(entry) + 1
    return "\n".join(out) if out else f"no matches for {pattern!r}"


def _check_root(ctx: ToolContext, root: Path, path: str) -> None:
    """A folder or a regular file to search; anything else is a ToolError."""
    status = stat_path(ctx.workspace, root)
    if status is None:
        raise ToolError(f"path not found: {path}")
    if not (stat.S_ISDIR(status.st_mode) or stat.S_ISREG(status.st_mode)):
        shown = display_path(ctx.workspace, root)
        raise ToolError(f"{shown} is a {file_kind(status.st_mode)}, not a file or folder")
