"""Properties of the pure cut rules: safe cuts, summary boundaries, kept tail, tombstones, stubs."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.transcripts import GeneratedSession, api_error, sessions, tool_output
from tidemark.boundaries import (
    is_safe_cut,
    kept_tail_start,
    last_safe_boundary,
    latest_results_index,
    latest_turn_index,
    request_problems,
    stub_long_content,
    tombstone_text,
    tombstone_tool_results,
)
from tidemark.messages import ImageBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock
from tidemark.tokens import TokenCounter, chars_estimate

FAST = settings(max_examples=150, deadline=None)


def _straddles(messages: Sequence[Message], i: int) -> bool:
    """Independent definition: some tool_use before the cut has its tool_result after it."""
    used_at = {u.id: k for k, m in enumerate(messages) for u in m.tool_uses}
    for k, message in enumerate(messages):
        for result in message.tool_results:
            if used_at.get(result.tool_use_id, k) < i <= k:
                return True
    return False


def _ask(text: str = "Go on.") -> Message:
    return Message.user_text(text)


# -- safe cuts and summary boundaries ---------------------------------------------------------


@FAST
@given(sessions())
def test_a_cut_is_safe_exactly_when_it_separates_no_tool_pair(session: GeneratedSession) -> None:
    messages = session.context
    for i in range(len(messages) + 1):
        assert is_safe_cut(messages, i) == (not _straddles(messages, i)), i


@FAST
@given(sessions(), st.data())
def test_a_summary_boundary_never_ends_on_a_tool_call_and_leaves_a_valid_request(
    session: GeneratedSession, data: st.DataObject
) -> None:
    prefix_end = data.draw(st.integers(1, len(session.context)), label="prefix")
    prefix = session.context[:prefix_end]
    b = last_safe_boundary(prefix)
    if b is None:
        # Only a prefix that is nothing but an unanswered call has no boundary.
        assert all(m.tool_uses for m in prefix)
        return
    assert not prefix[b].tool_uses
    assert is_safe_cut(prefix, b + 1)
    assert not _straddles(session.context, b + 1)
    # It is the last such message: everything after it is part of an open tool call.
    for j in range(b + 1, len(prefix)):
        assert prefix[j].tool_uses or not is_safe_cut(prefix, j + 1)
    request = [*prefix[: b + 1], _ask()]
    assert request_problems(request) == []
    assert api_error(request) is None


@FAST
@given(sessions(pending=True))
def test_an_assistant_turn_whose_tools_are_still_running_is_never_a_boundary(
    session: GeneratedSession,
) -> None:
    b = last_safe_boundary(session.context)
    assert b is not None
    assert b < len(session.context) - 1
    assert request_problems(session.context)  # no request is built from it
    assert request_problems(session.requestable) == []


# -- request_problems agrees with the strict fake server ----------------------------------------


@FAST
@given(sessions())
def test_generated_requests_are_valid_for_both_checks(session: GeneratedSession) -> None:
    assert request_problems(session.requestable) == []
    assert api_error(session.requestable) is None


def _drop_results(messages: list[Message], k: int) -> list[Message]:
    return messages[:k] + messages[k + 1 :]


def _text_first(messages: list[Message], k: int) -> list[Message]:
    m = messages[k]
    moved = m.model_copy(update={"content": [TextBlock(text="Here you go."), *m.content]})
    return [*messages[:k], moved, *messages[k + 1 :]]


def _orphan_by_dropping_call(messages: list[Message], k: int) -> list[Message]:
    return messages[: k - 1] + messages[k:]


def _orphan_by_wrong_id(messages: list[Message], k: int) -> list[Message]:
    m = messages[k]
    blocks = list(m.content)
    first = blocks[0]
    assert isinstance(first, ToolResultBlock)
    blocks[0] = first.model_copy(update={"tool_use_id": "toolu_nobody"})
    return [*messages[:k], m.model_copy(update={"content": blocks}), *messages[k + 1 :]]


def _drop_one_result(messages: list[Message], k: int) -> list[Message]:
    m = messages[k]
    blocks = list(m.content)[1:] or [TextBlock(text="no results")]
    return [*messages[:k], m.model_copy(update={"content": blocks}), *messages[k + 1 :]]


_BREAKS = {
    "drop the tool_result message": _drop_results,
    "put text before the tool_results": _text_first,
    "drop the tool_use message (orphan results)": _orphan_by_dropping_call,
    "answer an id nobody called": _orphan_by_wrong_id,
    "drop one of the tool_results": _drop_one_result,
}


@settings(max_examples=250, deadline=None)
@given(sessions(pending=False), st.sampled_from(sorted(_BREAKS)), st.data())
def test_request_problems_agrees_with_the_fake_server_on_broken_requests(
    session: GeneratedSession, how: str, data: st.DataObject
) -> None:
    messages = session.requestable
    result_messages = [k for k, m in enumerate(messages) if m.tool_results]
    if not result_messages:
        return
    k = data.draw(st.sampled_from(result_messages), label="results message")
    broken = _BREAKS[how](messages, k)
    assert bool(request_problems(broken)) == (api_error(broken) is not None)
    assert request_problems(broken), how  # every one of these breaks is a real error


# -- the kept tail ---------------------------------------------------------------------------


def _safe_cuts(messages: Sequence[Message]) -> list[int]:
    return [i for i in range(len(messages) + 1) if is_safe_cut(messages, i)]


@settings(max_examples=300, deadline=None)
@given(
    sessions(pending=False),
    st.data(),
    st.integers(0, 30_000),
    st.integers(0, 8),
    st.integers(0, 60_000),
)
def test_the_kept_tail_is_a_safe_cut_that_keeps_the_uncovered_part_and_respects_its_bounds(
    session: GeneratedSession,
    data: st.DataObject,
    min_tokens: int,
    min_texts: int,
    max_tokens: int,
) -> None:
    messages = session.requestable
    tokens = TokenCounter().each(messages)
    first_uncovered = data.draw(st.integers(0, len(messages)), label="first_uncovered")
    start = kept_tail_start(
        messages,
        first_uncovered,
        tokens,
        min_tokens=min_tokens,
        min_text_messages=min_texts,
        max_tokens=max_tokens,
    )
    cuts = _safe_cuts(messages)
    assert start in cuts
    assert start <= first_uncovered  # nothing the memory does not cover is dropped
    initial = max(c for c in cuts if c <= first_uncovered)

    def met(s: int) -> bool:
        texts = sum(1 for m in messages[s:] if m.has_text)
        return sum(tokens[s:]) >= min_tokens and texts >= min_texts

    if start < initial:
        # Extended over covered messages: never past the cap, and not further than needed.
        assert sum(tokens[start:]) <= max_tokens
        previous = min(c for c in cuts if start < c <= initial)
        assert not met(previous)
    if not met(start) and start > 0:
        # Stopped short of the minimums: only because the next pair would pass the cap.
        before = max(c for c in cuts if c < start)
        assert sum(tokens[before:]) > max_tokens


def test_the_kept_tail_keeps_a_tool_call_and_its_result_together() -> None:
    call = Message(
        role="assistant",
        origin="model",
        content=[ToolUseBlock(id="toolu_1", name="read_file", input={"path": "a.py"})],
    )
    result = Message(
        role="user",
        origin="tools",
        content=[ToolResultBlock(tool_use_id="toolu_1", content=tool_output(4_000))],
    )
    messages = [_ask("Task."), call, result, _ask("More.")]
    tokens = TokenCounter().each(messages)
    # The memory covers the call but not its result: the tail must start at the call.
    start = kept_tail_start(messages, 2, tokens, min_tokens=0, min_text_messages=0, max_tokens=10)
    assert start == 1
    # Extension takes the pair whole or not at all.
    just_more = sum(tokens[3:]) + 1
    start = kept_tail_start(
        messages, 4, tokens, min_tokens=just_more, min_text_messages=0, max_tokens=100_000
    )
    assert start == 1
    start = kept_tail_start(
        messages, 4, tokens, min_tokens=just_more, min_text_messages=0, max_tokens=sum(tokens[2:])
    )
    assert start == 3


def test_the_kept_tail_stops_extending_before_the_cap() -> None:
    messages = [_ask("x" * 4_000) for _ in range(10)]
    tokens = TokenCounter().each(messages)
    start = kept_tail_start(
        messages, 10, tokens, min_tokens=100_000, min_text_messages=0, max_tokens=3_500
    )
    assert sum(tokens[start:]) <= 3_500
    assert sum(tokens[start - 1 :]) > 3_500


# -- tombstones ------------------------------------------------------------------------------


def _uses(messages: Sequence[Message]) -> dict[str, ToolUseBlock]:
    return {u.id: u for m in messages for u in m.tool_uses}


def _freeable(messages: list[Message], protect_from: int) -> int:
    _, _, freed = tombstone_tool_results(
        messages, tokens_to_free=10**12, protect_from=protect_from, estimate=chars_estimate
    )
    return freed


@settings(max_examples=200, deadline=None)
@given(sessions(pending=False), st.data())
def test_tombstones_keep_every_pair_and_all_text_and_free_what_was_asked(
    session: GeneratedSession, data: st.DataObject
) -> None:
    messages = session.requestable
    protect_from = data.draw(st.integers(0, len(messages)), label="protect_from")
    wanted = data.draw(st.integers(0, 80_000), label="tokens_to_free")
    out, cleared, freed = tombstone_tool_results(
        messages, tokens_to_free=wanted, protect_from=protect_from, estimate=chars_estimate
    )
    assert len(out) == len(messages)
    uses = _uses(messages)
    newly = 0
    for before, after in zip(messages, out, strict=True):
        assert (after.id, after.role, after.origin) == (before.id, before.role, before.origin)
        assert len(after.content) == len(before.content)
        for b, a in zip(before.content, after.content, strict=True):
            if isinstance(b, ToolResultBlock):
                assert isinstance(a, ToolResultBlock)
                assert (a.tool_use_id, a.is_error) == (b.tool_use_id, b.is_error)
                if a != b:
                    newly += 1
                    assert a.tombstoned and not b.tombstoned
                    assert a.content == tombstone_text(uses[b.tool_use_id], b)
            else:
                assert a == b  # text, thinking and tool_use blocks are never touched
    assert out[protect_from:] == messages[protect_from:]
    assert cleared == newly
    counter = TokenCounter()
    assert freed == counter.messages(messages) - counter.messages(out)
    if _freeable(messages, protect_from) >= wanted:
        assert freed >= wanted
    assert request_problems(out) == []
    assert api_error(out) is None


@settings(max_examples=150, deadline=None)
@given(sessions(pending=False), st.data())
def test_tombstoning_clears_the_oldest_results_first_and_twice_clears_nothing_more(
    session: GeneratedSession, data: st.DataObject
) -> None:
    messages = session.requestable
    protect_from = latest_results_index(messages)
    wanted = data.draw(st.integers(0, 80_000), label="tokens_to_free")
    out, _, freed = tombstone_tool_results(
        messages, tokens_to_free=wanted, protect_from=protect_from, estimate=chars_estimate
    )
    # Applying it again for whatever is still missing changes nothing: when it could not
    # free enough the first time (same budget), nothing clearable is left.
    again, cleared, _ = tombstone_tool_results(
        out,
        tokens_to_free=max(0, wanted - freed),
        protect_from=protect_from,
        estimate=chars_estimate,
    )
    assert cleared == 0
    assert again == out
    # Oldest first: an untouched result before the last tombstone was too small to shrink.
    flat = [
        (b, a)
        for m_before, m_after in zip(messages, out, strict=True)
        for b, a in zip(m_before.content, m_after.content, strict=True)
        if isinstance(b, ToolResultBlock)
    ]
    changed = [k for k, (b, a) in enumerate(flat) if a != b]
    if changed:
        uses = _uses(messages)
        for b, a in flat[: changed[-1]]:
            if a == b and not b.tombstoned:
                assert len(b.content) <= len(tombstone_text(uses[b.tool_use_id], b)) + 8


@FAST
@given(sessions(pending=False))
def test_the_latest_turns_results_are_the_protected_ones(session: GeneratedSession) -> None:
    messages = session.requestable
    k = latest_results_index(messages)
    last_assistant = max((j for j, m in enumerate(messages) if m.role == "assistant"), default=None)
    if last_assistant is None or not messages[last_assistant].tool_uses:
        assert k == len(messages)
    else:
        assert k == last_assistant + 1
        assert {r.tool_use_id for r in messages[k].tool_results} == {
            u.id for u in messages[last_assistant].tool_uses
        }


def test_a_tombstone_names_the_call_its_size_and_how_to_get_it_back() -> None:
    use = ToolUseBlock(id="toolu_1", name="read_file", input={"path": "src/app.py", "limit": 50})
    result = ToolResultBlock(tool_use_id="toolu_1", content=tool_output(12_345))
    text = tombstone_text(use, result)
    assert "read_file" in text and "src/app.py" in text and "limit=50" in text
    assert "12,345 chars" in text
    assert "again" in text
    assert "\n" not in text


def test_tombstoning_leaves_small_results_and_protected_results_alone() -> None:
    def turn(n: int, size: int) -> list[Message]:
        use = ToolUseBlock(id=f"toolu_{n}", name="bash", input={"command": "ls"})
        return [
            Message(role="assistant", origin="model", content=[use]),
            Message(
                role="user",
                origin="tools",
                content=[ToolResultBlock(tool_use_id=use.id, content=tool_output(size))],
            ),
        ]

    messages = [_ask("Task."), *turn(1, 10), *turn(2, 8_000), *turn(3, 8_000)]
    out, cleared, freed = tombstone_tool_results(
        messages,
        tokens_to_free=10**9,
        protect_from=latest_results_index(messages),
        estimate=chars_estimate,
    )
    assert cleared == 1  # the 10-char result would only grow; the latest turn is protected
    assert out[2] == messages[2] and out[6] == messages[6]
    first = out[4].tool_results[0]
    assert first.tombstoned and "bash(command='ls')" in first.content
    assert freed > 1_900


# -- stubs: long tool inputs and assistant texts ----------------------------------------------


def _with_long_content(session: GeneratedSession, data: st.DataObject) -> list[Message]:
    """The session's messages, some assistant turns given a long text or a large input."""
    out: list[Message] = []
    for message in session.requestable:
        if message.role == "assistant" and data.draw(st.booleans(), label="lengthen"):
            size = data.draw(st.integers(0, 12_000), label="size")
            blocks = list(message.content)
            k = data.draw(st.integers(0, len(blocks) - 1), label="block")
            block = blocks[k]
            if isinstance(block, TextBlock):
                blocks[k] = block.model_copy(update={"text": tool_output(size) or "ok"})
            elif isinstance(block, ToolUseBlock):
                blocks[k] = block.model_copy(
                    update={"input": {**block.input, "content": tool_output(size)}}
                )
            message = message.model_copy(update={"content": blocks})
        out.append(message)
    return out


