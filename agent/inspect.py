"""`tidemark inspect`: a session's timeline and summary, the list of sessions, and the
transcript with the memory boundaries and compaction points marked.

Everything is read from the session's files (events.jsonl, transcript.jsonl); damaged
lines are skipped with one warning line on stderr and the rest is shown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from tidemark.errors import WorkspaceError
from tidemark.messages import Message, TextBlock, ToolResultBlock, ToolUseBlock
from tidemark.storage import read_jsonl
from tidemark.tokens import TokenCounter
from tidemark.transcript import SessionPaths, list_sessions

__all__ = [
    "PRICES",
    "PRICES_AS_OF",
    "PRICES_SOURCE",
    "Price",
    "Summary",
    "estimate_cost",
    "inspect_command",
    "price_for",
    "read_events",
    "summarize",
]

Event = dict[str, Any]


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cache_read: float
    cache_write: float


# The same source and date as benchmarks/prices.py. Cache writes at the 5-minute rate.
PRICES_AS_OF = "2025-11-15"
PRICES_SOURCE = "https://docs.claude.com/en/docs/about-claude/pricing"
# Keyed by model name; dated names and aliases match too ("claude-sonnet-4-5-20250929",
# "claude-sonnet-4-0", "...-latest"), newer models do not ("claude-opus-4-5" is not "-4").
PRICES: dict[str, Price] = {
    "claude-opus-4-1": Price(15.0, 75.0, 1.50, 18.75),
    "claude-opus-4": Price(15.0, 75.0, 1.50, 18.75),
    "claude-sonnet-4-5": Price(3.0, 15.0, 0.30, 3.75),
    "claude-sonnet-4": Price(3.0, 15.0, 0.30, 3.75),
    "claude-3-7-sonnet": Price(3.0, 15.0, 0.30, 3.75),
    "claude-haiku-4-5": Price(1.0, 5.0, 0.10, 1.25),
    "claude-3-5-haiku": Price(0.80, 4.0, 0.08, 1.0),
}


_VERSION_TAIL = re.compile(r"(-\d{8}|-latest|-0)?")


def price_for(model: str) -> Price | None:
    for name, price in PRICES.items():
        if model.startswith(name) and _VERSION_TAIL.fullmatch(model[len(name) :]):
            return price
    return None


def estimate_cost(
    model: str, *, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int
) -> float | None:
    """Dollars for the given usage (`input_tokens` includes the cached parts); None if the
    model is not in the price table."""
    price = price_for(model)
    if price is None:
        return None
    uncached = max(0, input_tokens - cache_read - cache_write)
    return (
        uncached * price.input
        + output_tokens * price.output
        + cache_read * price.cache_read
        + cache_write * price.cache_write
    ) / 1_000_000


# -- reading -------------------------------------------------------------------------------


@dataclass
class Damage:
    """Lines of a session file that could not be read."""

    file: str
    lines: list[int] = field(default_factory=list[int])  # line numbers that are not JSON
    unusable: int = 0  # readable records that are not what the file should hold

    @property
    def count(self) -> int:
        return len(self.lines) + self.unusable

    def warning(self) -> str | None:
        if not self.count:
            return None
        parts: list[str] = []
        if self.lines:
            where = ", ".join(map(str, self.lines[:5])) + (", ..." if len(self.lines) > 5 else "")
            plural = "s" if len(self.lines) > 1 else ""
            parts.append(f"{len(self.lines)} damaged line{plural} ({where})")
        if self.unusable:
            parts.append(f"{self.unusable} unusable record{'s' if self.unusable > 1 else ''}")
        return f"tidemark: warning: {self.file}: skipped {' and '.join(parts)}; showing the rest"


_LINE_RE = re.compile(r"damaged line (\d+)")


def _read_records(path: Path) -> tuple[list[Event], Damage]:
    """All records of a JSONL file, and which lines were damaged (read_jsonl warns)."""
    damage = Damage(path.name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = list(read_jsonl(path))
    for warning in caught:
        found = _LINE_RE.search(str(warning.message))
        if found:
            damage.lines.append(int(found.group(1)))
    return records, damage


def read_events(path: Path) -> tuple[list[Event], Damage]:
    """A session's events, oldest first; records without an event name count as damage."""
    records, damage = _read_records(path)
    events = [r for r in records if isinstance(r.get("event"), str)]
    damage.unusable = len(records) - len(events)
    return events, damage


def _warn(*damages: Damage) -> None:
    for damage in damages:
        text = damage.warning()
        if text:
            print(text, file=sys.stderr)


