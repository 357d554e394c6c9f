"""Structured events: their names and keys, and the sink that records them.

Every event is one JSON object with ``event``, ``timestamp`` (ISO 8601 UTC) and
``session_id``, plus the keys listed in `EVENT_KEYS` (more keys may be added).
Events go to ``.tidemark/sessions/<id>/events.jsonl`` (always), to the subscribers the
caller passes (``Agent(..., on_event=...)``; the CLI's status line is one), and to
structlog's ``tidemark`` logger only once the application has configured structlog (the CLI
does, for ``--log-json``). The library never configures logging and never prints.
"""

# No `from __future__ import annotations` here: TypedDict reads NotRequired[...] at runtime.
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NotRequired, Required, TypedDict, Unpack, overload

import structlog

from tidemark.messages import StopReason, utc_now
from tidemark.storage import JsonlAppender

__all__ = [
    "EVENT_KEYS",
    "EVENT_TYPES",
    "Compaction",
    "CompactionFailed",
    "EventLog",
    "EventSubscriber",
    "MemoryUpdateCommitted",
    "MemoryUpdateFailed",
    "MemoryUpdateStarted",
    "Notice",
    "SessionFinished",
    "SessionStarted",
    "SummaryBoundary",
    "ToolCall",
    "ToolStarted",
    "TurnFinished",
    "TurnStarted",
    "UpdateUsage",
]

# Called with each event record as it is emitted, on the event loop's thread.
EventSubscriber = Callable[[dict[str, Any]], None]

# One TypedDict per event: its keys and their types. Required keys are the contract's;
# NotRequired ones are extras. `EventLog.emit` is typed by them, so a wrong or missing key
# is a type error where the event is emitted.


class SessionStarted(TypedDict):
    task: str
    workspace: str
    model: str
    provider: str
    resumed: bool


class TurnStarted(TypedDict):
    """Before each model call: the context it sends against the compaction threshold."""

    turn: int
    context_tokens: int
    threshold: int
    memory_lag_tokens: int | None  # None: no memory yet


class TurnFinished(TypedDict):
    turn: int
    input_tokens: int
    output_tokens: int
    duration_ms: float
    stop_reason: StopReason | None
    cache_read_input_tokens: NotRequired[int]
    cache_creation_input_tokens: NotRequired[int]
    context_tokens: NotRequired[int]


class ToolStarted(TypedDict):
    tool: str
    tool_use_id: str
    input: dict[str, Any]


class ToolCall(TypedDict):
    tool: str
    tool_use_id: str
    duration_ms: float
    is_error: bool
    output_chars: NotRequired[int]


class UpdateUsage(TypedDict, total=False):
    """What a memory update's or a summary's request cost (absent when it got no response)."""

    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int


class MemoryUpdateStarted(TypedDict):
    update: int
    from_message_id: str | None
    to_message_id: str
    context_tokens: int
    lag_tokens: NotRequired[int]


class MemoryUpdateCommitted(UpdateUsage):
    update: Required[int]
    duration_ms: Required[float]
    memory_tokens: Required[int]
    covers_message_id: Required[str]


class MemoryUpdateFailed(UpdateUsage):
    update: Required[int]
    error: Required[str]
    consecutive_failures: NotRequired[int]  # failed updates in a row, this one included
    retry_after_turns: NotRequired[int]  # due updates skipped before the next try (back-off)


class SummaryBoundary(TypedDict):
    message_id: str
    message_index: int
    context_tokens: int
    memory_lag_tokens: NotRequired[int]


