"""Faithful compaction under pressure, checked on what the strict server received.

Memory updates far slower than turns (the hosted-model case, scaled down), on read-heavy,
write-heavy and mixed sessions: the memory never claims a message its update did not
receive verbatim, every first request after a compaction fits half of --compact-at by the
server's own count, and compactions are at least three turns apart.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import pytest

from tests.support.coverage import facts_dropped, request_strings, unseen_by_memory
from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Reply, Script, text
from tests.support.runs import read_events, run_long_session
from tests.support.sessions import LongSession, memory_reply, write_repository
from tidemark.cli import main
from tidemark.messages import Message
from tidemark.transcript import load_transcript

pytestmark = pytest.mark.anyio

COMPACT_AT = 20_000


def _session(tmp_path: Path, kind: str) -> LongSession:
    files = write_repository(tmp_path, files=20, lines_per_file=120)
    if kind == "reads":
        return LongSession(files, reads=45)
    if kind == "writes":
        return LongSession(files, reads=0, writes=30)
    return LongSession(files, reads=20, writes=20, interleave=True)


def _slow_memory(delay_s: float) -> Any:
    return lambda r: dataclasses.replace(memory_reply(r), delay_s=delay_s)


# -- what the server received ------------------------------------------------------------------


def unseen_coverage(api: FakeMessagesAPI, result: Any) -> list[str]:
    """Content each committed update newly covers but did not receive verbatim."""
    events = read_events(result.paths)
    memory_requests = api.requests_for("session-memory")
    started = [e for e in events if e["event"] == "memory_update_started"]
    assert len(started) == len(memory_requests)
    transcript = load_transcript(result.paths.transcript).messages
    return unseen_by_memory(events, transcript, memory_requests)


def first_requests_after_compactions(
    api: FakeMessagesAPI, events: list[dict[str, Any]]
) -> list[RecordedRequest]:
    turns = api.requests_for("turn")
    out: list[RecordedRequest] = []
    for i, e in enumerate(events):
        if e["event"] == "compaction":
            turn = next(x["turn"] for x in events[i:] if x["event"] == "turn_finished")
            out.append(turns[turn - 1])
    return out


def turns_between_compactions(events: list[dict[str, Any]]) -> list[int]:
    at: list[int] = []
    for i, e in enumerate(events):
        if e["event"] == "compaction":
            at.append(next(x["turn"] for x in events[i:] if x["event"] == "turn_finished"))
    return [b - a for a, b in itertools.pairwise(at)]


# -- the sessions --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "delay_s"), [("reads", 1.2), ("writes", 2.0), ("mixed", 2.0)])
async def test_slow_memory_claims_only_what_it_saw_and_every_compaction_reaches_the_target(
    tmp_path: Path, kind: str, delay_s: float
) -> None:
    session = _session(tmp_path, kind)
    script = session.script()
    script.memory = _slow_memory(delay_s)
    with FakeMessagesAPI(script) as api:
        result = await run_long_session(api, tmp_path)
    events = read_events(result.paths)
    compactions = [e for e in events if e["event"] == "compaction"]
    assert result.outcome == "finished"
    assert api.invalid_requests == []
    assert api.requests_for("compact") == []
    assert compactions, "the session never compacted"
    assert any(e["event"] == "memory_update_committed" for e in events)
    assert unseen_coverage(api, result) == []
    after = [r.input_tokens for r in first_requests_after_compactions(api, events)]
    assert all(tokens <= COMPACT_AT // 2 for tokens in after), after
    assert all(gap >= 3 for gap in turns_between_compactions(events))
    # Nothing ran away: no request came near the window.
    assert max(r.input_tokens for r in api.requests_for("turn")) <= COMPACT_AT + 4_000


@pytest.mark.parametrize(("kind", "update_turns"), [("reads", 6), ("mixed", 7)])
async def test_memory_spanning_many_turns_loses_no_fact_at_any_compaction(
    tmp_path: Path, kind: str, update_turns: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each update answers only after six or seven more turns, so the memory always lags;
    compaction at the threshold tombstoned results it had not seen (reads: 3 results, mixed:
    6 and 3 planted facts lost, before compaction ahead). The compaction comes before the
    threshold instead, at the last moment it keeps everything."""
    compact_at = 30_000
    session = _session(tmp_path, kind)
    # Each turn's answer takes 0.1 s, so an update released by a turn commits before the
    # next turn starts, even on a loaded machine: the lag is then exactly that many turns.
    replies = [dataclasses.replace(reply, delay_s=0.1) for reply in session.turns()]
    script = Script(
        replies,
        memory=lambda r: dataclasses.replace(memory_reply(r), hold_turns=update_turns),
    )
    with FakeMessagesAPI(script) as api:
        result = await run_long_session(api, tmp_path, compact_at=compact_at)
    events = read_events(result.paths)
    compactions = [e for e in events if e["event"] == "compaction"]
    turns = api.requests_for("turn")
    after = first_requests_after_compactions(api, events)
    assert result.outcome == "finished"
    assert api.invalid_requests == []
    assert len(compactions) >= 2
    # By the server's record: every planted fact a request carried before a compaction is
    # in the first request after it (context or memory).
    assert facts_dropped(turns, [turns.index(r) for r in after]) == [set()] * len(after)
    assert all(c["tool_results_cleared"] == 0 for c in compactions)
    assert any(c["trigger"] == "fresh_memory" for c in compactions)
    for c in compactions:
        if c["trigger"] == "fresh_memory":
            assert compact_at * 3 // 5 <= c["pre_tokens"] <= compact_at
    assert all(r.input_tokens <= compact_at // 2 for r in after), [r.input_tokens for r in after]
    assert all(gap >= 3 for gap in turns_between_compactions(events))
    assert unseen_coverage(api, result) == []
    # `inspect` says why a compaction came before the threshold.
    assert main(["inspect", "--workspace", str(tmp_path)]) == 0
    assert "early: the memory lagged" in capsys.readouterr().out


async def test_before_any_memory_exists_clearing_and_stubs_reach_the_target(
    tmp_path: Path,
) -> None:
    session = _session(tmp_path, "writes")
    script = Script(session.turns(), memory=lambda _r: text("I will remember that."))
    with FakeMessagesAPI(script) as api:
        result = await run_long_session(api, tmp_path)
    events = read_events(result.paths)
    compactions = [e for e in events if e["event"] == "compaction"]
    assert not any(e["event"] == "memory_update_committed" for e in events)
    assert compactions
    assert {c["strategy"] for c in compactions} == {"tool_result_clearing"}
    after = [r.input_tokens for r in first_requests_after_compactions(api, events)]
    assert all(tokens <= COMPACT_AT // 2 for tokens in after), after
    assert all(gap >= 3 for gap in turns_between_compactions(events))
    assert max(r.input_tokens for r in api.requests_for("turn")) <= COMPACT_AT + 4_000
    assert api.invalid_requests == []


async def test_a_rejected_update_tells_the_next_update_request_why(tmp_path: Path) -> None:
    session = _session(tmp_path, "reads")
    calls = {"n": 0}

    def memory(request: RecordedRequest) -> Reply:
        calls["n"] += 1
        if calls["n"] == 2:
            return text("# Worklog\n" + "- read a file and learned little\n" * 2_000)
        return memory_reply(request)

    with FakeMessagesAPI(Script(session.turns(), memory=memory)) as api:
        result = await run_long_session(api, tmp_path)
    events = read_events(result.paths)
    failed = [e for e in events if e["event"] == "memory_update_failed"]
    assert len(failed) == 1 and "Worklog" in failed[0]["error"]
    requests = api.requests_for("session-memory")
    assert len(requests) >= 3
    reason = failed[0]["error"]
    assert reason in "\x00".join(request_strings(requests[2].body["messages"][-1]))
    assert reason not in "\x00".join(request_strings(requests[1].body["messages"][-1]))


def test_resume_rebuilds_a_context_with_stubs_and_tombstones(tmp_path: Path) -> None:
    from tidemark.compaction import CompactionBudget, clear_tool_results
    from tidemark.messages import ToolResultBlock, ToolUseBlock
    from tidemark.tokens import TokenCounter
    from tidemark.transcript import TranscriptWriter

    messages = [Message.user_text("Generate the reports.")]
    for n in range(6):
        use = ToolUseBlock(
            id=f"toolu_{n}", name="write_file", input={"path": f"r{n}.py", "content": "x\n" * 3_000}
        )
        messages.append(Message(role="assistant", origin="model", content=[use]))
        messages.append(
            Message(
                role="user",
                origin="tools",
                content=[ToolResultBlock(tool_use_id=use.id, content="wrote it " * 400)],
            )
        )
    budget = CompactionBudget(target=2_000, limit=10**9, preamble=0, tail_min=0, tail_max=10**9)
    result = clear_tool_results(messages, counter=TokenCounter(), budget=budget)
    assert result.stubs > 0 and result.tool_results_cleared > 0
    writer = TranscriptWriter(tmp_path / "transcript.jsonl")
    for message in messages:
        writer.message(message)
    writer.context(result.context, result.summary)
    writer.close()
    state = load_transcript(tmp_path / "transcript.jsonl")
    assert state.messages == messages
    assert state.context == result.context


async def test_a_failing_command_is_the_last_error_the_memory_keeps_with_its_last_line(
    tmp_path: Path,
) -> None:
    from tests.support.fakeapi import tool_calls

    (tmp_path / "run_tests.py").write_text(
        "for n in range(400):\n    print(f'collecting case {n}: ' + 'x' * 40)\n"
        "raise ValueError('restock level went negative')\n"
    )
    turns = [
        tool_calls(("bash", {"command": "python3 run_tests.py"})),
        *(tool_calls(("list_files", {"pattern": f"*{n}*"})) for n in range(4)),
        text("The test run fails: restock goes negative."),
    ]
    script = Script(turns, memory=memory_reply)
    with FakeMessagesAPI(script) as api:
        result = await run_long_session(
            api, tmp_path, memory_init_tokens=0, memory_update_tokens=0, memory_tool_calls=1
        )
    events = read_events(result.paths)
    assert any(e["event"] == "memory_update_committed" for e in events)
    memory = result.paths.memory.read_text()
    kept = memory.split("## Last tool error (kept by tidemark)\n", 1)[1].split("\n# ", 1)[0]
    assert kept.startswith("bash: collecting case 0")
    assert "ValueError: restock level went negative" in kept
    assert "[exit code: 1]" in kept
    assert api.invalid_requests == []
