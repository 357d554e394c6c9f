"""Rendering `tidemark inspect` with rich: the timeline, the summary table, the list of
sessions and the transcript view. On a terminal in colour; piped, as plain wide text.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from tidemark.inspection.formatting import first_line, ms, offset, tokens, when, whole
from tidemark.inspection.reading import Event
from tidemark.inspection.summary import Summary, TranscriptView
from tidemark.prices import PRICES_AS_OF, PRICES_SOURCE, price_for

__all__ = ["make_console", "session_list", "summary_table", "timeline", "transcript_view"]


def _print(console: Console, renderable: RenderableType) -> None:
    """Print; when piped, without the padding rich puts at the end of table lines."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as capture:
        console.print(renderable)
    for line in capture.get().splitlines():
        print(line.rstrip())


def make_console() -> Console:
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
    at = offset(start, e.get("timestamp"))
    match e.get("event"):
        case "session_started":
            what = "session resumed" if e.get("resumed") else "session started"
            task = first_line(e.get("task"), 80)
            details = f"model {e.get('model')} ({e.get('provider')})" + (
                f" · task: {task}" if task else ""
            )
            return _Row(at, what, details, "bold")
        case "session_finished":
            details = f"{e.get('outcome')} after {e.get('turns')} turns (exit {e.get('exit_code')})"
            return _Row(at, "session finished", details, "bold")
        case "turn_finished":
            details = (
                f"in {tokens(e.get('input_tokens'))} "
                f"(cache read {tokens(e.get('cache_read_input_tokens'))}) "
                f"· out {tokens(e.get('output_tokens'))} "
                f"· {ms(e.get('duration_ms'))} · {e.get('stop_reason')}"
            )
            if "context_tokens" in e:
                details += f" · context {tokens(e.get('context_tokens'))}"
            return _Row(at, f"turn {e.get('turn')}", details)
        case "tool_call":
            return _Row(at, "tool", "", tools=[_tool(e)])
        case "memory_update_started":
            details = (
                f"messages {e.get('from_message_id')} … {e.get('to_message_id')} · "
                f"context {tokens(e.get('context_tokens'))}"
            )
            if "lag_tokens" in e:
                details += f" · memory {tokens(e.get('lag_tokens'))} tokens behind"
            return _Row(at, f"memory update {e.get('update')} started", details, "cyan")
        case "memory_update_committed":
            details = (
                f"after {ms(e.get('duration_ms'))} · memory {tokens(e.get('memory_tokens'))} tokens"
            )
            if e.get("covers_message_id"):
                details += f" · covers up to {e.get('covers_message_id')}"
            return _Row(at, f"memory update {e.get('update')} committed", details, "green")
        case "memory_update_failed":
            return _Row(at, f"memory update {e.get('update')} FAILED", str(e.get("error")), "red")
        case "summary_boundary":
            details = (
                f"memory covers up to {e.get('message_id')} (message #{e.get('message_index')})"
                f" · context then {tokens(e.get('context_tokens'))}"
            )
            if "memory_lag_tokens" in e:
                details += f" · memory lag now {tokens(e.get('memory_lag_tokens'))} tokens"
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
    text = Text(f"{e.get('tool')} {ms(e.get('duration_ms'))}")
    if e.get("is_error"):
        text.append(" ERROR", style="bold red")
    return text


_TRIGGERS = {
    "fresh_memory": "early: the memory lagged, waiting would tombstone what it has not seen",
    "window": "the model's window rejected the request",
}


def _compaction(e: Event) -> str:
    threshold = f" (threshold {tokens(e.get('threshold'))})" if "threshold" in e else ""
    if e.get("trigger") in _TRIGGERS:
        threshold += f" ({_TRIGGERS[e['trigger']]})"
    parts = [
        f"{tokens(e.get('pre_tokens'))} → {tokens(e.get('post_tokens'))} tokens{threshold}",
        f"dropped {whole(e.get('messages_dropped'))}, "
        f"kept {whole(e.get('messages_kept'))} messages",
        f"{whole(e.get('tool_results_cleared'))} results tombstoned",
        f"stall {ms(e.get('duration_ms'))} (waited {ms(e.get('waited_for_update_ms'))})",
        f"memory boundary {e.get('boundary_message_id') or 'none'}",
    ]
    if "memory_lag_tokens" in e:
        parts.append(f"memory lag {tokens(e.get('memory_lag_tokens'))}")
    return " · ".join(parts)


def timeline(console: Console, session_id: str, events: Sequence[Event]) -> None:
    start = when(events[0].get("timestamp")) if events else None
    began = start.strftime("%Y-%m-%d %H:%M:%S UTC") if start else "unknown"
    _print(console, Text(f"session {session_id} · started {began}", style="bold"))
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


def summary_table(console: Console, s: Summary) -> None:
    table = Table(title="summary", box=box.SIMPLE_HEAD, show_header=False, title_justify="left")
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value")
    stops = ", ".join(f"{k} {v}" for k, v in sorted(s.stop_reasons.items()))
    table.add_row("outcome", s.outcome)
    table.add_row("turns", f"{s.turns}" + (f" ({stops})" if stops else ""))
    table.add_row(
        "tool calls", f"{s.tool_calls} ({s.tool_errors} errors, {ms(s.tool_ms)} in tools)"
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
        f"{ms(s.longest_stall_ms)} (compaction {s.longest_stall_strategy})"
        if s.longest_stall_strategy
        else "none (no compaction)"
    )
    table.add_row("longest stall", stall)
    table.add_row("longest turn", ms(s.longest_turn_ms))
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


# -- the list of sessions and the transcript view ----------------------------------------------


def session_list(console: Console, workspace: Path, rows: Sequence[Event]) -> None:
    if not rows:
        _print(console, f"no tidemark session in {workspace}")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("session", "started", "task", "turns", "compactions", "state"):
        table.add_column(column, justify="right" if column in ("turns", "compactions") else "left")
    for row in rows:
        started = when(row["started"])
        table.add_row(
            row["session_id"],
            started.strftime("%Y-%m-%d %H:%M:%S") if started else "?",
            row["task"],
            str(row["turns"]),
            str(row["compactions"]),
            row["state"],
        )
    _print(console, table)


def transcript_view(console: Console, session_id: str, view: TranscriptView) -> None:
    counts = view.counts
    summary = "the memory summary + " if view.summary else ""
    _print(
        console,
        Text(
            f"session {session_id} · {view.messages} messages · "
            f"{view.compactions} compactions\n"
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
    for kind, record in view.lines:
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
