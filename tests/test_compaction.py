"""Properties of instant compaction (memory + tail, result clearing, stubs) and examples."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.transcripts import GeneratedSession, api_error, sessions, tool_output
from tidemark.boundaries import (
    is_safe_cut,
    last_safe_boundary,
    latest_results_index,
    request_problems,
)
from tidemark.compaction import (
    SUMMARY_HEADER,
    CompactionBudget,
    CompactionResult,
    clear_tool_results,
    compact_with_memory,
    full_summary,
    shrink,
    summary_message,
)
from tidemark.messages import Message, TextBlock, ToolResultBlock, ToolUseBlock
from tidemark.testing import ScriptedModel
from tidemark.tokens import TokenCounter

PROPERTIES = settings(max_examples=200, deadline=None)


def _budget(compact_at: int, preamble: int) -> CompactionBudget:
    """The budget Session.budget() derives from --compact-at (the window is not the limit)."""
    return CompactionBudget(
        target=compact_at // 2,
        limit=10**9,
        preamble=preamble,
        tail_min=min(10_000, compact_at // 4),
        tail_max=min(40_000, compact_at // 2),
    )


_COMPACT_AT = st.one_of(st.integers(4_000, 40_000), st.integers(40_000, 200_000))
_PREAMBLE = st.integers(0, 3_000)
_MEMORY = st.integers(0, 24_000).map(
    lambda n: ("# Current State\nWorking on the handler.\n" * 600)[:n]
)


def _same_or_tombstoned(before: Message, after: Message) -> bool:
    """Equal, except that tool results may have been replaced by tombstones, and an assistant
    message's long texts and tool inputs by stubs (same ids, names and input keys)."""
    if (before.id, before.role, before.origin) != (after.id, after.role, after.origin):
        return False
    if len(before.content) != len(after.content):
        return False
    for b, a in zip(before.content, after.content, strict=True):
        if a == b:
            continue
        if isinstance(b, ToolResultBlock) and isinstance(a, ToolResultBlock):
            if (a.tool_use_id, a.is_error) != (b.tool_use_id, b.is_error) or not a.tombstoned:
                return False
        elif isinstance(b, ToolUseBlock) and isinstance(a, ToolUseBlock):
            if before.role != "assistant" or not a.stubbed or (a.id, a.name) != (b.id, b.name):
                return False
            if a.input.keys() != b.input.keys():
                return False
        elif isinstance(b, TextBlock) and isinstance(a, TextBlock):
            if before.role != "assistant" or not a.stubbed or len(a.text) >= len(b.text):
                return False
        else:
            return False
    return True


def _newly_tombstoned(before: Sequence[Message], after: Sequence[Message]) -> int:
    old = {m.id: m for m in before}
    count = 0
    for m in after:
        if m.id in old:
            for b, a in zip(old[m.id].content, m.content, strict=True):
                count += a != b
    return count


def _valid(messages: list[Message]) -> None:
    assert request_problems(messages) == []
    assert api_error(messages) is None


def _users_own_kept(transcript: Sequence[Message], result: CompactionResult) -> None:
    """Each of the user's own messages is in the new context verbatim or quoted in the summary."""
    kept = {m.id: m for m in result.context}
    quoted = result.summary.text if result.summary is not None else ""
    for m in transcript:
        if m.is_users_own:
            assert kept.get(m.id) == m or f"\n{m.text}\n</user-message>" in quoted, m.id


def _latest_results_untouched(context: Sequence[Message], result: CompactionResult) -> None:
    """The latest turn's tool results are in the new context, verbatim (not even dropped)."""
    k = latest_results_index(context)
    if k < len(context):
        after = {m.id: m for m in result.context}
        assert after.get(context[k].id) == context[k]


def _recount(result: CompactionResult, budget: CompactionBudget) -> int:
    return budget.preamble + TokenCounter().messages(result.context)


# -- session memory + kept tail ---------------------------------------------------------------