# -- summary -------------------------------------------------------------------------------


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


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _int(value: Any) -> int:
    return int(_num(value))


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
    input_tokens, output_tokens = _int(e.get("input_tokens")), _int(e.get("output_tokens"))
    s.input_tokens += input_tokens
    s.output_tokens += output_tokens
    s.cache_read_input_tokens += _int(e.get("cache_read_input_tokens"))
    s.cache_creation_input_tokens += _int(e.get("cache_creation_input_tokens"))
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
            s.longest_turn_ms = max(s.longest_turn_ms, _num(e.get("duration_ms")))
        elif name == "tool_call":
            s.tool_calls += 1
            s.tool_errors += bool(e.get("is_error"))
            s.tool_ms += _num(e.get("duration_ms"))
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
            stall = _num(e.get("duration_ms"))
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


# -- formatting helpers ----------------------------------------------------------------------


def _ms(value: Any) -> str:
    ms = _num(value)
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(ms / 1000, 60)
    return f"{minutes:.0f} min {seconds:02.0f} s"


def _tokens(value: Any) -> str:
    return f"{_int(value):,}"


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _offset(start: datetime | None, value: Any) -> str:
    now = _when(value)
    if start is None or now is None:
        return "?"
    seconds = (now - start).total_seconds()
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"+{hours:.0f}:{minutes:02.0f}:{secs:06.3f}"
    return f"+{minutes:02.0f}:{secs:06.3f}"


