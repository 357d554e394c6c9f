"""A custom tool: count the lines of code in the workspace, per file.

Define a tool with ``@tool``: the type hints become the input schema the model sees, the
docstring's first paragraph its description and the ``Args:`` section the description of
each input. A ``ToolContext`` parameter is filled in by the runtime (it is not an input).
Raise ``ToolError`` for a failure the model should read and act on.

Python API::

    from tidemark import Agent
    from examples.custom_tool import count_lines

    agent = Agent(model, tools=[count_lines])   # added to the built-in tools

Command line (from the repository root, or from ``examples/``)::

    tidemark run --tools examples.custom_tool:TOOLS "Which module is the largest?"
    tidemark run --tools custom_tool:TOOLS "Which module is the largest?"
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from tidemark.tools import ToolContext, ToolError, tool

MAX_FILES = 200


@tool(read_only=True)
def count_lines(
    ctx: ToolContext,
    glob: str = "**/*.py",
    skip_blank: bool = True,
    top: Annotated[int, Field(ge=1, le=MAX_FILES)] = 20,
) -> str:
    """Count lines per file for files matching a glob, largest first, with a total.

    Args:
        glob: Which files to count, relative to the workspace, e.g. "**/*.py" or "src/*.ts".
        skip_blank: Leave out lines that are empty or only whitespace.
        top: How many of the largest files to list.
    """
    root = ctx.workspace
    counts: list[tuple[int, str]] = []
    for path in root.glob(glob):
        resolved = path.resolve()
        if not path.is_file() or not resolved.is_relative_to(root):
            continue
        relative = path.relative_to(root)
        if relative.parts[:1] in ((".git",), (".tidemark",)):
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (UnicodeDecodeError, OSError):
            continue  # binary or unreadable: not code
        if skip_blank:
            lines = [line for line in lines if line.strip()]
        counts.append((len(lines), relative.as_posix()))
    if not counts:
        raise ToolError(f"no text files match {glob!r}; try list_files to see what exists")
    counts.sort(key=lambda item: (-item[0], item[1]))
    shown = [f"{n:>7}  {name}" for n, name in counts[:top]]
    if len(counts) > top:
        shown.append(f"    ...  ({len(counts) - top} smaller files not shown; raise top)")
    shown.append(f"{sum(n for n, _ in counts):>7}  total in {len(counts)} files")
    return "\n".join(shown)


TOOLS = [count_lines]