class Compaction(TypedDict):
    strategy: str  # session_memory, tool_result_clearing or full_summary
    pre_tokens: int
    post_tokens: int
    messages_dropped: int
    messages_kept: int
    boundary_message_id: str | None
    duration_ms: float
    waited_for_update_ms: float
    tool_results_cleared: int
    memory_lag_tokens: NotRequired[int]
    threshold: NotRequired[int]
    target: NotRequired[int]  # what post_tokens had to reach (half of the threshold)
    stubs: NotRequired[int]  # tool inputs and assistant texts shortened to a stub
    # threshold: the next request would pass --compact-at; window: the model's window
    # rejected it; fresh_memory: before the threshold, so nothing the memory has not seen is
    # tombstoned (the one at the threshold would have had to).
    trigger: NotRequired[Literal["threshold", "window", "fresh_memory"]]
    # The blocking summary's usage (full_summary only).
    input_tokens: NotRequired[int]
    output_tokens: NotRequired[int]
    cache_read_input_tokens: NotRequired[int]
    cache_creation_input_tokens: NotRequired[int]


class CompactionFailed(UpdateUsage):
    """A blocking summary that failed; the context stays as it was."""

    strategy: Required[str]
    error: Required[str]


class Notice(TypedDict):
    """Something a person watching the run should know (a blocking summary is starting)."""

    text: str


class SessionFinished(TypedDict):
    outcome: str
    turns: int
    exit_code: int


EVENT_TYPES: dict[str, type[Any]] = {
    "session_started": SessionStarted,
    "turn_started": TurnStarted,
    "turn_finished": TurnFinished,
    "tool_started": ToolStarted,
    "tool_call": ToolCall,
    "memory_update_started": MemoryUpdateStarted,
    "memory_update_committed": MemoryUpdateCommitted,
    "memory_update_failed": MemoryUpdateFailed,
    "summary_boundary": SummaryBoundary,
    "compaction": Compaction,
    "compaction_failed": CompactionFailed,
    "notice": Notice,
    "session_finished": SessionFinished,
}

# The keys every event of a name carries (the contract's table).
EVENT_KEYS: dict[str, tuple[str, ...]] = {
    name: tuple(k for k in kind.__annotations__ if k in kind.__required_keys__)
    for name, kind in EVENT_TYPES.items()
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

    @overload
    def emit(
        self, event: Literal["session_started"], **keys: Unpack[SessionStarted]
    ) -> dict[str, Any]: ...
    @overload
    def emit(
        self, event: Literal["turn_started"], **keys: Unpack[TurnStarted]
    ) -> dict[str, Any]: ...
    @overload
    def emit(
        self, event: Literal["turn_finished"], **keys: Unpack[TurnFinished]
    ) -> dict[str, Any]: ...
    @overload
    def emit(
        self, event: Literal["tool_started"], **keys: Unpack[ToolStarted]
    ) -> dict[str, Any]: ...
    @overload
    def emit(self, event: Literal["tool_call"], **keys: Unpack[ToolCall]) -> dict[str, Any]: ...
    @overload
    def emit(
        self, event: Literal["memory_update_started"], **keys: Unpack[MemoryUpdateStarted]
    ) -> dict[str, Any]: ...
    @overload
    def emit(
        self, event: Literal["memory_update_committed"], **keys: Unpack[MemoryUpdateCommitted]
    ) -> dict[str, Any]: ...
    @overload
    def emit(
        self, event: Literal["memory_update_failed"], **keys: Unpack[MemoryUpdateFailed]
    ) -> dict[str, Any]: ...
    @overload
    def emit(
        self, event: Literal["summary_boundary"], **keys: Unpack[SummaryBoundary]
    ) -> dict[str, Any]: ...
    @overload
    def emit(self, event: Literal["compaction"], **keys: Unpack[Compaction]) -> dict[str, Any]: ...
    @overload
    def emit(
        self, event: Literal["compaction_failed"], **keys: Unpack[CompactionFailed]
    ) -> dict[str, Any]: ...
    @overload
    def emit(self, event: Literal["notice"], **keys: Unpack[Notice]) -> dict[str, Any]: ...
    @overload
    def emit(
        self, event: Literal["session_finished"], **keys: Unpack[SessionFinished]
    ) -> dict[str, Any]: ...
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
