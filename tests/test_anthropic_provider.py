"""The Anthropic provider against the strict fake server, through the real SDK."""

from __future__ import annotations

import anyio
import pytest

from tests.support.fakeapi import FakeMessagesAPI, Reply, Script, text, tool_calls
from tidemark import ContextTooLongError, Message, ModelError, ModelRequest, ToolSpec
from tidemark.messages import ToolResultBlock, ToolUseBlock
from tidemark.providers.anthropic import AnthropicModel

pytestmark = pytest.mark.anyio

TOOLS = [
    ToolSpec(
        name="read_file",
        description="Read a file.",
        input_schema={
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    )
]


def _request(**kw: object) -> ModelRequest:
    values: dict[str, object] = {
        "system": "You are a coding agent.",
        "messages": [Message.user_text("hello")],
        "tools": TOOLS,
    }
    values.update(kw)
    return ModelRequest(**values)  # type: ignore[arg-type]


async def test_a_streamed_tool_call_comes_back_as_typed_blocks_with_usage() -> None:
    with FakeMessagesAPI(
        Script([tool_calls(("read_file", {"path": "a.py"}), text="Reading.")])
    ) as api:
        model = AnthropicModel("m", base_url=api.url, api_key="k")
        streamed: list[str] = []
        response = await model.generate(_request(), on_text=streamed.append)
        await model.aclose()
    uses = [b for b in response.content if isinstance(b, ToolUseBlock)]
    assert uses[0].name == "read_file" and uses[0].input == {"path": "a.py"}
    assert response.stop_reason == "tool_use"
    assert response.usage.total_input_tokens == api.requests[0].input_tokens
    assert "".join(streamed) == "Reading."


@pytest.mark.parametrize("purpose", ["turn", "session-memory", "compact"])
async def test_every_request_carries_its_purpose_header(purpose: str) -> None:
    with FakeMessagesAPI() as api:
        model = AnthropicModel("m", base_url=api.url, api_key="k")
        await model.generate(_request(purpose=purpose))
        await model.aclose()
    assert [r.purpose for r in api.requests] == [purpose]


async def test_the_shared_prefix_is_read_from_the_prompt_cache_on_the_next_request() -> None:
    first = [Message.user_text("read a.py")]
    use = ToolUseBlock(id="toolu_1", name="read_file", input={"path": "a.py"})
    second = [
        *first,
        Message(role="assistant", origin="model", content=[use]),
        Message(
            role="user",
            origin="tools",
            content=[ToolResultBlock(tool_use_id="toolu_1", content="x = 1\n" * 500)],
        ),
    ]
    with FakeMessagesAPI() as api:
        model = AnthropicModel("m", base_url=api.url, api_key="k")
        await model.generate(_request(messages=first))
        response = await model.generate(_request(messages=second, cache_breakpoint=0))
        await model.aclose()
    assert response.usage.cache_read_input_tokens > 0
    assert api.invalid_requests == []


async def test_a_stream_that_breaks_midway_is_retried_from_the_start() -> None:
    replies = iter(
        [
            Reply(content=[{"type": "text", "text": "partial answer"}], drop_stream_after_events=3),
            text("whole answer"),
        ]
    )
    with FakeMessagesAPI(lambda _r: next(replies)) as api:
        model = AnthropicModel("m", base_url=api.url, api_key="k")
        response = await model.generate(_request())
        await model.aclose()
    assert response.content[0].model_dump()["text"] == "whole answer"
    assert len(api.requests) == 2


async def test_overload_is_retried_by_the_sdk_then_succeeds() -> None:
    replies = iter([Reply(content=[], status=529), text("fine")])
    with FakeMessagesAPI(lambda _r: next(replies)) as api:
        model = AnthropicModel("m", base_url=api.url, api_key="k")
        response = await model.generate(_request())
        await model.aclose()
    assert response.stop_reason == "end_turn"


async def test_a_request_the_api_rejects_is_a_model_error_and_too_long_is_its_own_kind() -> None:
    with FakeMessagesAPI(context_window=50) as api:
        model = AnthropicModel("m", base_url=api.url, api_key="k")
        with pytest.raises(ContextTooLongError, match="prompt is too long"):
            await model.generate(_request())
        await model.aclose()
    with FakeMessagesAPI(lambda _r: Reply(content=[], status=401)) as api:
        model = AnthropicModel("m", base_url=api.url, api_key="k")
        with pytest.raises(ModelError, match="401"):
            await model.generate(_request())
        await model.aclose()


_STREAM_FAULTS = {
    "a dropped connection": {"drop_stream_after_events": 4},
    "a malformed event": {"malformed_event_after": 4},
    "an end without message_stop": {"end_stream_after_events": 6},
    "a stall": {"stall_after_events": 4, "stall_s": 60.0},
    "an overloaded error event": {"mid_stream_error": "overloaded_error"},
}


@pytest.mark.parametrize("fault", sorted(_STREAM_FAULTS))
async def test_a_stream_fault_is_retried_from_the_start_and_the_reply_is_whole(fault: str) -> None:
    faulty = Reply(
        content=[{"type": "text", "text": "partial answer " * 8}], **_STREAM_FAULTS[fault]
    )
    replies = iter([faulty, text("whole answer")])
    with FakeMessagesAPI(lambda _r: next(replies)) as api, anyio.fail_after(30):
        model = AnthropicModel("m", base_url=api.url, api_key="k", stall_timeout=0.3)
        response = await model.generate(_request())
        await model.aclose()
    assert response.content[0].model_dump()["text"] == "whole answer"
    assert response.stop_reason == "end_turn"
    assert len(api.requests) == 2
    assert api.requests[0].body == api.requests[1].body  # the same request, from the start


async def test_a_stream_that_keeps_failing_is_one_model_error_naming_the_last_fault() -> None:
    def always_cut(_request: object) -> Reply:
        return Reply(content=[{"type": "text", "text": "never whole"}], malformed_event_after=3)

    with FakeMessagesAPI(always_cut) as api:
        model = AnthropicModel("m", base_url=api.url, api_key="k")
        with pytest.raises(ModelError, match=r"failed 4 times in a row \(last: a malformed event"):
            await model.generate(_request())
        await model.aclose()
    assert len(api.requests) == 4
