"""On the local provider a turn never waits for a memory update to finish generating.

Memory updates run on their own llama.cpp context (same weights, own KV cache), so a turn
issued while an update generates is served at once. The ordering tests use a stand-in for
llama.cpp whose update holds between tokens until the test releases it; one smoke test runs
the real model.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.support.llama_standin import SlowUpdates
from tidemark.errors import ProviderUnavailableError
from tidemark.messages import Message, TextBlock
from tidemark.model import ModelRequest, ModelResponse

pytest.importorskip("llama_cpp", reason="needs the 'local' extra: pip install '.[local]'")

from tidemark.providers.local import LocalModel, locate_model_parts

pytestmark = pytest.mark.anyio

SYSTEM = "You are a coding agent working in a repository."


def _gguf(tmp_path: Path) -> Path:
    path = tmp_path / "standin.gguf"
    path.write_bytes(b"GGUF" + bytes(64))
    return path


def _request(purpose: str, max_tokens: int = 64) -> ModelRequest:
    messages = [Message.user_text("Read the inventory module and say what it does.")]
    if purpose == "session-memory":
        messages.append(
            Message.user_text(
                "<tidemark-session-memory-update>\nUpdate the session memory.\n"
                "</tidemark-session-memory-update>",
                origin="runtime",
            )
        )
    return ModelRequest(
        system=SYSTEM,
        messages=messages,
        tools=[],
        max_tokens=max_tokens,
        purpose=purpose,  # type: ignore[arg-type]
        tool_choice="none" if purpose == "session-memory" else "auto",
    )


def _text(response: ModelResponse) -> str:
    return "".join(b.text for b in response.content if isinstance(b, TextBlock))


async def test_a_turn_issued_during_a_memory_update_is_served_before_the_update_ends(
    tmp_path: Path,
) -> None:
    engine = SlowUpdates()
    model = LocalModel(_gguf(tmp_path), engine=engine)
    updates: list[ModelResponse] = []
    turns: list[ModelResponse] = []

    async def update() -> None:
        updates.append(await model.generate(_request("session-memory")))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(update)
            started = await anyio.to_thread.run_sync(engine.update_started.wait, 30)
            assert started, "the stand-in update never started generating"
            try:
                # The update is generating and held mid-reply: the turn must not wait for it.
                with anyio.fail_after(30):
                    turns.append(await model.generate(_request("turn")))
            finally:
                engine.release.set()
    finally:
        await model.aclose()
    assert _text(turns[0]) == "The answer is ready."
    assert engine.finished == ["turn", "update"]
    assert _text(updates[0]).startswith("# Worklog")
    # Two contexts: the turn's KV cache was never evicted by the update's prompt.
    assert len(engine.contexts) == 2
    assert all(c.closed for c in engine.contexts)


async def test_the_memory_context_is_made_only_when_an_update_first_runs(tmp_path: Path) -> None:
    engine = SlowUpdates()
    engine.release.set()
    model = LocalModel(_gguf(tmp_path), engine=engine)
    try:
        await model.generate(_request("turn"))
        assert len(engine.contexts) == 1
        await model.generate(_request("session-memory"))
        await model.generate(_request("session-memory"))
        assert len(engine.contexts) == 2
    finally:
        await model.aclose()
    assert engine.finished == ["turn", "update", "update"]


@pytest.mark.local_model
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_with_the_real_model_a_turn_runs_while_an_update_generates() -> None:
    try:
        locate_model_parts()
    except ProviderUnavailableError as exc:
        pytest.skip(str(exc))
    model = LocalModel(context_window=2048)
    done: list[str] = []
    responses: dict[str, ModelResponse] = {}

    async def ask(purpose: str, max_tokens: int) -> None:
        responses[purpose] = await model.generate(_request(purpose, max_tokens))
        done.append(purpose)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "session-memory", 48)
            await anyio.sleep(0.5)  # the update has its context and is prefilling
            tg.start_soon(ask, "turn", 8)
    finally:
        await model.aclose()
    assert sorted(done) == ["session-memory", "turn"]
    assert responses["turn"].usage.output_tokens > 0
    assert responses["session-memory"].usage.output_tokens > 0
