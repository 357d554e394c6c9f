"""tidemark as a library: quiet unless asked, events to the caller, no UI in the core."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest

from tests.support.fakeapi import FakeMessagesAPI, Script, text, tool_calls
from tests.support.runs import read_events
from tidemark import (
    Agent,
    ModelRequest,
    ModelResponse,
    ProviderUnavailableError,
    ScriptedModel,
    SessionNotFoundError,
    Settings,
    StopReason,
    TurnLimitError,
    tool,
)
from tidemark.loop import Outcome

ROOT = Path(__file__).resolve().parent.parent
# The modules that face a person: they may print and import the terminal UI.
EDGE = {"agent/cli.py", "agent/progress.py", "agent/inspection/render.py"}
UI = {"tidemark.progress", "tidemark.cli"}


def _readme_python_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python section has no python block"
    return match.group(1)


def _env(api: FakeMessagesAPI) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["ANTHROPIC_BASE_URL"] = api.url
    return env


def test_the_readme_python_example_runs_and_prints_only_the_answer(tmp_path: Path) -> None:
    (tmp_path / "example.py").write_text(_readme_python_example())
    (tmp_path / "repo").mkdir()
    script = Script(
        [tool_calls(("service_port", {"name": "billing"})), text("billing listens on port 8042")]
    )
    with FakeMessagesAPI(script) as api:
        done = subprocess.run(
            [sys.executable, "example.py"],
            cwd=tmp_path,
            env=_env(api),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "billing listens on port 8042\n"
    assert done.stderr == ""
    result = api.requests[-1].body["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and "8042" in json.dumps(result)


@pytest.mark.anyio
async def test_a_subscriber_gets_every_event_the_session_records(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello\n")
    steps = [ScriptedModel.call("read_file", path="a.txt"), ScriptedModel.reply("ok")]
    model = ScriptedModel(steps)
    seen: list[dict[str, Any]] = []
    agent = Agent(model, settings=Settings(workspace=tmp_path), on_event=seen.append)
    result = await agent.run("read a.txt")
    recorded = [json.loads(line) for line in result.paths.events.read_text().splitlines()]
    assert seen == recorded
    names = [e["event"] for e in seen]
    assert names[0] == "session_started" and names[-1] == "session_finished"
    assert names.index("turn_started") < names.index("tool_started") < names.index("tool_call")
    started = next(e for e in seen if e["event"] == "tool_started")
    assert started["tool"] == "read_file" and started["input"] == {"path": "a.txt"}


def test_no_core_module_imports_the_terminal_ui() -> None:
    offenders: list[str] = []
    for folder in (ROOT / "agent", ROOT / "tools"):
        for path in folder.rglob("*.py"):
            if path.relative_to(ROOT).as_posix() in EDGE:
                continue
            # Module level: what importing the runtime loads (a lazy import inside a
            # function is for an opt-in display, like the first model join's bar).
            for node in ast.parse(path.read_text()).body:
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    if name.split(".")[0] == "rich" or name in UI:
                        offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_a_library_run_never_loads_the_terminal_ui() -> None:
    code = (
        "import sys, tempfile, anyio\n"
        "from tidemark import Agent, ScriptedModel, Settings\n"
        "async def main():\n"
        "    with tempfile.TemporaryDirectory() as d:\n"
        "        model = ScriptedModel([ScriptedModel.call('list_files'), "
        "ScriptedModel.reply('done')])\n"
        "        await Agent(model, settings=Settings(workspace=d)).run('look')\n"
        "anyio.run(main)\n"
        "ui = [m for m in sys.modules if m in ('tidemark.progress', 'tidemark.cli')]\n"
        "print(sorted(ui))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n" and done.stderr == ""


# -- errors and types ------------------------------------------------------------------------


def _turn_fails(error: Exception) -> ScriptedModel:
    """A model whose second turn raises `error` (a background memory update that fails is
    contained instead: see tests/test_containment.py)."""

    def turn(_request: ModelRequest) -> ModelResponse:
        raise error

    return ScriptedModel([ScriptedModel.call("read_file", path="a.txt"), turn])


@pytest.mark.anyio
async def test_a_failure_inside_the_session_reaches_the_caller_as_a_tidemark_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.txt").write_text("x\n" * 500)
    model = _turn_fails(ProviderUnavailableError("the model was unloaded"))
    with pytest.raises(ProviderUnavailableError, match="unloaded") as caught:
        await Agent(model, settings=Settings(workspace=tmp_path)).run("read a.txt")
    assert caught.value.session_id is not None
    events = read_events(tmp_path)
    assert events[-1]["event"] == "session_finished"
    assert events[-1]["outcome"] == "failed" and events[-1]["exit_code"] == 2


@pytest.mark.anyio
async def test_a_bug_inside_the_session_raises_itself_not_an_exception_group(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.txt").write_text("x\n" * 500)
    model = _turn_fails(RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        await Agent(model, settings=Settings(workspace=tmp_path)).run("read a.txt")


@pytest.mark.anyio
async def test_the_turn_cap_error_names_the_session_and_no_command(tmp_path: Path) -> None:
    model = ScriptedModel([ScriptedModel.call("list_files") for _ in range(5)])
    settings = Settings(workspace=tmp_path, max_turns=2)
    with pytest.raises(TurnLimitError) as caught:
        await Agent(model, settings=settings).run("loop")
    (folder,) = (tmp_path / ".tidemark" / "sessions").iterdir()
    assert caught.value.session_id == folder.name
    assert "tidemark" not in str(caught.value) and "2 turns" in str(caught.value)


@pytest.mark.anyio
async def test_resuming_an_unknown_session_is_a_session_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(SessionNotFoundError, match="unknown session 'nope'") as caught:
        await Agent(ScriptedModel(), settings=Settings(workspace=tmp_path)).resume("nope")
    assert "tidemark" not in str(caught.value)


@pytest.mark.anyio
async def test_a_finished_run_says_how_it_ended_with_a_returned_outcome(tmp_path: Path) -> None:
    result = await Agent(ScriptedModel(), settings=Settings(workspace=tmp_path)).run("hi")
    assert result.outcome in get_args(Outcome) and result.outcome == "finished"
    assert set(get_args(Outcome)) == {"finished", "nothing_to_do"}


def test_a_response_gives_its_text_and_a_typed_stop_reason() -> None:
    response = ScriptedModel.reply("all done")
    assert response.text == "all done" and response.stop_reason == "end_turn"
    assert ScriptedModel.call("list_files").text == ""
    assert "end_turn" in get_args(StopReason) and "tool_use" in get_args(StopReason)


def test_an_event_with_a_wrong_key_is_a_type_error(tmp_path: Path) -> None:
    (tmp_path / "wrong.py").write_text(
        "from tidemark.events import EventLog\n"
        "log = EventLog('s', None)\n"
        "log.emit('tool_call', tool='x', tool_use_id='t', duration_ms=1.0, is_eror=False)\n"
    )
    (tmp_path / "right.py").write_text(
        "from tidemark.events import EventLog\n"
        "log = EventLog('s', None)\n"
        "log.emit('tool_call', tool='x', tool_use_id='t', duration_ms=1.0, is_error=False,"
        " output_chars=3)\n"
    )
    # pyright resolves `tidemark` through the repository's source links, not the install.
    config = {"extraPaths": [str(ROOT)], "typeCheckingMode": "strict"}
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(config))
    pyright = Path(sys.executable).parent / "pyright"
    wrong = subprocess.run(
        [str(pyright), "--pythonpath", sys.executable, "wrong.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode == 1, wrong.stdout
    assert 'wrong.py:3:1 - error: No overloads for "emit"' in wrong.stdout
    right = subprocess.run(
        [str(pyright), "--pythonpath", sys.executable, "right.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert right.returncode == 0, right.stdout


@pytest.mark.anyio
async def test_the_memory_lists_files_by_each_tools_files_metadata_not_by_its_name(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.txt").write_text("hello\n")

    @tool(files="write")
    def save_note(path: str, text: str) -> str:
        """Save a note to a file."""
        (tmp_path / path).write_text(text)
        return f"saved {path}"

    @tool(read_only=True)
    def peek(path: str) -> str:
        """Say whether a path exists (it reads nothing)."""
        return str((tmp_path / path).exists())

    steps = [
        ScriptedModel.call("read_file", path="a.txt"),
        ScriptedModel.call("save_note", path="notes.md", text="remember"),
        ScriptedModel.call("peek", path="secret.txt"),
        ScriptedModel.reply("done"),
    ]
    memory = ScriptedModel.reply("# Current State\n- Done: read a.txt, saved a note.")
    model = ScriptedModel(steps, memory=lambda request: memory)
    settings = Settings(
        workspace=tmp_path,
        auto_approve=True,
        memory_init_tokens=0,
        memory_update_tokens=0,
        memory_tool_calls=1,
    )
    result = await Agent(model, tools=[save_note, peek], settings=settings).run("take notes")
    written = result.paths.memory.read_text()
    assert "- modified: notes.md" in written
    assert "- read: a.txt" in written
    assert "secret.txt" not in written
