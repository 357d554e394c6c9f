"""The `tidemark` command on a real pseudo-terminal: approval prompts and Ctrl-C at them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pexpect

from tests.support.fakeapi import FakeMessagesAPI, Script, text, tool_calls
from tests.support.runs import session_dir
from tests.test_cli import _cmd, _env


def _spawn(workspace: Path, api: FakeMessagesAPI) -> pexpect.spawn:
    command, *args = _cmd("run", "--workspace", str(workspace), "write x")
    return pexpect.spawn(
        command, args, env=_env(api), encoding="utf-8", timeout=120, dimensions=(24, 200)
    )


def _write_x() -> Script:
    return Script([tool_calls(("write_file", {"path": "x.txt", "content": "hi"})), text("done")])


def test_on_a_terminal_the_user_is_asked_and_a_yes_lets_the_write_happen(tmp_path: Path) -> None:
    with FakeMessagesAPI(_write_x()) as api:
        run = _spawn(tmp_path, api)
        run.expect_exact("Allow write_file path='x.txt' content='hi'? [y/N]")
        run.sendline("y")
        run.expect(pexpect.EOF)
        run.close()
    assert run.exitstatus == 0, run.before
    assert (tmp_path / "x.txt").read_text() == "hi"
    assert api.invalid_requests == []


def test_ctrl_c_at_an_approval_prompt_exits_130_at_once_with_a_valid_transcript(
    tmp_path: Path,
) -> None:
    with FakeMessagesAPI(_write_x()) as api:
        run = _spawn(tmp_path, api)
        run.expect_exact("? [y/N]")
        time.sleep(0.2)  # the prompt is waiting for an answer; none will come
        run.sendintr()
        # Before, the run waited for Enter forever. How fast it exits is measured, not
        # asserted here (interpreter start-up and teardown vary with the machine's load).
        run.expect(pexpect.EOF, timeout=15)
        run.close()
    assert run.signalstatus is None and run.exitstatus == 130, run.before
    assert "Traceback" not in str(run.before)
    assert not (tmp_path / "x.txt").exists()
    records = [
        json.loads(line)
        for line in (session_dir(tmp_path) / "transcript.jsonl").read_text().splitlines()
    ]
    # The call that was never approved is answered, so `resume` sends a valid request.
    last = records[-1]["message"]
    assert last["content"][0]["type"] == "tool_result"
    assert "interrupted" in last["content"][0]["content"]
