"""A transcript record that is JSON but not a valid record: one warning, and resume repairs.

Through the CLI (the strict server rejects an orphan `tool_result` or an unanswered
`tool_use`), and as a property: whichever message of a valid session is lost, the repaired
context is a valid request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.fakeapi import FakeMessagesAPI, Script, text, tool_calls, validate_request
from tests.support.runs import session_dir
from tests.test_cli import tidemark
from tidemark.messages import Message, TextBlock, ToolResultBlock, ToolUseBlock
from tidemark.providers.anthropic import to_wire_messages
from tidemark.transcript import repair_tool_pairing

TOOLS = [{"name": "read_file", "input_schema": {"type": "object"}}]


def _finished_session(tmp_path: Path, api: FakeMessagesAPI) -> Path:
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "b.txt").write_text("beta\n")
    api.responder = Script(
        [
            tool_calls(("read_file", {"path": "a.txt"})),
            tool_calls(("read_file", {"path": "b.txt"})),
            text("a.txt says alpha, b.txt says beta."),
        ]
    )
    done = tidemark("run", "--workspace", str(tmp_path), "read both", api=api)
    assert done.returncode == 0, done.stderr
    return session_dir(tmp_path) / "transcript.jsonl"


def _damage(transcript: Path, pick: str) -> None:
    """Make one record valid JSON that fails validation: the first one holding `pick`."""
    lines = transcript.read_text().splitlines()
    for k, line in enumerate(lines):
        record: dict[str, Any] = json.loads(line)
        blocks = record.get("message", {}).get("content", [])
        if any(b.get("type") == pick for b in blocks):
            record["message"]["content"][0]["type"] = "tool_call"  # no such block type
            lines[k] = json.dumps(record)
            break
    else:
        raise AssertionError(f"no {pick} record")
    transcript.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("pick", ["tool_use", "tool_result"])
def test_a_record_that_fails_validation_is_reported_once_and_resume_sends_a_valid_request(
    tmp_path: Path, pick: str
) -> None:
    with FakeMessagesAPI() as api:
        transcript = _finished_session(tmp_path, api)
        _damage(transcript, pick)
        api.responder = Script([text("Both files read.")])
        sent = len(api.requests)
        resumed = tidemark("resume", "--workspace", str(tmp_path), "sum up", api=api)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    warnings = [line for line in resumed.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, resumed.stderr
    assert "transcript.jsonl: skipped invalid message record" in warnings[0]
    assert len(api.requests) == sent + 1
    assert api.invalid_requests == []
    messages = api.requests[-1].body["messages"]
    assert messages[0]["content"][0]["text"] == "read both"
    assert messages[-1]["content"][0]["text"] == "sum up"


# -- the repair as a property over sessions with one message lost ---------------------------


def _session(turns: list[int]) -> list[Message]:
    """A valid context: a task, then per turn `n` parallel calls (0: a text reply) and results."""
    context = [Message.user_text("task")]
    for t, calls in enumerate(turns):
        if not calls:
            context += [
                Message(role="assistant", origin="model", content=[TextBlock(text=f"note {t}")]),
                Message.user_text(f"go on {t}"),
            ]
            continue
        uses = [
            ToolUseBlock(id=f"toolu_{t}_{c}", name="read_file", input={"path": f"f{c}"})
            for c in range(calls)
        ]
        context += [
            Message(role="assistant", origin="model", content=[TextBlock(text="reading"), *uses]),
            Message(
                role="user",
                origin="tools",
                content=[ToolResultBlock(tool_use_id=u.id, content="data") for u in uses],
            ),
        ]
    return context


def _error(context: list[Message]) -> str | None:
    body = {
        "model": "claude-test",
        "max_tokens": 100,
        "tools": TOOLS,
        "messages": to_wire_messages(context),
    }
    return validate_request(body)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=8), st.data())
def test_whichever_message_is_lost_the_repaired_context_is_a_valid_request(
    turns: list[int], data: st.DataObject
) -> None:
    context = _session(turns)
    assert repair_tool_pairing(context) == context  # an intact context is left alone
    lost = data.draw(st.integers(1, len(context) - 1))
    damaged = context[:lost] + context[lost + 1 :]
    repaired = repair_tool_pairing(damaged)
    if repaired[-1].role == "assistant" and repaired[-1].tool_uses:
        # Calls pending at the end are answered by resume (as an interrupted call).
        repaired.append(
            Message(
                role="user",
                origin="tools",
                content=[
                    ToolResultBlock(tool_use_id=u.id, content="interrupted", is_error=True)
                    for u in repaired[-1].tool_uses
                ],
            )
        )
    assert _error(repaired) is None
    assert [m.id for m in repaired if m.is_users_own] == [m.id for m in damaged if m.is_users_own]
