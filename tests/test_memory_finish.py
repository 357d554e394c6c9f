"""The finish: the answer comes at once, then an in-flight or due memory update still commits.

A session shorter than one memory update must not throw the update away: the CLI prints the
answer, says it is saving the session memory, and exits once the update has committed (or
its own timeout passed); Ctrl-C skips the save. Library callers get the same through
`Agent.run(..., wait_for_memory=...)`. Errors and interrupts still cancel at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Reply, Script, text, tool_calls
from tests.support.runs import read_events, session_dir
from tests.support.sessions import memory_reply, write_repository
from tidemark import Agent, Settings
from tidemark.errors import TidemarkError
from tidemark.loop import RunResult
from tidemark.memory import HEADINGS
from tidemark.providers.anthropic import AnthropicModel

ROOT = Path(__file__).resolve().parent.parent
ANSWER = "All seven modules read: the bulk discount is applied above 100 items."


def _slow_memory(delay_s: float) -> Callable[[RecordedRequest], Reply]:
    """A memory update that takes `delay_s` seconds: longer than the rest of the session."""

    def reply(request: RecordedRequest) -> Reply:
        answer = memory_reply(request)
        answer.delay_s = delay_s
        return answer

    return reply


def _short_session(workspace: Path, *, memory_delay_s: float, final: Reply | None = None) -> Script:
    """Seven reads of about 2,000 tokens each, then the answer: shorter than one update."""
    files = write_repository(workspace, files=7, lines_per_file=340)
    turns = [tool_calls(("read_file", {"path": f})) for f in files]
    return Script([*turns, final or text(ANSWER)], memory=_slow_memory(memory_delay_s))


def _transcript(workspace: Path) -> list[dict[str, Any]]:
    path = session_dir(workspace) / "transcript.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


def _assert_complete_memory(workspace: Path) -> None:
    memory = (session_dir(workspace) / "session-memory.md").read_text()
    assert [line for line in memory.splitlines() if line.startswith("# ")] == [
        f"# {h}" for h in HEADINGS
    ]
    assert "Fix the restock bug" in memory  # the update's own words, not the empty template


def _env(api: FakeMessagesAPI) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["ANTHROPIC_BASE_URL"] = api.url
    env["PYTHONPATH"] = str(ROOT)
    return env


def _start(workspace: Path, api: FakeMessagesAPI) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "tidemark.cli", "run", "--workspace", str(workspace), "--yes"),
            "Read the inventory modules and tell me about the discount.",
        ],
        env=_env(api),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- through the CLI ---------------------------------------------------------------------------


def test_a_session_shorter_than_one_update_leaves_a_complete_memory_through_the_cli(
    tmp_path: Path,
) -> None:
    with FakeMessagesAPI(_short_session(tmp_path, memory_delay_s=1.5)) as api:
        run = _start(tmp_path, api)
        out, err = run.communicate(timeout=120)
        updates = api.requests_for("session-memory")
    assert run.returncode == 0, err
    assert out.strip() == ANSWER
    assert "saving session memory" in err
    assert "Traceback" not in err
    # The server answered every update in full, and the runtime committed each one: the one
    # in flight at the answer, then the one due at that pause, which covers the answer too.
    assert len(updates) == 2 and all(u.finished_at is not None for u in updates)
    assert api.invalid_requests == []
    _assert_complete_memory(tmp_path)
    events = read_events(tmp_path)
    assert _named(events, "memory_update_failed") == []
    assert len(_named(events, "memory_update_committed")) == 2
    last = _transcript(tmp_path)[-1]["message"]
    assert last["content"][0]["text"] == ANSWER
    assert _named(events, "memory_update_committed")[-1]["covers_message_id"] == last["id"]
    finished = _named(events, "session_finished")[-1]
    assert finished["outcome"] == "finished" and finished["exit_code"] == 0


def test_the_cli_prints_the_answer_before_the_update_commits_and_ctrl_c_skips_the_save(
    tmp_path: Path,
) -> None:
    with FakeMessagesAPI(_short_session(tmp_path, memory_delay_s=60)) as api:
        run = _start(tmp_path, api)
        assert run.stdout is not None
        # The answer arrives while the server still holds the memory update.
        assert run.stdout.readline().strip() == ANSWER
        (update,) = api.requests_for("session-memory")
        assert update.finished_at is None
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=30)
    assert run.returncode == 0, err
    assert out == ""
    assert "saving session memory" in err
    assert "not saved" in err
    assert "Traceback" not in err
    folder = session_dir(tmp_path)
    # Skipped, not torn: no memory file, no temporary left behind, the transcript ends valid.
    assert sorted(p.name for p in folder.iterdir()) == ["events.jsonl", "transcript.jsonl"]
    assert _transcript(tmp_path)[-1]["message"]["content"][0]["text"] == ANSWER
    events = read_events(tmp_path)
    assert _named(events, "memory_update_committed") == []
    assert "cancelled" in _named(events, "memory_update_failed")[0]["error"]


# -- through the library -----------------------------------------------------------------------


async def _run(api: FakeMessagesAPI, workspace: Path, **options: Any) -> RunResult:
    model = AnthropicModel("claude-test", base_url=api.url, api_key="test")
    settings = Settings(workspace=workspace, auto_approve=True, **options.pop("settings", {}))
    try:
        return await Agent(model, settings=settings).run("Read the modules.", **options)
    finally:
        await model.aclose()


@pytest.mark.anyio
async def test_by_default_a_library_run_returns_after_the_in_flight_update_committed(
    tmp_path: Path,
) -> None:
    seen: list[tuple[str, bool]] = []

    def on_answer(result: RunResult) -> None:
        seen.append((result.final_text, result.paths.memory.exists()))

    with FakeMessagesAPI(_short_session(tmp_path, memory_delay_s=1.0)) as api:
        result = await _run(api, tmp_path, on_answer=on_answer)
    assert result.outcome == "finished" and result.final_text == ANSWER
    # The answer was handed over before the memory existed; the run returned after.
    assert seen == [(ANSWER, False)]
    _assert_complete_memory(tmp_path)
    assert _named(read_events(tmp_path), "memory_update_failed") == []


@pytest.mark.anyio
async def test_a_library_run_that_does_not_wait_cancels_the_update_at_once(
    tmp_path: Path,
) -> None:
    with FakeMessagesAPI(_short_session(tmp_path, memory_delay_s=60)) as api:
        result = await _run(api, tmp_path, wait_for_memory=False)
    assert result.outcome == "finished"
    assert not result.paths.memory.exists()
    events = read_events(tmp_path)
    assert "cancelled" in _named(events, "memory_update_failed")[0]["error"]


@pytest.mark.anyio
async def test_an_error_still_cancels_the_update_at_once(tmp_path: Path) -> None:
    final = Reply(content=[], status=400, error_message="messages.0: unexpected field")
    script = _short_session(tmp_path, memory_delay_s=60, final=final)
    with FakeMessagesAPI(script) as api, pytest.raises(TidemarkError):
        await _run(api, tmp_path)
    events = read_events(tmp_path)
    assert _named(events, "memory_update_committed") == []
    assert "cancelled" in _named(events, "memory_update_failed")[0]["error"]
    assert _named(events, "session_finished")[-1]["outcome"] == "failed"


@pytest.mark.anyio
async def test_the_wait_at_the_finish_is_bounded_by_the_updates_own_timeout(
    tmp_path: Path,
) -> None:
    with FakeMessagesAPI(_short_session(tmp_path, memory_delay_s=60)) as api:
        result = await _run(api, tmp_path, settings={"memory_update_timeout": 1.0})
    assert result.outcome == "finished"
    assert not result.paths.memory.exists()
    events = read_events(tmp_path)
    assert _named(events, "memory_update_committed") == []
    assert "timed out after 1 s" in _named(events, "memory_update_failed")[0]["error"]


# -- the natural pause -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_answer_without_a_tool_call_starts_the_due_update_and_it_covers_the_answer(
    tmp_path: Path,
) -> None:
    # Tool calls alone never make an update due here: only the pause can.
    settings = {"memory_tool_calls": 100}
    with FakeMessagesAPI(_short_session(tmp_path, memory_delay_s=0.2)) as api:
        result = await _run(api, tmp_path, settings=settings)
        (update,) = api.requests_for("session-memory")
    answer = _transcript(tmp_path)[-1]["message"]
    assert answer["content"][0]["text"] == ANSWER
    # The update request held the whole session, the answer included, then its instruction.
    assert update.body["messages"][-2]["content"][0]["text"] == ANSWER
    events = read_events(tmp_path)
    (started,) = _named(events, "memory_update_started")
    assert started["to_message_id"] == answer["id"]
    assert _named(events, "memory_update_committed")[0]["covers_message_id"] == answer["id"]
    assert result.paths.memory.exists()


@pytest.mark.anyio
async def test_a_pause_inside_the_run_starts_the_due_update_before_the_next_turn(
    tmp_path: Path,
) -> None:
    settings = {"memory_tool_calls": 100}
    cut = text("I have read them; the discount", stop_reason="max_tokens")
    script = _short_session(tmp_path, memory_delay_s=0.2, final=cut)
    script.default = text(ANSWER)
    with FakeMessagesAPI(script) as api:
        await _run(api, tmp_path, settings=settings, wait_for_memory=False)
    events = read_events(tmp_path)
    order = [
        (e["event"], e.get("turn"))
        for e in events
        if e["event"] in ("turn_finished", "memory_update_started")
    ]
    # The update was asked for at the pause, before the turn that continues the reply.
    assert order[-3:] == [
        ("turn_finished", 8),
        ("memory_update_started", None),
        ("turn_finished", 9),
    ]
    messages = [r["message"] for r in _transcript(tmp_path)]
    cut_off = next(i for i, m in enumerate(messages) if m.get("stop_reason") == "max_tokens")
    # It covers the cut-off reply and the runtime's "continue" that followed it.
    assert (
        _named(events, "memory_update_started")[0]["to_message_id"] == messages[cut_off + 1]["id"]
    )
