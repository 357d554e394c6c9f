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
from random import Random
from typing import Any

from hypothesis import strategies as st

from tests.support.fakeapi import signature_for, validate_request
from tidemark.compaction import summary_message
from tidemark.messages import (
    ContentBlock,
    Message,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from tidemark.providers.anthropic import to_wire_messages

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


def _tool_input(rng: Random, name: str, n: int) -> dict[str, Any]:
    path = rng.choice(_PATHS)
    if name == "read_file":
        return {"path": path} if rng.random() < 0.5 else {"path": path, "offset": n, "limit": 50}
    if name == "write_file":
        return {"path": path, "content": f"print({n})\n" * rng.randint(1, 40)}
    if name == "edit_file":
        return {"path": path, "old_string": f"x = {n}", "new_string": f"x = {n + 1}"}
    if name == "list_files":
        return {} if rng.random() < 0.5 else {"path": "src", "pattern": "*.py"}
    if name == "grep":
        return {"pattern": f"handler_{n}", "path": "src"}
    return {"command": f"pytest -q tests/test_{n}.py"}


def _result_size(rng: Random) -> int:
    """Tool output sizes spread over orders of magnitude: empty, small, large, huge."""
    bucket = rng.randrange(8)
    if bucket == 0:
        return 0
    if bucket < 4:
        return rng.randint(1, 300)
    if bucket < 6:
        return rng.randint(300, 4_000)
    return rng.randint(4_000, 20_000)


class _Builder:
    """Builds messages with sequential ids; details come from a seeded RNG per step.

    Hypothesis draws only the shape (kind of each step and its seed): drawing every size and
    name separately made generation the slowest part of the suite.
    """

    def __init__(self) -> None:
        self.messages = 0
        self.tools = 0

    def message(self, role: str, origin: str, content: list[ContentBlock]) -> Message:
        self.messages += 1
        return Message.model_validate(
            {
                "id": f"msg_{self.messages:05d}",
                "role": role,
                "origin": origin,
                "content": content,
                "created_at": _CREATED_AT,
            }
        )

    def assistant_text(self, rng: Random) -> str:
        size = rng.choice((20, 80, 400, 2_000))
        line = f"Step {self.messages}: I will look at the handler and fix the failing test. "
        return (line * 40)[:size]

    def tool_turn(self, rng: Random, *, pending: bool) -> list[Message]:
        blocks: list[ContentBlock] = []
        if rng.random() < 0.1:
            thought = f"Thinking about step {self.messages}."
            blocks.append(ThinkingBlock(thinking=thought, signature=signature_for(thought)))
        if rng.random() < 0.5:
            blocks.append(TextBlock(text=self.assistant_text(rng)))
        uses: list[ToolUseBlock] = []
        for _ in range(rng.randint(1, 4)):
            self.tools += 1
            name = rng.choice(TOOL_NAMES)
            tool_input = _tool_input(rng, name, self.messages)
            uses.append(ToolUseBlock(id=f"toolu_{self.tools:05d}", name=name, input=tool_input))
        assistant = self.message("assistant", "model", [*blocks, *uses])
        if pending:
            return [assistant]
        order = list(uses)
        if rng.random() < 0.3:
            rng.shuffle(order)  # results may come in any order, as long as they come first
        results: list[ContentBlock] = [
            ToolResultBlock(
                tool_use_id=use.id,
                content=tool_output(_result_size(rng), seed=k),
                is_error=rng.random() < 0.15,
            )
            for k, use in enumerate(order)
        ]
        if rng.random() < 0.12:
            results.append(TextBlock(text="(the user pressed Ctrl-C: tools were interrupted)"))
        return [assistant, self.message("user", "tools", results)]

    def user_or_runtime(self, rng: Random) -> Message:
        n = self.messages + 1
        if rng.random() < 0.5:
            size = rng.choice((10, 200, 3_000))
            text = (f"Instruction {n}: also keep the public API stable and add a test. " * 60)[
                :size
            ]
            return self.message("user", "user", [TextBlock(text=f"[{n}] {text}")])
        return self.message("user", "runtime", [TextBlock(text=f"[runtime notice {n}] continue.")])

    def step(self, kind: str, rng: Random) -> list[Message]:
        if kind == "tools":
            return self.tool_turn(rng, pending=False)
        if kind == "text":
            # A text-only answer; the user (or the runtime's nudge) speaks next.
            reply = self.message("assistant", "model", [TextBlock(text=self.assistant_text(rng))])
            return [reply, self.user_or_runtime(rng)]
        return [self.user_or_runtime(rng)]


_STEP = st.tuples(
    st.sampled_from(("tools", "tools", "tools", "tools", "text", "note")),
    st.integers(0, 2**32 - 1),
)


@st.composite
def sessions(
    draw: st.DrawFn,
    *,
    max_steps: int = 25,
    pending: bool | None = None,
    leading_summary: bool | None = None,
) -> GeneratedSession:
    """A random valid session; ``pending``/``leading_summary`` force a shape when not None."""
    build = _Builder()
    task_size, task_seed = draw(st.tuples(st.sampled_from((40, 600, 6_000)), st.integers(0, 9)))
    task = ("Task: fix the failing handler test in src/app.py. " * 200)[:task_size]
    transcript = [build.message("user", "user", [TextBlock(text=f"{task} #{task_seed}")])]
    for kind, seed in draw(st.lists(_STEP, max_size=max_steps)):
        transcript += build.step(kind, Random(seed))
    is_pending = pending if pending is not None else draw(st.integers(0, 4)) == 0
    if is_pending:
        transcript += build.tool_turn(Random(draw(st.integers(0, 2**32 - 1))), pending=True)
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
