"""The `tidemark` command as users run it: real subprocesses against the strict fake server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Reply, Script, text, tool_calls
from tests.support.runs import read_events, session_dir
from tests.support.sessions import LongSession, memory_reply, write_repository
from tidemark import Settings
from tidemark.cli import build_parser
from tidemark.compaction import SUMMARY_HEADER
from tidemark.events import EVENT_KEYS
from tidemark.providers.local import local_defaults

ROOT = Path(__file__).resolve().parent.parent
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _env(api: FakeMessagesAPI | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    if api is not None:
        env["ANTHROPIC_BASE_URL"] = api.url
    env["PYTHONPATH"] = str(ROOT)
    return env


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tidemark.cli", *args]


def tidemark(
    *args: str,
    api: FakeMessagesAPI | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cmd(*args),
        env={**_env(api), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # the process may vanish between the two looks (ESRCH)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_multi_step_task_reads_edits_and_runs_tests_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (tmp_path / "test_calc.py").write_text(
        "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    )
    script = Script(
        [
            tool_calls(("list_files", {}), ("read_file", {"path": "calc.py"})),
            tool_calls(
                ("edit_file", {"path": "calc.py", "old_string": "a - b", "new_string": "a + b"})
            ),
            tool_calls(("bash", {"command": f"{sys.executable} -m pytest -q test_calc.py"})),
            text("Fixed add(); the test passes."),
        ]
    )
    log = tmp_path.parent / f"{tmp_path.name}-log.jsonl"
    with FakeMessagesAPI(script) as api:
        done = tidemark(
            "run", "--workspace", str(tmp_path), "--yes", "--log-json", str(log), "fix add", api=api
        )
    assert done.returncode == 0, done.stderr
    assert "Fixed add()" in done.stdout
    assert "a + b" in (tmp_path / "calc.py").read_text()
    assert api.invalid_requests == []
    assert {r.purpose for r in api.requests} == {"turn"}
    # The bash result the model saw holds the passing test run.
    last = json.dumps(api.requests[-1].body["messages"][-1])
    assert "1 passed" in last
    folder = session_dir(tmp_path)
    assert {p.name for p in folder.iterdir()} >= {"transcript.jsonl", "events.jsonl"}
    events = read_events(tmp_path)
    assert [json.loads(line) for line in log.read_text().splitlines()] == events
    for event in events:
        assert TIMESTAMP.match(event["timestamp"])
        assert event["session_id"] == folder.name
        for key in EVENT_KEYS.get(event["event"], ()):
            assert key in event, (event["event"], key)
    assert [e["tool"] for e in events if e["event"] == "tool_call"] == [
        "list_files",
        "read_file",
        "edit_file",
        "bash",
    ]


def test_without_yes_and_without_a_terminal_writes_are_refused_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    script = Script([tool_calls(("write_file", {"path": "x.txt", "content": "hi"})), text("ok")])
    with FakeMessagesAPI(script) as api:
        done = tidemark("run", "--workspace", str(tmp_path), "write x", api=api)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "x.txt").exists()
    result = api.requests[-1].body["messages"][-1]["content"][0]
    assert result["is_error"] is True
    assert "permission denied: rerun with --yes" in json.dumps(result)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--workspace", "/no/such/dir", "task"], "does not exist"),
        (["run", "--max-turns", "many", "task"], "whole number"),
        (["run", "--compact-at", "12k", "task"], "whole number"),
        (["run"], "TASK"),
        (["run", "   "], "TASK is empty"),
        (["resume", "--session", "nope"], "unknown session"),
        (["inspect", "--session", "nope"], "unknown session"),
        (["run", "--tools", "no_such_module:X", "task"], "--tools"),
        (
            ["run", "--context-window", "5000", "--compact-at", "9000", "task"],
            "--compact-at 9000 is larger than the context window 5000",
        ),
    ],
)
def test_bad_usage_is_one_line_on_stderr_and_exit_code_2(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    if "/no/such/dir" not in args:
        args = [*args[:1], "--workspace", str(tmp_path), *args[1:]]
    with FakeMessagesAPI() as api:
        done = tidemark(*args, api=api)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert needle in lines[0]
    assert "Traceback" not in done.stderr


def test_the_setting_flags_are_the_contracts_and_their_help_comes_from_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "[--max-turns N] [--yes] [--log-json FILE] [--context-window TOKENS] "
        "[--compact-at TOKENS] [--memory-init-tokens N] [--memory-update-tokens N] "
        "[--memory-tool-calls N] [--compaction-wait-ms MS]"
    ) in out
    local = local_defaults()
    for field in ("max_turns", "context_window", "memory_init_tokens", "compaction_wait_ms"):
        info = Settings.model_fields[field]
        flag = "--" + field.replace("_", "-")
        described = out.rsplit(f"{flag} ", 1)[1]  # the options part, after the usage
        first_words = " ".join((info.description or "").split()[1:4])
        assert first_words in described[:120], (flag, described[:120])
        assert f"default {info.default}" in described[:200]
        if field in local:
            assert f"{local[field]} with the local model" in described[:200]


def test_an_api_failure_exits_1_with_one_line(tmp_path: Path) -> None:
    with FakeMessagesAPI(lambda _r: Reply(content=[], status=401)) as api:
        done = tidemark("run", "--workspace", str(tmp_path), "task", api=api)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("tidemark: error:")]
    assert len(errors) == 1 and "401" in errors[0]
    assert "Traceback" not in done.stderr


def test_the_turn_cap_exits_1_and_says_how_to_go_on(tmp_path: Path) -> None:
    script = Script([tool_calls(("list_files", {})) for _ in range(10)])
    with FakeMessagesAPI(script) as api:
        done = tidemark("run", "--workspace", str(tmp_path), "--max-turns", "3", "loop", api=api)
    assert done.returncode == 1
    assert "turn cap" in done.stderr and "tidemark resume" in done.stderr
    assert len(api.requests_for("turn")) == 3


def test_an_empty_reply_exits_1_with_one_line_and_is_never_shown_as_an_answer(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.py").write_text("PORT = 8042\n")
    script = Script([tool_calls(("read_file", {"path": "config.py"})), Reply(content=[])])
    with FakeMessagesAPI(script) as api:
        done = tidemark("run", "--workspace", str(tmp_path), "What is PORT?", api=api)
    assert done.returncode == 1
    assert done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("tidemark: error:")]
    assert len(errors) == 1
    assert "empty reply" in errors[0] and "tidemark resume --session" in errors[0]
    assert "finished" not in done.stderr and "Traceback" not in done.stderr
    assert api.invalid_requests == []


def test_a_resume_after_an_empty_reply_asks_the_model_again_and_can_finish(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.py").write_text("PORT = 8042\n")
    script = Script(
        [tool_calls(("read_file", {"path": "config.py"})), Reply(content=[]), text("PORT is 8042")]
    )
    with FakeMessagesAPI(script) as api:
        first = tidemark("run", "--workspace", str(tmp_path), "What is PORT?", api=api)
        again = tidemark("resume", "--workspace", str(tmp_path), api=api)
    assert first.returncode == 1
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "PORT is 8042"
    assert api.invalid_requests == []


def test_repeating_the_same_calls_after_being_told_exits_1_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    script = Script([tool_calls(("read_file", {"path": "a.py"})) for _ in range(10)])
    with FakeMessagesAPI(script) as api:
        done = tidemark("run", "--workspace", str(tmp_path), "loop", api=api)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("tidemark: error:")]
    assert len(errors) == 1
    assert "repeating the same tool calls" in errors[0] and "tidemark resume" in errors[0]
    # Two reads, one refused with a hint, one refused again: the run stops at turn 4.
    assert len(api.requests_for("turn")) == 4


def test_custom_tools_plug_in_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\ny = 2\n")
    script = Script([tool_calls(("count_lines", {"glob": "*.py"})), text("a.py has 2 lines")])
    with FakeMessagesAPI(script) as api:
        done = tidemark(
            "run",
            "--workspace",
            str(tmp_path),
            "--tools",
            f"{ROOT / 'examples' / 'custom_tool.py'}:TOOLS",
            "count",
            api=api,
        )
    assert done.returncode == 0, done.stderr
    assert "count_lines" in {t["name"] for t in api.requests[0].body["tools"]}
    result = api.requests[-1].body["messages"][-1]["content"][0]
    assert not result.get("is_error") and "a.py" in json.dumps(result)


def _start_run(workspace: Path, api: FakeMessagesAPI, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _cmd("run", "--workspace", str(workspace), "--yes", *extra, "work"),
        env=_env(api),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _sleeping() -> Script:
    """A model whose one call starts a background `sleep` and waits for it."""
    return Script([tool_calls(("bash", {"command": "sleep 60 & echo $! > sleep.pid; wait"}))])


def _start_sleeping_run(workspace: Path, api: FakeMessagesAPI) -> tuple[subprocess.Popen[str], int]:
    """A run whose bash call has started a background `sleep`; returns it and the sleep's pid."""
    pid_file = workspace / "sleep.pid"
    run = _start_run(workspace, api)
    _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit())
    return run, int(pid_file.read_text())


