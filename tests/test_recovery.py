"""Recovery paths through a real session (the real SDK against the strict local server).

A `prompt is too long` 400, the blocking full summary reached naturally (and its failure), a
turn or a memory update cut off at `max_tokens`, and `resume` of a finished session: each
run goes on and every request the server received is valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Reply, Script, text, tool_calls
from tests.support.runs import read_events
from tests.support.sessions import LongSession, memory_reply, write_repository
from tests.test_cli import tidemark
from tidemark import Agent, Settings
from tidemark.compaction import SUMMARY_HEADER
from tidemark.loop import CUT_OFF
from tidemark.providers.anthropic import AnthropicModel

pytestmark = pytest.mark.anyio

TASK = "Survey the notes and report."
# Under the stub size (1,000 chars): no instant strategy can shorten these texts.
_SHORT = "The notes so far point at the parser; I keep reading before changing anything. " * 11
_STEPS = 90


async def _run(api: FakeMessagesAPI, settings: Settings) -> Any:
    model = AnthropicModel("claude-test", base_url=api.url, api_key="test")
    try:
        return await Agent(model, settings=settings).run(TASK)
    finally:
        await model.aclose()


def _talkative(tmp_path: Path, turns: int) -> list[Reply]:
    """Many turns that no instant strategy can shrink: texts under the stub size, results
    smaller than a tombstone, each call a different file (no repeated-call guard)."""
    steps: list[Reply] = []
    for i in range(turns):
        (tmp_path / f"note{i}.txt").write_text("parser\n")
        steps.append(
            tool_calls(("read_file", {"path": f"note{i}.txt"}), text=f"Step {i}. {_SHORT}")
        )
    return [*steps, text("Report: the parser is the culprit.")]


def _no_memory(tmp_path: Path) -> Settings:
    return Settings(
        workspace=tmp_path,
        auto_approve=True,
        context_window=30_000,
        compact_at=20_000,
        memory_init_tokens=1_000_000,  # no memory: compaction has only clearing and a summary
        max_turns=_STEPS + 10,
    )


async def test_the_blocking_summary_is_reached_naturally_and_replaces_the_context(
    tmp_path: Path,
) -> None:
    script = Script(_talkative(tmp_path, _STEPS))
    with FakeMessagesAPI(script) as api:
        result = await _run(api, _no_memory(tmp_path))
    assert result.outcome == "finished"
    compactions = [e for e in read_events(result.paths) if e["event"] == "compaction"]
    assert "full_summary" in [c["strategy"] for c in compactions]
    assert len(api.requests_for("compact")) >= 1
    after = api.requests_for("turn")[-1].body["messages"]
    assert SUMMARY_HEADER in json.dumps(after[0])
    assert api.invalid_requests == []


@pytest.mark.parametrize(
    "summary",
    [
        pytest.param(text(""), id="empty"),
        pytest.param(text("The task is to survey the no", stop_reason="max_tokens"), id="cut-off"),
    ],
)
async def test_a_failed_blocking_summary_is_an_event_the_context_is_kept_and_the_run_goes_on(
    tmp_path: Path, summary: Reply
) -> None:
    script = Script(_talkative(tmp_path, _STEPS), compact=lambda _r: summary)
    with FakeMessagesAPI(script) as api:
        result = await _run(api, _no_memory(tmp_path))
    assert result.outcome == "finished"
    assert "parser is the culprit" in result.final_text
    events = read_events(result.paths)
    failed = [e for e in events if e["event"] == "compaction_failed"]
    assert failed and all(f["strategy"] == "full_summary" for f in failed)
    assert all("no usable summary" in f["error"] for f in failed)
    assert len(failed) == len(api.requests_for("compact"))
    # Each failed summary was paid for: its event carries the usage the server billed.
    billed = [r.usage for r in api.requests_for("compact")]
    assert all(u is not None for u in billed)
    assert [f["input_tokens"] for f in failed] == [
        u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]
        for u in billed
        if u is not None
    ]
    assert [f["output_tokens"] for f in failed] == [u["output_tokens"] for u in billed if u]
    assert all(f["input_tokens"] > 10_000 for f in failed)
    assert "full_summary" not in [e.get("strategy") for e in events if e["event"] == "compaction"]
    # The context was kept: the last turn still opens with the task and holds every turn.
    last = api.requests_for("turn")[-1].body["messages"]
    assert TASK in json.dumps(last[0]) and SUMMARY_HEADER not in json.dumps(last)
    assert len(last) == 2 * _STEPS + 1
    assert api.invalid_requests == []
    # `inspect` shows the failure in the timeline.
    shown = tidemark("inspect", "--workspace", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert "COMPACTION full_summary FAILED" in shown.stdout


async def test_prompt_too_long_forces_a_compaction_and_one_valid_retry_then_the_run_finishes(
    tmp_path: Path,
) -> None:
    session = LongSession(write_repository(tmp_path, files=20, lines_per_file=120), reads=14)
    # The server's window is smaller than the runtime believes: the request grows past it
    # before the runtime's own threshold is reached.
    settings = Settings(
        workspace=tmp_path,
        auto_approve=True,
        context_window=60_000,
        compact_at=45_000,
        memory_init_tokens=1_000_000,
        max_turns=_STEPS + 10,
    )
    with FakeMessagesAPI(session.script(), context_window=16_000) as api:
        result = await _run(api, settings)
    assert result.outcome == "finished"
    assert "level + amount" in (tmp_path / "inventory/stock.py").read_text()
    rejected = [r for r in api.requests if r.error is not None]
    assert rejected and all("prompt is too long" in (r.error or "") for r in rejected)
    turns = api.requests_for("turn")
    for bad in rejected:
        retry = turns[turns.index(bad) + 1]
        assert retry.error is None  # the one retry after a forced compaction is valid
        assert retry.input_tokens < bad.input_tokens
    forced = [e for e in read_events(result.paths) if e["event"] == "compaction"]
    assert len(forced) >= len(rejected)


async def test_a_turn_cut_off_at_max_tokens_is_continued_and_the_run_finishes(
    tmp_path: Path,
) -> None:
    script = Script(
        [
            text("Here is the first half of my rep", stop_reason="max_tokens"),
            text("ort: all done."),
        ]
    )
    with FakeMessagesAPI(script) as api:
        result = await _run(api, Settings(workspace=tmp_path))
    assert result.outcome == "finished"
    second = api.requests_for("turn")[1].body["messages"]
    assert second[-2]["content"][0]["text"] == "Here is the first half of my rep"
    assert second[-1]["content"][0]["text"] == CUT_OFF
    stops = [e["stop_reason"] for e in read_events(result.paths) if e["event"] == "turn_finished"]
    assert stops == ["max_tokens", "end_turn"]
    assert api.invalid_requests == []


async def test_a_memory_update_cut_off_at_max_tokens_is_rejected_and_the_next_one_commits(
    tmp_path: Path,
) -> None:
    session = LongSession(write_repository(tmp_path, files=20, lines_per_file=120), reads=20)
    calls = {"n": 0}

    def memory(request: RecordedRequest) -> Reply:
        calls["n"] += 1
        reply = memory_reply(request)
        if calls["n"] == 1:
            reply.stop_reason = "max_tokens"
        return reply

    settings = Settings(
        workspace=tmp_path,
        auto_approve=True,
        compact_at=20_000,
        memory_init_tokens=3_000,
        memory_update_tokens=1_500,
        max_turns=100,
    )
    with FakeMessagesAPI(Script(session.turns(), memory=memory)) as api:
        result = await _run(api, settings)
    assert result.outcome == "finished"
    updates = [e for e in read_events(result.paths) if e["event"].startswith("memory_update_")]
    failed = [e for e in updates if e["event"] == "memory_update_failed"]
    assert [f["error"] for f in failed] == ["the update was cut off at the output limit"]
    assert any(e["event"] == "memory_update_committed" for e in updates)
    assert "Fix the restock bug" in result.paths.memory.read_text()
    assert api.invalid_requests == []


def test_resume_of_a_finished_session_sends_nothing_and_a_new_task_continues_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.txt").write_text("alpha\n")
    script = Script(
        [tool_calls(("read_file", {"path": "a.txt"})), text("a.txt says alpha.")],
    )
    with FakeMessagesAPI(script) as api:
        first = tidemark("run", "--workspace", str(tmp_path), "read a.txt", api=api)
        assert first.returncode == 0, first.stderr
        sent = len(api.requests)
        again = tidemark("resume", "--workspace", str(tmp_path), api=api)
        assert again.returncode == 0, again.stderr
        assert "already finished" in again.stderr and "TASK" in again.stderr
        assert len(api.requests) == sent  # nothing to do: no request
        api.responder = Script([text("It has one line.")])
        more = tidemark("resume", "--workspace", str(tmp_path), "how many lines?", api=api)
    assert more.returncode == 0, more.stderr
    assert "It has one line." in more.stdout
    messages = api.requests[-1].body["messages"]
    assert messages[0]["content"][0]["text"] == "read a.txt"
    assert messages[-2]["content"][0]["text"] == "a.txt says alpha."
    assert messages[-1]["content"][0]["text"] == "how many lines?"
    assert api.invalid_requests == []
