"""Processes `bash` started never outlive the run, through the CLI: Ctrl-C, kill -9, resume.

The commands start processes that leave the process group (`setsid`, double forks); see
`ESCAPES` in test_tools_bash.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests.support.fakeapi import FakeMessagesAPI, Script, text, tool_calls
from tests.support.runs import session_dir
from tests.test_cli import _alive, _cmd, _env, _wait_for, tidemark
from tests.test_tools_bash import ESCAPES, ESCAPING


def _start(workspace: Path, api: FakeMessagesAPI) -> tuple[subprocess.Popen[str], list[int]]:
    """A run whose bash call has started every escaping process; returns it and their pids."""
    run = subprocess.Popen(
        _cmd("run", "--workspace", str(workspace), "--yes", "work"),
        env=_env(api),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    files = [workspace / f"{name}.pid" for name in ESCAPES]
    _wait_for(lambda: all(f.exists() and f.read_text().strip() for f in files), timeout=180)
    _wait_for(lambda: (workspace / "ready.txt").exists(), timeout=180)
    return run, [int(f.read_text()) for f in files]


def _escaping() -> Script:
    command = f"{ESCAPING}\necho ready > ready.txt; wait"
    return Script([tool_calls(("bash", {"command": command}))])


def test_ctrl_c_ends_the_processes_that_left_the_process_group(tmp_path: Path) -> None:
    with FakeMessagesAPI(_escaping()) as api:
        run, pids = _start(tmp_path, api)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    _wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=10)


def test_kill_9_ends_the_processes_that_left_the_process_group(tmp_path: Path) -> None:
    with FakeMessagesAPI(_escaping()) as api:
        run, pids = _start(tmp_path, api)
        run.kill()
        run.communicate(timeout=60)
    _wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=10)


def test_resume_ends_what_survived_a_kill_9_of_the_runtime_and_its_supervisor(
    tmp_path: Path,
) -> None:
    with FakeMessagesAPI(_escaping()) as api:
        run, pids = _start(tmp_path, api)
        registry = session_dir(tmp_path) / "processes.json"
        [group] = json.loads(registry.read_text())["groups"]
        os.kill(group["pgid"], signal.SIGSTOP)  # the supervisor cannot act on the death...
        run.kill()
        run.communicate(timeout=60)
        os.kill(group["pgid"], signal.SIGKILL)  # ...and then it is gone too
        # Out of reach without the supervisor: it left the group and cleared its environment.
        unreachable = pids.pop(list(ESCAPES).index("setsid_without_environment"))
        try:
            assert all(_alive(pid) for pid in pids)
            api.responder = Script([text("Resumed.")])
            done = tidemark("resume", "--workspace", str(tmp_path), api=api)
        finally:
            os.kill(unreachable, signal.SIGKILL)
    assert done.returncode == 0, done.stderr
    _wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=10)
    assert json.loads(registry.read_text()) == {"groups": []}
