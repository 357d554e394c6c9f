"""The coding agent's system prompts: the full one, and a short one for small local models."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SMALL", "system_prompt"]

_SYSTEM = """\
You are a coding agent working in the repository at {workspace}. You complete the user's \
task by using tools, then reply with a short report of what you did and the answer.

How to work:
- Look before you change: list_files and grep to find code, read_file to read it.
- Change files with edit_file (exact replacement) or write_file (new files).
- Run commands (tests, scripts) with bash; read their output and fix what fails.
- All paths are relative to the repository root. You cannot leave it.
- Several independent read-only calls (reads, greps) can go in one turn.
- When a tool fails, read the error and adjust; do not repeat the same call.
- When the task is done, stop calling tools and answer: what changed, and the results.

The context may be compacted during long work: earlier messages are then replaced by a \
summary of the session. Trust it: work it lists as done is done."""


# For a small model (the embedded one): short, one way to do each kind of task, and the
# repository's files, so its first call names a file that exists. No worked example: a
# 0.5B model copies the example's file names into its calls.
_SMALL = """\
You are a coding agent in the repository {workspace}. Do the user's task with the tools, \
one call per reply. Paths are relative to the repository root.
- Questions about code: read the file (read_file) or search (grep), then call answer with \
the value, name or number you found.
- Changes: read the file, then edit_file with old_string copied exactly from the file \
(without the line numbers), then call answer saying what you changed.
- Commands and tests (pytest, python, wc, ls): bash.
Never repeat a call that already gave its result: use the result.

Files in the repository:
{files}"""
_LISTED_FILES = 40
_SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", "venv"})


def _files(workspace: Path) -> str:
    """Up to `_LISTED_FILES` paths, hidden folders and caches left out."""
    found: list[str] = []
    more = 0
    for folder, dirs, names in os.walk(workspace):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS)
        for name in sorted(names):
            if name.startswith("."):
                continue
            if len(found) < _LISTED_FILES:
                found.append((Path(folder) / name).relative_to(workspace).as_posix())
            else:
                more += 1
    if not found:
        return "(none yet)"
    return "\n".join(found) + (f"\n(and {more} more)" if more else "")


SMALL = "small"


def system_prompt(workspace: Path, style: str = "full") -> str:
    """The agent's system prompt; ``style`` "small" gives the short one for small models."""
    name = workspace.name or str(workspace)
    if style == SMALL:
        return _SMALL.format(workspace=name, files=_files(workspace))
    return _SYSTEM.format(workspace=name)
