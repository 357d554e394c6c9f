"""The Agent with the shipped ScriptedModel: loop behaviour, guardrails, events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import tidemark
from tidemark import Agent, ScriptedModel, Settings, tools
from tidemark.events import EVENT_KEYS
from tidemark.messages import TextBlock, ToolResultBlock
from tidemark.model import ModelResponse

pytestmark = pytest.mark.anyio


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(workspace=tmp_path, auto_approve=True, **kw)  # type: ignore[arg-type]


async def test_an_agent_reads_a_file_and_answers_with_a_scripted_model(tmp_path: Path) -> None:
    (tmp_path / "config.py").write_text("PORT = 8042\n")
    model = ScriptedModel(
        [ScriptedModel.call("read_file", path="config.py"), ScriptedModel.reply("PORT is 8042")]
    )
    result = await Agent(model, settings=_settings(tmp_path)).run("What is PORT?")
    assert result.outcome == "finished" and result.final_text == "PORT is 8042"
    results = [b for b in model.requests[-1].messages[-1].content if isinstance(b, ToolResultBlock)]
    assert "PORT = 8042" in results[0].content


async def test_every_event_carries_its_documented_keys(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x\n" * 3000)
    # Distinct reads: the same read with the same result a third time is refused.
    steps = [ScriptedModel.call("read_file", path="a.txt", offset=i) for i in range(1, 9)]
    model = ScriptedModel([*steps, ScriptedModel.reply("done")])
    settings = _settings(
        tmp_path, compact_at=4000, memory_init_tokens=1000, memory_update_tokens=500
    )
    with capture_logs() as logs:
        await Agent(model, settings=settings).run("read it")
    names = {log["event"] for log in logs}
    assert {
        "turn_finished",
        "tool_call",
        "memory_update_started",
        "summary_boundary",
        "memory_update_committed",
        "compaction",
        "session_finished",
    } <= names
    for log in logs:
        assert "timestamp" in log and "session_id" in log
        for key in EVENT_KEYS.get(log["event"], ()):
            assert key in log, (log["event"], key)


async def test_the_same_call_with_the_same_result_three_turns_running_is_not_run_again(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.txt").write_text("same\n")
    steps = [ScriptedModel.call("read_file", path="a.txt") for _ in range(3)]
    model = ScriptedModel([*steps, ScriptedModel.reply("ok")])
    await Agent(model, settings=_settings(tmp_path)).run("loop")
    third = model.requests[3].messages[-1].content[0]
    assert isinstance(third, ToolResultBlock) and third.is_error
    assert "exact call" in third.content


async def test_a_model_that_answers_without_acting_is_nudged_once_when_asked(
    tmp_path: Path,
) -> None:
    model = ScriptedModel([ScriptedModel.reply("I think it is fine."), ScriptedModel.reply("ok")])
    settings = _settings(tmp_path, nudge_without_action=True)
    result = await Agent(model, settings=settings).run("x")
    assert result.turns == 2
    assert "not used any tool" in model.requests[1].messages[-1].text


async def test_the_turn_cap_raises_a_turn_limit_error(tmp_path: Path) -> None:
    model = ScriptedModel([ScriptedModel.call("list_files") for _ in range(5)])
    with pytest.raises(tidemark.TurnLimitError, match="turn cap"):
        await Agent(model, settings=_settings(tmp_path, max_turns=2)).run("x")


def test_the_public_api_imports() -> None:
    for name in tidemark.__all__:
        assert getattr(tidemark, name) is not None
    for name in tools.__all__:
        assert getattr(tools, name) is not None


async def test_whitespace_only_text_from_the_model_never_reaches_a_request(tmp_path: Path) -> None:
    call = ScriptedModel.call("list_files")
    padded = call.model_copy(update={"content": [TextBlock(text="\n\n"), *call.content]})
    model = ScriptedModel([padded, ScriptedModel.reply("ok")])
    await Agent(model, settings=_settings(tmp_path)).run("x")
    sent = model.requests[-1].messages[-2]
    assert all(not isinstance(b, TextBlock) for b in sent.content)


async def test_a_model_failure_is_recorded_as_a_failed_session(tmp_path: Path) -> None:
    def fail(_request: object) -> ModelResponse:
        raise tidemark.ModelError("the API failed with HTTP 500")

    model = ScriptedModel([fail])
    with pytest.raises(tidemark.ModelError):
        await Agent(model, settings=_settings(tmp_path)).run("x")
    (folder,) = (tmp_path / ".tidemark" / "sessions").iterdir()
    last = json.loads((folder / "events.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "session_finished"
    assert last["outcome"] == "failed" and last["exit_code"] == 1


async def test_an_empty_reply_is_not_an_answer_and_raises_no_answer_error(tmp_path: Path) -> None:
    (tmp_path / "config.py").write_text("PORT = 8042\n")
    empty = ModelResponse(content=[], stop_reason="end_turn", usage=tidemark.Usage())
    model = ScriptedModel([ScriptedModel.call("read_file", path="config.py"), empty])
    with pytest.raises(tidemark.NoAnswerError, match="empty reply") as raised:
        await Agent(model, settings=_settings(tmp_path)).run("What is PORT?")
    (folder,) = (tmp_path / ".tidemark" / "sessions").iterdir()
    assert raised.value.session_id == folder.name  # the CLI's resume hint comes from it
    records = [json.loads(line) for line in (folder / "transcript.jsonl").read_text().splitlines()]
    texts = json.dumps(records)
    assert "(no reply)" not in texts
    last = [r for r in records if r["type"] == "message"][-1]["message"]
    assert last["role"] == "user"  # a resume asks the model again
    finished = json.loads((folder / "events.jsonl").read_text().splitlines()[-1])
    assert finished["outcome"] == "empty_reply" and finished["exit_code"] == 1


async def test_a_model_that_alternates_between_the_same_calls_is_stopped_as_repeating(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.txt").write_text("A\n")
    (tmp_path / "b.txt").write_text("B\n")
    a = ScriptedModel.call("read_file", path="a.txt")
    b = ScriptedModel.call("read_file", path="b.txt")
    model = ScriptedModel([a, b, a, b, a, b, a, ScriptedModel.reply("never reached")])
    with pytest.raises(tidemark.NoAnswerError, match="repeating the same tool calls"):
        await Agent(model, settings=_settings(tmp_path, max_turns=20)).run("loop")
    # Turn 5 makes the read of a.txt a third time: refused, and the model is told. Turn 6
    # does the same with b.txt: refused, and the run stops there, not at the turn cap.
    assert len(model.requests) == 6
    told = model.requests[5].messages[-1].content
    assert all(isinstance(r, ToolResultBlock) and "exact call" in r.content for r in told)


async def test_a_call_repeated_after_the_workspace_changed_runs_again(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old\n")
    read = ScriptedModel.call("read_file", path="a.txt")
    write = ScriptedModel.call("write_file", path="a.txt", content="new\n")
    model = ScriptedModel([read, read, write, read, ScriptedModel.reply("it says new")])
    result = await Agent(model, settings=_settings(tmp_path)).run("x")
    assert result.outcome == "finished"
    third_read = model.requests[4].messages[-1].content[0]
    assert isinstance(third_read, ToolResultBlock) and "new" in third_read.content


def test_the_small_prompt_lists_the_repository_files_without_hidden_ones(tmp_path: Path) -> None:
    from tidemark.prompts import system_prompt

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("")
    (tmp_path / "config.py").write_text("")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_text("")
    prompt = system_prompt(tmp_path, "small")
    assert prompt.endswith(f"{tmp_path.name}, with these files:\nconfig.py\npkg/mod.py")
    for n in range(60):
        (tmp_path / f"f{n:02d}.txt").write_text("")
    assert "(and 22 more)" in system_prompt(tmp_path, "small")
    assert "with these files" not in system_prompt(tmp_path)
