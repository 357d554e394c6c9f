"""kill -9 at many points of one long session, and `tidemark resume` after each.

One scripted session (tests/support/sessions.py) runs through the CLI against the strict
server. The test watches its events.jsonl and kills the process right after chosen events:
a finished turn (its tools about to run), a tool call, a memory update that started (its
request or its write in flight), a commit or a compaction. After every kill: the memory
file is whole or absent, the transcript has at most a torn last line, and the next
`resume` goes on. At the end the session finishes and the server saw no invalid request.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Reply
from tests.support.sessions import LongSession, memory_reply, write_repository
from tests.test_cli import _cmd, _env, tidemark
from tidemark.memory import HEADINGS

KILLS = 50
# Kill right after one of these events; each kill takes the next group in turn.
TARGETS = (
    ("turn_finished",),
    ("tool_call",),
    ("memory_update_started",),
    ("compaction", "memory_update_committed", "summary_boundary"),
)
FLAGS = (
    "--yes",
    "--compact-at",
    "20000",
    "--memory-init-tokens",
    "3000",
    "--memory-update-tokens",
    "1500",
    "--memory-tool-calls",
    "1",
    "--max-turns",
    "400",
)


def _events(session: Path | None) -> list[str]:
    if session is None or not (session / "events.jsonl").exists():
        return []
    names: list[str] = []
    for line in (session / "events.jsonl").read_text().splitlines():
        with contextlib.suppress(ValueError):  # a torn last line, skipped as resume skips it
            names.append(json.loads(line)["event"])
    return names


def _session(workspace: Path) -> Path | None:
    base = workspace / ".tidemark" / "sessions"
    found = sorted(base.iterdir()) if base.is_dir() else []
    return found[0] if found else None


def _assert_files_consistent(session: Path) -> None:
    memory = session / "session-memory.md"
    if memory.exists():
        text = memory.read_text()
        assert all(f"# {h}" in text for h in HEADINGS), "torn memory file"
        assert "tidemark-memory" in text and "covers=" in text, "memory without its marker"
    lines = (session / "transcript.jsonl").read_text().splitlines()
    for line in lines[:-1]:
        json.loads(line)  # only the last line may be torn


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 51 process start-ups: slow on a busy machine
def test_kill_9_at_fifty_points_and_resume_after_each(tmp_path: Path) -> None:
    files = write_repository(tmp_path, files=20, lines_per_file=120)
    turns = LongSession(files, reads=150).turns()

    def responder(request: RecordedRequest) -> Reply:
        if request.purpose == "session-memory":
            reply = memory_reply(request)
            reply.delay_s = 0.15  # long enough for a kill to land while it is in flight
            return reply
        return turns.pop(0) if turns else Reply(content=[{"type": "text", "text": "Done."}])

    killed_after: Counter[str] = Counter()
    resumes = 0
    started = time.monotonic()
    with FakeMessagesAPI(responder) as api:
        for k in range(KILLS):
            session = _session(tmp_path)
            seen = Counter(_events(session))
            targets = TARGETS[k % len(TARGETS)]
            command = "run" if session is None else "resume"
            resumes += command == "resume"
            args = [command, "--workspace", str(tmp_path), *FLAGS]
            proc = subprocess.Popen(
                _cmd(*args, *(["fix the restock bug"] if command == "run" else [])),
                env=_env(api),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            hit: str | None = None
            while hit is None and proc.poll() is None:
                now = Counter(_events(_session(tmp_path)))
                hit = next((t for t in targets if now[t] > seen[t]), None)
                time.sleep(0.005)
            assert proc.poll() is None, f"run {k} ended by itself: {proc.communicate()[1]}"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            assert hit is not None
            killed_after[hit] += 1
            session = _session(tmp_path)
            assert session is not None
            _assert_files_consistent(session)
            assert api.invalid_requests == [], api.invalid_requests[0].error
        done = tidemark("resume", "--workspace", str(tmp_path), *FLAGS, api=api, timeout=600)
        assert done.returncode == 0, done.stderr
        assert api.invalid_requests == []
    elapsed = time.monotonic() - started
    session = _session(tmp_path)
    assert session is not None
    _assert_files_consistent(session)
    names = Counter(_events(session))
    assert names["session_finished"] >= 1 and resumes == KILLS - 1
    assert sum(killed_after.values()) == KILLS
    assert all(killed_after[group[0]] > 0 for group in TARGETS), killed_after
    # The session really compacted and wrote memory between the kills.
    assert names["compaction"] > 0 and names["memory_update_committed"] > 0, names
    print(f"{KILLS} kills in {elapsed:.0f} s: {dict(killed_after)}; events {dict(names)}")