@PROPERTIES
@given(sessions(pending=False), st.data(), _COMPACT_AT, _PREAMBLE, _MEMORY)
def test_compaction_with_memory_keeps_everything_uncovered_and_leaves_a_valid_request(
    session: GeneratedSession,
    data: st.DataObject,
    compact_at: int,
    preamble: int,
    memory: str,
) -> None:
    context = session.requestable
    prefix_end = data.draw(st.integers(1, len(context)), label="memory prefix")
    b = last_safe_boundary(context[:prefix_end])
    if b is None or context[b].id not in session.positions:
        return
    covers = context[b]
    budget = _budget(compact_at, preamble)
    counter = TokenCounter()
    result = compact_with_memory(
        context,
        session.transcript,
        session.positions,
        memory_text=memory,
        covers_message_id=covers.id,
        counter=counter,
        budget=budget,
    )
    if result is None:
        # Only when nothing is covered that could be dropped.
        assert context[0].id in session.positions
        return
    new = result.context
    assert result.strategy == "session_memory"
    assert result.boundary_message_id == covers.id
    assert new[0] == result.summary and result.summary is not None
    assert result.summary.text.startswith(SUMMARY_HEADER)
    _valid(new)

    # Nothing after the memory's boundary is lost: same ids, same order, a suffix.
    uncovered = [m for m in context[b + 1 :]]
    assert [m.id for m in new[len(new) - len(uncovered) :]] == [m.id for m in uncovered]
    old = {m.id: m for m in context}
    for m in new[1:]:
        assert _same_or_tombstoned(old[m.id], m)
    assert [m.id for m in new[1:]] == [m.id for m in context if m.id in {n.id for n in new}]
    assert is_safe_cut(context, context.index(old[new[1].id])) if len(new) > 1 else True

    _users_own_kept(session.transcript, result)
    _latest_results_untouched(context, result)
    assert result.post_tokens == _recount(result, budget)
    assert result.messages_kept == len(new) - 1
    assert result.messages_dropped == len(context) - result.messages_kept
    assert result.tool_results_cleared + result.stubs == _newly_tombstoned(context, new)

    # Within the target whenever the transcript allows: the uncovered part and the latest
    # turn alone, every result but the latest turn's tombstoned, under its summary, fit.
    first_uncovered = b + 1
    if latest_results_index(context) < len(context):
        first_uncovered = min(first_uncovered, latest_results_index(context) - 1)
    while not is_safe_cut(context, first_uncovered):
        first_uncovered -= 1
    tail = context[first_uncovered:]
    position = session.positions[tail[0].id] if tail else len(session.transcript)
    users = [m for m in session.transcript[:position] if m.is_users_own]
    summary = summary_message(memory, users, source="session memory")
    thinnest, _, _, _ = shrink(tail, tokens_to_free=10**12, counter=counter)
    best = preamble + counter.message(summary) + counter.messages(thinnest)
    if best <= budget.target:
        assert result.post_tokens <= budget.target, (best, budget.target)


@settings(max_examples=100, deadline=None)
@given(sessions(pending=False, leading_summary=True), st.data())
def test_memory_that_ends_before_an_earlier_summary_is_not_used(
    session: GeneratedSession, data: st.DataObject
) -> None:
    if session.context[0].id in session.positions:
        return  # too short to have been compacted before
    first_kept = session.positions[session.context[1].id]
    before = [
        i
        for i in range(first_kept - 1)
        if not session.transcript[i].tool_uses and is_safe_cut(session.transcript, i + 1)
    ]
    if not before:
        return
    covers = session.transcript[data.draw(st.sampled_from(before), label="covers")]
    result = compact_with_memory(
        session.context,
        session.transcript,
        session.positions,
        memory_text="# Current State\nOld.",
        covers_message_id=covers.id,
        counter=TokenCounter(),
        budget=_budget(20_000, 1_000),
    )
    assert result is None  # using it would lose what the earlier summary held


# -- tool-result clearing ----------------------------------------------------------------------


@PROPERTIES
@given(sessions(pending=False), _COMPACT_AT, _PREAMBLE)
def test_clearing_tool_results_keeps_every_message_and_meets_the_target_when_it_can(
    session: GeneratedSession, compact_at: int, preamble: int
) -> None:
    context = session.requestable
    budget = _budget(compact_at, preamble)
    counter = TokenCounter()
    result = clear_tool_results(context, counter=counter, budget=budget)
    new = result.context
    _valid(new)
    assert [m.id for m in new] == [m.id for m in context]
    for before, after in zip(context, new, strict=True):
        assert _same_or_tombstoned(before, after)
        if before.role == "user" and not before.tool_results:
            assert after == before
    _users_own_kept(session.transcript[: session.positions[context[-1].id] + 1], result)
    _latest_results_untouched(context, result)
    assert result.post_tokens == _recount(result, budget)
    assert result.tool_results_cleared + result.stubs == _newly_tombstoned(context, new)
    assert (result.messages_dropped, result.messages_kept) == (0, len(new))

    thinnest, _, _, _ = shrink(context, tokens_to_free=10**12, counter=counter)
    if preamble + counter.messages(thinnest) <= budget.target:
        assert result.post_tokens <= budget.target
    else:
        assert new == thinnest  # it cleared everything it could

    again = clear_tool_results(new, counter=counter, budget=budget)
    assert again.tool_results_cleared == again.stubs == 0
    assert again.context == new


