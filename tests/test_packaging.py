"""One import package, `tidemark`: nothing named `agent` or `tools` leaks into users' code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.support.fakeapi import FakeMessagesAPI, Script, text, tool_calls

ROOT = Path(__file__).resolve().parent.parent
_PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
_RUN = [sys.executable, "-m", "tidemark.cli", "run", "--yes"]


def _listed_packages() -> tuple[list[str], dict[str, str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config["packages"], config["package-dir"]


def test_every_folder_of_the_runtime_and_the_tools_is_listed_as_a_package() -> None:
    packages, mapping = _listed_packages()
    found: set[str] = set()
    for name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *relative.parts]))
    assert found <= set(packages), f"add {sorted(found - set(packages))} to pyproject.toml"


def test_the_wheel_installs_only_the_tidemark_package(tmp_path: Path) -> None:
    subprocess.run(
        [*_PIP_WHEEL, str(ROOT), "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("tidemark-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"tidemark"}
    assert "tidemark/py.typed" in names
    assert "tidemark/tools/builtin/shell.py" in names


def _user_project(folder: Path) -> Path:
    """A project with its own `agent` and `tools` packages, as users have."""
    (folder / "agent").mkdir(parents=True)
    (folder / "agent" / "__init__.py").write_text("NAME = 'the user agent'\n")
    (folder / "tools").mkdir()
    (folder / "tools" / "__init__.py").write_text("NAME = 'the user tools'\n")
    (folder / "tools" / "mine.py").write_text(
        textwrap.dedent(
            '''
            from tidemark import tool


            @tool(read_only=True)
            def service_port(name: str) -> str:
                """Look up the port a service listens on.

                Args:
                    name: the service name.
                """
                return {"billing": "8042"}.get(name, "unknown service")


            TOOLS = [service_port]
            '''
        )
    )
    return folder


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.pop("PYTHONPATH", None)
    return {**env, **extra}


def test_a_project_with_its_own_agent_and_tools_packages_imports_both(tmp_path: Path) -> None:
    project = _user_project(tmp_path / "project")
    code = (
        "from tidemark import Agent, Settings, tool\n"
        "import agent, tools, tools.mine\n"
        "print(agent.NAME, '|', tools.NAME, '|', tools.mine.TOOLS[0].name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "the user agent | the user tools | service_port"


@pytest.mark.parametrize("where", ["elsewhere", "inside"])
def test_nothing_named_agent_or_tools_comes_from_tidemark(tmp_path: Path, where: str) -> None:
    cwd = tmp_path if where == "elsewhere" else _user_project(tmp_path / "p")
    code = (
        "import importlib.util, tidemark\n"
        "for name in ('agent', 'tools'):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    print(name, spec.origin if spec else None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        name, origin = line.split(" ", 1)
        expected = "None" if where == "elsewhere" else str(cwd / name / "__init__.py")
        assert origin == expected, line


def test_the_cli_loads_a_users_module_called_tools(tmp_path: Path) -> None:
    project = _user_project(tmp_path / "project")
    script = Script(
        [
            tool_calls(("service_port", {"name": "billing"})),
            text("billing listens on 8042"),
        ]
    )
    with FakeMessagesAPI(script) as api:
        done = subprocess.run(
            [*_RUN, "--tools", "tools.mine:TOOLS", "Which port does billing use?"],
            cwd=project,
            env=_env(ANTHROPIC_BASE_URL=api.url),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert "8042" in done.stdout
    results = [
        b
        for request in api.requests
        for m in request.body["messages"]
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_result"
    ]
    assert [r["content"] for r in results] == ["8042"]
