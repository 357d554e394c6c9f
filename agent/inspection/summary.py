"""Summarising a session for `tidemark inspect`: totals and cost over its events, a row per
session for the list, and the transcript's view (what each message is to the context now).

Pure: these take what `reading` read and return plain data for `render` (or JSON lines).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from tidemark.inspection.formatting import first_line, num, tokens, whole
from tidemark.inspection.reading import CompactionMark, Event
from tidemark.messages import Message, TextBlock, ToolResultBlock, ToolUseBlock
from tidemark.prices import PRICES_AS_OF, estimate_cost, price_for
from tidemark.tokens import TokenCounter
from tidemark.tools.interface import describe_call

__all__ = ["Summary", "TranscriptView", "session_row", "summarize", "view_transcript"]


@dataclass
class Summary:
    """The totals at the end of `tidemark inspect` (also its last JSON line)."""

    session_id: str
    model: str = ""
    task: str = ""
    outcome: str = "unfinished"
    turns: int = 0
    stop_reasons: dict[str, int] = field(default_factory=dict[str, int])
    tool_calls: int = 0
    tool_errors: int = 0
    tool_ms: float = 0.0
    updates_started: int = 0
    updates_committed: int = 0
    updates_failed: int = 0
    last_update_error: str | None = None
    summary_boundaries: int = 0
    last_boundary_message_id: str | None = None
    compactions: int = 0
    compactions_by_strategy: dict[str, int] = field(default_factory=dict[str, int])
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    # Parts of the totals above spent on memory updates and on blocking summaries.
    memory_input_tokens: int = 0
    memory_output_tokens: int = 0
    summary_input_tokens: int = 0
    summary_output_tokens: int = 0
    estimated_cost_usd: float | None = None
    cost_note: str = ""
    longest_stall_ms: float = 0.0
    longest_stall_strategy: str | None = None
    longest_turn_ms: float = 0.0
    damaged_lines: int = 0

    def as_json(self) -> Event:
        return {"event": "summary", **asdict(self)}


# Events that carry the usage of a request the session paid for, by what the request was.
_BILLED: dict[str, str] = {
    "turn_finished": "turn",
    "memory_update_committed": "memory",
    "memory_update_failed": "memory",
    "compaction": "summary",  # only a blocking summary made a request (and has usage)
    "compaction_failed": "summary",
}
_LOCAL_PROVIDER = "LocalModel"


def _add_usage(s: Summary, e: Event, kind: str) -> None:
    """Add one request's usage (`input_tokens` includes the cached parts) to the totals."""
    input_tokens, output_tokens = whole(e.get("input_tokens")), whole(e.get("output_tokens"))
    s.input_tokens += input_tokens
    s.output_tokens += output_tokens
    s.cache_read_input_tokens += whole(e.get("cache_read_input_tokens"))
    s.cache_creation_input_tokens += whole(e.get("cache_creation_input_tokens"))
    if kind == "memory":
        s.memory_input_tokens += input_tokens
        s.memory_output_tokens += output_tokens
    elif kind == "summary":
        s.summary_input_tokens += input_tokens
        s.summary_output_tokens += output_tokens


def summarize(session_id: str, events: Sequence[Event], damaged_lines: int = 0) -> Summary:
    """Totals over a session's events (all runs of it, resumes included)."""
    s = Summary(session_id=session_id, damaged_lines=damaged_lines)
    stops: Counter[str] = Counter()
    strategies: Counter[str] = Counter()
    local = False
    for e in events:
        name = e.get("event")
        if isinstance(name, str) and name in _BILLED:
            _add_usage(s, e, _BILLED[name])
        if name == "session_started":
            s.model = str(e.get("model") or s.model)
            local = e.get("provider") == _LOCAL_PROVIDER or s.model.startswith("local/")
            s.task = s.task or str(e.get("task") or "")
            s.outcome = "unfinished"
        elif name == "session_finished":
            s.outcome = str(e.get("outcome") or "finished")
        elif name == "turn_finished":
            s.turns += 1
            stops[str(e.get("stop_reason"))] += 1
            s.longest_turn_ms = max(s.longest_turn_ms, num(e.get("duration_ms")))
        elif name == "tool_call":
            s.tool_calls += 1
            s.tool_errors += bool(e.get("is_error"))
            s.tool_ms += num(e.get("duration_ms"))
        elif name == "memory_update_started":
            s.updates_started += 1
        elif name == "memory_update_committed":
            s.updates_committed += 1
        elif name == "memory_update_failed":
            s.updates_failed += 1
            s.last_update_error = str(e.get("error"))
        elif name == "summary_boundary":
            s.summary_boundaries += 1
            s.last_boundary_message_id = str(e.get("message_id"))
        elif name == "compaction":
            s.compactions += 1
            strategy = str(e.get("strategy"))
            strategies[strategy] += 1
            stall = num(e.get("duration_ms"))
            if s.longest_stall_strategy is None or stall > s.longest_stall_ms:
                s.longest_stall_ms = stall
                s.longest_stall_strategy = strategy
    s.stop_reasons = dict(stops)
    s.compactions_by_strategy = dict(strategies)
    s.tool_ms = round(s.tool_ms, 3)
    cost = estimate_cost(
        s.model,
        input_tokens=s.input_tokens,
        output_tokens=s.output_tokens,
        cache_read=s.cache_read_input_tokens,
        cache_write=s.cache_creation_input_tokens,
    )
    s.estimated_cost_usd = None if cost is None else round(cost, 6)
    if local:
        s.estimated_cost_usd = 0.0
        s.cost_note = "the embedded local model runs on this machine: no API cost"
    elif price_for(s.model) is None:
        s.cost_note = f"cost: unknown model {s.model or '(none recorded)'}"
    else:
        s.cost_note = (
            f"{s.model} list prices of {PRICES_AS_OF}; turns, memory updates and summaries included"
        )
    return s


