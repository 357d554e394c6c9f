"""Shrinking the context: the contract's ladder, fastest first.

1. ``session_memory``: the memory document replaces what it covers; the kept tail stays
   verbatim, its older tool results tombstoned when memory lags. No model call.
2. ``tool_result_clearing``: no usable memory yet; the oldest tool results are tombstoned.
   No model call.
3. ``full_summary``: a blocking ``compact`` request, only when nothing above fits the window.

When tombstones are not enough, the first two also stub old large tool inputs and long
assistant texts (`shrink`), all in one batch down to the target. The first two are pure
functions of the context; only the last one talks to a model. `reaches_target` says
whether a result may be committed at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tidemark.boundaries import (
    kept_tail_start,
    latest_results_index,
    latest_turn_index,
    stub_long_content,
    tombstone_tool_results,
)
from tidemark.errors import ModelError
from tidemark.messages import Message, TextBlock, Usage
from tidemark.model import Model, ModelRequest, ToolSpec
from tidemark.tokens import TokenCounter

__all__ = [
    "CompactionBudget",
    "CompactionResult",
    "UnusableSummaryError",
    "clear_tool_results",
    "compact_with_memory",
    "full_summary",
    "reaches_target",
    "shrink",
    "summary_message",
]

SUMMARY_HEADER = "[tidemark: summary of earlier work in this session]"

COMPACT_INSTRUCTION = """\
The conversation above is about to be replaced by your summary, to free context. Write a \
summary that lets you continue the task without the messages: the task and the user's \
instructions, what is ALREADY DONE (so it is not redone), the current state, files and \
functions involved, errors met and their fixes, exact results so far, and the next step. \
Markdown, at most about 1500 words. Reply with the summary only; do not call tools."""


class UnusableSummaryError(ModelError):
    """The blocking summary came back empty or cut off; `usage` is what its request cost."""

    def __init__(self, message: str, *, usage: Usage) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class CompactionBudget:
    """Token figures compaction works against."""

    target: int  # the whole next request should fit in this (half of --compact-at)
    limit: int  # the most the model's window accepts (window minus the output budget)
    preamble: int  # system prompt and tool definitions
    tail_min: int
    tail_max: int
    tail_min_text_messages: int = 5
    # Extension back over messages the memory covers stops here (the uncovered part is
    # always kept, up to `tail_max`). 0: no separate bound.
    tail_covered_max: int = 0


@dataclass(frozen=True)
class CompactionResult:
    strategy: str
    context: list[Message]
    summary: Message | None
    post_tokens: int
    messages_dropped: int
    messages_kept: int
    boundary_message_id: str | None
    tool_results_cleared: int
    usage: Usage | None = None  # of the blocking summary's request; None when none was made
    stubs: int = 0  # tool inputs and assistant texts shortened to a stub
    # Nothing shrinkable was left: the user's messages and the latest turn (and, with
    # memory, what it does not cover yet) keep the context at this size.
    exhausted: bool = False


def reaches_target(result: CompactionResult, budget: CompactionBudget, ceiling: int) -> bool:
    """Whether a compaction may be committed: it reaches the target, or comes as close as the
    context allows and still lands under ``ceiling`` (the compaction threshold), so the
    next compaction is not due at once."""
    if result.post_tokens <= budget.target:
        return True
    return result.exhausted and result.post_tokens < ceiling


def shrink(
    messages: Sequence[Message], *, tokens_to_free: int, counter: TokenCounter
) -> tuple[list[Message], int, int, bool]:
    """Free ``tokens_to_free`` in one batch: tombstones first (oldest results), then stubs
    (oldest long tool inputs and assistant texts). The latest turn and the user's messages
    are never touched. Returns (messages, results cleared, stubs, exhausted)."""
    out, cleared, freed = tombstone_tool_results(
        messages,
        tokens_to_free=tokens_to_free,
        protect_from=latest_results_index(messages),
        estimate=counter.estimate,
    )
    stubs = 0
    if freed < tokens_to_free:
        out, stubs, more = stub_long_content(
            out,
            tokens_to_free=tokens_to_free - freed,
            protect_from=latest_turn_index(out),
            estimate=counter.estimate,
        )
        freed += more
    return out, cleared, stubs, freed < tokens_to_free


def summary_message(summary: str, user_messages: Sequence[Message], *, source: str) -> Message:
    """One user message that carries the summary and the user's own words verbatim."""
    parts = [
        SUMMARY_HEADER,
        f"Earlier messages of this session were replaced by the {source} below to save "
        "context. It records work that is ALREADY DONE (do not redo it), the current "
        "state (in progress) and what comes next. Messages after this one are verbatim.",
        f"<session-memory>\n{summary.strip()}\n</session-memory>",
    ]
    if user_messages:
        quoted = "\n".join(
            f'<user-message n="{n}">\n{m.text}\n</user-message>'
            for n, m in enumerate(user_messages, 1)
        )
        parts.append(
            "The user's own messages in this session, verbatim (they still apply):\n" + quoted
        )
    parts.append("Continue the task from the current state.")
    return Message(role="user", origin="runtime", content=[TextBlock(text="\n\n".join(parts))])


def _users_own_before(transcript: Sequence[Message], position: int) -> list[Message]:
    return [m for m in transcript[:position] if m.is_users_own]