# -- examples, one per strategy ---------------------------------------------------------------


def _turn(n: int, size: int, name: str = "read_file") -> list[Message]:
    use = ToolUseBlock(id=f"toolu_{n}", name=name, input={"path": f"src/mod_{n}.py"})
    return [
        Message(role="assistant", origin="model", content=[use]),
        Message(
            role="user",
            origin="tools",
            content=[ToolResultBlock(tool_use_id=use.id, content=tool_output(size, seed=n))],
        ),
    ]


def _session(*parts: list[Message]) -> tuple[list[Message], dict[str, int]]:
    transcript = [m for part in parts for m in part]
    return transcript, {m.id: i for i, m in enumerate(transcript)}


def test_session_memory_replaces_the_covered_turns_and_keeps_the_rest_verbatim() -> None:
    task = Message.user_text("Fix the failing test in src/app.py.")
    transcript, positions = _session(
        [task], *(_turn(n, 8_000) for n in range(1, 9)), [Message.user_text("Also add a test.")]
    )
    covers = transcript[12]  # the results of turn 6
    result = compact_with_memory(
        transcript,
        transcript,
        positions,
        memory_text="# Current State\nRead modules 1-6; the bug is in mod_3.",
        covers_message_id=covers.id,
        counter=TokenCounter(),
        budget=_budget(20_000, 500),
    )
    assert result is not None
    new = result.context
    assert "the bug is in mod_3" in new[0].text
    assert "Fix the failing test in src/app.py." in new[0].text  # the task, quoted verbatim
    assert new[-5:] == transcript[-5:]  # turns 7 and 8 and the instruction, untouched
    assert result.messages_dropped == len(transcript) - len(new) + 1
    assert result.post_tokens <= 10_000
    _valid(new)


def test_session_memory_that_lags_tombstones_old_results_in_the_tail_but_not_the_latest() -> None:
    task = Message.user_text("Read every module.")
    transcript, positions = _session([task], *(_turn(n, 12_000) for n in range(1, 9)))
    result = compact_with_memory(
        transcript,
        transcript,
        positions,
        memory_text="# Current State\nStarted.",
        covers_message_id=transcript[2].id,  # memory is far behind the session
        counter=TokenCounter(),
        budget=_budget(20_000, 500),
    )
    assert result is not None
    assert [m.id for m in result.context[1:]] == [m.id for m in transcript[3:]]
    assert result.tool_results_cleared > 0
    assert result.context[-1] == transcript[-1]  # the latest turn's results stay
    cleared = result.context[2].tool_results[0]
    assert (
        cleared.tombstoned and "read_file" in cleared.content and "src/mod_2.py" in cleared.content
    )
    assert result.post_tokens <= 10_000
    _valid(result.context)


def test_clearing_tombstones_the_oldest_results_until_the_target_is_met() -> None:
    transcript, _ = _session([Message.user_text("Go.")], *(_turn(n, 8_000) for n in range(1, 7)))
    result = clear_tool_results(transcript, counter=TokenCounter(), budget=_budget(20_000, 500))
    cleared = [m.tool_results[0].tombstoned for m in result.context if m.tool_results]
    assert cleared == [True, True, False, False, False, False]
    assert result.post_tokens <= 10_000
    assert result.boundary_message_id is None
    _valid(result.context)


@pytest.mark.anyio
async def test_a_full_summary_asks_the_model_once_and_keeps_the_latest_turn() -> None:
    task = Message.user_text("Refactor the parser.")
    transcript, positions = _session([task], *(_turn(n, 4_000) for n in range(1, 5)))
    model = ScriptedModel(compact=lambda _: ScriptedModel.reply("Parser split into 3 files."))
    result = await full_summary(
        transcript,
        transcript,
        positions,
        model=model,
        system="You are a coding agent.",
        tools=[],
        max_tokens=1_000,
        counter=TokenCounter(),
        budget=_budget(20_000, 500),
    )
    assert [r.purpose for r in model.requests] == ["compact"]
    assert result.strategy == "full_summary"
    assert "Parser split into 3 files." in result.context[0].text
    assert "Refactor the parser." in result.context[0].text
    assert result.context[1:] == transcript[-2:]
    assert result.post_tokens == _recount(result, _budget(20_000, 500))
    _valid(result.context)