@settings(max_examples=200, deadline=None)
@given(sessions(pending=False), st.data())
def test_stubs_keep_every_pair_valid_and_touch_only_older_assistant_content(
    session: GeneratedSession, data: st.DataObject
) -> None:
    messages = _with_long_content(session, data)
    protect_from = latest_turn_index(messages)
    wanted = data.draw(st.integers(0, 80_000), label="tokens_to_free")
    out, stubbed, freed = stub_long_content(
        messages, tokens_to_free=wanted, protect_from=protect_from, estimate=chars_estimate
    )
    assert len(out) == len(messages)
    newly = 0
    for before, after in zip(messages, out, strict=True):
        assert (after.id, after.role, after.origin) == (before.id, before.role, before.origin)
        if before.role == "user":
            assert after == before  # the user's words and tool results are never stubbed
            continue
        for b, a in zip(before.content, after.content, strict=True):
            if a == b:
                continue
            newly += 1
            assert isinstance(a, TextBlock | ToolUseBlock) and a.stubbed
            if isinstance(b, ToolUseBlock):
                assert isinstance(a, ToolUseBlock)
                assert (a.id, a.name, a.input.keys()) == (b.id, b.name, b.input.keys())
                for key, value in a.input.items():
                    if value != b.input[key]:
                        assert isinstance(value, str) and "\n" not in value
            else:
                assert isinstance(a, TextBlock) and "\n" not in a.text
    assert out[protect_from:] == messages[protect_from:]  # the latest turn is untouched
    assert stubbed == newly
    counter = TokenCounter()
    assert freed == counter.messages(messages) - counter.messages(out)
    assert counter.messages(out) <= counter.messages(messages)  # never grows the context
    assert request_problems(out) == []
    assert api_error(out) is None