def test_ctrl_c_exits_130_ends_the_running_command_and_leaves_a_valid_transcript(
    tmp_path: Path,
) -> None:
    with FakeMessagesAPI(_sleeping()) as api:
        run, sleeper = _start_sleeping_run(tmp_path, api)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=30)
    assert run.returncode == 130, err
    assert "Traceback" not in err
    _wait_for(lambda: not _alive(sleeper), timeout=10)
    records = [
        json.loads(line)
        for line in (session_dir(tmp_path) / "transcript.jsonl").read_text().splitlines()
    ]
    last = records[-1]["message"]
    assert last["content"][0]["type"] == "tool_result"
    assert "interrupted" in last["content"][0]["content"]


def test_resume_after_kill_9_answers_the_interrupted_call_and_reaps_its_processes(
    tmp_path: Path,
) -> None:
    with FakeMessagesAPI(_sleeping()) as api:
        run, sleeper = _start_sleeping_run(tmp_path, api)
        run.kill()
        run.communicate(timeout=30)
        _wait_for(lambda: not _alive(sleeper), timeout=10)
        api.responder = Script([text("Resumed and finished.")])
        done = tidemark("resume", "--workspace", str(tmp_path), api=api)
    assert done.returncode == 0, done.stderr
    assert "Resumed and finished." in done.stdout
    assert api.invalid_requests == []
    resumed = api.requests[-1].body["messages"]
    assert resumed[0]["content"][0]["text"] == "work"
    assert "interrupted" in json.dumps(resumed[-1])


