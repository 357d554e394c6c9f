"""The fake Messages API behaves like the real one as the real SDK sees it."""

from __future__ import annotations

import base64
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import anyio
import pytest

from tests.support.fakeapi import (
    FakeMessagesAPI,
    LatencyModel,
    RecordedRequest,
    Reply,
    Script,
    count_tokens,
    signature_for,
    text,
    tool_calls,
    validate_request,
)

MODEL = "claude-test"
TOOLS: list[Any] = [
    {
        "name": "bash",
        "description": "Run a shell command.",
        "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}}},
    }
]


@pytest.fixture
def api() -> Iterator[FakeMessagesAPI]:
    with FakeMessagesAPI() as server:
        yield server


@pytest.fixture
async def client(api: FakeMessagesAPI) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # Plain http: skip loading CA certificates, which costs ~20 ms per client.
    http_client = anthropic.DefaultAsyncHttpxClient(verify=False)
    async with anthropic.AsyncAnthropic(
        base_url=api.url, api_key="test", max_retries=0, http_client=http_client
    ) as c:
        yield c


def user(content: Any) -> Any:
    return {"role": "user", "content": content}


def assistant(content: Any) -> Any:
    return {"role": "assistant", "content": content}


def tool_use(tool_use_id: str, cmd: str = "ls") -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_use_id, "name": "bash", "input": {"cmd": cmd}}


def tool_result(tool_use_id: str, content: Any = "ok") -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_use_id, "content": content}


async def stream(client: anthropic.AsyncAnthropic, messages: list[Any], **kw: Any) -> Any:
    async with client.messages.stream(
        model=MODEL, max_tokens=2048, messages=messages, **kw
    ) as events:
        return await events.get_final_message()


