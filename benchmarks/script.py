"""The model's side of the benchmark session, answered statelessly from each request.

The scripted long session (`tests.support.sessions.LongSession`) is a list of replies. The
responder finds the step a conversation is at from the `tool_use` ids in the request (each
reply's ids carry its step number), so one server can serve many concurrent sessions and
any compaction strategy (ids survive compaction: the latest tool turn is always kept).
"""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass, replace
from typing import Any

from tests.support.fakeapi import RecordedRequest, Reply, text
from tests.support.sessions import LongSession, changes_text, summary_text

__all__ = ["StepScript", "step_of"]

_STEP_ID = re.compile(r"^toolu_s(\d+)_")


def step_of(body: dict[str, Any]) -> int:
    """The step of the newest scripted tool call in the request; -1 before the first."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "assistant" or not isinstance(message.get("content"), list):
            continue
        for block in reversed(message["content"]):
            if isinstance(block, dict) and block.get("type") == "tool_use":
                m = _STEP_ID.match(str(block.get("id", "")))
                if m:
                    return int(m.group(1))
    return -1


@dataclass
class StepScript:
    """Responder: turns follow `session`; summaries are whole documents.

    `summary_tokens` sizes blocking summaries (purpose `compact`). Memory updates (purpose
    `session-memory`) write only what changed (`changes_text`), or, with `memory_tokens`
    set, a whole document of that size. `turn_output_tokens`, when set, is what each turn
    claims to generate (the latency model streams it).
    """

    session: LongSession
    summary_tokens: int = 3000
    memory_tokens: int | None = None
    turn_output_tokens: int | None = None
    bash_command: str | None = None  # replaces the session's test run (e.g. a cheap command)

    def __post_init__(self) -> None:
        self._turns = self.session.turns()
        if self.bash_command is not None:
            for reply in self._turns:
                for block in reply.content:
                    if block.get("type") == "tool_use" and block.get("name") == "bash":
                        block["input"] = {"command": self.bash_command}

    def __call__(self, request: RecordedRequest) -> Reply:
        if request.purpose == "session-memory":
            if self.memory_tokens is None:
                return text(changes_text(request))
            return text(summary_text(request, self.memory_tokens))
        if request.purpose == "compact":
            return text(summary_text(request, self.summary_tokens))
        step = step_of(request.body) + 1
        if step >= len(self._turns):
            return text("Done.")
        reply = self._turns[step]
        content = copy.deepcopy(reply.content)
        for block in content:
            if block.get("type") == "tool_use":
                block["id"] = f"toolu_s{step:04d}_{uuid.uuid4().hex[:16]}"
        return replace(reply, content=content, output_tokens=self.turn_output_tokens)
