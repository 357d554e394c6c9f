"""Who decides whether a tool that writes files or runs commands may run."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol

import anyio
import anyio.to_thread

from .interface import Tool, ToolCall

__all__ = [
    "Approver",
    "AutoApprover",
    "DenyApprover",
    "TerminalApprover",
    "default_approver",
]

DENIED_NO_TERMINAL = "permission denied: rerun with --yes"
DENIED_BY_USER = "permission denied by the user"


class Approver(Protocol):
    async def approve(self, call: ToolCall, tool: Tool) -> str | None:
        """Return None to allow the call, or the refusal message the model will see."""
        ...


class AutoApprover:
    """``--yes``: every call is allowed."""

    async def approve(self, call: ToolCall, tool: Tool) -> str | None:
        return None


class DenyApprover:
    """No terminal to ask: refuse, telling the model (and the user) how to allow it."""

    def __init__(self, message: str = DENIED_NO_TERMINAL) -> None:
        self.message = message

    async def approve(self, call: ToolCall, tool: Tool) -> str | None:
        return self.message


class TerminalApprover:
    """Ask on the terminal: ``Allow write_file path='a.py' content='...'? [y/N]``."""

    def __init__(self, ask: Callable[[str], str] = input) -> None:
        self._ask = ask
        self._lock = anyio.Lock()

    async def approve(self, call: ToolCall, tool: Tool) -> str | None:
        prompt = f"Allow {call.name} {describe_input(call.input)}? [y/N] "
        async with self._lock:  # one question on the terminal at a time
            try:
                answer = await anyio.to_thread.run_sync(self._ask, prompt)
            except EOFError:
                return DENIED_BY_USER
        return None if answer.strip().lower() in ("y", "yes") else DENIED_BY_USER


def describe_input(input: dict[str, object], width: int = 80) -> str:
    """One line showing each argument, long values shortened."""
    parts: list[str] = []
    for key, value in input.items():
        text = repr(value)
        if len(text) > width:
            text = text[: width - 3] + "..."
        parts.append(f"{key}={text}")
    return " ".join(parts)


def default_approver(auto_approve: bool) -> Approver:
    """``--yes`` approves all; otherwise ask on a terminal, or refuse when there is none."""
    if auto_approve:
        return AutoApprover()
    if _is_terminal(sys.stdin) and _is_terminal(sys.stdout):
        return TerminalApprover()
    return DenyApprover()


def _is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)  # the stream may be None (pythonw, closed fds)
    return callable(isatty) and bool(isatty())
