"""Structured events: their names and keys, and the sink that records them.

Every event is one JSON object with ``event``, ``timestamp`` (ISO 8601 UTC) and
``session_id``, plus the keys listed in `EVENT_KEYS` (more keys may be added).
Events go to ``.tidemark/sessions/<id>/events.jsonl`` (always) and to structlog's
``tidemark`` logger, which the CLI routes to ``--log-json`` and the console. The library
never configures logging.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from tidemark.messages import utc_now
from tidemark.storage import JsonlAppender

__all__ = ["EVENT_KEYS", "EventLog"]

EVENT_KEYS: dict[str, tuple[str, ...]] = {
    "session_started": ("task", "workspace", "model", "provider", "resumed"),
    "turn_finished": ("turn", "input_tokens", "output_tokens", "duration_ms", "stop_reason"),
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
    "session_finished": ("outcome", "turns", "exit_code"),
}


class EventLog:
    """Records a session's events: appends each to events.jsonl and forwards it to structlog."""

    def __init__(self, session_id: str, path: Path | None) -> None:
        self.session_id = session_id
        self._file = JsonlAppender(path) if path is not None else None
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
        rest = {k: v for k, v in record.items() if k != "event"}
        self._log.info(event, **rest)
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
