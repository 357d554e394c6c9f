"""What the strict server saw: content a memory or summary claims without having received it.

Shared by the tests and the benchmarks. Everything here reads the server's records of the
requests (and, for tidemark, the transcript and the events naming what each update covers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.support.fakeapi import RecordedRequest
from tests.support.sessions import facts_in
from tidemark.messages import Message

__all__ = [
    "facts_dropped",
    "facts_seen_before",
    "haystack",
    "needles",
    "request_strings",
    "unseen_by_memory",
    "unseen_by_summaries",
]


def request_strings(value: Any) -> list[str]:
    """Every string in a wire value (texts, tool inputs, tool results)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in request_strings(v)]  # pyright: ignore
    if isinstance(value, list):
        return [s for v in value for s in request_strings(v)]  # pyright: ignore
    return []


def haystack(request: RecordedRequest) -> str:
    """Every string the request's messages carry, in one text to search."""
    return "\x00".join(request_strings(request.body.get("messages", [])))


def needles(message: Message) -> list[tuple[str, str]]:
    """(what, text) for every piece of content a memory may only claim after seeing it."""
    out: list[tuple[str, str]] = []
    for block in message.content:
        if block.type == "tool_result":
            out.append((f"tool_result {block.tool_use_id}", block.content))
        elif block.type == "tool_use":
            out += [(f"tool_use {block.id} input", s) for s in request_strings(block.input)]
        elif block.type == "text" and message.role == "assistant":
            out.append((f"assistant text {message.id}", block.text))
    return out


def unseen_by_memory(
    events: Sequence[dict[str, Any]],
    transcript: Sequence[Message],
    memory_requests: Sequence[RecordedRequest],
) -> list[str]:
    """Content each committed memory update newly covers but did not receive verbatim.

    Updates run one at a time, so the n-th `memory_update_started` event is the n-th
    `session-memory` request the server received.
    """
    position = {m.id: i for i, m in enumerate(transcript)}
    started = [e["update"] for e in events if e["event"] == "memory_update_started"]
    missing: list[str] = []
    covered = -1
    for e in events:
        if e["event"] != "memory_update_committed" or e["update"] not in started:
            continue
        k = started.index(e["update"])
        if k >= len(memory_requests) or e["covers_message_id"] not in position:
            continue
        seen = haystack(memory_requests[k])
        end = position[e["covers_message_id"]]
        for message in transcript[covered + 1 : end + 1]:
            for what, needle in needles(message):
                if needle not in seen:
                    missing.append(f"update {e['update']}: {what}")
        covered = max(covered, end)
    return missing


def _results(request: RecordedRequest) -> dict[str, str]:
    out: dict[str, str] = {}
    for message in request.body.get("messages", []):
        for block in message.get("content") or []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                content = block.get("content")
                text = content if isinstance(content, str) else "".join(request_strings(content))
                out[str(block.get("tool_use_id"))] = text
    return out


def unseen_by_summaries(
    turns: Sequence[RecordedRequest], summaries: Sequence[RecordedRequest]
) -> int:
    """Tool results a blocking summary replaced without having received them verbatim.

    For each summary request: the results the last turn before it carried verbatim and the
    first turn after it no longer carries verbatim must be in the summary request.
    """
    unseen = 0
    for summary in summaries:
        before = next((t for t in reversed(turns) if t.started_at < summary.started_at), None)
        after = next((t for t in turns if t.started_at > summary.started_at), None)
        if before is None or after is None:
            continue
        kept = _results(after)
        seen = haystack(summary)
        for use_id, content in _results(before).items():
            if kept.get(use_id) != content and content not in seen:
                unseen += 1
    return unseen


def facts_seen_before(turns: Sequence[RecordedRequest]) -> list[set[str]]:
    """For each turn request, the planted facts the turn requests before it carried."""
    seen: set[str] = set()
    out: list[set[str]] = []
    for turn in turns:
        out.append(set(seen))
        seen |= facts_in(haystack(turn))
    return out


def facts_dropped(turns: Sequence[RecordedRequest], after: Sequence[int]) -> list[set[str]]:
    """Planted facts each compaction lost, by the server's record: for every compaction (the
    index in `turns` of the first turn request after it), the facts earlier turn requests
    carried that this one (context and memory or summary) no longer carries."""
    seen_before = facts_seen_before(turns)
    return [seen_before[k] - facts_in(haystack(turns[k])) for k in after if 0 < k < len(turns)]
