"""Config files: precedence (command line > workspace > .mcp.json > user) and bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fakeapi import FakeMessagesAPI, Script, text
from tidemark.config_file import USER_CONFIG_ENV, load_config, parse_mcp_flag
from tidemark.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "user" / "config.toml"
    path.parent.mkdir()
    monkeypatch.setenv(USER_CONFIG_ENV, str(path))
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / ".tidemark").mkdir(parents=True)
    return ws


def _tidemark(*args: str, api: FakeMessagesAPI, user: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(ANTHROPIC_BASE_URL=api.url, PYTHONPATH=str(ROOT), **{USER_CONFIG_ENV: str(user)})
    return subprocess.run(
        [sys.executable, "-m", "tidemark.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_the_workspace_file_wins_over_the_user_file_key_by_key(
    user_config: Path, workspace: Path
) -> None:
    user_config.write_text(
        'model = "user-model"\ncompact_at = 50000\nmemory_tool_calls = 7\n'
        'tools = ["shared_tools:TOOLS"]\n'
        '[mcp_servers.docs]\ncommand = "docs-server"\n'
        '[mcp_servers.search]\nurl = "http://127.0.0.1:9/mcp"\n'
    )
    (workspace / ".tidemark" / "config.toml").write_text(
        'compact_at = 30000\ntools = ["helpers/extra.py:TOOLS"]\n'
        '[mcp_servers.docs]\ncommand = "python3"\nargs = ["docs.py"]\ntrusted = true\n'
    )
    config = load_config(workspace)
    assert config.settings == {"compact_at": 30000, "memory_tool_calls": 7}
    assert config.model == "user-model"
    assert config.tools == ["shared_tools:TOOLS", f"{workspace}/helpers/extra.py:TOOLS"]
    docs = config.mcp_servers["docs"]
    assert (docs.command, docs.args, docs.trusted) == ("python3", ["docs.py"], True)
    assert config.mcp_servers["search"].url == "http://127.0.0.1:9/mcp"


def test_a_projects_mcp_json_adds_servers_under_the_workspace_file(
    user_config: Path, workspace: Path
) -> None:
    (workspace / ".mcp.json").write_text(
        json.dumps(
            {
                "mcpServers": {
                    "files": {"command": "npx", "args": ["-y", "fs-server"], "env": {"A": "1"}},
                    "web": {"type": "http", "url": "https://example.org/mcp"},
                }
            }
        )
    )
    (workspace / ".tidemark" / "config.toml").write_text(
        '[mcp_servers.files]\ncommand = "local-files"\n'
    )
    servers = load_config(workspace).mcp_servers
    assert servers["files"].command == "local-files"
    assert servers["web"].url == "https://example.org/mcp"
    assert servers["web"].source == str(workspace / ".mcp.json")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "compact_at = 30000\ncompactat = 5\n",
            ":2: unknown key compactat; did you mean compact_at?",
        ),
        ("model = 'x'\n\nmax_turns = 'many'\n", ":3: max_turns: Input should be a valid integer"),
        (
            "context_window = 10\n",
            ":1: context_window: Input should be greater than or equal to 1000",
        ),
        ("[mcp_servers.a]\nargs = ['x']\n", ":1: mcp_servers.a: give either command"),
        ("[mcp_servers.a]\ncommand = 'x'\ntrustd = true\n", ":3: unknown key mcp_servers.a.trustd"),
        ("[mcp_servers.a]\ncommand = 'x'\ntrusted = 'yes'\n", ":3: mcp_servers.a.trusted:"),
        ("provider = 'openai'\n", ":1: provider: Input should be 'anthropic' or 'local'"),
        ("max_turns = 3\nmax_turns = 4\n", ":2: not valid TOML"),
    ],
)
def test_a_wrong_key_or_value_names_the_file_the_line_and_the_key(
    user_config: Path, workspace: Path, content: str, expected: str
) -> None:
    path = workspace / ".tidemark" / "config.toml"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_config(workspace)
    message = str(caught.value)
    assert message.startswith(str(path) + ":")
    assert expected in message
    assert "\n" not in message


def test_the_mcp_flag_takes_a_command_line_or_a_url() -> None:
    name, server = parse_mcp_flag("notes=python3 'my server.py' --fast")
    assert (name, server.command, server.args) == ("notes", "python3", ["my server.py", "--fast"])
    assert parse_mcp_flag("web=http://127.0.0.1:8000/mcp")[1].url == "http://127.0.0.1:8000/mcp"
    with pytest.raises(ConfigError, match="expected NAME=COMMAND"):
        parse_mcp_flag("python3 server.py")


def test_the_run_uses_the_files_and_the_command_line_wins(
    user_config: Path, workspace: Path
) -> None:
    user_config.write_text('model = "from-user"\nmax_turns = 1\n')
    (workspace / ".tidemark" / "config.toml").write_text('model = "from-workspace"\n')
    with FakeMessagesAPI(Script([text("Hello.")])) as api:
        done = _tidemark("run", "--workspace", str(workspace), "say hi", api=api, user=user_config)
        assert done.returncode == 0, done.stderr
        assert api.requests_for("turn")[0].body["model"] == "from-workspace"
    with FakeMessagesAPI(Script([text("Hello.")])) as api:
        done = _tidemark(
            "run",
            "--workspace",
            str(workspace),
            "--model",
            "from-flag",
            "hi",
            api=api,
            user=user_config,
        )
        assert done.returncode == 0, done.stderr
        assert api.requests_for("turn")[0].body["model"] == "from-flag"


def test_a_bad_config_file_stops_the_run_with_one_line_and_exit_2(
    user_config: Path, workspace: Path
) -> None:
    user_config.write_text("memory_tool_calls = -1\n")
    with FakeMessagesAPI(Script([text("Hello.")])) as api:
        done = _tidemark("run", "--workspace", str(workspace), "hi", api=api, user=user_config)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            f"tidemark: error: {user_config}:1: memory_tool_calls: Input should be greater than "
            "or equal to 0 (got -1)"
        ]
        assert api.requests == []


def test_a_wrong_server_in_mcp_json_names_the_file_the_line_and_the_key(
    user_config: Path, workspace: Path
) -> None:
    path = workspace / ".mcp.json"
    path.write_text(
        '{\n  "mcpServers": {\n    "ok": {"command": "a"},\n    "bad": {"args": []}\n  }\n}\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(workspace)
    assert str(caught.value).startswith(f"{path}:4: mcpServers.bad: give either command")
