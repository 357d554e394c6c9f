"""Hypothesis strategies for random valid transcripts, and helpers to send them to the fake API.

A generated session looks like the runtime's own: the user's task first (or a runtime
summary left by an earlier compaction), then assistant turns with 0..4 parallel tool calls,
each answered by one user message whose tool results come first (sometimes followed by
text), user instructions and runtime notices in between, tool results from empty to 20k
characters, some of them errors. It may end with an assistant turn whose tools are still
running (`pending`): no request is ever built from that last message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from agent.compaction import summary_message
from agent.messages import (
    ContentBlock,
    Message,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from agent.providers.anthropic import to_wire_messages
from tests.support.fakeapi import signature_for, validate_request

__all__ = [
    "TOOL_NAMES",
    "GeneratedSession",
    "api_error",
    "sessions",
    "tool_output",
    "wire_body",
]

TOOL_NAMES = ("read_file", "write_file", "edit_file", "list_files", "grep", "bash")
_CREATED_AT = "2026-11-25T12:00:00.000Z"
_PATHS = ("src/app.py", "README.md", "tests/test_app.py", "pkg/models/user.py", "setup.cfg")


@dataclass(frozen=True)
class GeneratedSession:
    """A transcript as on disk, and the context requests are built from.

    ``context`` is the whole transcript, or (after an earlier compaction) a runtime summary
    followed by a later part of it. ``positions`` maps the id of every transcript message to
    its index, as `Session.positions` does; the runtime summary is not in it.
    """

    transcript: list[Message]
    context: list[Message]
    positions: dict[str, int]
    pending: bool  # the last message is an assistant turn whose tools are still running

    @property
    def requestable(self) -> list[Message]:
        """The context a request may be built from (without the pending turn)."""
        return self.context[:-1] if self.pending else self.context


def tool_output(size: int, seed: int = 0) -> str:
    """Deterministic tool output of exactly ``size`` characters (random text is slow to draw)."""
    line = f"{seed:04d}: def handler_{seed}(request): return render(request, 'page.html')\n"
    repeats = size // len(line) + 1
    return (line * repeats)[:size]


def _tool_input(draw: st.DrawFn, name: str, n: int) -> dict[str, Any]:
    path = draw(st.sampled_from(_PATHS))
    if name == "read_file":
        return {"path": path} if draw(st.booleans()) else {"path": path, "offset": n, "limit": 50}
    if name == "write_file":
        return {"path": path, "content": f"print({n})\n" * draw(st.integers(1, 40))}
    if name == "edit_file":
        return {"path": path, "old_string": f"x = {n}", "new_string": f"x = {n + 1}"}
    if name == "list_files":
        return {} if draw(st.booleans()) else {"path": "src", "pattern": "*.py"}
    if name == "grep":
        return {"pattern": f"handler_{n}", "path": "src"}
    return {"command": f"pytest -q tests/test_{n}.py"}


_SIZES = st.one_of(
    st.integers(0, 300), st.integers(300, 4_000), st.integers(4_000, 20_000), st.just(0)
)


class _Ids:
    def __init__(self) -> None:
        self.message = 0
        self.tool = 0

    def message_id(self) -> str:
        self.message += 1
        return f"msg_{self.message:05d}"

    def tool_id(self) -> str:
        self.tool += 1
        return f"toolu_{self.tool:05d}"


def _message(ids: _Ids, role: str, origin: str, content: list[ContentBlock]) -> Message:
    return Message.model_validate(
        {
            "id": ids.message_id(),
            "role": role,
            "origin": origin,
            "content": content,
            "created_at": _CREATED_AT,
        }
    )


def _assistant_text(draw: st.DrawFn, n: int) -> str:
    size = draw(st.sampled_from((20, 80, 400, 2_000)))
    return (f"Step {n}: I will look at the handler and fix the failing test. " * 40)[:size]


@st.composite
def _tool_turn(draw: st.DrawFn, ids: _Ids, *, pending: bool) -> list[Message]:
    n = ids.message
    count = draw(st.integers(1, 4))
    blocks: list[ContentBlock] = []
    if draw(st.integers(0, 9)) == 0:
        thought = f"Thinking about step {n}."
        blocks.append(ThinkingBlock(thinking=thought, signature=signature_for(thought)))
    if draw(st.booleans()):
        blocks.append(TextBlock(text=_assistant_text(draw, n)))
    uses: list[ToolUseBlock] = []
    for _ in range(count):
        name = draw(st.sampled_from(TOOL_NAMES))
        uses.append(ToolUseBlock(id=ids.tool_id(), name=name, input=_tool_input(draw, name, n)))
    assistant = _message(ids, "assistant", "model", [*blocks, *uses])
    if pending:
        return [assistant]
    order = draw(st.permutations(uses)) if count > 1 and draw(st.booleans()) else uses
    results: list[ContentBlock] = [
        ToolResultBlock(
            tool_use_id=use.id,
            content=tool_output(draw(_SIZES), seed=k),
            is_error=draw(st.integers(0, 5)) == 0,
        )
        for k, use in enumerate(order)
    ]
    if draw(st.integers(0, 7)) == 0:
        results.append(TextBlock(text="(the user pressed Ctrl-C: tools were interrupted)"))
    return [assistant, _message(ids, "user", "tools", results)]


@st.composite
def _step(draw: st.DrawFn, ids: _Ids) -> list[Message]:
    kind = draw(st.sampled_from(("tools", "tools", "tools", "tools", "text", "note")))
    if kind == "tools":
        return draw(_tool_turn(ids, pending=False))
    if kind == "text":
        # A text-only answer; the user (or the runtime's nudge) speaks next.
        n = ids.message
        reply = _message(ids, "assistant", "model", [TextBlock(text=_assistant_text(draw, n))])
        return [reply, _user_or_runtime(draw, ids)]
    return [_user_or_runtime(draw, ids)]


def _user_or_runtime(draw: st.DrawFn, ids: _Ids) -> Message:
    n = ids.message + 1
    if draw(st.booleans()):
        words = draw(st.sampled_from((10, 200, 3_000)))
        text = (f"Instruction {n}: also keep the public API stable and add a test. " * 60)[:words]
        return _message(ids, "user", "user", [TextBlock(text=f"[{n}] {text}")])
    return _message(ids, "user", "runtime", [TextBlock(text=f"[runtime notice {n}] continue.")])


@st.composite
def sessions(
    draw: st.DrawFn,
    *,
    max_steps: int = 25,
    pending: bool | None = None,
    leading_summary: bool | None = None,
) -> GeneratedSession:
    """A random valid session; ``pending``/``leading_summary`` force a shape when not None."""
    ids = _Ids()
    task = draw(st.sampled_from((40, 600, 6_000)))
    transcript = [
        _message(
            ids,
            "user",
            "user",
            [TextBlock(text=("Task: fix the failing handler test in src/app.py. " * 200)[:task])],
        )
    ]
    for _ in range(draw(st.integers(0, max_steps))):
        transcript += draw(_step(ids))
    if pending if pending is not None else draw(st.integers(0, 4)) == 0:
        transcript += draw(_tool_turn(ids, pending=True))
        is_pending = True
    else:
        is_pending = False
    positions = {m.id: i for i, m in enumerate(transcript)}
    context = list(transcript)
    cuts = [
        i
        for i in range(2, len(transcript) - (1 if is_pending else 0))
        if not transcript[i - 1].tool_uses and not transcript[i].tool_results
    ]
    summarized = leading_summary if leading_summary is not None else draw(st.booleans())
    if summarized and cuts:
        cut = draw(st.sampled_from(cuts))
        users = [m for m in transcript[:cut] if m.is_users_own]
        summary = summary_message("# Current State\nEarlier work.", users, source="summary")
        summary = summary.model_copy(update={"id": "msg_summary", "created_at": _CREATED_AT})
        context = [summary, *transcript[cut:]]
    return GeneratedSession(transcript, context, positions, is_pending)


def wire_body(messages: list[Message]) -> dict[str, Any]:
    """A Messages API request body holding these messages, as the provider would send it."""
    return {
        "model": "claude-test",
        "max_tokens": 1024,
        "tools": [
            {"name": name, "description": name, "input_schema": {"type": "object"}}
            for name in TOOL_NAMES
        ],
        "messages": to_wire_messages(messages),
    }


def api_error(messages: list[Message]) -> str | None:
    """What the strict fake server answers to a request with these messages (None: valid)."""
    return validate_request(wire_body(messages))
