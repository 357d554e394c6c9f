"""The bash tool."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

from ..errors import ToolError
from ..function import tool
from ..interface import ToolContext
from ..processes import run_command

__all__ = ["bash", "command_failed"]

MAX_TIMEOUT_SECONDS = 600.0
MAX_OUTPUT_CHARS = 30_000
_EXIT_CODE_RE = re.compile(r"\n?\[exit code: (-?\d+)\](?:\n\[[^\n]*\])*\s*$")


def command_failed(output: str) -> bool:
    """Whether a `bash` result reports a non-zero exit code (its last lines say which)."""
    match = _EXIT_CODE_RE.search(output)
    return match is not None and int(match.group(1)) != 0


@tool(name="bash", needs_approval=True, timeout=MAX_TIMEOUT_SECONDS + 30)
async def bash(
    ctx: ToolContext,
    command: str,
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_SECONDS)] | None = None,  # noqa: ASYNC109
) -> str:
    """Run a shell command with `bash -c` in the workspace directory. Returns the combined
    stdout and stderr and the exit code. There is no input (stdin is empty). Background
    processes (&) are stopped when the command ends, so start and use a server in one command.

    Args:
        command: The shell command, e.g. "pytest -q" or "ls -la src".
        timeout: Seconds before the command is stopped (default 120, max 600).
    """
    limit = timeout if timeout is not None else min(ctx.default_timeout, MAX_TIMEOUT_SECONDS)
    result = await run_command(
        command,
        cwd=ctx.workspace,
        timeout=limit,
        max_chars=MAX_OUTPUT_CHARS,
        registry=ctx.process_registry,
    )
    output = result.output.rstrip("\n") or "(no output)"
    if result.timed_out:
        raise ToolError(
            f"{output}\n[timed out after {limit:g} s; the command and every process it "
            "started were stopped. Use a larger timeout (max 600) or a quicker command]"
        )
    notes = [f"[exit code: {result.exit_code}]"]
    if result.stopped_background:
        notes.append("[background processes the command left running were stopped]")
    return "\n".join([output, *notes])
