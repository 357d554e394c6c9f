"""`tidemark chat` driven in a real pseudo-terminal (pexpect) against the strict fake server."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, cast

import pexpect

from tests.support.fakeapi import FakeMessagesAPI, LatencyModel, Reply, Script, text, tool_calls
from tests.support.sessions import memory_reply

ROOT = Path(__file__).resolve().parent.parent

STREAMED = (
    "First I looked at the file. "
    + "Then I checked every line of it, one after the other, with care. " * 6
    + "Last sentence of the streamed reply."
)


def _spawn(workspace: Path, api: FakeMessagesAPI, *args: str) -> pexpect.spawn[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(
        ANTHROPIC_BASE_URL=api.url,
        PYTHONPATH=str(ROOT),
        TERM="xterm",
        TIDEMARK_USER_CONFIG=str(workspace.parent / "no-user-config.toml"),
    )
    command = ["-m", "tidemark.cli", "chat", "--workspace", str(workspace), *args]
    child = pexpect.spawn(
        sys.executable, command, env=env, encoding="utf-8", timeout=60, dimensions=(30, 160)
    )
    child.logfile_read = (workspace.parent / "terminal.log").open("a", encoding="utf-8")
    return child


CPR = "\x1b[6n"  # the prompt asks where the cursor is, as a real terminal answers


def _expect(child: pexpect.spawn[str], pattern: str, *, exact: bool = True) -> None:
    """Wait for `pattern`, answering cursor-position requests on the way like a terminal."""
    while True:
        if exact:
            index = child.expect_exact([CPR, pattern])
        else:
            index = child.expect([re.escape(CPR), pattern])
        if index == 1:
            return
        child.send("\x1b[1;1R")


def _prompt(child: pexpect.spawn[str]) -> None:
    _expect(child, "you>")


def _group(child: pexpect.spawn[str]) -> str:
    match = cast("re.Match[str]", child.match)
    return match.group(1)


def _seen(child: pexpect.spawn[str]) -> str:
    """What the terminal showed up to and including the last match."""
    return str(child.before or "") + str(child.after or "")


def _send(child: pexpect.spawn[str], line: str) -> None:
    child.send(line + "\r")


def _wait_for(predicate: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _user_texts(body: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    for message in body["messages"]:
        if message["role"] != "user":
            continue
        content = message["content"]
        if isinstance(content, str):
            texts.append(content)
        else:
            texts += [b["text"] for b in content if b.get("type") == "text"]
    return texts


def test_a_chat_streams_replies_keeps_memory_compacts_survives_an_interrupt_and_continues(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    # Big enough that the memory (which covers it) is what makes /compact worth it.
    (workspace / "notes.txt").write_text("remember the milk\n" + "a shopping note line\n" * 500)
    script = Script(
        [
            tool_calls(("read_file", {"path": "notes.txt"}), output_tokens=5),
            tool_calls(("write_file", {"path": "todo.txt", "content": "milk\n"}), output_tokens=5),
            Reply(content=[{"type": "text", "text": STREAMED}], output_tokens=120),
            Reply(content=[{"type": "text", "text": "Too late."}], delay_s=8),
            text("After the interrupt, here again.", output_tokens=5),
            text("Welcome back; the notes said milk.", output_tokens=5),
        ],
        memory=lambda request: memory_reply(request, output_tokens=5),
    )
    latency = LatencyModel(ttft_base_s=0.01, ttft_per_input_token_s=0, per_output_token_s=0.03)
    with FakeMessagesAPI(script, latency=latency) as api:
        child = _spawn(
            workspace,
            api,
            *("--context-window", "20000", "--compact-at", "8000"),
            *("--memory-init-tokens", "0", "--memory-update-tokens", "0"),
        )
        try:
            _expect(child, r"session (\S+) \(new\)", exact=False)
            session_id = _group(child)
            _prompt(child)

            # A task: a tool call, an approval asked inline, a reply streamed as generated.
            _send(child, "Read notes.txt and write todo.txt")
            _expect(child, "> read_file")
            _expect(child, r"Allow write_file path='todo.txt'.*\[y/N\]", exact=False)
            _send(child, "y")
            _expect(child, "First I looked at the file.")
            unread = str(child.buffer)
            assert "Last sentence" not in _seen(child) + unread  # not all at once
            _expect(child, "Last sentence of the streamed reply.")
            _prompt(child)
            assert (workspace / "todo.txt").read_text() == "milk\n"

            # The memory update ran while the prompt waited; /memory shows it.
            _wait_for(lambda: api.requests_for("session-memory"), "a memory update")
            memory = workspace / ".tidemark" / "sessions" / session_id / "session-memory.md"
            _wait_for(memory.exists, "the memory to be committed")
            _send(child, "/memory")
            _expect(child, "# Current State")
            _expect(child, "| compactions 0 |")  # the status line, between turns

            # /compact: from the memory, at once, without a blocking summary request.
            _send(child, "/compact")
            _expect(child, r"compacted \(session_memory\)", exact=False)
            _expect(child, "| compactions 1 |")
            assert api.requests_for("compact") == []

            # Ctrl-C during a turn interrupts it; the next message goes on.
            _send(child, "Take your time")
            _wait_for(lambda: len(api.requests_for("turn")) == 4, "the slow turn's request")
            child.sendintr()
            _expect(child, "interrupted")
            _prompt(child)
            _send(child, "Are you there?")
            _expect(child, "After the interrupt, here again.")
            _prompt(child)
            assert "Too late." not in _seen(child)

            # Ctrl-D leaves, saying how to come back.
            child.sendeof()
            _expect(child, f"tidemark chat --session {session_id}")
            child.expect(pexpect.EOF)
            child.close()
            assert child.exitstatus == 0
        finally:
            if child.isalive():
                child.terminate(force=True)

        # Coming back continues the same session: its history goes with the next message.
        child = _spawn(workspace, api, "--session", session_id)
        try:
            _expect(child, f"session {session_id} (continued)")
            _prompt(child)
            _send(child, "What did the notes say?")
            _expect(child, "Welcome back; the notes said milk.")
            _prompt(child)
            child.sendintr()  # Ctrl-C at the prompt leaves too
            child.expect(pexpect.EOF)
            child.close()
            assert child.exitstatus == 0
        finally:
            if child.isalive():
                child.terminate(force=True)

        assert api.invalid_requests == []
        last = api.requests_for("turn")[-1].body
        said = _user_texts(last)
        assert said[0].startswith("[tidemark: summary of earlier work")  # compacted
        assert "Read notes.txt and write todo.txt" in said[0]  # the user's words, verbatim
        assert "Take your time" in said and "Are you there?" in said
        assert said[-1] == "What did the notes say?"
        # The interrupted turn left no unanswered tool call and no reply in the record.
        assert all("Too late." not in str(m["content"]) for m in last["messages"])


def test_chat_without_a_terminal_says_so(tmp_path: Path) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(ANTHROPIC_BASE_URL="http://127.0.0.1:9", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "tidemark.cli", "chat", "--workspace", str(tmp_path)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert re.fullmatch(r"tidemark: error: tidemark chat needs a terminal.*\n", done.stderr)


def test_a_chat_calls_a_config_files_mcp_server_and_compacts_by_itself_without_a_summary(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "ws"
    (workspace / ".tidemark").mkdir(parents=True)
    server = ROOT / "tests" / "support" / "mcp_server.py"
    (workspace / ".tidemark" / "config.toml").write_text(
        f"[mcp_servers.notes]\ncommand = {json.dumps(sys.executable)}\n"
        f"args = [{json.dumps(str(server))}]\ntrusted = true\n"
    )
    names = ["a", "b", "c", "d"]
    for name in names:
        (workspace / f"{name}.txt").write_text(f"notes {name}: " + "a long line of notes\n" * 600)
    turns: list[Reply] = []
    for name in names:
        turns += [tool_calls(("read_file", {"path": f"{name}.txt"})), text(f"Read {name}.")]
    turns += [tool_calls(("mcp__notes__add", {"a": 2, "b": 3})), text("The sum is 5.")]
    script = Script(turns, memory=lambda request: memory_reply(request, output_tokens=5))
    with FakeMessagesAPI(script) as api:
        child = _spawn(
            workspace,
            api,
            *("--context-window", "30000", "--compact-at", "12000"),
            *("--memory-init-tokens", "0", "--memory-update-tokens", "0"),
        )
        try:
            _prompt(child)
            for k, name in enumerate(names, start=1):
                _send(child, f"Read {name}.txt")
                _expect(child, f"Read {name}.")
                _prompt(child)
                # The memory catches up while the prompt waits (the user's think time).
                _wait_for(lambda k=k: len(api.requests_for("session-memory")) >= k, "an update")
            _send(child, "Add 2 and 3 with the notes server")
            _expect(child, "> mcp__notes__add")
            _expect(child, "The sum is 5.")
            _prompt(child)
            child.sendeof()
            child.expect(pexpect.EOF)
            child.close()
            assert child.exitstatus == 0
        finally:
            if child.isalive():
                child.terminate(force=True)
        assert api.invalid_requests == []
        assert api.requests_for("compact") == []  # never a blocking summary
        turns_sent = api.requests_for("turn")
    (folder,) = (workspace / ".tidemark" / "sessions").iterdir()
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    compactions = [e for e in events if e["event"] == "compaction"]
    assert compactions, "the chat never compacted"
    assert {c["strategy"] for c in compactions} <= {"session_memory", "tool_result_clearing"}
    # The MCP server's answer reached the model.
    last = turns_sent[-1].body["messages"][-1]["content"]
    assert [b["content"] for b in last if b["type"] == "tool_result"] == ["5"]


def test_sigterm_during_a_chat_turn_ends_it_with_143_and_the_session_says_terminated(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    script = Script([Reply(content=[{"type": "text", "text": "Too late."}], delay_s=30)])
    with FakeMessagesAPI(script) as api:
        child = _spawn(workspace, api)
        try:
            _expect(child, r"session (\S+) \(new\)", exact=False)
            _prompt(child)
            _send(child, "Say something slowly")
            _wait_for(lambda: api.requests_for("turn"), "the turn's request")
            signalled = time.monotonic()
            child.kill(signal.SIGTERM)
            child.expect(pexpect.EOF, timeout=10)
            child.wait()
            took = time.monotonic() - signalled
        finally:
            child.close(force=True)
    assert child.exitstatus == 143, (child.exitstatus, child.signalstatus)
    assert took < 2, took
    [events_file] = list(workspace.glob(".tidemark/sessions/*/events.jsonl"))
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    finished = [e for e in events if e["event"] == "session_finished"]
    assert [(e["outcome"], e["exit_code"]) for e in finished] == [("terminated", 143)]
