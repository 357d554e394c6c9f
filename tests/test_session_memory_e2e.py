"""Session memory end to end: the real Agent and SDK against the strict fake server."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Reply, Script, text, tool_calls
from tests.support.runs import read_events, run_long_session
from tests.support.sessions import LongSession, memory_reply, write_repository
from tidemark.compaction import SUMMARY_HEADER
from tidemark.memory import HEADINGS

pytestmark = pytest.mark.anyio


def _long_session(tmp_path: Path, reads: int = 40) -> LongSession:
    return LongSession(write_repository(tmp_path, files=20, lines_per_file=120), reads=reads)


def _plain(message: dict[str, Any]) -> str:
    """A wire message without cache breakpoints (they move from request to request)."""
    blocks = [{k: v for k, v in b.items() if k != "cache_control"} for b in message["content"]]
    return json.dumps({"role": message["role"], "content": blocks}, sort_keys=True)


def _first_turn_after_each_compaction(api: FakeMessagesAPI) -> list[RecordedRequest]:
    turns = api.requests_for("turn")
    return [
        r
        for r in turns
        if SUMMARY_HEADER in json.dumps(r.body["messages"][0])
        or any("cleared by tidemark" in json.dumps(m) for m in r.body["messages"])
    ]


async def test_a_long_session_compacts_from_memory_with_no_blocking_call_and_no_invalid_request(
    tmp_path: Path,
) -> None:
    session = _long_session(tmp_path)
    with FakeMessagesAPI(session.script()) as api:
        result = await run_long_session(api, tmp_path)
    events = read_events(result.paths)
    compactions = [e for e in events if e["event"] == "compaction"]
    assert result.outcome == "finished"
    assert "level + amount" in (tmp_path / "inventory/stock.py").read_text()
    assert len(compactions) >= 2
    assert {c["strategy"] for c in compactions} == {"session_memory"}
    assert api.invalid_requests == []
    assert api.requests_for("compact") == []
    assert all(c["waited_for_update_ms"] == 0 for c in compactions)
    assert all(c["post_tokens"] <= 10_000 for c in compactions)
    # The memory file holds the last committed update and names what it covers.
    committed = [e for e in events if e["event"] == "memory_update_committed"]
    memory = result.paths.memory.read_text()
    assert [line for line in memory.splitlines() if line.startswith("# ")] == [
        f"# {h}" for h in HEADINGS
    ]
    assert f"covers={committed[-1]['covers_message_id']}" in memory
    boundaries = [e["message_id"] for e in events if e["event"] == "summary_boundary"]
    assert boundaries == [e["covers_message_id"] for e in committed]


async def test_compaction_replaces_the_covered_prefix_by_memory_and_keeps_the_tail_verbatim(
    tmp_path: Path,
) -> None:
    session = _long_session(tmp_path, reads=30)
    with FakeMessagesAPI(session.script()) as api:
        result = await run_long_session(api, tmp_path)
    events = read_events(result.paths)
    compaction = next(e for e in events if e["event"] == "compaction")
    turns = api.requests_for("turn")
    before, after = next(
        (a, b)
        for a, b in itertools.pairwise(turns)
        if SUMMARY_HEADER in json.dumps(b.body["messages"][0])
    )
    first = json.dumps(after.body["messages"][0])
    assert "Current State" in first
    # The user's own words survive verbatim.
    assert "Rule: never touch test_stock.py." in first
    assert len(after.body["messages"]) < len(before.body["messages"])
    # Every message after the summary appeared verbatim in the previous request, except
    # tool results tombstoned on purpose.
    earlier = [_plain(m) for m in before.body["messages"]]
    for message in after.body["messages"][1:-2]:  # the last two are the newest turn
        dumped = _plain(message)
        assert dumped in earlier or "cleared by tidemark" in dumped
    assert compaction["messages_dropped"] > 0


async def test_a_turn_request_goes_out_while_a_memory_update_is_still_in_flight(
    tmp_path: Path,
) -> None:
    session = _long_session(tmp_path, reads=12)
    script = session.script()
    script.memory = lambda r: dataclasses.replace(memory_reply(r), delay_s=0.5)
    with FakeMessagesAPI(script) as api:
        await run_long_session(api, tmp_path)
    update = api.requests_for("session-memory")[0]
    assert update.finished_at is not None
    overlapping = [
        r for r in api.requests_for("turn") if update.started_at < r.started_at < update.finished_at
    ]
    assert overlapping, "the turn loop waited for the memory update"


async def test_when_memory_lags_far_behind_compaction_tombstones_instead_of_waiting(
    tmp_path: Path,
) -> None:
    # Memory updates take far longer than turns (the real-model case, scaled down).
    session = _long_session(tmp_path, reads=45)
    script = session.script()
    script.memory = lambda r: dataclasses.replace(memory_reply(r), delay_s=1.2)
    with FakeMessagesAPI(script) as api:
        result = await run_long_session(api, tmp_path)
    events = read_events(result.paths)
    compactions = [e for e in events if e["event"] == "compaction"]
    turns = [e for e in events if e["event"] == "turn_finished"]
    assert result.outcome == "finished"
    assert len(compactions) >= 2
    assert api.requests_for("compact") == []
    assert api.invalid_requests == []
    assert all(c["waited_for_update_ms"] == 0 for c in compactions)
    assert sum(c["tool_results_cleared"] for c in compactions) > 0
    assert all(c["post_tokens"] <= 10_000 for c in compactions)
    assert all(c["memory_lag_tokens"] > 0 for c in compactions)
    # No cascade: at least three turns between compactions.
    stamps = [e["timestamp"] for e in compactions]
    for a, b in itertools.pairwise(stamps):
        assert sum(1 for t in turns if a < t["timestamp"] < b) >= 3
    # The newest tool results go out verbatim in the first request after each compaction.
    for request in _first_turn_after_each_compaction(api):
        last = request.body["messages"][-1]
        for block in last["content"]:
            if block["type"] == "tool_result":
                assert "cleared by tidemark" not in json.dumps(block)


@pytest.mark.parametrize(
    "bad_reply",
    [
        pytest.param("", id="empty"),
        pytest.param("Sure! I will remember that.", id="no-headings"),
        pytest.param("# Current State\n" + "word " * 20_000, id="over-the-size-limit"),
    ],
)
async def test_a_rejected_memory_update_changes_nothing_on_disk_or_in_context(
    tmp_path: Path, bad_reply: str
) -> None:
    session = _long_session(tmp_path, reads=30)
    calls = {"n": 0}

    def memory(request: RecordedRequest) -> Reply:
        calls["n"] += 1
        return memory_reply(request) if calls["n"] == 1 else text(bad_reply or " ")

    script = Script(session.turns(), memory=memory)
    with FakeMessagesAPI(script) as api:
        result = await run_long_session(api, tmp_path)
    events = read_events(result.paths)
    committed = [e for e in events if e["event"] == "memory_update_committed"]
    failed = [e for e in events if e["event"] == "memory_update_failed"]
    assert len(committed) == 1
    assert failed and all(f["error"] for f in failed)
    memory_file = result.paths.memory.read_text()
    assert f"covers={committed[0]['covers_message_id']}" in memory_file
    assert "word word" not in memory_file
    assert api.invalid_requests == []
    compactions = [e for e in events if e["event"] == "compaction"]
    assert all(
        c["boundary_message_id"] in (None, committed[0]["covers_message_id"]) for c in compactions
    )


async def test_memory_updates_read_the_turns_prefix_from_the_prompt_cache(tmp_path: Path) -> None:
    # The API caches message blocks per tool_choice: an update that changed it would
    # rewrite the whole conversation into the cache instead of reading it.
    session = _long_session(tmp_path, reads=16)
    with FakeMessagesAPI(session.script()) as api:
        await run_long_session(api, tmp_path, compact_at=60_000)
    turns = api.requests_for("turn")
    updates = api.requests_for("session-memory")
    assert updates
    assert {json.dumps(r.body.get("tool_choice")) for r in updates} == {
        json.dumps(r.body.get("tool_choice")) for r in turns
    }
    for update in updates:
        usage = update.usage or {}
        read = usage.get("cache_read_input_tokens", 0)
        # The conversation up to the newest turns comes from the cache (with another
        # tool_choice only the tools and system prompt would: under a tenth here).
        assert read >= 0.5 * (update.input_tokens or 0), usage


async def test_an_update_reply_that_only_calls_a_tool_is_rejected_and_changes_nothing(
    tmp_path: Path,
) -> None:
    session = _long_session(tmp_path, reads=16)

    def calls_a_tool(request: RecordedRequest) -> Reply:
        return tool_calls(("read_file", {"path": "inventory/stock.py"}))

    with FakeMessagesAPI(Script(session.turns(), memory=calls_a_tool)) as api:
        result = await run_long_session(api, tmp_path)
    events = read_events(result.paths)
    failed = [e for e in events if e["event"] == "memory_update_failed"]
    assert result.outcome == "finished"
    assert failed and all("called a tool" in e["error"] for e in failed)
    assert not [e for e in events if e["event"] == "memory_update_committed"]
    assert not result.paths.memory.exists()
    assert api.invalid_requests == []
