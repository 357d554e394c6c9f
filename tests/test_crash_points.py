"""kill -9 at many points of long sessions, and `tidemark resume` after each.

Scripted long sessions (tests/support/sessions.py) run through the CLI against the strict
server. The test follows each session's events.jsonl and kills the process right after a
chosen event: a finished turn (its tools about to run), a tool call, a memory update that
started (its request in flight), a committed update (the next turn under way) or a
compaction. After every kill: the memory file is whole or absent, the transcript has at most
a torn last line, the server saw no invalid request, and the next `resume` goes on. At the
end every session finishes.

Several sessions are killed side by side (one chain of kills and resumes each, in its own
workspace, with its own server): a process start-up is mostly waiting on the interpreter, so
chains overlap well even on two cores. Each chain starts its kill schedule at a different
kind of point.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Reply
from tests.support.sessions import LongSession, memory_reply, write_repository
from tests.test_cli import _cmd, _env
from tidemark.memory import HEADINGS

CHAINS = 4
KILLS_PER_CHAIN = 13  # 52 kill points in all
# Kill right after one of these events; each kill of a chain takes the next kind in turn.
TARGETS = (
    "turn_finished",
    "tool_call",
    "memory_update_started",
    "memory_update_committed",
    "compaction",
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
START_TIMEOUT_S = 240.0  # a start-up on a very busy machine, then the way to the next target


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


class _EventTail:
    """The events a session appends from a given point on, read incrementally."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.offset = 0
        self._partial = b""

    def skip_to_end(self) -> None:
        session = _session(self.workspace)
        path = session / "events.jsonl" if session else None
        self.offset = path.stat().st_size if path and path.exists() else 0
        self._partial = b""

    def new(self) -> list[str]:
        session = _session(self.workspace)
        if session is None or not (session / "events.jsonl").exists():
            return []
        with (session / "events.jsonl").open("rb") as file:
            file.seek(self.offset)
            chunk = file.read()
        self.offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        names: list[str] = []
        for line in lines:
            with contextlib.suppress(ValueError):  # a torn line left by an earlier kill
                names.append(json.loads(line)["event"])
        return names


@dataclass
class _Chain:
    """One session killed over and over, in its own workspace, against its own server."""

    index: int
    workspace: Path
    api: FakeMessagesAPI
    killed_after: Counter[str] = field(default_factory=Counter[str])
    resumes: int = 0
    startups_s: list[float] = field(default_factory=list[float])

    async def kill_and_resume(self, kills: int) -> None:
        tail = _EventTail(self.workspace)
        for k in range(kills):
            target = TARGETS[(self.index + k) % len(TARGETS)]
            session = _session(self.workspace)
            command = "run" if session is None else "resume"
            self.resumes += command == "resume"
            tail.skip_to_end()
            args = ["--workspace", str(self.workspace), *FLAGS]
            task = ["fix the restock bug"] if command == "run" else []
            with (self.workspace.parent / f"stderr-{self.index}.txt").open("ab") as err:
                process = await anyio.open_process(
                    _cmd(command, *args, *task),
                    env=_env(self.api),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            started = time.monotonic()
            first_event: float | None = None
            try:
                with anyio.fail_after(START_TIMEOUT_S):
                    while True:
                        new = tail.new()
                        if new and first_event is None:
                            first_event = time.monotonic()
                        if target in new:
                            break
                        assert process.returncode is None, (
                            f"chain {self.index} run {k} ended before a {target}: "
                            + (self.workspace.parent / f"stderr-{self.index}.txt").read_text()
                        )
                        await anyio.sleep(0.005)
            finally:
                process.kill()
                await process.wait()
            self.startups_s.append((first_event or time.monotonic()) - started)
            self.killed_after[target] += 1
            session = _session(self.workspace)
            assert session is not None
            _assert_files_consistent(session)
            assert self.api.invalid_requests == [], self.api.invalid_requests[0].error

    async def finish(self) -> None:
        done = await anyio.run_process(
            _cmd("resume", "--workspace", str(self.workspace), *FLAGS),
            env=_env(self.api),
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert self.api.invalid_requests == []


def _responder(workspace: Path) -> FakeMessagesAPI:
    files = write_repository(workspace, files=20, lines_per_file=120)
    turns = LongSession(files, reads=90).turns()

    def respond(request: RecordedRequest) -> Reply:
        if request.purpose == "session-memory":
            reply = memory_reply(request)
            reply.delay_s = 0.15  # long enough for a kill to land while it is in flight
            return reply
        return turns.pop(0) if turns else Reply(content=[{"type": "text", "text": "Done."}])

    return FakeMessagesAPI(respond)


@pytest.mark.slow
@pytest.mark.timeout(900)  # about a minute on two idle cores; generous for a busy machine
def test_kill_9_at_fifty_two_points_and_resume_after_each(tmp_path: Path) -> None:
    chains: list[_Chain] = []
    with contextlib.ExitStack() as stack:
        for index in range(CHAINS):
            workspace = tmp_path / f"chain-{index}" / "ws"
            workspace.mkdir(parents=True)
            api = stack.enter_context(_responder(workspace))
            chains.append(_Chain(index, workspace, api))

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                for chain in chains:
                    tg.start_soon(chain.kill_and_resume, KILLS_PER_CHAIN)
            async with anyio.create_task_group() as tg:
                for chain in chains:
                    tg.start_soon(chain.finish)

        started = time.monotonic()
        anyio.run(main)
        elapsed = time.monotonic() - started

    killed_after = sum((c.killed_after for c in chains), Counter[str]())
    names: Counter[str] = Counter()
    for chain in chains:
        session = _session(chain.workspace)
        assert session is not None
        _assert_files_consistent(session)
        for line in (session / "events.jsonl").read_text().splitlines():
            with contextlib.suppress(ValueError):
                names[json.loads(line)["event"]] += 1
        assert chain.resumes == KILLS_PER_CHAIN - 1
    kills = sum(killed_after.values())
    assert kills == CHAINS * KILLS_PER_CHAIN >= 50
    assert all(killed_after[t] > 0 for t in TARGETS), killed_after
    # Every session finished once, after all its kills, and really compacted and wrote memory.
    assert names["session_finished"] >= CHAINS
    assert names["compaction"] > 0 and names["memory_update_committed"] > 0, names
    startups = sorted(s for c in chains for s in c.startups_s)
    print(
        f"{kills} kill points ({dict(killed_after)}) in {CHAINS} sessions, "
        f"{kills - CHAINS} resumes killed again, {CHAINS} final resumes: {elapsed:.0f} s; "
        f"start to first event median {startups[len(startups) // 2]:.2f} s; "
        f"events {dict(names)}"
    )