def compact_with_memory(
    context: Sequence[Message],
    transcript: Sequence[Message],
    positions: dict[str, int],
    *,
    memory_text: str,
    covers_message_id: str,
    counter: TokenCounter,
    budget: CompactionBudget,
) -> CompactionResult | None:
    """Memory + kept tail; None when the memory cannot stand for the dropped part."""
    covers = positions.get(covers_message_id)
    real = [m for m in context if m.id in positions]
    if covers is None or not real or positions[real[0].id] > covers + 1:
        # The context starts after a gap the memory does not cover (an earlier full
        # summary dropped it): using the memory would lose that summary.
        return None
    first_uncovered = next((i for i, m in enumerate(real) if positions[m.id] > covers), len(real))
    latest = latest_results_index(real)
    if latest < len(real):
        # The latest turn's tool results stay verbatim even when memory already covers them.
        first_uncovered = min(first_uncovered, latest - 1)
    tokens = counter.each(real)
    # The cap yields to the target: the tail may only grow into what the memory leaves of
    # it. The summary is largest when the tail starts at the first uncovered message (it
    # then quotes the most user messages), so that size bounds every choice of start.
    uncovered_position = (
        positions[real[first_uncovered].id] if first_uncovered < len(real) else len(transcript)
    )
    largest_summary = summary_message(
        memory_text, _users_own_before(transcript, uncovered_position), source="session memory"
    )
    room = budget.target - budget.preamble - counter.message(largest_summary)
    extension_cap = min(budget.tail_max, room)
    if budget.tail_covered_max:
        # The memory holds what lies before `first_uncovered`: extend back over it only to
        # the covered-part bound (a fresh memory leaves a small context).
        extension_cap = min(
            extension_cap, max(budget.tail_covered_max, sum(tokens[first_uncovered:]))
        )
    start = kept_tail_start(
        real,
        first_uncovered,
        tokens,
        min_tokens=budget.tail_min,
        min_text_messages=budget.tail_min_text_messages,
        max_tokens=max(0, extension_cap),
    )
    if start == 0 and len(context) == len(real):
        return None  # nothing to drop: memory would only add
    tail = real[start:]
    tail_start_position = positions[tail[0].id] if tail else len(transcript)
    summary = summary_message(
        memory_text,
        _users_own_before(transcript, tail_start_position),
        source="session memory",
    )
    fixed = budget.preamble + counter.message(summary)
    tail_tokens = sum(tokens[start:])
    # The kept tail stays under its cap and within what the memory leaves of the target.
    excess = max(fixed + tail_tokens - budget.target, tail_tokens - budget.tail_max)
    cleared = stubs = 0
    exhausted = False
    if excess > 0:
        tail, cleared, stubs, exhausted = shrink(tail, tokens_to_free=excess, counter=counter)
        tail_tokens = counter.messages(tail)
    new_context = [summary, *tail]
    return CompactionResult(
        strategy="session_memory",
        context=new_context,
        summary=summary,
        post_tokens=fixed + tail_tokens,
        messages_dropped=len(context) - len(tail),
        messages_kept=len(tail),
        boundary_message_id=covers_message_id,
        tool_results_cleared=cleared,
        stubs=stubs,
        exhausted=exhausted,
    )


def clear_tool_results(
    context: Sequence[Message], *, counter: TokenCounter, budget: CompactionBudget
) -> CompactionResult:
    """Tombstone the oldest tool results, then stub, until the target is met (or nothing is
    left)."""
    total = budget.preamble + counter.messages(context)
    new_context, cleared, stubs, exhausted = shrink(
        context, tokens_to_free=total - budget.target, counter=counter
    )
    summary = context[0] if context and context[0].origin == "runtime" else None
    return CompactionResult(
        strategy="tool_result_clearing",
        context=new_context,
        summary=summary,
        post_tokens=budget.preamble + counter.messages(new_context),
        messages_dropped=0,
        messages_kept=len(new_context),
        boundary_message_id=None,
        tool_results_cleared=cleared,
        stubs=stubs,
        exhausted=exhausted,
    )


async def full_summary(
    context: Sequence[Message],
    transcript: Sequence[Message],
    positions: dict[str, int],
    *,
    model: Model,
    system: str,
    tools: Sequence[ToolSpec],
    max_tokens: int,
    counter: TokenCounter,
    budget: CompactionBudget,
) -> CompactionResult:
    """The blocking last resort: the model summarizes everything but the latest turn."""
    keep_from = len(context)
    last_results = latest_results_index(context)
    if last_results < len(context):
        keep_from = last_results - 1  # the latest assistant turn with its tool results
    head, tail = list(context[:keep_from]), list(context[keep_from:])
    request = ModelRequest(
        system=system,
        messages=[*head, Message.user_text(COMPACT_INSTRUCTION, origin="runtime")],
        tools=tools,
        max_tokens=max_tokens,
        purpose="compact",
        tool_choice="auto",  # the turns' choice, so the message cache is shared
    )
    response = await model.generate(request)
    text = response.text.strip()
    if not text or response.stop_reason not in ("end_turn", "stop_sequence"):
        # Never replace the session by an empty or cut-off summary: keep the context.
        raise UnusableSummaryError(
            f"the model returned no usable summary (stop reason {response.stop_reason}); "
            "the context was kept as it was",
            usage=response.usage,
        )
    real_tail = [m for m in tail if m.id in positions]
    position = positions[real_tail[0].id] if real_tail else len(transcript)
    summary = summary_message(
        text,
        _users_own_before(transcript, position),
        source="summary",
    )
    new_context = [summary, *tail]
    return CompactionResult(
        strategy="full_summary",
        context=new_context,
        summary=summary,
        post_tokens=budget.preamble + counter.messages(new_context),
        messages_dropped=len(head),
        messages_kept=len(tail),
        boundary_message_id=None,
        tool_results_cleared=0,
        usage=response.usage,
    )
