"""`tidemark batch`: the TASKS file's checks, one task on a worker, and a real local Ray batch.

The Ray test starts a real local Ray instance (2 CPUs) twice, runs the CLI as users do
against the strict fake server, interrupts it, kills a worker mid-task, and reruns.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Reply, Script, text, tool_calls
from tidemark.batch import RESULT_KEYS, BatchOptions, BatchTask, ModelCache, read_tasks, run_task
from tidemark.cli import main
from tidemark.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_KEYS = {"id", "outcome", "exit_code", "turns", "compactions", "final_text", "session_dir"}


def _write_tasks(path: Path, *tasks: dict[str, Any] | str) -> Path:
    path.write_text("".join((t if isinstance(t, str) else json.dumps(t)) + "\n" for t in tasks))
    return path


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (`.git` included) with a digest of its bytes and its mtime."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {
        str(
            p.relative_to(root)
        ): f"{hashlib.sha256(p.read_bytes()).hexdigest()}:{p.stat().st_mtime_ns}"
        for p in files
    }


def _results(out: Path) -> dict[str, dict[str, Any]]:
    path = out / "results.jsonl"
    if not path.exists():
        return {}
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {r["id"]: r for r in lines}


# -- the TASKS file ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (['{"id": "a", "workspace": "ws", "task": "x"}', "{not json"], "line 2: not valid JSON"),
        (['{"id": "a", "workspace": "ws"}'], "line 1: missing key 'task'"),
        (['{"id": "a", "workspace": "ws", "task": "x", "colour": 1}'], "unknown key 'colour'"),
        (['{"id": "a/b", "workspace": "ws", "task": "x"}'], "line 1: key 'id' must be a name"),
        (['{"id": "a", "workspace": "nope", "task": "x"}'], "key 'workspace'"),
        (['{"id": "a", "workspace": "ws", "task": "  "}'], "key 'task' must be a non-empty"),
        (
            ['{"id": "a", "workspace": "ws", "task": "x"}'] * 2,
            "line 2: id 'a' is already used on line 1",
        ),
        (['{"id": "a", "workspace": "ws", "task": "x", "max_turns": 0}'], "key 'max_turns'"),
        (
            ['{"id": "a", "workspace": "ws", "task": "x", "settings": {"turns": 3}}'],
            "unknown key 'settings.turns'",
        ),
        (["[1, 2]"], "line 1: expected a JSON object"),
        (["", "# only a comment"], "no tasks"),
    ],
)
def test_a_bad_tasks_file_is_one_line_naming_the_line_and_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], needle: str
) -> None:
    (tmp_path / "ws").mkdir()
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(lines) + "\n")
    code = main(["batch", str(tasks), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("tidemark: error: tasks.jsonl") or "no tasks" in err
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing half-made


def test_a_missing_tasks_file_and_a_file_as_out_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["batch", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err
    (tmp_path / "ws").mkdir()
    tasks = _write_tasks(tmp_path / "t.jsonl", {"id": "a", "workspace": "ws", "task": "x"})
    (tmp_path / "file").write_text("")
    assert main(["batch", str(tasks), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_task_settings_come_from_the_line_or_its_settings_object_and_paths_from_its_folder(
    tmp_path: Path,
) -> None:
    (tmp_path / "repo").mkdir()
    tasks = _write_tasks(
        tmp_path / "t.jsonl",
        {"id": 1, "workspace": "repo", "task": "a", "max_turns": 3},
        {"id": "b", "workspace": "repo", "task": "b", "settings": {"compact_at": 5000}},
        {"id": "c", "workspace": "https://example.com/x.git", "task": "c", "model": "m"},
    )
    first, second, third = read_tasks(tasks, BatchOptions(provider="anthropic"))
    assert (first.id, first.workspace, first.clone) == ("1", str(tmp_path / "repo"), False)
    assert first.settings == {"max_turns": 3}
    assert second.settings == {"compact_at": 5000}
    assert (third.clone, third.model) == (True, "m")
    with pytest.raises(ConfigError, match="larger than the context window"):
        read_tasks(tasks, BatchOptions(provider="anthropic", settings={"context_window": 4000}))


# -- one task on a worker, without Ray --------------------------------------------------------


@pytest.mark.anyio
async def test_a_task_runs_in_a_copy_and_a_second_run_of_it_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src"
    (source / ".tidemark" / "sessions" / "old").mkdir(parents=True)
    (source / "a.txt").write_text("alpha\n")
    before = _snapshot(source)
    script = Script(
        [
            tool_calls(("write_file", {"path": "a.txt", "content": "changed\n"})),
            text("Wrote a.txt."),
        ]
    )
    task = BatchTask(id="t", workspace=str(source), clone=False, task="change a.txt", line=1)
    options = BatchOptions(provider="anthropic", settings={"auto_approve": True})
    with FakeMessagesAPI(script) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        models = ModelCache()
        try:
            first = await run_task(task, options, tmp_path / "out", models, 1)
            sent = len(api.requests)
            again = await run_task(task, options, tmp_path / "out", models, 1)
        finally:
            await models.aclose()
    assert set(first) == set(RESULT_KEYS)
    assert (first["outcome"], first["exit_code"], first["turns"]) == ("finished", 0, 2)
    assert first["final_text"] == "Wrote a.txt."
    copy = tmp_path / "out" / "tasks" / "t" / "workspace"
    assert (copy / "a.txt").read_text() == "changed\n"
    assert not (copy / ".tidemark" / "sessions" / "old").exists()  # its own session only
    assert Path(first["session_dir"]).parent == copy / ".tidemark" / "sessions"
    assert _snapshot(source) == before
    # Finished before its result was kept: the rerun finds the answer and sends nothing.
    assert len(api.requests) == sent
    assert (again["outcome"], again["final_text"]) == ("finished", "Wrote a.txt.")
    assert api.invalid_requests == []


@pytest.mark.anyio
async def test_a_task_that_cannot_be_prepared_is_a_failed_result_not_an_exception(
    tmp_path: Path,
) -> None:
    task = BatchTask(
        id="t", workspace=f"file://{tmp_path}/missing.git", clone=True, task="x", line=1
    )
    record = await run_task(task, BatchOptions(provider="anthropic"), tmp_path, ModelCache(), 1)
    assert (record["outcome"], record["exit_code"]) == ("failed", 2)
    assert "cannot clone" in record["error"]
    assert not (tmp_path / "tasks" / "t" / "workspace").exists()


@pytest.mark.anyio
async def test_a_task_reads_its_workspace_config_and_the_user_config_under_its_line_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "user.toml"
    user.write_text('max_output_tokens = 1111\nmodel = "user-model"\n')
    monkeypatch.setenv("TIDEMARK_USER_CONFIG", str(user))
    configured = tmp_path / "configured"
    (configured / ".tidemark").mkdir(parents=True)
    (configured / ".tidemark" / "config.toml").write_text(
        'max_output_tokens = 2222\nauto_approve = true\nmodel = "workspace-model"\n'
    )
    plain = tmp_path / "plain"
    plain.mkdir()
    from tidemark.config_file import load_user_config

    def options(**flags: Any) -> BatchOptions:
        return BatchOptions(
            provider="anthropic",
            settings={"auto_approve": False, **flags},
            user_config=load_user_config(),
        )

    runs = {
        "workspace": (configured, {}, options()),
        "user": (plain, {}, options()),
        "flag": (configured, {}, options(max_output_tokens=3333)),
        "line": (configured, {"max_output_tokens": 4444}, options(max_output_tokens=3333)),
    }
    sent: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    for name, (source, line_settings, opts) in runs.items():
        script = Script(
            [tool_calls(("write_file", {"path": "new.txt", "content": "x\n"})), text("Done.")]
        )
        task = BatchTask(
            id=name,
            workspace=str(source),
            clone=False,
            task="write new.txt",
            line=1,
            settings=line_settings,
        )
        with FakeMessagesAPI(script) as api:
            monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
            models = ModelCache()
            try:
                results[name] = await run_task(task, opts, tmp_path / "out", models, 1)
            finally:
                await models.aclose()
            assert api.invalid_requests == []
            sent[name] = api.requests[0].body
    assert {n: r["outcome"] for n, r in results.items()} == dict.fromkeys(runs, "finished")
    assert {n: b["max_tokens"] for n, b in sent.items()} == {
        "workspace": 2222,
        "user": 1111,
        "flag": 3333,
        "line": 4444,
    }
    assert sent["workspace"]["model"] == "workspace-model"
    assert sent["user"]["model"] == "user-model"
    written = {n: (tmp_path / "out" / "tasks" / n / "workspace" / "new.txt").exists() for n in runs}
    # The workspace file approves tools; without it (and without --yes) the write is refused.
    assert written == {"workspace": True, "user": False, "flag": True, "line": True}
    assert not (configured / "new.txt").exists()


def test_a_wrong_key_in_a_task_workspace_config_stops_the_batch_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ws" / ".tidemark").mkdir(parents=True)
    (tmp_path / "ws" / ".tidemark" / "config.toml").write_text("max_turns = 3\nmax_turn = 4\n")
    tasks = _write_tasks(tmp_path / "t.jsonl", {"id": "a", "workspace": "ws", "task": "x"})
    assert main(["batch", str(tasks), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "config.toml:2" in err and "max_turn" in err
    assert not (tmp_path / "out" / "results.jsonl").exists()


# -- a real local Ray ---------------------------------------------------------------------------


def _first_text(request: RecordedRequest) -> str:
    content = request.body["messages"][0]["content"]
    return content if isinstance(content, str) else content[0]["text"]


def _tool_results(request: RecordedRequest) -> list[dict[str, Any]]:
    return [
        b
        for m in request.body["messages"]
        if m["role"] == "user" and isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_result"
    ]


def _batch_server() -> Callable[[RecordedRequest], Reply]:
    """Answers by task: `ok` tasks read a file and answer; `fail` keeps calling tools (it
    has one turn); `slow` runs a long `bash` until two of its calls have results."""

    def respond(request: RecordedRequest) -> Reply:
        if request.purpose == "session-memory":
            return text("Nothing new to remember.")
        task = _first_text(request)
        results = _tool_results(request)
        if task.startswith("slow"):
            if len(results) < 2:
                n = len(results) + 1
                return tool_calls(("bash", {"command": f"touch started-{n} && sleep 60"}))
            return text("slow: done after two interruptions")
        if task.startswith("fail"):
            return tool_calls(("list_files", {}))
        if not results:
            return tool_calls(("read_file", {"path": "README.md"}))
        return text(f"answer to {task}")

    return respond


def _start_batch(tasks: Path, out: Path, api: FakeMessagesAPI) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "RAY_"))}
    env.update(ANTHROPIC_BASE_URL=api.url, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "tidemark.cli", "batch", str(tasks), "--out", str(out), "--yes"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(process: subprocess.Popen[str], until: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if process.poll() is not None:
            out, err = process.communicate()
            if "cannot start a local Ray instance" in err:
                pytest.skip(f"Ray cannot start here: {err.strip().splitlines()[-1]}")
            raise AssertionError(f"batch exited {process.returncode}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out; stderr:\n{process.communicate()[1]}")
        time.sleep(0.1)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_batch_on_local_ray_survives_ctrl_c_and_a_killed_worker_and_reruns_skip_it_all(
    tmp_path: Path,
) -> None:
    pytest.importorskip("ray", reason="Ray is not installed: pip install '.[batch]'")
    source = tmp_path / "project"
    source.mkdir()
    (source / "README.md").write_text("# project\n")
    (source / "main.py").write_text("print('hi')\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("# repo\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "init"], check=True)
    originals = {source: _snapshot(source), repo: _snapshot(repo)}
    tasks = _write_tasks(
        tmp_path / "tasks.jsonl",
        *({"id": f"ok-{i}", "workspace": "project", "task": f"ok {i}"} for i in range(4)),
        {"id": "cloned", "workspace": f"file://{repo}", "task": "ok cloned"},
        {"id": "fail", "workspace": "project", "task": "fail", "max_turns": 1},
        {"id": "slow", "workspace": "project", "task": "slow"},
    )
    out = tmp_path / "out"
    slow = out / "tasks" / "slow"
    with FakeMessagesAPI(_batch_server()) as api:
        # Run 1: everything but `slow` ends; Ctrl-C while `slow` sleeps in its bash call.
        first = _start_batch(tasks, out, api)
        sleeping = slow / "workspace" / "started-1"
        _wait(first, lambda: len(_results(out)) == 6 and sleeping.exists(), 300)
        first.send_signal(signal.SIGINT)
        stdout, stderr = first.communicate(timeout=60)
        assert first.returncode == 130, stderr
        assert "rerun the same command to continue" in stderr
        assert "Traceback" not in stderr
        assert set(_results(out)) == {"ok-0", "ok-1", "ok-2", "ok-3", "cloned", "fail"}
        assert "not finished" in stdout

        # Run 2: `slow` resumes; its worker is killed mid-call; the retry finishes it.
        second = _start_batch(tasks, out, api)
        _wait(second, lambda: (slow / "workspace/started-2").exists(), 300)
        worker = json.loads((slow / "attempt.json").read_text())
        assert worker["attempt"] == 1
        os.kill(worker["pid"], signal.SIGKILL)
        stdout, stderr = second.communicate(timeout=300)
        assert second.returncode == 1, stderr  # one task failed
        assert "Traceback" not in stderr
        requests_after_two_runs = len(api.requests)

        # Run 3: every task has a result: nothing runs, nothing is sent, no Ray starts.
        started = time.monotonic()
        third = _start_batch(tasks, out, api)
        stdout3, stderr3 = third.communicate(timeout=120)
        assert third.returncode == 1
        assert "nothing to run" in stderr3
        assert len(api.requests) == requests_after_two_runs
        assert time.monotonic() - started < 60
        assert api.invalid_requests == []

    results = _results(out)
    assert len((out / "results.jsonl").read_text().splitlines()) == 7
    for record in results.values():
        assert set(record) >= CONTRACT_KEYS
    asked = {f"ok-{i}": f"ok {i}" for i in range(4)} | {"cloned": "ok cloned"}
    for name, task in asked.items():
        assert (results[name]["outcome"], results[name]["exit_code"]) == ("finished", 0)
        assert results[name]["final_text"] == f"answer to {task}"
        assert results[name]["turns"] == 2
    assert (results["fail"]["outcome"], results["fail"]["exit_code"]) == ("turn_limit", 1)
    assert "turn cap" in results["fail"]["error"]
    assert (results["slow"]["outcome"], results["slow"]["attempts"]) == ("finished", 2)
    assert results["slow"]["final_text"] == "slow: done after two interruptions"
    # The slow session kept one transcript through Ctrl-C, resume and the killed worker.
    session = Path(results["slow"]["session_dir"])
    assert session.parent == slow / "workspace" / ".tidemark" / "sessions"
    started_events = [
        json.loads(x)
        for x in (session / "events.jsonl").read_text().splitlines()
        if '"session_started"' in x
    ]
    assert [e["resumed"] for e in started_events] == [False, True, True]
    # The summary table lists every task; the users' folders are as they were.
    for name in results:
        assert name in stdout3
    assert "6 of 7 finished, 1 failed" in stdout3
    for folder, snapshot in originals.items():
        assert _snapshot(folder) == snapshot
    assert (out / "tasks" / "cloned" / "workspace" / ".git").is_dir()
