"""Confinement of paths to the workspace, and the file walking the built-in tools share."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from .errors import ToolError

__all__ = [
    "IGNORED_DIRS",
    "RUNTIME_DIR",
    "display_path",
    "glob_to_regex",
    "is_binary",
    "read_text",
    "resolve_path",
    "walk_files",
]

RUNTIME_DIR = ".tidemark"
IGNORED_DIRS = frozenset({".git", RUNTIME_DIR})
_SNIFF_BYTES = 8192


def resolve_path(workspace: Path, path: str, *, for_writing: bool = False) -> Path:
    """The absolute, symlink-resolved path, refused if it leaves the workspace.

    Relative paths are taken from the workspace; absolute ones must lie inside it.
    Writing inside the runtime's own ``.tidemark`` folder is refused too.
    """
    root = workspace.resolve()
    candidate = Path(path).expanduser()
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise ToolError(
            f"path escapes the workspace: {path} (use a path inside {root}, "
            "relative paths start there)"
        )
    relative = resolved.relative_to(root)
    if for_writing and relative.parts[:1] == (RUNTIME_DIR,):
        raise ToolError(f"refusing to write {path}: {RUNTIME_DIR}/ is the runtime's own folder")
    return resolved


def display_path(workspace: Path, path: Path) -> str:
    """The path as the model should write it: relative to the workspace, with slashes."""
    relative = path.relative_to(workspace.resolve()).as_posix()
    return relative if relative != "" else "."


def is_binary(data: bytes) -> bool:
    return b"\0" in data[:_SNIFF_BYTES]


def read_text(workspace: Path, path: Path) -> str:
    """The file's text, or a ToolError the model can act on."""
    shown = display_path(workspace, path)
    if not path.exists():
        raise ToolError(f"file not found: {shown} (use list_files to see what exists)")
    if path.is_dir():
        raise ToolError(f"{shown} is a directory, not a file (use list_files to see inside)")
    data = path.read_bytes()
    if is_binary(data):
        raise ToolError(f"{shown} is a binary file; only text files can be read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ToolError(
            f"{shown} is not UTF-8 text (byte {error.start}); only UTF-8 text files can be read"
        ) from None


def split_lines(text: str) -> list[str]:
    """Lines as editors number them: split on newlines, no trailing empty line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def walk_files(root: Path) -> Iterator[Path]:
    """Files under ``root``, sorted by path, skipping ``.git`` and ``.tidemark``.

    Symlinked directories are not entered, so the walk never leaves the workspace.
    """
    if not root.is_dir():
        yield root
        return
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if entry.name not in IGNORED_DIRS:
                yield from walk_files(Path(entry.path))
        else:
            yield Path(entry.path)


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob where ``**`` spans directories and ``*`` stays within one.

    A pattern without ``/`` (``*.py``) matches file names at any depth.
    """
    if "/" not in pattern:
        pattern = "**/" + pattern
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            regex += "[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]"
            i = end + 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    return re.compile(regex + r"\Z")