@settings(max_examples=150, deadline=None)
@given(sessions(pending=False), st.data())
def test_stubbing_twice_stubs_nothing_more_and_frees_what_was_asked_when_it_can(
    session: GeneratedSession, data: st.DataObject
) -> None:
    messages = _with_long_content(session, data)
    protect_from = latest_turn_index(messages)
    wanted = data.draw(st.integers(0, 40_000), label="tokens_to_free")
    out, _, freed = stub_long_content(
        messages, tokens_to_free=wanted, protect_from=protect_from, estimate=chars_estimate
    )
    again, stubbed, _ = stub_long_content(
        out,
        tokens_to_free=max(0, wanted - freed),
        protect_from=protect_from,
        estimate=chars_estimate,
    )
    assert stubbed == 0 and again == out
    _, _, everything = stub_long_content(
        messages, tokens_to_free=10**12, protect_from=protect_from, estimate=chars_estimate
    )
    if everything >= wanted:
        assert freed >= wanted


def test_a_stub_says_what_was_cleared_and_how_big_in_one_line() -> None:
    content = "line\n" * 2_000
    write = ToolUseBlock(
        id="toolu_1", name="write_file", input={"path": "a.py", "content": content}
    )
    messages = [
        _ask("Write a.py."),
        Message(role="assistant", origin="model", content=[write]),
        Message(
            role="user",
            origin="tools",
            content=[ToolResultBlock(tool_use_id="toolu_1", content="ok")],
        ),
        Message(role="assistant", origin="model", content=[TextBlock(text="Done.")]),
    ]
    out, stubbed, _ = stub_long_content(
        messages,
        tokens_to_free=10**9,
        protect_from=latest_turn_index(messages),
        estimate=chars_estimate,
    )
    assert stubbed == 1
    stub = out[1].tool_uses[0]
    assert stub.input["path"] == "a.py"  # short inputs stay
    assert "write_file" in stub.input["content"] and "10,000 chars" in stub.input["content"]
    assert "2,001 lines" in stub.input["content"] and "\n" not in stub.input["content"]


