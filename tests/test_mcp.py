"""MCP tool servers: a real server written with the SDK (tests/support/mcp_server.py), run
as a subprocess, plugged in through the config file, `--mcp` and `.mcp.json`."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakeapi import FakeMessagesAPI, RecordedRequest, Script, text, tool_calls
from tidemark.config_file import McpServerConfig
from tidemark.errors import ConfigError
from tidemark.mcp_tools import connect_mcp_servers
from tidemark.tools import ToolContext, ToolError, ToolOutput

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "support" / "mcp_server.py"


def _stdio(**kw: Any) -> McpServerConfig:
    return McpServerConfig(command=sys.executable, args=[str(SERVER)], **kw)


def _config(workspace: Path, *, trusted: bool = False, extra: str = "") -> None:
    (workspace / ".tidemark").mkdir(parents=True, exist_ok=True)
    (workspace / ".tidemark" / "config.toml").write_text(
        f"[mcp_servers.notes]\ncommand = {json.dumps(sys.executable)}\n"
        f"args = [{json.dumps(str(SERVER))}]\ntrusted = {'true' if trusted else 'false'}\n"
        f'env = {{ MCP_TEST_PID_FILE = "{workspace / "server.pid"}" }}\n{extra}'
    )


def _env(api: FakeMessagesAPI | None, user_config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    if api is not None:
        env["ANTHROPIC_BASE_URL"] = api.url
    env["PYTHONPATH"] = str(ROOT)
    env["TIDEMARK_USER_CONFIG"] = str(user_config)
    return env


def tidemark(
    *args: str, api: FakeMessagesAPI | None, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidemark.cli", *args],
        env=_env(api, tmp_path / "no-user-config.toml"),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _results(request: RecordedRequest) -> list[dict[str, Any]]:
    last = request.body["messages"][-1]
    return [b for b in last["content"] if b.get("type") == "tool_result"]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.anyio
async def test_a_servers_tools_are_listed_with_its_names_schemas_and_descriptions(
    tmp_path: Path,
) -> None:
    async with connect_mcp_servers({"notes": _stdio()}, workspace=tmp_path) as tools:
        by_name = {t.name: t for t in tools}
        assert set(by_name) >= {"mcp__notes__add", "mcp__notes__fail", "mcp__notes__crash"}
        add = by_name["mcp__notes__add"]
        assert add.description == "Add two whole numbers and return the sum."
        assert add.input_schema["properties"].keys() == {"a", "b"}
        assert add.input_schema["required"] == ["a", "b"]
        assert add.needs_approval
        ctx = ToolContext(workspace=tmp_path)
        assert await add.run({"a": 2, "b": 40}, ctx) == "42"
        with pytest.raises(ToolError, match="failed on purpose: no"):
            await by_name["mcp__notes__fail"].run({"reason": "no"}, ctx)
        picture = await by_name["mcp__notes__picture"].run({}, ctx)
        assert isinstance(picture, ToolOutput) and picture.text == ""
        assert [i.media_type for i in picture.images] == ["image/png"]
        assert base64.b64decode(picture.images[0].data).startswith(b"\x89PNG")
        chart = await by_name["mcp__notes__chart"].run({"title": "sales"}, ctx)
        assert isinstance(chart, ToolOutput) and chart.text == "Chart: sales"
        assert len(chart.images) == 1
        # A format the Messages API does not take stays a note the model can read.
        bitmap = await by_name["mcp__notes__bitmap"].run({}, ctx)
        assert isinstance(bitmap, str) and bitmap.startswith("[image result: image/bmp")


@pytest.mark.anyio
async def test_a_server_that_cannot_start_is_one_clear_error(tmp_path: Path) -> None:
    missing = McpServerConfig(command="no-such-mcp-server", source="config.toml")
    with pytest.raises(ConfigError, match=r"MCP server gone \(from config.toml\) did not start"):
        async with connect_mcp_servers({"gone": missing}, workspace=tmp_path):
            pass
    broken = McpServerConfig(command=sys.executable, args=["-c", "import sys; sys.exit(3)"])
    with pytest.raises(ConfigError, match=r"MCP server broken did not start: .*broken\.log"):
        async with connect_mcp_servers(
            {"broken": broken}, workspace=tmp_path, log_dir=tmp_path / "logs"
        ):
            pass


def test_the_agent_calls_a_servers_tools_and_goes_on_after_the_server_dies(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    _config(workspace, trusted=True)
    script = Script(
        [
            tool_calls(("mcp__notes__add", {"a": 1, "b": 2})),
            tool_calls(("mcp__notes__fail", {"reason": "bad input"})),
            tool_calls(("mcp__notes__crash", {})),
            tool_calls(("mcp__notes__add", {"a": 3, "b": 4})),
            text("The notes server died; I went on without it."),
        ]
    )
    with FakeMessagesAPI(script) as api:
        done = tidemark(
            "run", "--workspace", str(workspace), "add numbers", api=api, tmp_path=tmp_path
        )
        assert done.returncode == 0, done.stderr
        assert "went on without it" in done.stdout
        turns = api.requests_for("turn")
        assert api.invalid_requests == []
    names = {t["name"] for t in turns[0].body["tools"]}
    assert {"bash", "read_file", "mcp__notes__add", "mcp__notes__crash"} <= names
    add_spec = next(t for t in turns[0].body["tools"] if t["name"] == "mcp__notes__add")
    assert add_spec["description"] == "Add two whole numbers and return the sum."
    (added,) = _results(turns[1])
    assert (added["content"], added.get("is_error", False)) == ("3", False)
    (failed,) = _results(turns[2])
    assert failed["is_error"] is True
    assert "failed on purpose: bad input" in str(failed["content"])
    (crashed,) = _results(turns[3])
    assert crashed["is_error"] is True
    assert "MCP server notes is not running any more" in str(crashed["content"])
    (after,) = _results(turns[4])
    assert after["is_error"] is True
    assert "MCP server notes is not running any more" in str(after["content"])


def test_an_image_a_server_returns_reaches_the_model_as_an_image_block_and_survives_resume(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    _config(workspace, trusted=True)
    script = Script(
        [
            tool_calls(("mcp__notes__chart", {"title": "sales"}), ("mcp__notes__bitmap", {})),
            text("The chart shows one pixel."),
            text("Still one pixel."),
        ]
    )
    with FakeMessagesAPI(script) as api:
        done = tidemark("run", "--workspace", str(workspace), "chart", api=api, tmp_path=tmp_path)
        assert done.returncode == 0, done.stderr
        resumed = tidemark(
            "resume", "--workspace", str(workspace), "and again?", api=api, tmp_path=tmp_path
        )
        assert resumed.returncode == 0, resumed.stderr
        turns = api.requests_for("turn")
        # The strict server checked each image (base64, a type it takes, data of that type).
        assert api.invalid_requests == []
    for turn in (turns[1], turns[2]):  # after the call, and after `resume` read the transcript
        chart, bitmap = [
            b
            for m in turn.body["messages"]
            if isinstance(m["content"], list)
            for b in m["content"]
            if b["type"] == "tool_result"
        ]
        assert chart["content"][0] == {"type": "text", "text": "Chart: sales"}
        image = chart["content"][1]
        assert image["type"] == "image" and image["source"]["media_type"] == "image/png"
        assert base64.b64decode(image["source"]["data"]).startswith(b"\x89PNG")
        assert str(bitmap["content"]).startswith("[image result: image/bmp")


def test_an_untrusted_servers_tools_need_approval_like_bash(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    _config(workspace, trusted=False)
    script = Script([tool_calls(("mcp__notes__note", {"text": "x"})), text("Refused.")])
    with FakeMessagesAPI(script) as api:
        done = tidemark("run", "--workspace", str(workspace), "note", api=api, tmp_path=tmp_path)
        assert done.returncode == 0, done.stderr
        (refused,) = _results(api.requests_for("turn")[1])
    assert refused["is_error"] is True
    assert refused["content"] == "permission denied: rerun with --yes"


def test_a_server_given_with_the_mcp_flag_joins_the_toolset(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    flag = f"calc={sys.executable} {SERVER}"
    script = Script([tool_calls(("mcp__calc__add", {"a": 20, "b": 22})), text("42.")])
    with FakeMessagesAPI(script) as api:
        done = tidemark(
            "run",
            "--workspace",
            str(workspace),
            "--mcp",
            flag,
            "--yes",
            "add",
            api=api,
            tmp_path=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        (added,) = _results(api.requests_for("turn")[1])
    assert added["content"] == "42"


def test_tools_lists_every_tool_and_where_it_comes_from(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "helpers").mkdir(parents=True)
    (workspace / "helpers" / "extra.py").write_text(
        "def shout(text: str) -> str:\n    '''Upper-case the text.'''\n    return text.upper()\n"
        "TOOLS = [shout]\n"
    )
    _config(workspace, extra='\n[mcp_servers.web]\nurl = "http://127.0.0.1:1/mcp"\n')
    (workspace / ".tidemark" / "config.toml").write_text(
        'tools = ["helpers/extra.py:TOOLS"]\n'
        + (workspace / ".tidemark" / "config.toml").read_text().split("\n[mcp_servers.web]")[0]
    )
    done = tidemark("tools", "--workspace", str(workspace), "--json", api=None, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert rows["bash"]["source"] == "built-in"
    assert rows["bash"]["needs_approval"] is True
    assert rows["read_file"]["needs_approval"] is False
    assert rows["shout"]["source"] == f"python {workspace}/helpers/extra.py:TOOLS"
    assert rows["mcp__notes__add"]["source"] == (
        f"mcp server notes ({workspace / '.tidemark' / 'config.toml'})"
    )
    assert rows["mcp__notes__add"]["description"] == "Add two whole numbers and return the sum."
    table = tidemark("tools", "--workspace", str(workspace), api=None, tmp_path=tmp_path)
    assert table.returncode == 0, table.stderr
    assert any(line.startswith("mcp__notes__crash ") for line in table.stdout.splitlines())


def test_a_stdio_server_does_not_outlive_a_runtime_killed_with_sigkill(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    _config(workspace, trusted=True)
    script = Script([tool_calls(("mcp__notes__slow", {"seconds": 60})), text("Done.")])
    pid_file = workspace / "server.pid"
    with FakeMessagesAPI(script) as api:
        runtime = subprocess.Popen(
            [sys.executable, "-m", "tidemark.cli", "run", "--workspace", str(workspace), "wait"],
            env=_env(api, tmp_path / "no-user-config.toml"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not (pid_file.exists() and api.requests_for("turn")):
                assert runtime.poll() is None, "the runtime ended early"
                assert time.monotonic() < deadline, "the server never started"
                time.sleep(0.05)
            time.sleep(0.5)  # the slow call is running now
            server_pid = int(pid_file.read_text())
            assert _alive(server_pid)
            runtime.send_signal(signal.SIGKILL)
            runtime.wait(timeout=10)
            deadline = time.monotonic() + 10
            while _alive(server_pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(server_pid), "the MCP server outlived the runtime"
        finally:
            if runtime.poll() is None:
                runtime.kill()
                runtime.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server() -> Iterator[str]:
    """The test server on streamable HTTP, in its own process; yields its url."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None and time.monotonic() < deadline, "no HTTP server"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.anyio
async def test_a_streamable_http_server_is_reached_by_its_url(
    tmp_path: Path, http_server: str
) -> None:
    config = McpServerConfig(url=http_server, trusted=True)
    async with connect_mcp_servers({"web": config}, workspace=tmp_path) as tools:
        add = next(t for t in tools if t.name == "mcp__web__add")
        assert not add.needs_approval
        assert await add.run({"a": 5, "b": 6}, ToolContext(workspace=tmp_path)) == "11"
