"""`Agent.conversation`: one session, one user message after another (what `chat` runs on)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tidemark import Agent, ScriptedModel, Settings
from tidemark.messages import ToolResultBlock, ToolUseBlock
from tidemark.model import ModelRequest
from tidemark.tools import tool

pytestmark = pytest.mark.anyio


def _last_turn(model: ScriptedModel) -> ModelRequest:
    return [r for r in model.requests if r.purpose == "turn"][-1]


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(workspace=tmp_path, auto_approve=True, **kw)  # type: ignore[arg-type]


async def test_messages_follow_each_other_and_memory_updates_run_between_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.txt").write_text("alpha\n")
    model = ScriptedModel(
        [
            ScriptedModel.call("read_file", path="a.txt"),
            ScriptedModel.reply("It says alpha."),
            ScriptedModel.reply("Still alpha."),
        ]
    )
    streamed: list[str] = []
    settings = _settings(tmp_path, memory_init_tokens=0, memory_update_tokens=0)
    agent = Agent(model, settings=settings, on_text=streamed.append)
    async with agent.conversation() as conversation:
        first = await conversation.send("What does a.txt say?")
        assert (first.outcome, first.final_text, first.turns) == ("finished", "It says alpha.", 2)
        # The update due at the natural pause runs while the user would be typing.
        await conversation.wait_for_memory(10)
        assert [r.purpose for r in model.requests] == ["turn", "turn", "session-memory"]
        assert conversation.session.paths.memory.exists()
        second = await conversation.send("And now?")
        assert (second.final_text, second.turns) == ("Still alpha.", 3)
    assert streamed == ["It says alpha.", "Still alpha."]
    said = [m.text for m in _last_turn(model).messages if m.role == "user" and m.text]
    assert said == ["What does a.txt say?", "And now?"]


async def test_an_interrupted_message_leaves_a_valid_transcript_and_the_next_one_goes_on(
    tmp_path: Path,
) -> None:
    started = anyio.Event()

    @tool
    async def wait_long() -> str:
        """Takes a long time."""
        started.set()
        await anyio.sleep(60)
        return "finished waiting"

    model = ScriptedModel([ScriptedModel.call("wait_long"), ScriptedModel.reply("Here again.")])
    agent = Agent(model, tools=[wait_long], settings=_settings(tmp_path))
    async with agent.conversation() as conversation:
        async with anyio.create_task_group() as tg:
            interrupt = anyio.CancelScope()

            async def send() -> None:
                with interrupt:
                    await conversation.send("Wait for it")

            tg.start_soon(send)
            await started.wait()
            interrupt.cancel()  # what Ctrl-C does in the chat
        result = await conversation.send("Are you there?")
        assert result.final_text == "Here again."
    messages = _last_turn(model).messages
    (use,) = [b for m in messages for b in m.content if isinstance(b, ToolUseBlock)]
    (answer,) = [b for m in messages for b in m.content if isinstance(b, ToolResultBlock)]
    assert answer.tool_use_id == use.id and answer.is_error
    assert "interrupted" in answer.content
    assert messages[-1].text == "Are you there?"


async def test_a_conversation_continues_a_session_after_it_was_left(tmp_path: Path) -> None:
    model = ScriptedModel([ScriptedModel.reply("One."), ScriptedModel.reply("Two.")])
    agent = Agent(model, settings=_settings(tmp_path))
    async with agent.conversation() as conversation:
        await conversation.send("Count")
        session_id = conversation.session_id
    async with agent.conversation(session_id, resume=True) as again:
        assert again.session_id == session_id
        result = await again.send("Go on")
        assert (result.final_text, result.turns) == ("Two.", 2)
    said = [m.text for m in _last_turn(model).messages]
    assert said == ["Count", "One.", "Go on"]
