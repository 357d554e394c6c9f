"""Running one model turn's tool calls: approval, concurrency, loop guard, events."""

from __future__ import annotations

import json
from collections.abc import Sequence

from tidemark.messages import ImageBlock, ToolResultBlock, ToolUseBlock
from tidemark.session import Session
from tidemark.tools import Approver, ToolCall, ToolContext, Toolset

__all__ = ["ToolTurns"]

REPEATED = (
    "not run: you already made this exact call twice and got the same result (it is "
    "above). Do something different, or finish with your answer."
)

# (tool name, input as canonical JSON)
Signature = tuple[str, str]
# How many turns back the guard looks for the same call.
WINDOW = 6


class ToolTurns:
    """Runs each turn's calls through the toolset and remembers them to catch loops.

    A call is not run again once it was made twice in the last 6 turns with the same
    result and nothing has changed since (no new call of a tool that may change the
    workspace succeeded). Small models alternate between a few calls, so this looks back
    over several turns, not only the last two; not further, because a long session rightly
    reads a file again once compaction has taken the earlier read out of its context.
    `blocked_turns` counts the turns in which every call was refused: a model that keeps
    doing that after being told is stuck.
    """

    def __init__(self, toolset: Toolset, approver: Approver, ctx: ToolContext) -> None:
        self.toolset = toolset
        self.approver = approver
        self.ctx = ctx
        # call -> (turn, its result) since the workspace last changed
        self._results: dict[Signature, list[tuple[int, str]]] = {}
        self._turn = 0
        self._seen: set[Signature] = set()
        self.blocked_turns = 0

    def _repeated(self, signature: Signature) -> bool:
        recent = [r for t, r in self._results.get(signature, []) if t > self._turn - WINDOW]
        return len(recent) >= 2 and recent[-1] == recent[-2]

    def _changes(self, use: ToolUseBlock, signature: Signature, result: ToolResultBlock) -> bool:
        """A first call of a tool that may write, and it worked: earlier results may be stale."""
        found = self.toolset.get(use.name)
        writes = found is None or not found.read_only
        return writes and signature not in self._seen and not result.is_error

    async def run(self, session: Session, uses: Sequence[ToolUseBlock]) -> list[ToolResultBlock]:
        self._turn += 1
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
                    tool_use_id=use.id,
                    content=outcome.content,
                    is_error=outcome.is_error,
                    images=tuple(
                        ImageBlock(media_type=i.media_type, data=i.data) for i in outcome.images
                    ),
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
        ran = [
            (use, sig, result)
            for use, sig, result in zip(uses, signatures, results, strict=True)
            if use.id not in blocked
        ]
        if any(self._changes(use, sig, result) for use, sig, result in ran):
            self._results.clear()
        for _use, sig, result in ran:
            self._results.setdefault(sig, []).append((self._turn, result.content))
            self._seen.add(sig)
        if not ran:
            self.blocked_turns += 1
        return results
