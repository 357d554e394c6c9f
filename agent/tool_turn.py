"""Running one model turn's tool calls: approval, concurrency, loop guard, events."""

from __future__ import annotations

import json
from collections.abc import Sequence

from tidemark.messages import ToolResultBlock, ToolUseBlock
from tidemark.session import Session
from tidemark.tools import Approver, ToolCall, ToolContext, Toolset

__all__ = ["ToolTurns"]

REPEATED = (
    "not run: you made this exact call in each of the last 2 turns and got the same "
    "result (it is above). Do something different, or finish with your answer."
)

# (tool name, input as canonical JSON)
Signature = tuple[str, str]


class ToolTurns:
    """Runs each turn's calls through the toolset and remembers them to catch loops."""

    def __init__(self, toolset: Toolset, approver: Approver, ctx: ToolContext) -> None:
        self.toolset = toolset
        self.approver = approver
        self.ctx = ctx
        self._history: list[dict[Signature, str]] = []  # per turn: call -> its result

    def _repeated(self, signature: Signature) -> bool:
        """The same call in each of the last two turns with the same result: a loop."""
        if len(self._history) < 2 or signature not in self._history[-1]:
            return False
        return self._history[-1][signature] == self._history[-2].get(signature)

    async def run(self, session: Session, uses: Sequence[ToolUseBlock]) -> list[ToolResultBlock]:
        signatures = [(u.name, json.dumps(u.input, sort_keys=True)) for u in uses]
        blocked = {u.id for u, sig in zip(uses, signatures, strict=True) if self._repeated(sig)}
        calls = [ToolCall(id=u.id, name=u.name, input=u.input) for u in uses if u.id not in blocked]

        def started(call: ToolCall) -> None:
            session.events.emit(
                "tool_started", tool=call.name, tool_use_id=call.id, input=call.input
            )

        outcomes = {
            o.tool_use_id: o
            for o in await self.toolset.execute(calls, self.ctx, self.approver, on_start=started)
        }
        results: list[ToolResultBlock] = []
        for use in uses:
            outcome = outcomes.get(use.id)
            if outcome is None:
                result = ToolResultBlock(tool_use_id=use.id, content=REPEATED, is_error=True)
                duration = 0.0
            else:
                result = ToolResultBlock(
                    tool_use_id=use.id, content=outcome.content, is_error=outcome.is_error
                )
                duration = outcome.duration_ms
            session.note_tool_call(use.name, use.input, result)
            session.events.emit(
                "tool_call",
                tool=use.name,
                tool_use_id=use.id,
                duration_ms=round(duration, 3),
                is_error=result.is_error,
                output_chars=len(result.content),
            )
            results.append(result)
        self._history.append(
            {
                sig: result.content
                for use, sig, result in zip(uses, signatures, results, strict=True)
                if use.id not in blocked
            }
        )
        return results
