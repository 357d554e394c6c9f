"""Ctrl-C and SIGTERM through the `tidemark` command: during a turn, a tool and a memory update.

Each stops the run at once (130 for SIGINT, 143 for SIGTERM), ends the commands it started
and leaves files a resume can use: a valid transcript, a memory file that is whole or absent.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Reply, Script, text, tool_calls
from tests.test_cli import _alive, _cmd, _env, _session_dir, _wait_for, tidemark

_HANG = 60.0  # a reply that would come after the test is long over
_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _start(workspace: Path, api: FakeMessagesAPI, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _cmd("run", "--workspace", str(workspace), "--yes", *flags, "work"),
        env=_env(api),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(run: subprocess.Popen[str], signum: signal.Signals) -> tuple[str, float]:
    """Send `signum`; returns stderr and the seconds the run took to exit."""
    sent = time.monotonic()
    run.send_signal(signum)
    _, err = run.communicate(timeout=30)
    return err, time.monotonic() - sent


def _records(workspace: Path) -> list[dict[str, object]]:
    path = _session_dir(workspace) / "transcript.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _assert_stopped(
    run: subprocess.Popen[str], err: str, took: float, signum: signal.Signals
) -> None:
    assert run.returncode == _CODES[signum], err
    assert "Traceback" not in err
    assert "tidemark resume" in err
    # Generous for a loaded CI machine; typically well under a second.
    assert took < 10, f"the run took {took:.1f} s to stop"


def _resume_finishes(workspace: Path, api: FakeMessagesAPI) -> None:
    api.responder = Script([text("Finished after the interruption.")])
    done = tidemark("resume", "--workspace", str(workspace), api=api)
    assert done.returncode == 0, done.stderr
    assert api.invalid_requests == []


SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_during_a_turn_stops_the_run_and_resume_sends_the_task_again(
    tmp_path: Path, signum: signal.Signals
) -> None:
    with FakeMessagesAPI(Script([text("never seen", delay_s=_HANG)])) as api:
        run = _start(tmp_path, api)
        _wait_for(lambda: len(api.requests_for("turn")) == 1)
        err, took = _stop(run, signum)
        _assert_stopped(run, err, took, signum)
        assert [r["message"]["role"] for r in _records(tmp_path)] == ["user"]  # type: ignore[index]
        _resume_finishes(tmp_path, api)


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_during_a_tool_ends_its_processes_and_answers_the_call(
    tmp_path: Path, signum: signal.Signals
) -> None:
    script = Script([tool_calls(("bash", {"command": "sleep 60 & echo $! > sleep.pid; wait"}))])
    pid_file = tmp_path / "sleep.pid"
    with FakeMessagesAPI(script) as api:
        run = _start(tmp_path, api)
        _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit())
        err, took = _stop(run, signum)
        _assert_stopped(run, err, took, signum)
        _wait_for(lambda: not _alive(int(pid_file.read_text())), timeout=10)
        last = _records(tmp_path)[-1]["message"]
        assert "interrupted" in json.dumps(last)
        _resume_finishes(tmp_path, api)


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_during_a_memory_update_leaves_no_memory_file_and_a_valid_session(
    tmp_path: Path, signum: signal.Signals
) -> None:
    (tmp_path / "a.txt").write_text("alpha\n" * 200)

    def memory(_request: RecordedRequest) -> Reply:
        return text("# Current State\nReading a.txt.", delay_s=_HANG)

    turns = [
        tool_calls(("read_file", {"path": "a.txt"})),
        tool_calls(("read_file", {"path": "a.txt"}), delay_s=_HANG),
    ]
    flags = ["--memory-init-tokens", "0", "--memory-update-tokens", "0", "--memory-tool-calls", "1"]
    with FakeMessagesAPI(Script(turns, memory=memory)) as api:
        run = _start(tmp_path, api, *flags)
        _wait_for(lambda: len(api.requests_for("session-memory")) == 1)
        err, took = _stop(run, signum)
        _assert_stopped(run, err, took, signum)
        folder = _session_dir(tmp_path)
        assert not (folder / "session-memory.md").exists()
        assert not list(folder.glob(".session-memory.md.*"))  # no temp file left behind
        events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
        failed = [e for e in events if e["event"] == "memory_update_failed"]
        assert [f["error"] for f in failed] == ["cancelled: session ended"]
        assert events[-1]["event"] == "session_finished"
        _resume_finishes(tmp_path, api)
