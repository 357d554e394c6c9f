"""Running a scripted session in a test, and reading what the session wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.fakeapi import FakeMessagesAPI
from tidemark import Agent, Settings
from tidemark.loop import RunResult
from tidemark.providers.anthropic import AnthropicModel
from tidemark.transcript import SessionPaths

__all__ = ["LONG_TASK", "long_session_settings", "read_events", "run_long_session", "session_dir"]

# The task of the scripted long coding session (tests/support/sessions.py).
LONG_TASK = "Fix the restock bug. Rule: never touch test_stock.py."


def long_session_settings(workspace: Path, **overrides: Any) -> Settings:
    """Settings under which the long session updates its memory and compacts several times."""
    values: dict[str, Any] = {
        "workspace": workspace,
        "auto_approve": True,
        "compact_at": 20_000,
        "memory_init_tokens": 4_000,
        "memory_update_tokens": 2_000,
        "max_turns": 200,
    }
    values.update(overrides)
    return Settings(**values)


async def run_long_session(api: FakeMessagesAPI, workspace: Path, **overrides: Any) -> RunResult:
    """The long session through the real SDK against `api`, under `long_session_settings`."""
    model = AnthropicModel("claude-test", base_url=api.url, api_key="test")
    try:
        settings = long_session_settings(workspace, **overrides)
        return await Agent(model, settings=settings).run(LONG_TASK)
    finally:
        await model.aclose()


def session_dir(workspace: Path) -> Path:
    """The folder of the workspace's only session."""
    (folder,) = (workspace / ".tidemark" / "sessions").iterdir()
    return folder


def read_events(source: Path | SessionPaths) -> list[dict[str, Any]]:
    """The events a session recorded: of `SessionPaths`, of an events.jsonl file, or of a
    workspace's only session."""
    if isinstance(source, SessionPaths):
        path = source.events
    elif source.is_dir():
        path = session_dir(source) / "events.jsonl"
    else:
        path = source
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
