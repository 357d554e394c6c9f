"""The coding agent's system prompts: the full one, and a short one for small local models."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REPOSITORY_HEADING", "SMALL", "system_prompt"]

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
# 0.5B model copies the example's file names into its calls. The part before
# `REPOSITORY_HEADING` is the same for every workspace: the local model shows the tools
# right after it and keeps that prefix's prefill on disk (`LocalModel`).
_SMALL = """\
You are a coding agent. Do the user's task with the tools, one call per reply. Paths are \
relative to the repository root. How to do each kind of task:
- A value in a file: read_file the file, then answer with the value.
- Where something is defined or written (a function, a name, a TODO): grep for it \
(grep "def NAME" for a definition), then answer with the file the result shows.
- What code does, returns or calls: read_file the file, work it out, then answer.
- Counting or listing files or lines: bash, e.g. find . -name "*.py" | wc -l, or wc -l \
FILE; answer with the number it prints.
- Tests: bash python -m pytest -q; its last line says how many failed and passed.
- Changes: read_file the file, then edit_file with old_string copied exactly from the \
file, then answer saying what you changed. A new file: write_file.
Never repeat a call that already gave its result: use the result."""
REPOSITORY_HEADING = "# Repository"
_SMALL_REPOSITORY = (
    REPOSITORY_HEADING
    + """
{workspace}, with these files:
{files}"""
)
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
        repository = _SMALL_REPOSITORY.format(workspace=name, files=_files(workspace))
        return f"{_SMALL}\n\n{repository}"
    return _SYSTEM.format(workspace=name)
