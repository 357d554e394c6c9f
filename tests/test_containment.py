"""A failed background memory update changes nothing: any exception becomes an event.

Each kind is injected for real: a memory file the runtime cannot write (a directory stands
where the file goes), a reply body whose JSON is cut (the provider's parse error), and a
model that raises a `RuntimeError` (what llama.cpp raises when a decode fails). The turn
loop goes on, the run finishes as it would have, and repeated failures back off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Reply, Script
from tests.support.runs import read_events
from tests.support.sessions import LongSession, memory_reply, write_repository
from tidemark import Agent, Settings
from tidemark.model import ModelRequest, ModelResponse
from tidemark.providers.anthropic import AnthropicModel
from tidemark.testing import ScriptedModel

pytestmark = pytest.mark.anyio

TASK = "Fix the restock bug."


def _settings(workspace: Path) -> Settings:
    return Settings(
        workspace=workspace,
        auto_approve=True,
        compact_at=20_000,
        memory_init_tokens=3_000,
        memory_update_tokens=1_500,
        memory_tool_calls=1,
        max_turns=200,
    )


def _session(tmp_path: Path) -> LongSession:
    return LongSession(write_repository(tmp_path, files=20, lines_per_file=120), reads=30)


async def _run_against(api: FakeMessagesAPI, workspace: Path) -> Any:
    model = AnthropicModel("claude-test", base_url=api.url, api_key="test")
    try:
        return await Agent(model, settings=_settings(workspace)).run(TASK)
    finally:
        await model.aclose()


def _assert_contained(result: Any, needle: str) -> list[dict[str, Any]]:
    """The run finished as if memory had never failed; returns the failure events."""
    events = read_events(result.paths.events)
    failed = [e for e in events if e["event"] == "memory_update_failed"]
    assert result.outcome == "finished"
    assert "restock" in result.final_text
    assert events[-1]["event"] == "session_finished"
    assert events[-1]["outcome"] == "finished" and events[-1]["exit_code"] == 0
    assert failed, "no update failed: the fault was not injected"
    assert all(needle in f["error"] for f in failed), failed
    assert not any(e["event"] == "memory_update_committed" for e in events)
    return failed


async def test_a_memory_file_that_cannot_be_written_is_an_event_and_the_run_finishes(
    tmp_path: Path,
) -> None:
    session = _session(tmp_path)

    def memory(request: RecordedRequest) -> Reply:
        # Where the memory file goes, a directory: the atomic rename fails with an OSError.
        for folder in (tmp_path / ".tidemark" / "sessions").iterdir():
            (folder / "session-memory.md").mkdir(exist_ok=True)
        return memory_reply(request)

    with FakeMessagesAPI(Script(session.turns(), memory=memory)) as api:
        result = await _run_against(api, tmp_path)
    failed = _assert_contained(result, "IsADirectoryError")
    assert api.invalid_requests == []
    # Repeated failures back off: the failures are counted, each waits longer than the last.
    assert [f["consecutive_failures"] for f in failed] == list(range(1, len(failed) + 1))
    backoff = [f["retry_after_turns"] for f in failed]
    assert backoff == sorted(backoff) and backoff[-1] > backoff[0]
    assert not list(result.paths.root.glob(".session-memory.md.*.tmp"))  # no temp file left


async def test_a_reply_the_provider_cannot_parse_is_an_event_and_the_run_finishes(
    tmp_path: Path,
) -> None:
    session = _session(tmp_path)

    def memory(request: RecordedRequest) -> Reply:
        reply = memory_reply(request)
        reply.malformed_event_after = 0  # the JSON body is cut in half
        return reply

    with FakeMessagesAPI(Script(session.turns(), memory=memory)) as api:
        result = await _run_against(api, tmp_path)
    _assert_contained(result, "not valid JSON")
    assert not result.paths.memory.exists()
    assert api.invalid_requests == []


class _CrashingMemoryModel(ScriptedModel):
    """A model whose memory requests raise what llama.cpp raises when a decode fails."""

    async def generate(self, request: ModelRequest, on_text: Any = None) -> ModelResponse:
        if request.purpose == "session-memory":
            raise RuntimeError("llama_decode returned -3")
        return await super().generate(request, on_text)


async def test_a_runtime_error_inside_the_model_is_an_event_and_the_run_finishes(
    tmp_path: Path,
) -> None:
    files = write_repository(tmp_path, files=20, lines_per_file=120)
    steps = [ScriptedModel.call("read_file", path=files[i % len(files)]) for i in range(25)]
    steps.append(ScriptedModel.reply("Fixed the restock bug."))
    model = _CrashingMemoryModel(steps)
    result = await Agent(model, settings=_settings(tmp_path)).run(TASK)
    failed = _assert_contained(result, "RuntimeError: llama_decode returned -3")
    assert result.turns == 26
    assert not result.paths.memory.exists()
    assert all(f["consecutive_failures"] >= 1 for f in failed)
