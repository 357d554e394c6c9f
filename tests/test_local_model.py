"""The embedded local model, for real: loads the default GGUF and generates on the CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from tidemark.errors import ProviderUnavailableError
from tidemark.messages import Message, TextBlock, ToolResultBlock, ToolUseBlock
from tidemark.model import ModelRequest, ToolSpec
from tidemark.prompts import REPOSITORY_HEADING
from tidemark.providers.local import LocalModel, locate_model_parts
from tidemark.providers.local_format import fixed_prefix, render_prompt, tool_entry, with_answer

pytest.importorskip("llama_cpp", reason="needs the 'local' extra: pip install '.[local]'")
try:
    locate_model_parts()
except ProviderUnavailableError as exc:
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = [
    pytest.mark.local_model,
    pytest.mark.slow,
    pytest.mark.timeout(900),
]
# One backend is enough: each test spends its time in the model, not in anyio.
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

SYSTEM = "You are a coding agent working in a repository. Use the tools to inspect files."
READ_FILE = ToolSpec(
    name="read_file",
    description="Read a text file from the workspace. Returns the text with line numbers.",
    input_schema={
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "Path relative to the workspace."},
            "offset": {"type": "integer", "description": "First line to read (1-based)."},
            "limit": {"type": "integer", "description": "How many lines to read."},
        },
        "required": ["path"],
    },
)
LIST_FILES = ToolSpec(
    name="list_files",
    description="List the files in a directory of the workspace.",
    input_schema={
        "type": "object",
        "properties": {"path": {"type": "string"}, "pattern": {"type": "string"}},
    },
)


@pytest.mark.anyio
@asyncio_only
async def test_the_default_model_makes_a_valid_constrained_tool_call() -> None:
    model = LocalModel()
    try:
        # The AMX fix: without it a native build segfaults on the first token on Xeons with AMX.
        assert model._llm.model_params.use_extra_bufts is False  # pyright: ignore[reportPrivateUsage]
        request = ModelRequest(
            system=SYSTEM,
            messages=[Message.user_text("Read the file config.py")],
            tools=[READ_FILE, LIST_FILES],
            max_tokens=128,
        )
        shown: list[str] = []
        response = await model.generate(request, shown.append)
        assert response.stop_reason == "tool_use"
        calls = [b for b in response.content if isinstance(b, ToolUseBlock)]
        assert calls, response.content
        assert calls[0].name == "read_file"
        assert calls[0].input["path"].endswith("config.py")
        assert calls[0].id.startswith("toolu_local_")
        assert shown == []  # a tool call is not streamed as text
        assert response.usage.total_input_tokens > 100 and response.usage.output_tokens > 5
    finally:
        await model.aclose()


@pytest.mark.anyio
@asyncio_only
async def test_the_default_model_streams_text_and_reuses_the_cached_prefix() -> None:
    model = LocalModel()
    try:
        first_turn = [Message.user_text("Reply with one short sentence: what is Python?")]
        pieces: list[str] = []

        async def on_text(piece: str) -> None:
            pieces.append(piece)

        response = await model.generate(
            ModelRequest(system="Be brief.", messages=first_turn, max_tokens=48), on_text
        )
        assert response.stop_reason in ("end_turn", "max_tokens")
        assert len(pieces) > 3
        assert [TextBlock(text="".join(pieces).strip())] == response.content
        assert model.last_stats is not None and model.last_stats.output_tokens > 3

        second_turn = [
            *first_turn,
            Message(role="assistant", origin="model", content=response.content),
            Message.user_text("Summarize that in three words."),
        ]
        memory = await model.generate(
            ModelRequest(
                system="Be brief.",
                messages=second_turn,
                max_tokens=10_000,
                purpose="session-memory",
            )
        )
        assert memory.content and isinstance(memory.content[0], TextBlock)
        assert memory.usage.output_tokens <= 512  # session-memory output is capped
        # The update ran on its own context, so the turns' cache survived it: the next turn
        # extends the prompt and llama.cpp only prefills the new part.
        await model.generate(ModelRequest(system="Be brief.", messages=second_turn, max_tokens=8))
        stats = model.last_stats
        assert stats is not None
        assert stats.reused_tokens >= response.usage.total_input_tokens - 1
    finally:
        await model.aclose()


@pytest.mark.anyio
@asyncio_only
async def test_a_tool_result_turn_continues_the_conversation() -> None:
    # Without the saved prefix: the whole prompt is read, in steps the status line shows.
    model = LocalModel(prefix_cache=False)
    try:
        call = ToolUseBlock(id="toolu_local_1", name="read_file", input={"path": "config.py"})
        messages = [
            Message.user_text("Read config.py and tell me the value of PORT."),
            Message(role="assistant", origin="model", content=[call]),
            Message(
                role="user",
                origin="tools",
                content=[
                    ToolResultBlock(
                        tool_use_id=call.id, content="1\tHOST = 'localhost'\n2\tPORT = 8731"
                    )
                ],
            ),
        ]
        seen: list[tuple[str, int, int]] = []
        model.on_progress = lambda phase, done, total: seen.append((phase, done, total))
        response = await model.generate(
            ModelRequest(system=SYSTEM, messages=messages, tools=[READ_FILE], max_tokens=96)
        )
        # The reply is the explicit `answer` action (or a repeated read, which the model is
        # made to answer instead): the run's answer, as text.
        assert response.stop_reason == "end_turn", response.content
        text = " ".join(b.text for b in response.content if isinstance(b, TextBlock))
        assert "8731" in text
        # The status line saw the prompt read in steps, then the reply written.
        reading = [s for s in seen if s[0] == "reading"]
        assert len(reading) >= 2 and reading[-1][1] == reading[-1][2]
        assert seen[-1][0] == "writing" and seen[-1][1] > 5
    finally:
        await model.aclose()


def hf_tojson(value: Any) -> str:
    # transformers renders chat templates with this `tojson`, not Jinja's HTML-safe one.
    return json.dumps(value, ensure_ascii=False)


def test_the_prompt_matches_the_chat_template_embedded_in_the_gguf() -> None:
    import jinja2

    model = LocalModel()
    try:
        template = model.chat_template
        assert "<tool_call>" in template
    finally:
        model._llm.close()  # pyright: ignore[reportPrivateUsage]
    call = ToolUseBlock(id="t1", name="read_file", input={"path": "config.py"})
    messages = [
        Message.user_text("What is in config.py?"),
        Message(role="assistant", origin="model", content=[TextBlock(text="Looking."), call]),
        Message(
            role="user",
            origin="tools",
            content=[ToolResultBlock(tool_use_id="t1", content="1\tPORT = 1")],
        ),
        Message(role="assistant", origin="model", content=[TextBlock(text="PORT is 1.")]),
        Message.user_text("Thanks."),
    ]
    ours = render_prompt(SYSTEM, messages, [READ_FILE, LIST_FILES])
    environment = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    environment.filters["tojson"] = hf_tojson
    theirs = environment.from_string(template).render(
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is in config.py?"},
            {
                "role": "assistant",
                "content": "Looking.",
                "tool_calls": [
                    {"function": {"name": "read_file", "arguments": {"path": "config.py"}}}
                ],
            },
            # read_file results are shown without their line numbers
            {"role": "tool", "content": "PORT = 1"},
            {"role": "assistant", "content": "PORT is 1."},
            {"role": "user", "content": "Thanks."},
        ],
        tools=[tool_entry(READ_FILE), tool_entry(LIST_FILES)],
        add_generation_prompt=True,
    )
    # The 1.5B GGUF's template writes the format line's example in double braces
    # ({{"name": ...}}), unlike the template the model was trained with (Qwen2.5's
    # tokenizer_config.json, and the 0.5B GGUF's): that one line may differ.
    example = '{"name": <function-name>, "arguments": <args-json-object>}'
    assert ours == theirs.replace("{" + example + "}", example)


@pytest.mark.anyio
@asyncio_only
async def test_a_cancelled_generation_leaves_the_model_usable() -> None:
    model = LocalModel()
    try:
        streaming = anyio.Event()

        async def on_text(piece: str) -> None:
            streaming.set()

        long_request = ModelRequest(
            system="Be helpful.",
            messages=[Message.user_text("Count from 1 to 300, one number per line.")],
            max_tokens=400,
        )
        async with anyio.create_task_group() as group:
            group.start_soon(model.generate, long_request, on_text)
            await streaming.wait()
            group.cancel_scope.cancel()

        response = await model.generate(
            ModelRequest(
                system="Be brief.",
                messages=[Message.user_text("Say OK.")],
                max_tokens=8,
            )
        )
        assert response.content and isinstance(response.content[0], TextBlock)
        assert response.usage.output_tokens <= 9
    finally:
        await model.aclose()


@pytest.mark.anyio
@asyncio_only
async def test_a_second_model_loads_the_fixed_prefix_from_disk_instead_of_reading_it(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "prefixes"
    system = f"You are a coding agent.\n\n{REPOSITORY_HEADING}\nrepo, with these files:\nconfig.py"
    request = ModelRequest(
        system=system,
        messages=[Message.user_text("Read the file config.py")],
        tools=[READ_FILE, LIST_FILES],
        max_tokens=64,
    )
    fixed = fixed_prefix(render_prompt(system, request.messages, with_answer(request.tools)))
    first = LocalModel(prefix_cache=folder)
    try:
        await first.generate(request)
        assert first.last_stats is not None and first.last_stats.reused_tokens == 0
    finally:
        await first.aclose()
    (saved,) = folder.glob("prefix-*.bin")
    second = LocalModel(prefix_cache=folder)
    try:
        seen: list[tuple[str, int, int]] = []
        second.on_progress = lambda phase, done, total: seen.append((phase, done, total))
        response = await second.generate(request)
        stats = second.last_stats
        assert stats is not None
        # Everything up to the end of the tool list came from the file; only the repository
        # part and the task were read.
        fixed_tokens = len(second._tokenize(fixed, special=True, add_bos=True))  # pyright: ignore[reportPrivateUsage]
        assert stats.reused_tokens >= fixed_tokens - 1
        assert stats.prompt_tokens - stats.reused_tokens < 60
        assert any(isinstance(b, ToolUseBlock) for b in response.content), response.content
    finally:
        await second.aclose()
    # A file that is not a saved state is dropped, and the prompt is read as usual.
    saved.write_bytes(b"not a state")
    third = LocalModel(prefix_cache=folder)
    try:
        await third.generate(request)
        assert third.last_stats is not None and third.last_stats.reused_tokens == 0
        assert [p.read_bytes()[:11] != b"not a state" for p in folder.glob("prefix-*.bin")] == [
            True
        ]
    finally:
        await third.aclose()