def test_resume_after_kill_9_sends_the_compacted_context(tmp_path: Path) -> None:
    session = LongSession(write_repository(tmp_path, files=20, lines_per_file=120), reads=40)
    turns = session.turns()

    def responder(request: RecordedRequest) -> Reply:
        if request.purpose == "session-memory":
            return memory_reply(request)
        if SUMMARY_HEADER in json.dumps(request.body["messages"][0]):
            return text("never sent", delay_s=120)  # hang here: the test kills the run
        return turns.pop(0)

    with FakeMessagesAPI(responder) as api:
        run = _start_run(
            tmp_path,
            api,
            "--compact-at",
            "20000",
            "--memory-init-tokens",
            "4000",
            "--memory-update-tokens",
            "2000",
        )
        _wait_for(lambda: any(SUMMARY_HEADER in json.dumps(r.body) for r in api.requests))
        run.kill()
        run.communicate(timeout=30)
        compacted = next(r for r in api.requests if SUMMARY_HEADER in json.dumps(r.body))
        api.responder = Script([text("Finished after resume.")])
        done = tidemark("resume", "--workspace", str(tmp_path), api=api)
    assert done.returncode == 0, done.stderr
    first_after_resume = api.requests[-1].body["messages"]
    assert SUMMARY_HEADER in json.dumps(first_after_resume[0])
    assert len(first_after_resume) == len(compacted.body["messages"])
    assert api.invalid_requests == []