def _first_line(text: Any, width: int = 60) -> str:
    line = str(text or "").strip().splitlines()[0] if str(text or "").strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _print(console: Console, renderable: RenderableType) -> None:
    """Print; when piped, without the padding rich puts at the end of table lines."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as capture:
        console.print(renderable)
    for line in capture.get().splitlines():
        print(line.rstrip())


def _console() -> Console:
    """Rich on a terminal; plain, wide text when piped (no colours, no wrapping)."""
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        console = Console(file=sys.stdout, highlight=False, width=200, no_color=True)
    return console


# -- the timeline ----------------------------------------------------------------------------


@dataclass
class _Row:
    time: str
    what: str
    details: str
    style: str = ""
    tools: list[Text] = field(default_factory=list[Text])


def _row(event: Event, start: datetime | None) -> _Row:
    e = event
    at = _offset(start, e.get("timestamp"))
    match e.get("event"):
        case "session_started":
            what = "session resumed" if e.get("resumed") else "session started"
            task = _first_line(e.get("task"), 80)
            details = f"model {e.get('model')} ({e.get('provider')})" + (
                f" · task: {task}" if task else ""
            )
            return _Row(at, what, details, "bold")
        case "session_finished":
            details = f"{e.get('outcome')} after {e.get('turns')} turns (exit {e.get('exit_code')})"
            return _Row(at, "session finished", details, "bold")
        case "turn_finished":
            details = (
                f"in {_tokens(e.get('input_tokens'))} "
                f"(cache read {_tokens(e.get('cache_read_input_tokens'))}) "
                f"· out {_tokens(e.get('output_tokens'))} "
                f"· {_ms(e.get('duration_ms'))} · {e.get('stop_reason')}"
            )
            if "context_tokens" in e:
                details += f" · context {_tokens(e.get('context_tokens'))}"
            return _Row(at, f"turn {e.get('turn')}", details)
        case "tool_call":
            return _Row(at, "tool", "", tools=[_tool(e)])
        case "memory_update_started":
            details = (
                f"messages {e.get('from_message_id')} … {e.get('to_message_id')} · "
                f"context {_tokens(e.get('context_tokens'))}"
            )
            if "lag_tokens" in e:
                details += f" · memory {_tokens(e.get('lag_tokens'))} tokens behind"
            return _Row(at, f"memory update {e.get('update')} started", details, "cyan")
        case "memory_update_committed":
            details = (
                f"after {_ms(e.get('duration_ms'))} "
                f"· memory {_tokens(e.get('memory_tokens'))} tokens"
            )
            if e.get("covers_message_id"):
                details += f" · covers up to {e.get('covers_message_id')}"
            return _Row(at, f"memory update {e.get('update')} committed", details, "green")
        case "memory_update_failed":
            return _Row(at, f"memory update {e.get('update')} FAILED", str(e.get("error")), "red")
        case "summary_boundary":
            details = (
                f"memory covers up to {e.get('message_id')} (message #{e.get('message_index')})"
                f" · context then {_tokens(e.get('context_tokens'))}"
            )
            if "memory_lag_tokens" in e:
                details += f" · memory lag now {_tokens(e.get('memory_lag_tokens'))} tokens"
            return _Row(at, "summary boundary", details, "green")
        case "compaction":
            return _Row(at, f"COMPACTION {e.get('strategy')}", _compaction(e), "bold yellow")
        case "compaction_failed":
            return _Row(at, f"COMPACTION {e.get('strategy')} FAILED", str(e.get("error")), "red")
        case other:
            rest = {k: v for k, v in e.items() if k not in ("event", "timestamp", "session_id")}
            details = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in rest.items())
            return _Row(at, str(other), details, "dim")


def _tool(e: Event) -> Text:
    text = Text(f"{e.get('tool')} {_ms(e.get('duration_ms'))}")
    if e.get("is_error"):
        text.append(" ERROR", style="bold red")
    return text


def _compaction(e: Event) -> str:
    threshold = f" (threshold {_tokens(e.get('threshold'))})" if "threshold" in e else ""
    parts = [
        f"{_tokens(e.get('pre_tokens'))} → {_tokens(e.get('post_tokens'))} tokens{threshold}",
        f"dropped {_int(e.get('messages_dropped'))}, kept {_int(e.get('messages_kept'))} messages",
        f"{_int(e.get('tool_results_cleared'))} results tombstoned",
        f"stall {_ms(e.get('duration_ms'))} (waited {_ms(e.get('waited_for_update_ms'))})",
        f"memory boundary {e.get('boundary_message_id') or 'none'}",
    ]
    if "memory_lag_tokens" in e:
        parts.append(f"memory lag {_tokens(e.get('memory_lag_tokens'))}")
    return " · ".join(parts)


def _timeline(console: Console, paths: SessionPaths, events: Sequence[Event]) -> None:
    start = _when(events[0].get("timestamp")) if events else None
    began = start.strftime("%Y-%m-%d %H:%M:%S UTC") if start else "unknown"
    _print(console, Text(f"session {paths.session_id} · started {began}", style="bold"))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("time", no_wrap=True, style="dim")
    table.add_column("event", no_wrap=True)
    table.add_column("details")
    table.add_column("tools")
    rows: list[_Row] = []
    turn = "?"
    in_flight: set[str] = set()
    for event in events:
        row = _row(event, start)
        name = event.get("event")
        if name == "turn_finished":
            turn = str(event.get("turn"))
        elif name == "memory_update_started":
            in_flight.add(str(event.get("update")))
        elif name in ("memory_update_committed", "memory_update_failed"):
            in_flight.discard(str(event.get("update")))
        elif name == "compaction" and in_flight:
            row.details += f" · update {', '.join(sorted(in_flight))} in flight"
        if row.what == "tool":
            if rows and rows[-1].what == f"turn {turn}":
                rows[-1].tools.extend(row.tools)
                continue
            if rows and rows[-1].what == f"tools of turn {turn}":
                rows[-1].tools.extend(row.tools)
                continue
            row.what = f"tools of turn {turn}"
        rows.append(row)
    for row in rows:
        tools = Text(", ").join(row.tools)
        table.add_row(row.time, Text(row.what, style=row.style), row.details, tools)
    _print(console, table)


def _summary_table(console: Console, s: Summary) -> None:
    table = Table(title="summary", box=box.SIMPLE_HEAD, show_header=False, title_justify="left")
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value")
    stops = ", ".join(f"{k} {v}" for k, v in sorted(s.stop_reasons.items()))
    table.add_row("outcome", s.outcome)
    table.add_row("turns", f"{s.turns}" + (f" ({stops})" if stops else ""))
    table.add_row(
        "tool calls", f"{s.tool_calls} ({s.tool_errors} errors, {_ms(s.tool_ms)} in tools)"
    )
    updates = (
        f"{s.updates_started} started, {s.updates_committed} committed, {s.updates_failed} failed"
    )
    if s.last_update_error:
        updates += f" (last error: {s.last_update_error})"
    table.add_row("memory updates", updates)
    boundary = f" (latest {s.last_boundary_message_id})" if s.last_boundary_message_id else ""
    table.add_row("summary boundaries", f"{s.summary_boundaries}{boundary}")
    by_strategy = ", ".join(f"{k} {v}" for k, v in sorted(s.compactions_by_strategy.items()))
    table.add_row("compactions", f"{s.compactions}" + (f" ({by_strategy})" if by_strategy else ""))
    table.add_row(
        "tokens",
        f"input {s.input_tokens:,} (cache read {s.cache_read_input_tokens:,}, cache write "
        f"{s.cache_creation_input_tokens:,}) · output {s.output_tokens:,}",
    )
    table.add_row(
        "  of which",
        f"memory updates: input {s.memory_input_tokens:,} · output {s.memory_output_tokens:,}; "
        f"summaries: input {s.summary_input_tokens:,} · output {s.summary_output_tokens:,}",
    )
    if s.estimated_cost_usd is None:
        table.add_row("estimated cost", s.cost_note)
    else:
        table.add_row("estimated cost", f"${s.estimated_cost_usd:.4f} ({s.cost_note})")
    stall = (
        f"{_ms(s.longest_stall_ms)} (compaction {s.longest_stall_strategy})"
        if s.longest_stall_strategy
        else "none (no compaction)"
    )
    table.add_row("longest stall", stall)
    table.add_row("longest turn", _ms(s.longest_turn_ms))
    _print(console, table)
    price = price_for(s.model)
    if price is not None:
        _print(
            console,
            Text(
                f"prices used: {s.model} ${price.input:g}/M input, ${price.output:g}/M output, "
                f"${price.cache_read:g}/M cache read, ${price.cache_write:g}/M cache write; "
                f"as of {PRICES_AS_OF}, from {PRICES_SOURCE}",
                style="dim",
            ),
        )


# -- the list of sessions ------------------------------------------------------------------


def _list(console: Console, workspace: Path, as_json: bool) -> None:
    sessions = list_sessions(workspace)
    rows: list[Event] = []
    damaged: list[str] = []
    for paths in sessions:
        events, damage = read_events(paths.events)
        if damage.count:
            damaged.append(paths.session_id)
        s = summarize(paths.session_id, events, damage.count)
        started = next(
            (e.get("timestamp") for e in events if e.get("event") == "session_started"), None
        )
        if not events:
            state = "no events"
        elif s.outcome == "unfinished":
            state = "unfinished (running or killed)"
        else:
            state = s.outcome
        rows.append(
            {
                "session_id": paths.session_id,
                "started": started,
                "task": _first_line(s.task, 60),
                "turns": s.turns,
                "compactions": s.compactions,
                "state": state,
            }
        )
    if damaged:
        print(
            f"tidemark: warning: damaged lines skipped in the events of {', '.join(damaged)}",
            file=sys.stderr,
        )
    if as_json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    if not rows:
        _print(console, f"no tidemark session in {workspace}")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("session", "started", "task", "turns", "compactions", "state"):
        table.add_column(column, justify="right" if column in ("turns", "compactions") else "left")
    for row in rows:
        started = _when(row["started"])
        table.add_row(
            row["session_id"],
            started.strftime("%Y-%m-%d %H:%M:%S") if started else "?",
            row["task"],
            str(row["turns"]),
            str(row["compactions"]),
            row["state"],
        )
    _print(console, table)


# -- the transcript with its marks -----------------------------------------------------------


@dataclass
class _Compaction:
    after_index: int  # the last transcript message before the context was rebuilt
    kept: set[str]
    tombstoned: set[str]  # tool_use ids whose results are tombstoned
    summary: bool
    event: Event | None


def _transcript(path: Path) -> tuple[list[Message], list[_Compaction], Damage]:
    records, damage = _read_records(path)
    messages: list[Message] = []
    compactions: list[_Compaction] = []
    for record in records:
        try:
            if record.get("type") == "message":
                messages.append(Message.model_validate(record["message"]))
            elif record.get("type") == "context":
                compactions.append(
                    _Compaction(
                        after_index=len(messages) - 1,
                        kept=set(record.get("message_ids") or []),
                        tombstoned=set(record.get("tombstones") or {}),
                        summary=bool(record.get("summary")),
                        event=None,
                    )
                )
        except (ValidationError, KeyError, TypeError):
            damage.unusable += 1
    return messages, compactions, damage


def _preview(message: Message, tool_names: dict[str, str], width: int = 90) -> str:
    parts: list[str] = []
    for block in message.content:
        if isinstance(block, TextBlock) and block.text.strip():
            parts.append(repr(_first_line(block.text, 50)))
        elif isinstance(block, ToolUseBlock):
            args = ", ".join(f"{k}={str(v)[:30]!r}" for k, v in block.input.items())
            parts.append(f"{block.name}({args})")
        elif isinstance(block, ToolResultBlock):
            name = tool_names.get(block.tool_use_id, "tool")
            error = " error" if block.is_error else ""
            parts.append(f"{name} result{error} {len(block.content):,} chars")
    text = " + ".join(parts) or "(empty)"
    return text if len(text) <= width else text[: width - 1] + "…"


def _who(message: Message) -> str:
    if message.role == "assistant":
        return "assistant"
    return "user" if message.origin == "user" else f"user/{message.origin}"


def _messages(console: Console, paths: SessionPaths, as_json: bool) -> None:
    events, event_damage = read_events(paths.events)
    messages, compactions, damage = _transcript(paths.transcript)
    _warn(event_damage, damage)
    for compaction, event in zip(
        compactions, (e for e in events if e.get("event") == "compaction"), strict=False
    ):
        compaction.event = event
    # Which update each boundary came from: the commit just before it names the same id.
    boundaries: dict[str, list[int]] = {}
    update = 0
    for e in events:
        if e.get("event") == "memory_update_committed":
            update = _int(e.get("update"))
        elif e.get("event") == "summary_boundary":
            boundaries.setdefault(str(e.get("message_id")), []).append(update)
    last = compactions[-1] if compactions else None
    counter = TokenCounter()
    tool_names = {u.id: u.name for m in messages for u in m.tool_uses}
    after: dict[int, list[tuple[str, Event]]] = {}
    for n, c in enumerate(compactions, 1):
        after.setdefault(c.after_index, []).append(("compaction", _compaction_mark(n, c)))

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

    if as_json:
        for kind, record in lines:
            print(json.dumps({"type": kind, **record}, ensure_ascii=False))
        return
    summary = "the memory summary + " if last is not None and last.summary else ""
    _print(
        console,
        Text(
            f"session {paths.session_id} · {len(messages)} messages · "
            f"{len(compactions)} compactions\n"
            f"context now: {summary}{counts['kept'] + counts['tombstoned']} messages kept "
            f"({counts['tombstoned']} of them with tool results tombstoned); "
            f"{counts['dropped'] + counts['in summary']} not in context "
            "(the transcript keeps them all)"
        ),
    )
    _print(
        console,
        Text(f"{'#':>4}  {'id':<20}  {'who':<13} {'tokens':>7}  {'context':<10}  preview", "bold"),
    )
    for kind, record in lines:
        if kind == "message":
            style = {"dropped": "dim", "tombstoned": "yellow"}.get(record["context"], "")
            _print(
                console,
                Text(
                    f"{record['index']:>4}  {record['id']:<20}  {record['who']:<13} "
                    f"{record['tokens']:>7,}  {record['context']:<10}  {record['preview']}",
                    style=style,
                ),
            )
        else:
            style = "bold green" if kind == "boundary" else "bold yellow"
            _print(console, Text(str(record["text"]), style=style))


def _context_state(index: int, message: Message, last: _Compaction | None) -> str:
    """Whether the current context holds the message verbatim, tombstoned, or not at all."""
    if last is None or index > last.after_index:
        return "kept"
    if message.id not in last.kept:
        # The summary message quotes the user's own words verbatim.
        return "in summary" if last.summary and message.is_users_own else "dropped"
    if any(b.tool_use_id in last.tombstoned for b in message.tool_results):
        return "tombstoned"
    return "kept"


def _compaction_mark(n: int, c: _Compaction) -> Event:
    e = c.event or {}
    strategy = e.get("strategy", "?")
    detail = (
        f": {_tokens(e.get('pre_tokens'))} → {_tokens(e.get('post_tokens'))} tokens, "
        f"{_int(e.get('messages_dropped'))} dropped, {_int(e.get('messages_kept'))} kept, "
        f"{_int(e.get('tool_results_cleared'))} tool results tombstoned"
        if e
        else ""
    )
    text = f"══ compaction {n} ({strategy}) here{detail} ══"
    return {"compaction": n, "strategy": strategy, "text": text}


# -- the command -----------------------------------------------------------------------------


def _json_lines(events: Sequence[Event], summary: Summary) -> Iterator[str]:
    for event in events:
        yield json.dumps(event, ensure_ascii=False)
    yield json.dumps(summary.as_json(), ensure_ascii=False)


def inspect_command(args: argparse.Namespace) -> int:
    """`tidemark inspect`: prints to stdout, warnings to stderr; returns the exit code."""
    try:
        return _inspect(args)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other command-line tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _inspect(args: argparse.Namespace) -> int:
    workspace = Path(args.workspace).expanduser()
    if not workspace.is_dir():
        raise WorkspaceError(
            f"workspace {workspace} does not exist: pass the folder the session ran in "
            "with --workspace DIR"
        )
    console = _console()
    if args.list:
        _list(console, workspace, args.json)
        return 0
    paths = SessionPaths.find(workspace, args.session)
    if args.messages:
        _messages(console, paths, args.json)
        return 0
    events, damage = read_events(paths.events)
    _warn(damage)
    summary = summarize(paths.session_id, events, damage.count)
    if args.json:
        for line in _json_lines(events, summary):
            print(line)
        return 0
    _timeline(console, paths, events)
    _summary_table(console, summary)
    return 0