@pytest.mark.anyio
async def test_a_streamed_text_reply_is_parsed_by_the_sdk(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    reply = "The quick brown fox jumps over the lazy dog, twice over."
    api.responder = Script([text(reply)])

    message = await stream(client, [user("hi")])

    assert message.content[0].type == "text"
    assert message.content[0].text == reply
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == count_tokens(api.requests[0].body)
    assert message.usage.output_tokens == math.ceil(len(reply) / 4)
    assert api.requests[0].stream


@pytest.mark.anyio
async def test_parallel_tool_calls_stream_back_with_unique_ids_and_full_inputs(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    long_command = "find . -name '*.py' | xargs grep -n 'def ' | sort | head -50"
    api.responder = Script([tool_calls(("bash", {"cmd": long_command}), ("bash", {"cmd": "pwd"}))])

    message = await stream(client, [user("look around")], tools=TOOLS)

    calls = [block for block in message.content if block.type == "tool_use"]
    assert [call.input for call in calls] == [{"cmd": long_command}, {"cmd": "pwd"}]
    assert all(call.id.startswith("toolu_") for call in calls)
    assert calls[0].id != calls[1].id
    assert message.stop_reason == "tool_use"


@pytest.mark.anyio
async def test_thinking_blocks_stream_with_a_signature_the_server_accepts_back(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    api.responder = Script(
        [Reply(content=[{"type": "thinking", "thinking": "Let me think."}, tool_use("toolu_1")])]
    )
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}

    message = await stream(client, [user("go")], tools=TOOLS, thinking=thinking)
    history = [user("go"), assistant(message.to_dict()["content"]), user([tool_result("toolu_1")])]
    await stream(client, history, tools=TOOLS, thinking=thinking)

    assert message.content[0].type == "thinking"
    assert message.content[0].signature == signature_for("Let me think.")
    assert api.invalid_requests == []


@pytest.mark.anyio
async def test_create_without_streaming_returns_the_whole_message(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    api.responder = Script([text("plain")])

    message = await client.messages.create(model=MODEL, max_tokens=10, messages=[user("hi")])

    assert message.content[0].type == "text"
    assert message.content[0].text == "plain"
    assert not api.requests[0].stream
    assert api.requests[0].first_token_at is not None


@pytest.mark.anyio
async def test_the_purpose_header_is_recorded_and_routes_the_script(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    script = Script([text("turn one")], memory=lambda _r: text("memory noted"))
    api.responder = script

    memory = await stream(
        client, [user("remember")], extra_headers={"X-Tidemark-Purpose": "session-memory"}
    )
    turn = await stream(client, [user("hi")], extra_headers={"X-Tidemark-Purpose": "turn"})
    after = await stream(client, [user("again")])

    assert [m.content[0].text for m in (memory, turn, after)] == [  # type: ignore[union-attr]
        "memory noted",
        "turn one",
        "Done.",
    ]
    assert [r.purpose for r in api.requests] == ["session-memory", "turn", None]
    assert api.requests_for("session-memory") == [api.requests[0]]
    assert script.remaining == 0


INVALID_REQUESTS: list[tuple[str, list[Any], dict[str, Any], str]] = [
    (
        "tool_use without a tool_result after it",
        [user("go"), assistant([tool_use("toolu_a")]), user("what now?")],
        {"tools": TOOLS},
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: "
        "toolu_a. Each `tool_use` block must have a corresponding `tool_result` block in the "
        "next message.",
    ),
    (
        "tool_use as the last message",
        [user("go"), assistant([tool_use("toolu_a")])],
        {"tools": TOOLS},
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: "
        "toolu_a.",
    ),
    (
        "tool_result after text",
        [
            user("go"),
            assistant([tool_use("toolu_a")]),
            user([{"type": "text", "text": "here"}, tool_result("toolu_a")]),
        ],
        {"tools": TOOLS},
        "messages.2: Did not find 1 tool_result block(s) at the beginning of this message. "
        "Messages following tool_use blocks must begin with a matching number of tool_result "
        "blocks.",
    ),
    (
        "orphan tool_result at the start",
        [user([tool_result("toolu_a")])],
        {"tools": TOOLS},
        "messages.0.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_a. "
        "Each `tool_result` block must have a corresponding `tool_use` block in the previous "
        "message.",
    ),
    (
        "tool_result answering a tool_use two messages back",
        [
            user("go"),
            assistant([tool_use("toolu_a")]),
            user([tool_result("toolu_a")]),
            assistant("ok"),
            user([tool_result("toolu_a")]),
        ],
        {"tools": TOOLS},
        "messages.4.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_a.",
    ),
    (
        "tool blocks without tools",
        [user("go"), assistant([tool_use("toolu_a")]), user([tool_result("toolu_a")])],
        {},
        "Requests which include `tool_use` or `tool_result` blocks must define tools.",
    ),
    (
        "duplicate tool_use ids",
        [
            user("go"),
            assistant([tool_use("toolu_a")]),
            user([tool_result("toolu_a")]),
            assistant([tool_use("toolu_a")]),
            user([tool_result("toolu_a")]),
        ],
        {"tools": TOOLS},
        "messages.3.content.0: `tool_use` ids must be unique",
    ),
    (
        "five cache breakpoints",
        [
            user(
                [
                    {"type": "text", "text": f"part {k}", "cache_control": {"type": "ephemeral"}}
                    for k in range(5)
                ]
            )
        ],
        {},
        "A maximum of 4 blocks with cache_control may be provided. Found 5.",
    ),
    (
        "an empty text block",
        [user([{"type": "text", "text": ""}])],
        {},
        "messages: text content blocks must be non-empty",
    ),
    (
        "an empty text block inside a tool_result",
        [
            user("go"),
            assistant([tool_use("toolu_a")]),
            user([tool_result("toolu_a", [{"type": "text", "text": ""}])]),
        ],
        {"tools": TOOLS},
        "messages: text content blocks must be non-empty",
    ),
    (
        "an empty user message",
        [user("go"), assistant("ok"), user([])],
        {},
        "messages.2: all messages must have non-empty content except for the optional final "
        "assistant message",
    ),
    (
        "an assistant message first",
        [assistant("hello"), user("hi")],
        {},
        'messages: first message must use the "user" role',
    ),
    (
        "a system role in messages",
        [user("hi"), {"role": "system", "content": "be nice"}],
        {},
        "messages.1.role: Input should be 'user' or 'assistant'",
    ),
    ("no messages", [], {}, "messages: at least one message is required"),
    (
        "a final assistant prefill ending in whitespace",
        [user("hi"), assistant("Sure, ")],
        {},
        "messages: final assistant content cannot end with trailing whitespace",
    ),
    (
        "a tampered thinking signature",
        [
            user("go"),
            assistant(
                [
                    {"type": "thinking", "thinking": "edited", "signature": signature_for("orig")},
                    tool_use("toolu_a"),
                ]
            ),
            user([tool_result("toolu_a")]),
        ],
        {"tools": TOOLS, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        "messages.1.content.0: Invalid `signature` in `thinking` block",
    ),
    (
        "thinking dropped during a tool loop",
        [user("go"), assistant([tool_use("toolu_a")]), user([tool_result("toolu_a")])],
        {"tools": TOOLS, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
        "`tool_use`. When `thinking` is enabled, a final `assistant` message must start with a "
        "thinking block",
    ),
]


_THOUGHT = {
    "type": "thinking",
    "thinking": "Let me list.",
    "signature": signature_for("Let me list."),
}
_EPHEMERAL = {"type": "ephemeral"}

# What a leaked internal field or a wrong option looks like to the API.
INVALID_REQUESTS += [
    (
        "an unknown key on a message",
        [{"role": "user", "content": "go", "id": "msg_1"}],
        {},
        "messages.0.id: Extra inputs are not permitted",
    ),
    (
        "an unknown key on a text block",
        [user([{"type": "text", "text": "go", "origin": "user"}])],
        {},
        "messages.0.content.0.text.origin: Extra inputs are not permitted",
    ),
    (
        "an unknown key on a tool_result block",
        [
            user("go"),
            assistant([tool_use("toolu_a")]),
            user([{**tool_result("toolu_a"), "tombstoned": True}]),
        ],
        {"tools": TOOLS},
        "messages.2.content.0.tool_result.tombstoned: Extra inputs are not permitted",
    ),
    (
        "an unknown key on a tool_use block",
        [user("go"), assistant([{**tool_use("toolu_a"), "duration_ms": 3}])],
        {"tools": TOOLS},
        "messages.1.content.0.tool_use.duration_ms: Extra inputs are not permitted",
    ),
    (
        "cache_control on a thinking block",
        [
            user("go"),
            assistant([{**_THOUGHT, "cache_control": _EPHEMERAL}, tool_use("toolu_a")]),
            user([tool_result("toolu_a")]),
        ],
        {"tools": TOOLS, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        "messages.1.content.0.thinking.cache_control: Extra inputs are not permitted",
    ),
    (
        "an unknown top-level key",
        [user("go")],
        {"extra_body": {"purpose": "turn"}},
        "purpose: Extra inputs are not permitted",
    ),
    (
        "an unknown key on a tool",
        [user("go")],
        {"tools": [{**TOOLS[0], "approval": "required"}]},
        "tools.0.custom.approval: Extra inputs are not permitted",
    ),
    (
        "an unknown key on a system block",
        [user("go")],
        {"system": [{"type": "text", "text": "Be brief.", "priority": 1}]},
        "system.0.priority: Extra inputs are not permitted",
    ),
    (
        "an unknown key in cache_control",
        [user([{"type": "text", "text": "go", "cache_control": {**_EPHEMERAL, "scope": "x"}}])],
        {},
        "messages.0.content.0.cache_control.ephemeral.scope: Extra inputs are not permitted",
    ),
    (
        "a cache ttl the API does not offer",
        [user([{"type": "text", "text": "go", "cache_control": {**_EPHEMERAL, "ttl": "2h"}}])],
        {},
        "messages.0.content.0.cache_control.ephemeral.ttl: Input should be '5m' or '1h'",
    ),
    (
        "an unknown tool_choice type",
        [user("go")],
        {"tools": TOOLS, "tool_choice": {"type": "required"}},
        "tool_choice: Input tag 'required' found using 'type' does not match any of the expected "
        "tags: 'any', 'auto', 'none', 'tool'",
    ),
    (
        "tool_choice tool without a name",
        [user("go")],
        {"tools": TOOLS, "tool_choice": {"type": "tool"}},
        "tool_choice.tool.name: Field required",
    ),
    (
        "tool_choice naming a tool that is not defined",
        [user("go")],
        {"tools": TOOLS, "tool_choice": {"type": "tool", "name": "grep"}},
        "Tool 'grep' not found in provided tools",
    ),
    (
        "an unknown key on tool_choice",
        [user("go")],
        {"tools": TOOLS, "tool_choice": {"type": "none", "disable_parallel_tool_use": True}},
        "tool_choice.none.disable_parallel_tool_use: Extra inputs are not permitted",
    ),
    (
        "tool_choice any without tools",
        [user("go")],
        {"tool_choice": {"type": "any"}},
        "tool_choice may only be specified while providing tools.",
    ),
    (
        "thinking with a forced tool call",
        [user("go")],
        {
            "tools": TOOLS,
            "tool_choice": {"type": "any"},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
        "Thinking may not be enabled when tool_choice forces tool use.",
    ),
]


# A 1x1 PNG, and the tool loop that carries an image (or `source`) in its result.
_PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


def _image_result(source: dict[str, Any], **image: Any) -> list[Any]:
    content = [{"type": "text", "text": "the chart"}, {"type": "image", "source": source, **image}]
    return [user("go"), assistant([tool_use("toolu_a")]), user([tool_result("toolu_a", content)])]


_WHERE = "messages.2.content.0.content.1.image.source"
INVALID_REQUESTS += [
    (
        "an image in a tool_result whose media type the API does not take",
        _image_result({"type": "base64", "media_type": "image/bmp", "data": _PNG}),
        {"tools": TOOLS},
        f"{_WHERE}.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' "
        "or 'image/webp'",
    ),
    (
        "an image in a tool_result whose data is not its media type",
        _image_result({"type": "base64", "media_type": "image/jpeg", "data": _PNG}),
        {"tools": TOOLS},
        f"{_WHERE}.base64: Image does not match the provided media type",
    ),
    (
        "an image in a tool_result whose data is not base64",
        _image_result({"type": "base64", "media_type": "image/png", "data": "not base64!"}),
        {"tools": TOOLS},
        f"{_WHERE}.base64.data: invalid base64 data",
    ),
    (
        "an image in a tool_result with an unknown key on its source",
        _image_result({"type": "base64", "media_type": "image/png", "data": _PNG, "size": 70}),
        {"tools": TOOLS},
        f"{_WHERE}.base64.size: Extra inputs are not permitted",
    ),
    (
        "an image in a tool_result without a source",
        [
            user("go"),
            assistant([tool_use("toolu_a")]),
            user([tool_result("toolu_a", [{"type": "image", "media_type": "image/png"}])]),
        ],
        {"tools": TOOLS},
        "messages.2.content.0.content.0.image.media_type: Extra inputs are not permitted",
    ),
    (
        "an image block in an assistant message",
        [user("go"), assistant([{"type": "image", "source": {"type": "url", "url": "x"}}])],
        {},
        "messages.1.content.0.type: Input tag 'image' found using 'type' does not match",
    ),
]


@pytest.mark.anyio
async def test_a_tool_result_with_text_and_a_png_image_is_accepted(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    messages = _image_result({"type": "base64", "media_type": "image/png", "data": _PNG})

    message = await stream(client, messages, tools=TOOLS)

    assert message.content[0].type == "text"
    assert api.invalid_requests == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("messages", "extra", "error"),
    [case[1:] for case in INVALID_REQUESTS],
    ids=[case[0] for case in INVALID_REQUESTS],
)
async def test_an_invalid_request_is_rejected_with_the_real_api_message(
    api: FakeMessagesAPI,
    client: anthropic.AsyncAnthropic,
    messages: list[Any],
    extra: dict[str, Any],
    error: str,
) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        await stream(client, messages, **extra)

    assert raised.value.status_code == 400
    assert raised.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert raised.value.body["error"]["message"].startswith(error)  # type: ignore[index]
    assert [r.error for r in api.invalid_requests] == [raised.value.body["error"]["message"]]  # type: ignore[index]


def test_max_tokens_is_capped_at_what_the_model_can_write() -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100_000, "messages": [user("hi")]}
    assert validate_request(body) == (
        "max_tokens: 100000 > 64000, which is the maximum allowed number of output tokens for "
        "claude-sonnet-4-5"
    )
    assert validate_request({**body, "max_tokens": 64_000}) is None
    assert validate_request({**body, "max_tokens": True}) == (
        "max_tokens: Input should be a valid integer"
    )


def test_count_tokens_takes_no_max_tokens_or_stream() -> None:
    body = {"model": MODEL, "messages": [user("hi")]}
    assert validate_request({**body, "max_tokens": 5}, count_only=True) == (
        "max_tokens: Extra inputs are not permitted"
    )
    assert validate_request(body, count_only=True) is None


def test_model_and_max_tokens_are_required() -> None:
    assert validate_request({"max_tokens": 5, "messages": [user("hi")]}) == "model: Field required"
    assert validate_request({"model": MODEL, "messages": [user("hi")]}) == (
        "max_tokens: Field required"
    )
    assert validate_request({"model": MODEL, "messages": [user("hi")]}, count_only=True) is None


@pytest.mark.anyio
async def test_a_prompt_over_the_context_window_is_too_long(
    client: anthropic.AsyncAnthropic,
) -> None:
    with FakeMessagesAPI(context_window=100) as small:
        small_client = client.with_options(base_url=small.url)
        messages = [user("x" * 1000)]
        with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
            await stream(small_client, messages)

    tokens = count_tokens({"messages": messages})
    assert small.invalid_requests[0].error == f"prompt is too long: {tokens} tokens > 100 maximum"


@pytest.mark.anyio
async def test_a_valid_tool_loop_with_merged_user_messages_is_accepted(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    messages = [
        user("go"),
        assistant(
            [{"type": "text", "text": "Two at once."}, tool_use("toolu_a"), tool_use("toolu_b")]
        ),
        user([tool_result("toolu_a"), tool_result("toolu_b", [{"type": "text", "text": "out"}])]),
        user("and a reminder after the results"),
        assistant([tool_use("toolu_c")]),
        user([{**tool_result("toolu_c"), "is_error": True}]),
    ]

    message = await stream(client, messages, tools=TOOLS)

    assert message.content[0].type == "text"
    assert api.invalid_requests == []


@pytest.mark.anyio
async def test_a_repeated_prefix_is_read_from_the_prompt_cache(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    system: Any = [
        {"type": "text", "text": "You are careful. " * 50, "cache_control": {"type": "ephemeral"}}
    ]
    first_turn = [user("hello there")]
    second_turn = [*first_turn, assistant("Done."), user([{"type": "text", "text": "more"}])]
    second_turn[-1]["content"][0]["cache_control"] = {"type": "ephemeral"}

    first = await stream(client, first_turn, system=system, tools=TOOLS)
    repeat = await stream(client, first_turn, system=system, tools=TOOLS)
    longer = await stream(client, second_turn, system=system, tools=TOOLS)
    again = await stream(client, second_turn, system=system, tools=TOOLS)

    prefix = count_tokens({"tools": TOOLS, "system": system})
    assert first.usage.cache_creation_input_tokens == prefix
    assert first.usage.cache_read_input_tokens == 0
    assert repeat.usage.cache_read_input_tokens == prefix
    assert repeat.usage.cache_creation_input_tokens == 0
    assert longer.usage.cache_read_input_tokens == prefix
    assert longer.usage.cache_creation_input_tokens == count_tokens(api.requests[2].body) - prefix
    assert again.usage.cache_read_input_tokens == count_tokens(api.requests[3].body)
    for message, request in zip((first, repeat, longer, again), api.requests, strict=True):
        usage = message.usage
        reported = (
            usage.input_tokens
            + (usage.cache_creation_input_tokens or 0)
            + (usage.cache_read_input_tokens or 0)
        )
        assert reported == request.input_tokens == count_tokens(request.body)


@pytest.mark.anyio
async def test_a_changed_tool_choice_reads_only_the_tools_and_system_from_the_cache(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    system: Any = [
        {"type": "text", "text": "You are careful. " * 50, "cache_control": {"type": "ephemeral"}}
    ]
    messages = [
        user([{"type": "text", "text": "hello " * 200, "cache_control": {"type": "ephemeral"}}])
    ]

    await stream(client, messages, system=system, tools=TOOLS)
    same = await stream(client, messages, system=system, tools=TOOLS, tool_choice={"type": "auto"})
    changed = await stream(
        client, messages, system=system, tools=TOOLS, tool_choice={"type": "none"}
    )

    prefix = count_tokens({"tools": TOOLS, "system": system})
    assert same.usage.cache_read_input_tokens == count_tokens(api.requests[1].body)
    assert changed.usage.cache_read_input_tokens == prefix
    assert changed.usage.cache_creation_input_tokens == count_tokens(api.requests[2].body) - prefix


@pytest.mark.anyio
async def test_with_caching_off_every_token_is_plain_input(
    client: anthropic.AsyncAnthropic,
) -> None:
    system: Any = [{"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}}]
    with FakeMessagesAPI(caching=False) as uncached:
        c = client.with_options(base_url=uncached.url)
        await stream(c, [user("hi")], system=system)
        message = await stream(c, [user("hi")], system=system)

    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.input_tokens == count_tokens({"system": system, "messages": [user("hi")]})


@pytest.mark.anyio
async def test_count_tokens_answers_the_servers_count_and_validates(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    messages: Any = [user("count these words please")]

    counted = await client.messages.count_tokens(model=MODEL, messages=messages, tools=TOOLS)
    with pytest.raises(anthropic.BadRequestError, match="must define tools"):
        await client.messages.count_tokens(model=MODEL, messages=[user([tool_result("toolu_a")])])

    assert counted.input_tokens == count_tokens({"tools": TOOLS, "messages": messages})
    assert api.requests[0].path == "/v1/messages/count_tokens"


@pytest.mark.anyio
async def test_the_sdk_retries_a_rate_limit_and_then_succeeds(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    api.responder = Script([Reply(content=[], status=429), text("through")])

    message = await stream(client.with_options(max_retries=2), [user("hi")])

    assert message.content[0].text == "through"  # type: ignore[union-attr]
    assert [r.status for r in api.requests] == [429, 200]
    assert api.invalid_requests == []


@pytest.mark.anyio
async def test_an_injected_overload_has_the_api_error_shape(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    api.responder = Script([Reply(content=[], status=529)])

    with pytest.raises(anthropic.APIStatusError) as raised:
        await stream(client, [user("hi")])

    assert raised.value.status_code == 529
    assert raised.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}  # type: ignore[index]


@pytest.mark.anyio
async def test_a_dropped_stream_raises_in_the_sdk(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    api.responder = Script([text("cut " * 40, drop_stream_after_events=4)])

    with pytest.raises(Exception, match="incomplete chunked read"):
        await stream(client, [user("hi")])


@pytest.mark.anyio
async def test_a_mid_stream_error_event_raises_in_the_sdk(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    api.responder = Script([text("partial", mid_stream_error="overloaded_error")])

    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        await stream(client, [user("hi")])


@pytest.mark.anyio
async def test_a_responder_that_raises_becomes_a_500_that_is_not_retried(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    def broken(_request: RecordedRequest) -> Reply:
        raise RuntimeError("script bug")

    api.responder = broken

    with pytest.raises(anthropic.InternalServerError, match="script bug"):
        await stream(client.with_options(max_retries=2), [user("hi")])
    assert len(api.requests) == 1


@pytest.mark.anyio
async def test_the_latency_model_delays_the_first_token_and_the_output(
    client: anthropic.AsyncAnthropic,
) -> None:
    latency = LatencyModel(ttft_base_s=2.0, per_output_token_s=0.5, time_scale=0.05)
    reply = text("y" * 40)  # 10 output tokens
    with FakeMessagesAPI(Script([reply]), latency=latency) as slow:
        await stream(client.with_options(base_url=slow.url), [user("hi")])

    request = slow.requests[0]
    assert request.usage is not None and request.first_token_at and request.finished_at
    ttft = latency.ttft(request.usage["input_tokens"])
    assert request.first_token_at - request.started_at >= ttft * 0.9
    total = ttft + latency.output_time(request.usage["output_tokens"])
    assert request.finished_at - request.started_at >= total * 0.9


@pytest.mark.anyio
async def test_a_reply_delay_holds_back_the_answer(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    api.responder = Script([text("late", delay_s=0.1)])

    await stream(client, [user("hi")])

    request = api.requests[0]
    assert request.finished_at is not None
    assert request.finished_at - request.started_at >= 0.09


@pytest.mark.anyio
async def test_a_held_reply_waits_for_that_many_more_turns(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    api.responder = Script(
        [text("one"), text("two")], memory=lambda _r: text("noted", hold_turns=2, hold_idle_s=5)
    )
    order: list[str] = []
    memory = {"X-Tidemark-Purpose": "session-memory"}
    turn = {"X-Tidemark-Purpose": "turn"}

    async def ask(name: str, headers: dict[str, str]) -> None:
        await stream(client, [user(name)], extra_headers=headers)
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "memory", memory)
        while not api.requests:  # noqa: ASYNC110 (the server runs on its own threads)
            await anyio.sleep(0.01)
        await ask("turn 1", turn)
        await anyio.sleep(0.2)
        assert order == ["turn 1"]  # one turn is not enough
        await ask("turn 2", turn)  # the second one releases it
    assert sorted(order) == ["memory", "turn 1", "turn 2"]


@pytest.mark.anyio
async def test_a_held_reply_is_answered_when_no_more_turns_come(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    api.responder = Script([], memory=lambda _r: text("noted", hold_turns=3, hold_idle_s=0.1))

    reply = await stream(
        client, [user("remember")], extra_headers={"X-Tidemark-Purpose": "session-memory"}
    )

    assert reply.content[0].text == "noted"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_hundred_concurrent_streams_are_all_answered(
    api: FakeMessagesAPI, client: anthropic.AsyncAnthropic
) -> None:
    api.latency = LatencyModel(time_scale=0.01)
    answers: list[str] = []

    async def one(k: int) -> None:
        message = await stream(client, [user(f"session {k}")])
        answers.append(message.content[0].text)

    async with anyio.create_task_group() as tasks:
        for k in range(100):
            tasks.start_soon(one, k)

    assert answers == ["Done."] * 100
    assert len(api.requests) == 100
