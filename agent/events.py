"""Structured events: their names and keys, and the sink that records them.

Every event is one JSON object with ``event``, ``timestamp`` (ISO 8601 UTC) and
``session_id``, plus the keys listed in `EVENT_KEYS` (more keys may be added).
Events go to ``.tidemark/sessions/<id>/events.jsonl`` (always), to the subscribers the
caller passes (``Agent(..., on_event=...)``; the CLI's status line is one), and to
structlog's ``tidemark`` logger only once the application has configured structlog (the CLI
does, for ``--log-json``). The library never configures logging and never prints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from tidemark.messages import utc_now
from tidemark.storage import JsonlAppender

__all__ = ["EVENT_KEYS", "EventLog", "EventSubscriber"]

# Called with each event record as it is emitted, on the event loop's thread.
EventSubscriber = Callable[[dict[str, Any]], None]

EVENT_KEYS: dict[str, tuple[str, ...]] = {
    "session_started": ("task", "workspace", "model", "provider", "resumed"),
    # Before each model call: the context it sends against the compaction threshold, and
    # how far the memory lags behind the transcript (None: no memory yet).
    "turn_started": ("turn", "context_tokens", "threshold", "memory_lag_tokens"),
    "turn_finished": ("turn", "input_tokens", "output_tokens", "duration_ms", "stop_reason"),
    "tool_started": ("tool", "tool_use_id", "input"),
    "tool_call": ("tool", "tool_use_id", "duration_ms", "is_error"),
    "memory_update_started": ("update", "from_message_id", "to_message_id", "context_tokens"),
    "memory_update_committed": ("update", "duration_ms", "memory_tokens"),
    "memory_update_failed": ("update", "error"),
    "summary_boundary": ("message_id", "message_index", "context_tokens"),
    "compaction": (
        "strategy",
        "pre_tokens",
        "post_tokens",
        "messages_dropped",
        "messages_kept",
        "boundary_message_id",
        "duration_ms",
        "waited_for_update_ms",
        "tool_results_cleared",
    ),
    "compaction_failed": ("strategy", "error"),
    # Something a person watching the run should know (a blocking summary is starting).
    "notice": ("text",),
    "session_finished": ("outcome", "turns", "exit_code"),
}


class EventLog:
    """Records a session's events: events.jsonl, the subscribers, a configured structlog."""

    def __init__(
        self, session_id: str, path: Path | None, subscribers: Sequence[EventSubscriber] = ()
    ) -> None:
        self.session_id = session_id
        self._file = JsonlAppender(path) if path is not None else None
        self._subscribers = list(subscribers)
        self._log = structlog.get_logger("tidemark")

    def emit(self, event: str, **keys: Any) -> dict[str, Any]:
        expected = EVENT_KEYS.get(event)
        if expected is not None:
            missing = [k for k in expected if k not in keys]
            if missing:
                raise ValueError(f"event {event!r} is missing keys {missing}")
        record: dict[str, Any] = {
            "event": event,
            "timestamp": utc_now(),
            "session_id": self.session_id,
            **keys,
        }
        if self._file is not None:
            self._file.append(record)
        for subscriber in self._subscribers:
            subscriber(record)
        # An unconfigured structlog prints to stdout: a library stays quiet unless asked.
        if structlog.is_configured():
            rest = {k: v for k, v in record.items() if k != "event"}
            self._log.info(event, **rest)
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
