"""`tidemark inspect` totals: every request the session paid for, and what it cost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Reply
from tests.support.sessions import LongSession, memory_reply, write_repository
from tests.test_cli import tidemark
from tidemark import Agent, ScriptedModel, Settings
from tidemark.errors import ContextTooLongError
from tidemark.inspection import read_events, summarize
from tidemark.model import ModelRequest, ModelResponse
from tidemark.prices import PRICES, estimate_cost


def _usage(input_tokens: int, output_tokens: int, read: int = 0, write: int = 0) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
    }


def test_totals_count_the_turns_the_memory_updates_and_the_blocking_summaries() -> None:
    events: list[dict[str, Any]] = [
        {"event": "session_started", "model": "claude-sonnet-4-5", "provider": "AnthropicModel"},
        {"event": "turn_finished", "turn": 1, "stop_reason": "tool_use", **_usage(1000, 100)},
        {"event": "memory_update_committed", "update": 1, **_usage(900, 50, read=800)},
        {"event": "memory_update_failed", "update": 2, "error": "empty", **_usage(950, 1)},
        {"event": "memory_update_failed", "update": 3, "error": "cancelled: session ended"},
        {"event": "compaction", "strategy": "full_summary", **_usage(5000, 700, write=4000)},
        {"event": "compaction", "strategy": "session_memory"},  # no request: no usage
        {"event": "compaction_failed", "strategy": "full_summary", **_usage(4000, 0)},
        {"event": "turn_finished", "turn": 2, "stop_reason": "end_turn", **_usage(2000, 200)},
    ]
    s = summarize("s", events)
    assert (s.input_tokens, s.output_tokens) == (13_850, 1_051)
    assert (s.cache_read_input_tokens, s.cache_creation_input_tokens) == (800, 4000)
    assert (s.memory_input_tokens, s.memory_output_tokens) == (1_850, 51)
    assert (s.summary_input_tokens, s.summary_output_tokens) == (9_000, 700)
    assert s.estimated_cost_usd == pytest.approx(
        estimate_cost(
            "claude-sonnet-4-5",
            input_tokens=13_850,
            output_tokens=1_051,
            cache_read=800,
            cache_write=4000,
        )
    )
    assert "memory updates and summaries included" in s.cost_note


@pytest.mark.anyio
async def test_a_blocking_summary_records_its_usage_and_inspect_counts_it(tmp_path: Path) -> None:
    def too_long(_: ModelRequest) -> ModelResponse:
        raise ContextTooLongError("prompt is too long: 250000 tokens > 200000 maximum")

    summary = ScriptedModel.reply("The user wants a haiku; nothing done yet.")
    model = ScriptedModel([too_long, ScriptedModel.reply("ok")], compact=lambda _: summary)
    result = await Agent(model, settings=Settings(workspace=tmp_path)).run("write a haiku")
    events, _ = read_events(result.paths.events)
    [compaction] = [e for e in events if e["event"] == "compaction"]
    assert compaction["strategy"] == "full_summary"
    assert compaction["output_tokens"] == summary.usage.output_tokens > 0
    s = summarize(result.session_id, events)
    assert s.summary_output_tokens == summary.usage.output_tokens
    turns = sum(e["output_tokens"] for e in events if e["event"] == "turn_finished")
    assert s.output_tokens == turns + summary.usage.output_tokens


def test_the_local_model_costs_nothing() -> None:
    events = [
        {"event": "session_started", "model": "local/qwen2.5-coder-0.5b", "provider": "LocalModel"},
        {"event": "turn_finished", "turn": 1, "stop_reason": "end_turn", **_usage(3000, 40)},
    ]
    s = summarize("s", events)
    assert s.estimated_cost_usd == 0.0
    assert "unknown model" not in s.cost_note
    assert "local" in s.cost_note


def test_an_unknown_hosted_model_still_says_its_cost_is_unknown() -> None:
    events = [{"event": "session_started", "model": "claude-next-9", "provider": "AnthropicModel"}]
    s = summarize("s", events)
    assert s.estimated_cost_usd is None
    assert s.cost_note.startswith("cost: unknown model claude-next-9")


def test_inspect_totals_match_what_the_server_billed_memory_updates_included(
    tmp_path: Path,
) -> None:
    session = LongSession(write_repository(tmp_path, files=5, lines_per_file=80), reads=6)
    turns = session.turns()

    def responder(request: RecordedRequest) -> Reply:
        if request.purpose == "session-memory":
            return memory_reply(request)
        return turns.pop(0)

    thresholds = ["--memory-init-tokens", "2000", "--memory-update-tokens", "1000"]
    with FakeMessagesAPI(responder) as api:
        done = tidemark("run", "--workspace", str(tmp_path), "--yes", *thresholds, "fix", api=api)
    assert done.returncode == 0, done.stderr
    billed = [r for r in api.requests if r.path == "/v1/messages" and r.usage is not None]
    assert any(r.purpose == "session-memory" for r in billed)
    shown = tidemark("inspect", "--workspace", str(tmp_path), "--json")
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout.splitlines()[-1])

    def total(key: str, requests: list[RecordedRequest]) -> int:
        return sum(r.usage[key] for r in requests if r.usage is not None)

    memory = [r for r in billed if r.purpose == "session-memory"]
    cached = ["cache_read_input_tokens", "cache_creation_input_tokens"]
    assert summary["input_tokens"] == sum(total(k, billed) for k in ["input_tokens", *cached])
    assert summary["output_tokens"] == total("output_tokens", billed)
    assert summary["memory_input_tokens"] == sum(
        total(k, memory) for k in ["input_tokens", *cached]
    )
    assert summary["memory_output_tokens"] == total("output_tokens", memory)
    assert summary["cache_read_input_tokens"] == total("cache_read_input_tokens", billed)
    model = summary["model"]
    assert model in PRICES or summary["estimated_cost_usd"] is not None
