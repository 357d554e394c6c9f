"""tidemark as a library: quiet unless asked, events to the caller, no UI in the core."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakeapi import FakeMessagesAPI, Script, text, tool_calls
from tidemark import Agent, ScriptedModel, Settings

ROOT = Path(__file__).resolve().parent.parent
# The modules that face a person: they may print and import the terminal UI.
EDGE = {"cli.py", "progress.py"}  # and `tidemark inspect`, a command
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
            if path.name in EDGE or {"inspect.py", "inspection"} & set(path.parts):
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
