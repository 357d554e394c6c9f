"""Toolset: lookup, specs, and running a batch of calls (order, concurrency, failures)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import anyio
import pytest

from tidemark import tools
from tidemark.tools import (
    AutoApprover,
    DenyApprover,
    TerminalApprover,
    Tool,
    ToolCall,
    ToolContext,
    ToolError,
    Toolset,
    builtin_tools,
    default_approver,
    describe_call,
    describe_input,
    tool,
)

pytestmark = pytest.mark.anyio


@tool(read_only=True)
def echo(text: str) -> str:
    """Repeat the text."""
    return text


@tool(needs_approval=True)
def remember(text: str) -> str:
    """Store the text."""
    return f"stored {text}"


def test_the_public_api_imports() -> None:
    expected = {
        "Approver",
        "AutoApprover",
        "DenyApprover",
        "FileAccess",
        "FunctionTool",
        "TerminalApprover",
        "Tool",
        "ToolCall",
        "ToolContext",
        "ToolError",
        "ToolImage",
        "ToolLoadError",
        "ToolOutcome",
        "ToolOutput",
        "Toolset",
        "builtin_tools",
        "default_approver",
        "describe_call",
        "describe_input",
        "file_access",
        "load_tools",
        "reap_leftover_processes",
        "tool",
    }
    assert set(tools.__all__) == expected
    for name in tools.__all__:
        assert getattr(tools, name) is not None


def test_the_builtin_tools_have_the_contract_names_and_flags() -> None:
    found = {t.name: t for t in builtin_tools()}
    assert list(found) == ["read_file", "write_file", "edit_file", "list_files", "grep", "bash"]
    assert all(isinstance(t, Tool) for t in found.values())
    assert {n for n, t in found.items() if t.read_only} == {"read_file", "list_files", "grep"}
    assert {n for n, t in found.items() if t.needs_approval} == {"write_file", "edit_file", "bash"}
    assert set(found["edit_file"].input_schema["properties"]) == {
        "path",
        "old_string",
        "new_string",
        "replace_all",
    }
    assert found["bash"].input_schema["required"] == ["command"]


def test_a_toolset_keeps_order_and_gives_specs_and_lookup() -> None:
    toolset = Toolset([echo, remember])
    assert toolset.names() == ["echo", "remember"]
    assert len(toolset) == 2 and list(toolset) == [echo, remember]
    assert toolset.get("echo") is echo and toolset.get("nope") is None
    assert toolset.specs()[0] == {
        "name": "echo",
        "description": "Repeat the text.",
        "input_schema": echo.input_schema,
    }


def test_duplicate_tool_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate tool name: 'echo'"):
        Toolset([echo, echo])
    with pytest.raises(ValueError, match="duplicate"):
        Toolset([echo]).with_tools([echo])
    assert Toolset([echo]).with_tools([remember]).names() == ["echo", "remember"]


async def test_outcomes_come_back_in_call_order_with_ids(tmp_path: Path) -> None:
    calls = [ToolCall(f"id{i}", "echo", {"text": str(i)}) for i in range(5)]
    outcomes = await Toolset([echo]).execute(calls, ToolContext(tmp_path), DenyApprover())
    assert [(o.tool_use_id, o.content, o.is_error) for o in outcomes] == [
        (f"id{i}", str(i), False) for i in range(5)
    ]
    assert all(o.duration_ms >= 0 for o in outcomes)


async def test_consecutive_read_only_calls_overlap(tmp_path: Path) -> None:
    arrived = {"a": anyio.Event(), "b": anyio.Event()}

    @tool(read_only=True)
    async def meet(me: str, other: str) -> str:
        """Wait until the other call has started too."""
        arrived[me].set()
        with anyio.fail_after(5):  # a deadlock here means the calls ran one by one
            await arrived[other].wait()
        return f"{me} met {other}"

    calls = [
        ToolCall("1", "meet", {"me": "a", "other": "b"}),
        ToolCall("2", "meet", {"me": "b", "other": "a"}),
    ]
    outcomes = await Toolset([meet]).execute(calls, ToolContext(tmp_path), DenyApprover())
    assert [o.content for o in outcomes] == ["a met b", "b met a"]


async def test_calls_that_are_not_read_only_run_one_at_a_time_in_order(tmp_path: Path) -> None:
    log: list[str] = []

    @tool
    async def step(name: str) -> str:
        """Record a step."""
        log.append(f"start {name}")
        await anyio.sleep(0.01)
        log.append(f"end {name}")
        return name

    calls = [ToolCall(str(i), "step", {"name": n}) for i, n in enumerate("abc")]
    await Toolset([step]).execute(calls, ToolContext(tmp_path), AutoApprover())
    assert log == ["start a", "end a", "start b", "end b", "start c", "end c"]


async def test_on_start_is_told_about_each_call_as_it_begins(tmp_path: Path) -> None:
    started: list[str] = []
    calls = [ToolCall("1", "echo", {"text": "x"}), ToolCall("2", "remember", {"text": "y"})]
    await Toolset([echo, remember]).execute(
        calls, ToolContext(tmp_path), AutoApprover(), on_start=lambda c: started.append(c.id)
    )
    assert started == ["1", "2"]


async def test_an_unknown_tool_gets_an_error_listing_the_available_tools(tmp_path: Path) -> None:
    [outcome] = await Toolset([echo, remember]).execute(
        [ToolCall("1", "shell", {})], ToolContext(tmp_path), AutoApprover()
    )
    assert outcome.is_error
    assert outcome.content == "unknown tool 'shell'; available tools: echo, remember"


async def test_a_tool_error_becomes_an_error_outcome_with_its_message(tmp_path: Path) -> None:
    @tool
    def fail() -> str:
        raise ToolError("the file is locked; try again later")

    [outcome] = await Toolset([fail]).execute(
        [ToolCall("1", "fail", {})], ToolContext(tmp_path), AutoApprover()
    )
    assert (outcome.content, outcome.is_error) == ("the file is locked; try again later", True)


async def test_an_unexpected_exception_becomes_an_internal_error_outcome(tmp_path: Path) -> None:
    @tool
    async def boom() -> str:
        raise RuntimeError("kaput")

    calls = [ToolCall("1", "boom", {}), ToolCall("2", "echo", {"text": "still running"})]
    outcomes = await Toolset([boom, echo]).execute(calls, ToolContext(tmp_path), AutoApprover())
    assert outcomes[0].is_error
    assert outcomes[0].content == "internal error in tool boom: RuntimeError: kaput"
    assert outcomes[1].content == "still running"


async def test_invalid_input_becomes_an_error_outcome_naming_the_field(tmp_path: Path) -> None:
    [outcome] = await Toolset([echo]).execute(
        [ToolCall("1", "echo", {"text": 5})], ToolContext(tmp_path), AutoApprover()
    )
    assert outcome.is_error and "text: Input should be a valid string" in outcome.content


async def test_a_call_past_its_timeout_becomes_an_error_outcome(tmp_path: Path) -> None:
    @tool(timeout=0.05)
    async def hang() -> str:
        await anyio.sleep(30)
        return "never"

    [outcome] = await Toolset([hang]).execute(
        [ToolCall("1", "hang", {})], ToolContext(tmp_path), AutoApprover()
    )
    assert (outcome.content, outcome.is_error) == ("tool hang timed out after 0.05 s", True)


async def test_the_context_default_timeout_applies_when_a_tool_has_none(tmp_path: Path) -> None:
    @tool
    def slow() -> str:
        import time

        time.sleep(0.5)
        return "late"

    ctx = ToolContext(tmp_path, default_timeout=0.05)
    [outcome] = await Toolset([slow]).execute([ToolCall("1", "slow", {})], ctx, AutoApprover())
    assert outcome.is_error and "timed out after 0.05 s" in outcome.content


async def test_a_timeout_error_raised_by_the_tool_itself_is_not_reported_as_a_timeout(
    tmp_path: Path,
) -> None:
    @tool
    def connect() -> str:
        raise TimeoutError("server did not answer")

    [outcome] = await Toolset([connect]).execute(
        [ToolCall("1", "connect", {})], ToolContext(tmp_path), AutoApprover()
    )
    assert outcome.content == "internal error in tool connect: TimeoutError: server did not answer"


async def test_cancellation_propagates_out_of_execute(tmp_path: Path) -> None:
    finished = False

    @tool
    async def wait_forever() -> str:
        await anyio.sleep(30)
        return "never"

    with anyio.move_on_after(0.05) as scope:
        await Toolset([wait_forever]).execute(
            [ToolCall("1", "wait_forever", {})], ToolContext(tmp_path), AutoApprover()
        )
        finished = True
    assert scope.cancelled_caught and not finished


async def test_without_a_terminal_calls_needing_approval_are_refused_and_do_not_run(
    tmp_path: Path,
) -> None:
    ran: list[str] = []

    @tool(needs_approval=True)
    def delete(path: str) -> str:
        ran.append(path)
        return "deleted"

    calls = [ToolCall("1", "delete", {"path": "a"}), ToolCall("2", "echo", {"text": "ok"})]
    outcomes = await Toolset([delete, echo]).execute(calls, ToolContext(tmp_path), DenyApprover())
    assert (outcomes[0].content, outcomes[0].is_error) == (
        "permission denied: rerun with --yes",
        True,
    )
    assert (outcomes[1].content, outcomes[1].is_error) == ("ok", False)
    assert ran == []


async def test_auto_approval_lets_calls_needing_approval_run(tmp_path: Path) -> None:
    [outcome] = await Toolset([remember]).execute(
        [ToolCall("1", "remember", {"text": "x"})], ToolContext(tmp_path), AutoApprover()
    )
    assert (outcome.content, outcome.is_error) == ("stored x", False)


async def test_the_terminal_approver_asks_about_the_call_and_honours_the_answer(
    tmp_path: Path,
) -> None:
    prompts: list[str] = []
    answers = iter(["y", "", "no"])

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    calls = [ToolCall(str(i), "remember", {"text": "x" * 200}) for i in range(3)]
    outcomes = await Toolset([remember]).execute(
        calls, ToolContext(tmp_path), TerminalApprover(ask)
    )
    assert [o.is_error for o in outcomes] == [False, True, True]
    assert outcomes[1].content == "permission denied by the user"
    assert prompts[0].startswith("Allow remember text='xxx")
    assert prompts[0].endswith("...'? [y/N] ") and len(prompts[0]) < 120


async def test_the_terminal_approver_treats_end_of_input_as_a_refusal(tmp_path: Path) -> None:
    def closed(prompt: str) -> str:
        raise EOFError

    refusal = await TerminalApprover(closed).approve(
        ToolCall("1", "remember", {"text": "x"}), remember
    )
    assert refusal == "permission denied by the user"


def test_the_default_approver_follows_yes_and_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(default_approver(True), AutoApprover)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert isinstance(default_approver(False), DenyApprover)
    monkeypatch.setattr(sys, "stdin", None)
    assert isinstance(default_approver(False), DenyApprover)


def test_a_calls_input_shows_on_one_line_with_long_values_cut() -> None:
    text = describe_input({"path": "a.py", "limit": 50, "flags": {"all": True}})
    assert text == "path='a.py' limit=50 flags={\"all\": true}"
    long = describe_input({"content": "line\n" * 100}, value_width=20)
    assert long == "content='line\\nline\\nline\\nli...'" and "\n" not in long
    call = describe_call("read_file", {"path": "x" * 200, "offset": 3}, value_width=10, width=30)
    assert call == "read_file(path='xxxxxxx...', offset=3)"
    assert len(describe_call("bash", {"command": "y" * 500}, width=40)) == len("bash()") + 40
