"""Who decides whether a tool that writes files or runs commands may run."""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

import anyio
import anyio.to_thread

from .interface import Tool, ToolCall, describe_input

__all__ = [
    "Approver",
    "AutoApprover",
    "DenyApprover",
    "TerminalApprover",
    "default_approver",
    "read_answer",
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


Ask = Callable[[str], str] | Callable[[str], Awaitable[str]]


class TerminalApprover:
    """Ask on the terminal: ``Allow write_file path='a.py' content='...'? [y/N]``.

    ``ask`` shows the prompt and returns the answer (EOFError: no answer). An async ``ask``
    (the default, ``read_answer``) stops waiting as soon as the run is cancelled (Ctrl-C);
    a plain function runs in a worker thread that is abandoned on cancellation.
    """

    def __init__(self, ask: Ask | None = None) -> None:
        self._ask: Ask = ask if ask is not None else read_answer
        self._lock = anyio.Lock()

    async def approve(self, call: ToolCall, tool: Tool) -> str | None:
        prompt = f"Allow {call.name} {describe_input(call.input)}? [y/N] "
        async with self._lock:  # one question on the terminal at a time
            try:
                answer = await self._answer(prompt)
            except EOFError:
                return DENIED_BY_USER
        return None if answer.strip().lower() in ("y", "yes") else DENIED_BY_USER

    async def _answer(self, prompt: str) -> str:
        if inspect.iscoroutinefunction(self._ask):
            return await cast(Callable[[str], Awaitable[str]], self._ask)(prompt)
        ask = cast(Callable[[str], str], self._ask)
        return await anyio.to_thread.run_sync(ask, prompt, abandon_on_cancel=True)


async def read_answer(prompt: str) -> str:
    """Print ``prompt`` and read one line from stdin; EOFError when input has ended.

    The wait happens in the event loop, not in a thread blocked in ``input()``, so a
    cancellation (Ctrl-C) ends it at once. On a terminal in its usual line mode one read
    returns the whole line once the user presses Enter.
    """
    sys.stdout.write(prompt)
    sys.stdout.flush()
    fd = sys.stdin.fileno()
    line = bytearray()
    while b"\n" not in line:
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:  # someone else took the input first
            continue
        if not chunk:
            if line:
                break
            raise EOFError
        line += chunk
    return line.split(b"\n", 1)[0].decode("utf-8", "replace")


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