def test_the_kept_tail_yields_to_the_target_when_the_memory_is_large() -> None:
    notes = [
        [
            Message(role="assistant", origin="model", content=[TextBlock(text="Plan. " * 700)]),
            Message.user_text(f"[runtime notice {n}] continue.", origin="runtime"),
        ]
        for n in range(10)
    ]
    transcript, positions = _session([Message.user_text("Go.")], *notes, _turn(11, 400))
    budget = _budget(20_000, 1_000)
    result = compact_with_memory(
        transcript,
        transcript,
        positions,
        memory_text="# Current State\n" + "Done so far. " * 1_800,  # about 6,000 tokens
        covers_message_id=transcript[-3].id,
        counter=TokenCounter(),
        budget=budget,
    )
    assert result is not None
    # The tail would reach tail_min (5,000 tokens) if the memory left room; it does not.
    assert result.post_tokens <= budget.target
    assert result.context[-2:] == transcript[-2:]
    assert len(result.context) >= 4  # still some verbatim history in what room there is


def test_the_latest_turns_results_stay_even_when_memory_already_covers_them() -> None:
    transcript, positions = _session(
        [Message.user_text("Go.")],
        *(_turn(n, 2_000) for n in range(1, 6)),
        _turn(6, 16_000),
        [Message.user_text("[runtime notice] continue.", origin="runtime")],
    )
    result = compact_with_memory(
        transcript,
        transcript,
        positions,
        memory_text="# Current State\nRead everything.",
        covers_message_id=transcript[-1].id,  # memory is fully up to date
        counter=TokenCounter(),
        budget=_budget(6_000, 500),
    )
    assert result is not None
    # 4,000 tokens of results: more than the tail cap and the target, but never dropped.
    assert result.context[1:] == transcript[-3:]
    assert result.post_tokens > 3_000
    _valid(result.context)


def test_the_kept_tail_cap_holds_when_memory_lags_far_behind() -> None:
    # Default settings (--compact-at 167,000): target 83,500, kept-tail cap 40,000. The
    # memory covers only the task; ~60,000 tokens came after it.
    transcript, positions = _session(
        [Message.user_text("Read every module.")], *(_turn(n, 16_000) for n in range(1, 16))
    )
    budget = _budget(167_000, 3_000)
    counter = TokenCounter()
    result = compact_with_memory(
        transcript,
        transcript,
        positions,
        memory_text="# Current State\nStarted.",
        covers_message_id=transcript[0].id,
        counter=counter,
        budget=budget,
    )
    assert result is not None
    assert counter.messages(transcript[1:]) > 55_000
    assert [m.id for m in result.context[1:]] == [m.id for m in transcript[1:]]  # none dropped
    assert counter.messages(result.context[1:]) <= budget.tail_max
    assert result.tool_results_cleared > 0
    assert result.context[-1] == transcript[-1]
    _valid(result.context)


def test_clearing_stubs_large_written_files_when_tombstones_are_not_enough() -> None:
    def write(n: int) -> list[Message]:
        use = ToolUseBlock(
            id=f"toolu_{n}",
            name="write_file",
            input={"path": f"src/gen_{n}.py", "content": tool_output(6_000, seed=n)},
        )
        return [
            Message(role="assistant", origin="model", content=[use]),
            Message(
                role="user",
                origin="tools",
                content=[ToolResultBlock(tool_use_id=use.id, content=f"wrote src/gen_{n}.py")],
            ),
        ]

    transcript, _ = _session([Message.user_text("Generate the modules.")], *map(write, range(12)))
    budget = _budget(20_000, 500)
    result = clear_tool_results(transcript, counter=TokenCounter(), budget=budget)
    assert result.tool_results_cleared == 0  # the results are tiny: nothing to gain there
    assert result.stubs > 0
    assert result.post_tokens <= budget.target
    assert result.context[-2:] == transcript[-2:]  # the latest turn stays verbatim
    stubbed = result.context[1].tool_uses[0]
    assert stubbed.stubbed and stubbed.input["path"] == "src/gen_0.py"
    assert "6,000 chars" in stubbed.input["content"]
    _valid(result.context)
