"""A named set of tools and the execution of one batch of calls from the model."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import anyio

from .approval import Approver
from .errors import ToolError
from .interface import Tool, ToolCall, ToolContext, ToolOutcome, ToolOutput

__all__ = ["Toolset"]


class Toolset:
    """Tools by name, in the order given; names are unique."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools: dict[str, Tool] = {}
        for item in tools:
            if item.name in self._tools:
                raise ValueError(f"duplicate tool name: {item.name!r}")
            self._tools[item.name] = item

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __repr__(self) -> str:
        return f"Toolset({self.names()!r})"

    def names(self) -> list[str]:
        return list(self._tools)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def specs(self) -> list[dict[str, Any]]:
        """The tool definitions the model receives, in order."""
        return [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema}
            for t in self
        ]

    def with_tools(self, extra: Iterable[Tool]) -> Toolset:
        """A new set with ``extra`` appended; a name already present raises ValueError."""
        return Toolset([*self, *extra])

    async def execute(
        self,
        calls: Sequence[ToolCall],
        ctx: ToolContext,
        approver: Approver,
        on_start: Callable[[ToolCall], None] | None = None,
    ) -> list[ToolOutcome]:
        """Run one batch of calls; outcomes come back in the order of ``calls``.

        Consecutive read-only calls run concurrently, every other call runs alone, in
        order. No tool failure escapes: each becomes an error outcome. Cancellation does.
        ``on_start`` is called as each call begins running (after approval).
        """
        outcomes: list[ToolOutcome | None] = [None] * len(calls)

        async def run_at(index: int) -> None:
            outcomes[index] = await self._execute_one(calls[index], ctx, approver, on_start)

        for group in self._groups(calls):
            if len(group) == 1:
                await run_at(group[0])
                continue
            async with anyio.create_task_group() as tg:
                for index in group:
                    tg.start_soon(run_at, index)
        return [outcome for outcome in outcomes if outcome is not None]

    def _groups(self, calls: Sequence[ToolCall]) -> list[list[int]]:
        """Indices of calls, grouped so that each group of read-only calls runs together."""
        groups: list[list[int]] = []
        previous_read_only = False
        for index, call in enumerate(calls):
            found = self.get(call.name)
            read_only = found is not None and found.read_only
            if read_only and previous_read_only:
                groups[-1].append(index)
            else:
                groups.append([index])
            previous_read_only = read_only
        return groups

    async def _execute_one(
        self,
        call: ToolCall,
        ctx: ToolContext,
        approver: Approver,
        on_start: Callable[[ToolCall], None] | None,
    ) -> ToolOutcome:
        def outcome(
            content: str | ToolOutput, is_error: bool, started: float | None = None
        ) -> ToolOutcome:
            duration = 0.0 if started is None else (time.perf_counter() - started) * 1000
            if isinstance(content, ToolOutput):
                return ToolOutcome(call.id, content.text, is_error, duration, content.images)
            return ToolOutcome(call.id, content, is_error, duration)

        found = self.get(call.name)
        if found is None:
            available = ", ".join(self.names()) or "none"
            return outcome(f"unknown tool {call.name!r}; available tools: {available}", True)
        if found.needs_approval:
            refusal = await approver.approve(call, found)
            if refusal is not None:
                return outcome(refusal, True)
        if on_start is not None:
            on_start(call)
        limit = found.timeout if found.timeout is not None else ctx.default_timeout
        started = time.perf_counter()
        content: str | ToolOutput | None = None
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + limit):
                content = await found.run(dict(call.input), ctx)
        except ToolError as error:
            return outcome(str(error) or type(error).__name__, True, started)
        except Exception as error:  # the run never ends because of a tool
            message = f"internal error in tool {call.name}: {type(error).__name__}: {error}"
            return outcome(message, True, started)
        if content is None:  # only the deadline above cancels without raising
            return outcome(f"tool {call.name} timed out after {limit:g} s", True, started)
        return outcome(content, False, started)
