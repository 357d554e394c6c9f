"""Pure rules for cutting a transcript: safe summary boundaries, the kept tail, tombstones, stubs.

No I/O, no clock. A *cut* at index ``i`` splits ``messages[:i]`` from ``messages[i:]``; it is
safe when it separates no ``tool_use`` from its ``tool_result``. A *summary boundary* is the
last message the memory covers; it is always the message just before a safe cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tidemark.messages import Message, TextBlock, ToolResultBlock, ToolUseBlock
from tidemark.tokens import image_tokens, message_text
from tidemark.tools.interface import describe_call

__all__ = [
    "is_safe_cut",
    "kept_tail_start",
    "last_safe_boundary",
    "latest_results_index",
    "latest_turn_index",
    "request_problems",
    "stub_long_content",
    "stub_text",
    "tombstone_text",
    "tombstone_tool_results",
]


def is_safe_cut(messages: Sequence[Message], i: int) -> bool:
    """True when cutting before ``messages[i]`` keeps every tool pair on one side."""
    if i <= 0 or i >= len(messages):
        return True
    return not messages[i - 1].tool_uses and not messages[i].tool_results


def last_safe_boundary(messages: Sequence[Message]) -> int | None:
    """Index of the last message a summary may end at, or None.

    The boundary message must close every tool pair: an assistant message with pending
    ``tool_use`` blocks (tools still running) is never a boundary.
    """
    for j in range(len(messages) - 1, -1, -1):
        if not messages[j].tool_uses and is_safe_cut(messages, j + 1):
            return j
    return None


def _previous_safe_cut(messages: Sequence[Message], i: int) -> int:
    j = i - 1
    while j > 0 and not is_safe_cut(messages, j):
        j -= 1
    return max(j, 0)


def kept_tail_start(
    messages: Sequence[Message],
    first_uncovered: int,
    tokens: Sequence[int],
    *,
    min_tokens: int,
    min_text_messages: int,
    max_tokens: int,
) -> int:
    """Where the verbatim tail starts at compaction.

    Everything from ``first_uncovered`` on is kept (memory does not cover it). The start is
    extended back over covered messages, a whole tool pair at a time, until the tail holds
    ``min_tokens`` and ``min_text_messages`` messages with text, but never past
    ``max_tokens``. The result is always a safe cut at or before ``first_uncovered``.
    """
    start = min(max(first_uncovered, 0), len(messages))
    while not is_safe_cut(messages, start):
        start -= 1
    total = sum(tokens[start:])
    texts = sum(1 for m in messages[start:] if m.has_text)
    while start > 0 and (total < min_tokens or texts < min_text_messages):
        candidate = _previous_safe_cut(messages, start)
        added = sum(tokens[candidate:start])
        if total + added > max_tokens:
            break
        total += added
        texts += sum(1 for m in messages[candidate:start] if m.has_text)
        start = candidate
    return start


def latest_results_index(messages: Sequence[Message]) -> int:
    """Index of the message holding the latest turn's tool results (never tombstoned).

    Returns ``len(messages)`` when the latest assistant turn called no tools.
    """
    for j in range(len(messages) - 1, -1, -1):
        if messages[j].role == "assistant":
            return j + 1 if messages[j].tool_uses else len(messages)
    return len(messages)


def latest_turn_index(messages: Sequence[Message]) -> int:
    """Index of the latest assistant message (its text and tool inputs are never stubbed).

    Returns ``len(messages)`` when there is none.
    """
    for j in range(len(messages) - 1, -1, -1):
        if messages[j].role == "assistant":
            return j
    return len(messages)


def tombstone_text(use: ToolUseBlock | None, result: ToolResultBlock) -> str:
    """One line: what the call was, how big its result was, how to get it again."""
    size = len(result.content)
    lines = result.content.count("\n") + 1 if result.content else 0
    what = (
        describe_call(use.name, use.input, value_width=60, width=120)
        if use is not None
        else "this tool call"
    )
    status = "failed with" if result.is_error else "returned"
    images = len(result.images)
    extra = f" and {images} image{'s' if images > 1 else ''}" if images else ""
    return (
        f"[result cleared by tidemark to save context: {what} {status} {size:,} chars, "
        f"{lines:,} lines{extra}. Run the call again if you need it.]"
    )


def tombstone_tool_results(
    messages: Sequence[Message],
    *,
    tokens_to_free: int,
    protect_from: int,
    estimate: Callable[[str], int],
) -> tuple[list[Message], int, int]:
    """Tombstone the oldest tool results in ``messages[:protect_from]`` until enough is freed.

    Tool pairs stay (only the content is replaced), so a valid request stays valid. User
    messages and results at or after ``protect_from`` are never touched; results already
    tombstoned are skipped, so applying this twice changes nothing more than once.
    Returns (new messages, results cleared, tokens freed).
    """
    out = list(messages)
    freed = 0
    cleared = 0
    uses: dict[str, ToolUseBlock] = {}
    for i, message in enumerate(messages[:protect_from]):
        if freed >= tokens_to_free:
            break
        for use in message.tool_uses:
            uses[use.id] = use
        if message.role != "user" or not message.tool_results:
            continue
        blocks = list(message.content)
        # Savings are measured on the whole message, as TokenCounter counts it: per-block
        # estimates round differently and would report more freed than the recount finds.
        size = estimate(message_text(message)) + image_tokens(message)
        changed = False
        for k, block in enumerate(blocks):
            if freed >= tokens_to_free:
                break
            if not isinstance(block, ToolResultBlock) or block.tombstoned:
                continue
            text = tombstone_text(uses.get(block.tool_use_id), block)
            if not block.images and estimate(block.content) <= estimate(text):
                continue  # a tombstone would not be smaller (decided per block: idempotent)
            blocks[k] = block.model_copy(update={"content": text, "tombstoned": True, "images": ()})
            shrunk = message.model_copy(update={"content": blocks})
            new_size = estimate(message_text(shrunk)) + image_tokens(shrunk)
            freed += size - new_size
            size = new_size
            cleared += 1
            changed = True
        if changed:
            out[i] = message.model_copy(update={"content": blocks})
    return out, cleared, freed


def request_problems(messages: Sequence[Message]) -> list[str]:
    """What the Messages API would reject in this message list (tool pairing rules)."""
    problems: list[str] = []
    if not messages:
        return ["messages: at least one message is required"]
    if messages[0].role != "user":
        problems.append("messages.0: the first message must use the user role")
    # The API merges consecutive messages of the same role; check pairing on the merged list.
    merged: list[tuple[str, list[object]]] = []
    for message in messages:
        if merged and merged[-1][0] == message.role:
            merged[-1][1].extend(message.content)
        else:
            merged.append((message.role, list(message.content)))
    seen_ids: set[str] = set()
    for n, (role, blocks) in enumerate(merged):
        uses = [b.id for b in blocks if isinstance(b, ToolUseBlock)]
        for use_id in uses:
            if use_id in seen_ids:
                problems.append(f"messages.{n}: duplicate tool_use id {use_id}")
            seen_ids.add(use_id)
        results = [b for b in blocks if isinstance(b, ToolResultBlock)]
        if results:
            prev_uses: set[str] = set()
            if n > 0 and merged[n - 1][0] == "assistant":
                prev_uses = {b.id for b in merged[n - 1][1] if isinstance(b, ToolUseBlock)}
            for r in results:
                if r.tool_use_id not in prev_uses:
                    problems.append(f"messages.{n}: unexpected tool_use_id {r.tool_use_id}")
            leading = 0
            for b in blocks:
                if not isinstance(b, ToolResultBlock):
                    break
                leading += 1
            if leading != len(results):
                problems.append(f"messages.{n}: tool_result blocks must come first")
        if role == "assistant" and uses:
            nxt = merged[n + 1][1] if n + 1 < len(merged) else None
            answered = {b.tool_use_id for b in nxt or [] if isinstance(b, ToolResultBlock)}
            missing = [u for u in uses if u not in answered]
            if missing and nxt is not None:
                problems.append(f"messages.{n}: tool_use ids without tool_result: {missing}")
            elif missing:
                problems.append(f"messages.{n}: the request ends with unanswered tool_use")
    return problems


# Shorter tool inputs and texts are left alone: their stub would save next to nothing.
STUB_MIN_CHARS = 1_000


def stub_text(what: str, text: str) -> str:
    """One line standing for a long tool input or assistant text: what it was, how big."""
    lines = text.count("\n") + 1
    return f"[{what} cleared by tidemark to save context: {len(text):,} chars, {lines:,} lines]"


def _stub_block(block: TextBlock | ToolUseBlock, min_chars: int) -> TextBlock | ToolUseBlock | None:
    if block.stubbed:
        return None
    if isinstance(block, TextBlock):
        if len(block.text) < min_chars:
            return None
        return block.model_copy(
            update={"text": stub_text("earlier assistant text", block.text), "stubbed": True}
        )
    long = {
        key: stub_text(f"{block.name} input {key!r}", value)
        for key, value in block.input.items()
        if isinstance(value, str) and len(value) >= min_chars
    }
    if not long:
        return None
    return block.model_copy(update={"input": {**block.input, **long}, "stubbed": True})


def stub_long_content(
    messages: Sequence[Message],
    *,
    tokens_to_free: int,
    protect_from: int,
    estimate: Callable[[str], int],
    min_chars: int = STUB_MIN_CHARS,
) -> tuple[list[Message], int, int]:
    """Stub the oldest long assistant content in ``messages[:protect_from]`` until enough is freed.

    Long string inputs of ``tool_use`` blocks (file contents written, long commands) and long
    assistant texts become one-line stubs; ids, names and keys stay, so every tool pair and
    every request stays valid. User messages, tool results and everything at or after
    ``protect_from`` are never touched; stubbed blocks are skipped, so applying this twice
    changes nothing more than once. Returns (new messages, blocks stubbed, tokens freed).
    """
    out = list(messages)
    freed = 0
    stubbed = 0
    for i, message in enumerate(messages[:protect_from]):
        if freed >= tokens_to_free:
            break
        if message.role != "assistant":
            continue
        blocks = list(message.content)
        size = estimate(message_text(message))
        changed = False
        for k, block in enumerate(blocks):
            if freed >= tokens_to_free:
                break
            if not isinstance(block, TextBlock | ToolUseBlock):
                continue
            new = _stub_block(block, min_chars)
            if new is None:
                continue
            trial = [*blocks[:k], new, *blocks[k + 1 :]]
            new_size = estimate(message_text(message.model_copy(update={"content": trial})))
            if new_size >= size:
                continue  # a stub would not be smaller
            blocks = trial
            freed += size - new_size
            size = new_size
            stubbed += 1
            changed = True
        if changed:
            out[i] = message.model_copy(update={"content": blocks})
    return out, stubbed, freed