# -- images in tool results ------------------------------------------------------------------

# A 1x1 PNG (66 bytes): billed as 1 token by width x height / 750.
_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgAAACAAFUok9dAAAAAElFTkSuQmCC"


def _image_turn() -> list[Message]:
    image = ImageBlock(media_type="image/png", data=_PNG)
    return [
        Message.user_text("look at the chart"),
        Message(
            role="assistant",
            origin="model",
            content=[ToolUseBlock(id="toolu_c", name="mcp__notes__chart", input={})],
        ),
        Message(
            role="user",
            origin="tools",
            content=[ToolResultBlock(tool_use_id="toolu_c", content="Chart", images=(image,))],
        ),
        Message(role="assistant", origin="model", content=[TextBlock(text="One pixel.")]),
        Message.user_text("next"),
    ]


def test_an_image_counts_by_its_pixels_and_a_tombstone_drops_it_even_after_a_short_text() -> None:
    messages = _image_turn()
    image = messages[2].tool_results[0].images[0]
    assert (image.tokens, image.size, image.placeholder()) == (1, 66, "[image: image/png, 1 KB]")
    out, cleared, freed = tombstone_tool_results(
        messages, tokens_to_free=10**6, protect_from=4, estimate=chars_estimate
    )
    (result,) = out[2].tool_results
    assert cleared == 1 and result.tombstoned and result.images == ()
    assert result.content.endswith("and 1 image. Run the call again if you need it.]")
    counter = TokenCounter()
    assert freed == counter.messages(messages) - counter.messages(out)
    assert request_problems(out) == []


def test_a_tool_result_records_its_images_only_when_it_has_some() -> None:
    with_image = _image_turn()[2]
    plain = Message(
        role="user",
        origin="tools",
        content=[ToolResultBlock(tool_use_id="toolu_c", content="Chart")],
    )
    assert "images" not in plain.model_dump(mode="json")["content"][0]
    dumped = with_image.model_dump(mode="json")
    assert dumped["content"][0]["images"] == [
        {"type": "image", "media_type": "image/png", "data": _PNG}
    ]
    assert Message.model_validate(dumped) == with_image
