"""50 sessions at once in one process against the strict server, with API faults injected.

Each session has its own workspace and a tag in its task; the server answers each from its
own script and breaks some of its streams. All must finish, and nothing of one session
(memory, events, transcript, request content) may show up in another.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Reply, text
from tests.support.sessions import LongSession, memory_reply, write_repository
from tidemark import Agent, Settings
from tidemark.providers.anthropic import AnthropicModel

pytestmark = pytest.mark.anyio

SESSIONS = 50
_TAG = re.compile(r"session-(\d\d)")
# Every fifth turn request of a session is broken once, cycling through these faults.
_FAULTS: list[dict[str, Any]] = [
    {"status": 529, "retry_after_s": 0.05},
    {"drop_stream_after_events": 4},
    {"malformed_event_after": 4},
    {"end_stream_after_events": 5},
    {"mid_stream_error": "overloaded_error"},
]


class _Sessions:
    """Routes each request to its session's script by the tag in the task."""

    def __init__(self, scripts: dict[str, list[Reply]]) -> None:
        self.scripts = scripts
        self.turns: dict[str, int] = dict.fromkeys(scripts, 0)
        self.faults = 0
        self._broken: set[tuple[str, int]] = set()  # (session, turn) already broken once
        self.tags_seen: list[set[str]] = []
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Reply:
        tags = set(_TAG.findall(json.dumps(request.body["messages"])))
        with self._lock:
            self.tags_seen.append(tags)
        (tag,) = tags  # exactly one session's words in any request
        if request.purpose == "session-memory":
            reply = memory_reply(request)
            reply.content[0]["text"] = reply.content[0]["text"].replace(
                "# Session Title\n", f"# Session Title\nsession-{tag}: ", 1
            )
            return reply
        with self._lock:
            n = self.turns[tag]
            self.turns[tag] += 1
            if n % 5 == 2 and (tag, n) not in self._broken:
                self._broken.add((tag, n))
                self.turns[tag] -= 1  # the retry gets this turn again
                self.faults += 1
                fault = _FAULTS[(int(tag) + n) % len(_FAULTS)]
                return Reply(content=[{"type": "text", "text": "cut " * 20}], **fault)
            script = self.scripts[tag]
        return script[n] if n < len(script) else text(f"session-{tag}: done.")


@pytest.mark.slow
@pytest.mark.timeout(1200)
async def test_fifty_concurrent_sessions_with_faults_all_finish_and_share_nothing(
    tmp_path: Path,
) -> None:
    scripts: dict[str, list[Reply]] = {}
    workspaces: dict[str, Path] = {}
    for i in range(SESSIONS):
        tag = f"{i:02d}"
        workspaces[tag] = tmp_path / f"ws-{tag}"
        files = write_repository(workspaces[tag], files=6, lines_per_file=60)
        scripts[tag] = LongSession(files, reads=8).turns()
    router = _Sessions(scripts)
    results: dict[str, Any] = {}
    with FakeMessagesAPI(router) as api:
        model = AnthropicModel("claude-test", base_url=api.url, api_key="test")

        async def one(tag: str) -> None:
            settings = Settings(
                workspace=workspaces[tag],
                auto_approve=True,
                context_window=20_000,
                compact_at=5_000,
                memory_init_tokens=1_500,
                memory_update_tokens=1_000,
                memory_tool_calls=1,
                max_turns=60,
            )
            agent = Agent(model, settings=settings)
            results[tag] = await agent.run(f"session-{tag}: fix the restock bug")

        try:
            async with anyio.create_task_group() as tg:
                for tag in workspaces:
                    tg.start_soon(one, tag)
        finally:
            await model.aclose()
    assert sorted(results) == sorted(workspaces)
    assert all(r.outcome == "finished" for r in results.values())
    assert api.invalid_requests == []
    assert router.faults >= SESSIONS  # at least one fault per session was injected
    assert all(len(tags) == 1 for tags in router.tags_seen)
    compactions = committed = 0
    for tag, result in results.items():
        paths = result.paths
        assert paths.workspace == workspaces[tag].resolve()
        assert "level + amount" in (workspaces[tag] / "inventory/stock.py").read_text()
        events = [json.loads(x) for x in paths.events.read_text().splitlines() if x.strip()]
        assert {e["session_id"] for e in events} == {paths.session_id}
        assert set(_TAG.findall(paths.transcript.read_text())) == {tag}
        compactions += sum(e["event"] == "compaction" for e in events)
        committed += sum(e["event"] == "memory_update_committed" for e in events)
        if paths.memory.exists():
            assert set(_TAG.findall(paths.memory.read_text())) == {tag}
    assert compactions >= SESSIONS and committed >= SESSIONS, (compactions, committed)
    print(f"{SESSIONS} sessions, {router.faults} faults, {compactions} compactions")
