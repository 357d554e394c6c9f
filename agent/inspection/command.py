"""`tidemark inspect`: read the session's files, summarise them, render them (or print JSON
lines). Prints to stdout, warnings to stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tidemark.errors import WorkspaceError
from tidemark.inspection import render
from tidemark.inspection.reading import Event, read_events, read_transcript, warn
from tidemark.inspection.summary import Summary, session_row, summarize, view_transcript
from tidemark.transcript import SessionPaths, list_sessions

__all__ = ["inspect_command"]


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
    if args.list:
        _list(workspace, args.json)
        return 0
    paths = SessionPaths.find(workspace, args.session)
    if args.messages:
        _messages(paths, args.json)
        return 0
    events, damage = read_events(paths.events)
    warn(damage)
    summary = summarize(paths.session_id, events, damage.count)
    if args.json:
        for line in _json_lines(events, summary):
            print(line)
        return 0
    console = render.make_console()
    render.timeline(console, paths.session_id, events)
    render.summary_table(console, summary)
    return 0


def _json_lines(events: Sequence[Event], summary: Summary) -> Iterator[str]:
    for event in events:
        yield json.dumps(event, ensure_ascii=False)
    yield json.dumps(summary.as_json(), ensure_ascii=False)


def _list(workspace: Path, as_json: bool) -> None:
    rows: list[Event] = []
    damaged: list[str] = []
    for paths in list_sessions(workspace):
        events, damage = read_events(paths.events)
        if damage.count:
            damaged.append(paths.session_id)
        rows.append(session_row(paths.session_id, events, damage.count))
    if damaged:
        print(
            f"tidemark: warning: damaged lines skipped in the events of {', '.join(damaged)}",
            file=sys.stderr,
        )
    if as_json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    render.session_list(render.make_console(), workspace, rows)


def _messages(paths: SessionPaths, as_json: bool) -> None:
    events, event_damage = read_events(paths.events)
    messages, compactions, damage = read_transcript(paths.transcript)
    warn(event_damage, damage)
    view = view_transcript(events, messages, compactions)
    if as_json:
        for kind, record in view.lines:
            print(json.dumps({"type": kind, **record}, ensure_ascii=False))
        return
    render.transcript_view(render.make_console(), paths.session_id, view)