def session_row(session_id: str, events: Sequence[Event], damaged_lines: int) -> Event:
    """One session in `tidemark inspect --list`."""
    s = summarize(session_id, events, damaged_lines)
    started = next(
        (e.get("timestamp") for e in events if e.get("event") == "session_started"), None
    )
    if not events:
        state = "no events"
    elif s.outcome == "unfinished":
        state = "unfinished (running or killed)"
    else:
        state = s.outcome
    return {
        "session_id": session_id,
        "started": started,
        "task": first_line(s.task, 60),
        "turns": s.turns,
        "compactions": s.compactions,
        "state": state,
    }


# -- the transcript's view -------------------------------------------------------------------


@dataclass
class TranscriptView:
    """`tidemark inspect --messages`: one line per message, and the marks between them."""

    lines: list[tuple[str, Event]]  # ("message" | "boundary" | "compaction", record)
    messages: int
    compactions: int
    summary: bool  # the current context starts with the memory summary
    counts: Counter[str]  # messages by their state in the current context


def view_transcript(
    events: Sequence[Event], messages: Sequence[Message], compactions: Sequence[CompactionMark]
) -> TranscriptView:
    """Each message with its tokens and its state in the current context (kept, tombstoned,
    dropped, in summary), with the memory boundaries and compaction points between them."""
    # The n-th context record of the transcript is the n-th compaction event.
    compaction_events = [e for e in events if e.get("event") == "compaction"]
    # Which update each boundary came from: the commit just before it names the same id.
    boundaries: dict[str, list[int]] = {}
    update = 0
    for e in events:
        if e.get("event") == "memory_update_committed":
            update = whole(e.get("update"))
        elif e.get("event") == "summary_boundary":
            boundaries.setdefault(str(e.get("message_id")), []).append(update)
    last = compactions[-1] if compactions else None
    counter = TokenCounter()
    tool_names = {u.id: u.name for m in messages for u in m.tool_uses}
    after: dict[int, list[tuple[str, Event]]] = {}
    for n, c in enumerate(compactions, 1):
        event = compaction_events[n - 1] if n <= len(compaction_events) else {}
        after.setdefault(c.after_index, []).append(("compaction", _compaction_mark(n, event)))

    counts: Counter[str] = Counter()
    lines: list[tuple[str, Event]] = []
    for index, message in enumerate(messages):
        state = _context_state(index, message, last)
        counts[state] += 1
        lines.append(
            (
                "message",
                {
                    "index": index,
                    "id": message.id,
                    "who": _who(message),
                    "tokens": counter.message(message),
                    "context": state,
                    "preview": _preview(message, tool_names),
                },
            )
        )
        for n in boundaries.get(message.id, []):
            mark = f"── memory covers up to here (update {n}) ──"
            lines.append(("boundary", {"message_id": message.id, "update": n, "text": mark}))
        lines.extend(after.get(index, []))
    summary = last is not None and last.summary
    return TranscriptView(lines, len(messages), len(compactions), summary, counts)


def _preview(message: Message, tool_names: dict[str, str], width: int = 90) -> str:
    parts: list[str] = []
    for block in message.content:
        if isinstance(block, TextBlock) and block.text.strip():
            parts.append(repr(first_line(block.text, 50)))
        elif isinstance(block, ToolUseBlock):
            parts.append(describe_call(block.name, block.input, value_width=30))
        elif isinstance(block, ToolResultBlock):
            name = tool_names.get(block.tool_use_id, "tool")
            error = " error" if block.is_error else ""
            images = f" + {len(block.images)} image(s)" if block.images else ""
            parts.append(f"{name} result{error} {len(block.content):,} chars{images}")
    text = " + ".join(parts) or "(empty)"
    return text if len(text) <= width else text[: width - 1] + "…"


def _who(message: Message) -> str:
    if message.role == "assistant":
        return "assistant"
    return "user" if message.origin == "user" else f"user/{message.origin}"


def _context_state(index: int, message: Message, last: CompactionMark | None) -> str:
    """Whether the current context holds the message verbatim, tombstoned, or not at all."""
    if last is None or index > last.after_index:
        return "kept"
    if message.id not in last.kept:
        # The summary message quotes the user's own words verbatim.
        return "in summary" if last.summary and message.is_users_own else "dropped"
    if any(b.tool_use_id in last.tombstoned for b in message.tool_results):
        return "tombstoned"
    return "kept"


def _compaction_mark(n: int, e: Event) -> Event:
    strategy = e.get("strategy", "?")
    detail = (
        f": {tokens(e.get('pre_tokens'))} → {tokens(e.get('post_tokens'))} tokens, "
        f"{whole(e.get('messages_dropped'))} dropped, {whole(e.get('messages_kept'))} kept, "
        f"{whole(e.get('tool_results_cleared'))} tool results tombstoned"
        if e
        else ""
    )
    text = f"══ compaction {n} ({strategy}) here{detail} ══"
    return {"compaction": n, "strategy": strategy, "text": text}
