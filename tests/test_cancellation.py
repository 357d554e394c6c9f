"""Ctrl-C and SIGTERM through the `tidemark` command: during a turn, a tool (a command and
an MCP server's call), an approval prompt, a memory update and its write.

Each stops the run within 2 s of the signal (measured from the signal to the process's exit),
with 130 for SIGINT and 143 for SIGTERM, the same code in the `session_finished` event, ends
the processes it started and leaves files a resume can use: a valid transcript, a memory file
that is whole or absent.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Reply, Script, text, tool_calls
from tests.support.runs import session_dir
from tests.test_cli import _alive, _cmd, _env, _wait_for, tidemark
from tidemark.memory import HEADINGS

MCP_SERVER = Path(__file__).resolve().parent / "support" / "mcp_server.py"
_HANG = 60.0  # a reply that would come after the test is long over
_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_OUTCOMES = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}
_WITHIN_S = 2.0


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
    path = session_dir(workspace) / "transcript.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _assert_finished_event(workspace: Path, signum: signal.Signals) -> None:
    """The session's last event says how it ended, with the code the command exited with."""
    events = [
        json.loads(line)
        for line in (session_dir(workspace) / "events.jsonl").read_text().splitlines()
    ]
    last = events[-1]
    assert last["event"] == "session_finished"
    assert (last["outcome"], last["exit_code"]) == (_OUTCOMES[signum], _CODES[signum])


def _assert_stopped(
    run: subprocess.Popen[str], err: str, took: float, signum: signal.Signals, workspace: Path
) -> None:
    assert run.returncode == _CODES[signum], err
    assert "Traceback" not in err
    assert "tidemark resume" in err
    _assert_finished_event(workspace, signum)
    print(f"stopped {took:.2f} s after the signal")  # shown with -s: the figure behind the bound
    assert took < _WITHIN_S, f"the run took {took:.2f} s to stop"


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
        _wait_for(lambda: len(api.requests_for("turn")) == 1, timeout=180)
        err, took = _stop(run, signum)
        _assert_stopped(run, err, took, signum, tmp_path)
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
        _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit(), timeout=180)
        err, took = _stop(run, signum)
        _assert_stopped(run, err, took, signum, tmp_path)
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
        _wait_for(lambda: len(api.requests_for("session-memory")) == 1, timeout=180)
        err, took = _stop(run, signum)
        _assert_stopped(run, err, took, signum, tmp_path)
        folder = session_dir(tmp_path)
        assert not (folder / "session-memory.md").exists()
        assert not list(folder.glob(".session-memory.md.*"))  # no temp file left behind
        events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
        failed = [e for e in events if e["event"] == "memory_update_failed"]
        assert [f["error"] for f in failed] == ["cancelled: session ended"]
        assert events[-1]["event"] == "session_finished"
        _resume_finishes(tmp_path, api)


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_at_an_approval_prompt_stops_the_run_at_once_and_answers_the_call(
    tmp_path: Path, signum: signal.Signals
) -> None:
    script = Script([tool_calls(("write_file", {"path": "x.txt", "content": "hi"}))])
    with FakeMessagesAPI(script) as api:
        command, *args = _cmd("run", "--workspace", str(tmp_path), "write x")
        run = pexpect.spawn(command, args, env=_env(api), encoding="utf-8", timeout=120)
        run.expect_exact("? [y/N]")
        time.sleep(0.2)  # the prompt is waiting for an answer; none will come
        sent = time.monotonic()
        if signum == signal.SIGINT:
            run.sendintr()  # Ctrl-C typed at the terminal
        else:
            run.kill(signum)
        run.expect(pexpect.EOF, timeout=30)
        run.close()
        took = time.monotonic() - sent
        assert run.signalstatus is None and run.exitstatus == _CODES[signum], run.before
        assert "Traceback" not in str(run.before)
        assert not (tmp_path / "x.txt").exists()
        _assert_finished_event(tmp_path, signum)
        print(f"stopped {took:.2f} s after the signal")
        assert took < _WITHIN_S, f"the run took {took:.2f} s to stop"
        # The call that was never approved is answered, so `resume` sends a valid request.
        last = _records(tmp_path)[-1]["message"]
        assert "interrupted" in json.dumps(last)
        _resume_finishes(tmp_path, api)


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_during_an_mcp_call_ends_the_server_and_answers_the_call(
    tmp_path: Path, signum: signal.Signals
) -> None:
    pid_file = tmp_path / "server.pid"
    (tmp_path / ".tidemark").mkdir()
    (tmp_path / ".tidemark" / "config.toml").write_text(
        f"[mcp_servers.notes]\ncommand = {json.dumps(sys.executable)}\n"
        f"args = [{json.dumps(str(MCP_SERVER))}]\ntrusted = true\n"
        f"env = {{ MCP_TEST_PID_FILE = {json.dumps(str(pid_file))} }}\n"
    )
    with FakeMessagesAPI(Script([tool_calls(("mcp__notes__slow", {"seconds": 60}))])) as api:
        run = _start(tmp_path, api)
        _wait_for(lambda: pid_file.exists() and len(api.requests_for("turn")) == 1, timeout=180)
        time.sleep(0.5)  # the slow call is running in the server now
        server = int(pid_file.read_text())
        assert _alive(server)
        err, took = _stop(run, signum)
        _assert_stopped(run, err, took, signum, tmp_path)
        _wait_for(lambda: not _alive(server), timeout=10)
        assert "interrupted" in json.dumps(_records(tmp_path)[-1]["message"])
        _resume_finishes(tmp_path, api)


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_as_a_memory_update_is_written_leaves_the_memory_whole_or_absent(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """The signal lands as the update's reply has arrived: while it is merged and written."""
    (tmp_path / "a.txt").write_text("alpha\n" * 200)
    turns = [
        tool_calls(("read_file", {"path": "a.txt"})),
        tool_calls(("read_file", {"path": "a.txt"}), delay_s=_HANG),
    ]
    flags = ["--memory-init-tokens", "0", "--memory-update-tokens", "0", "--memory-tool-calls", "1"]
    script = Script(turns, memory=lambda _r: text("# Current State\nReading a.txt."))
    with FakeMessagesAPI(script) as api:
        run = _start(tmp_path, api, *flags)
        deadline = time.monotonic() + 180
        while not any(r.finished_at for r in api.requests_for("session-memory")):
            assert time.monotonic() < deadline, "no memory update was answered"
            time.sleep(0.001)  # a close watch: the write follows the reply within milliseconds
        err, took = _stop(run, signum)
        _assert_stopped(run, err, took, signum, tmp_path)
        folder = session_dir(tmp_path)
        assert not list(folder.glob(".session-memory.md.*"))  # no temp file left behind
        events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
        names = [e["event"] for e in events]
        memory = folder / "session-memory.md"
        if memory.exists():  # the write had begun: it finished (shielded), whole
            assert "memory_update_committed" in names
            written = memory.read_text()
            assert all(f"# {h}" in written for h in HEADINGS) and "Reading a.txt." in written
        else:
            assert "memory_update_committed" not in names
        _resume_finishes(tmp_path, api)
