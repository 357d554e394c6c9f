"""The session's files and the append-only transcript: writing it, and rebuilding from it.

transcript.jsonl holds two kinds of records, one per line:
    {"type": "message", "message": {...}}              every message, as it happens
    {"type": "context", "summary": {...} | null,        after each compaction: what the
     "message_ids": [...], "tombstones": {id: text},    context became (stubs: the content
     "stubs": {message id: [blocks]}}                    of messages with stubbed blocks)
Resume replays them: all messages form the transcript; the context is the last `context`
record (summary + listed messages, tombstones applied) plus every message after it. A record
that is JSON but not a valid record (a damaged disk, a hand edit) is skipped with a warning,
and the context is repaired around the gap so that no request built from it is invalid.
"""

from __future__ import annotations

import re
import secrets
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tidemark.errors import SessionNotFoundError
from tidemark.messages import Message, TextBlock, ToolResultBlock, ToolUseBlock
from tidemark.storage import JsonlAppender, read_jsonl

__all__ = [
    "ContextRecord",
    "InvalidRecord",
    "SessionPaths",
    "TranscriptRecord",
    "TranscriptState",
    "TranscriptWriter",
    "decode_transcript",
    "list_sessions",
    "load_transcript",
    "repair_tool_pairing",
]

LOST_RESULT = "lost: the record of this call's result was damaged; run it again if needed"
LOST_CALLS = "(the tool calls of this turn were lost with a damaged transcript record)"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class SessionPaths:
    workspace: Path
    session_id: str

    @property
    def root(self) -> Path:
        return self.workspace / ".tidemark" / "sessions" / self.session_id

    @property
    def memory(self) -> Path:
        return self.root / "session-memory.md"

    @property
    def transcript(self) -> Path:
        return self.root / "transcript.jsonl"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def processes(self) -> Path:
        return self.root / "processes.json"

    @classmethod
    def create(cls, workspace: Path) -> SessionPaths:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        paths = cls(workspace, f"{stamp}-{secrets.token_hex(3)}")
        paths.root.mkdir(parents=True, exist_ok=False)
        return paths

    @classmethod
    def find(cls, workspace: Path, session_id: str | None) -> SessionPaths:
        """The named session, or the latest one; WorkspaceError (one line) if none."""
        sessions = list_sessions(workspace)
        if session_id is None:
            if not sessions:
                raise SessionNotFoundError(f"no tidemark session in {workspace}")
            return sessions[-1]
        if not _ID_RE.match(session_id) or not (cls(workspace, session_id).root.is_dir()):
            known = ", ".join(s.session_id for s in sessions[-3:]) or "none"
            raise SessionNotFoundError(
                f"unknown session {session_id!r} in {workspace} (latest: {known})"
            )
        return cls(workspace, session_id)


def list_sessions(workspace: Path) -> list[SessionPaths]:
    """Sessions in the workspace, oldest first (ids start with their UTC start time)."""
    base = workspace / ".tidemark" / "sessions"
    if not base.is_dir():
        return []
    return [SessionPaths(workspace, p.name) for p in sorted(base.iterdir()) if p.is_dir()]


class TranscriptWriter:
    def __init__(self, path: Path) -> None:
        self._out = JsonlAppender(path)

    def message(self, message: Message) -> None:
        self._out.append({"type": "message", "message": message.model_dump(mode="json")})

    def context(self, context: Sequence[Message], summary: Message | None) -> None:
        tombstones = {
            b.tool_use_id: b.content for m in context for b in m.tool_results if b.tombstoned
        }
        stubs = {
            m.id: [b.model_dump(mode="json") for b in m.content]
            for m in context
            if any(isinstance(b, TextBlock | ToolUseBlock) and b.stubbed for b in m.content)
        }
        self._out.append(
            {
                "type": "context",
                "summary": summary.model_dump(mode="json") if summary else None,
                "message_ids": [m.id for m in context if summary is None or m.id != summary.id],
                "tombstones": tombstones,
                "stubs": stubs,
            }
        )

    def close(self) -> None:
        self._out.close()


@dataclass
class TranscriptState:
    messages: list[Message] = field(default_factory=list[Message])
    context: list[Message] = field(default_factory=list[Message])
    compactions: int = 0


class ContextRecord(BaseModel):
    """A `context` record: what the context became at a compaction."""

    model_config = ConfigDict(frozen=True)

    summary: Message | None = None
    message_ids: list[str] = Field(default_factory=list[str])
    tombstones: dict[str, str] = Field(default_factory=dict[str, str])  # tool_use id: text
    stubs: dict[str, list[Any]] = Field(default_factory=dict[str, list[Any]])  # id: blocks


@dataclass(frozen=True)
class InvalidRecord:
    """A line that is JSON but not a valid record (a damaged disk, a hand edit)."""

    kind: str  # the record's type, or "unknown"
    reason: str  # the first thing wrong with it, on one line


TranscriptRecord = Message | ContextRecord | InvalidRecord


def decode_transcript(path: Path) -> Iterator[tuple[int, TranscriptRecord]]:
    """Each record of transcript.jsonl with its number (the one decoder of the file, for
    resume and for `tidemark inspect`). A line that is not JSON is skipped with a warning
    (`read_jsonl`); a record of an unknown type is skipped; an invalid one is yielded as an
    `InvalidRecord` for the reader to report as it sees fit.
    """
    for number, record in enumerate(read_jsonl(path), 1):
        kind = record.get("type")
        try:
            if kind == "message":
                decoded: TranscriptRecord = Message.model_validate(record["message"])
            elif kind == "context":
                # Empty parts may be written as null.
                values = {k: v for k, v in record.items() if k != "type" and v is not None}
                decoded = ContextRecord.model_validate(values)
            else:
                continue
        except (ValidationError, KeyError, TypeError, AttributeError) as exc:
            decoded = InvalidRecord(kind if isinstance(kind, str) else "unknown", _first_error(exc))
        yield number, decoded


def load_transcript(path: Path) -> TranscriptState:
    """Rebuild transcript and context; damaged lines are skipped with a warning."""
    state = TranscriptState()
    by_id: dict[str, Message] = {}
    for number, record in decode_transcript(path):
        if isinstance(record, ContextRecord):
            try:
                state.context = _rebuilt_context(record, by_id)
            except ValidationError as exc:  # a stubbed message that is not valid content
                record = InvalidRecord("context", _first_error(exc))
            else:
                state.compactions += 1
                continue
        if isinstance(record, InvalidRecord):
            warnings.warn(
                f"{path.name}: skipped invalid {record.kind} record {number} "
                f"({record.reason}); the session is repaired around it",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        state.messages.append(record)
        by_id[record.id] = record
        state.context.append(record)
    state.context = repair_tool_pairing(state.context)
    return state


def _rebuilt_context(record: ContextRecord, by_id: dict[str, Message]) -> list[Message]:
    """The context a `context` record describes: summary + listed messages, stubs and
    tombstones applied (ids the transcript lost are left out; pairing is repaired later)."""
    context: list[Message] = [] if record.summary is None else [record.summary]
    for message_id in record.message_ids:
        if message_id in by_id:
            message = by_id[message_id]
            if message_id in record.stubs:
                message = Message.model_validate(
                    {**message.model_dump(), "content": record.stubs[message_id]}
                )
            context.append(_apply_tombstones(message, record.tombstones))
    return context


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return f"{type(exc).__name__}: {exc}"


def repair_tool_pairing(context: Sequence[Message]) -> list[Message]:
    """The context with every `tool_use` answered in the next message and no orphan result.

    Pure. A context rebuilt from an intact transcript comes back unchanged. Where a record
    was lost: a result whose call is gone is dropped (and its message, if nothing is left);
    a call whose results are gone is answered with an error result when a user message
    follows, or removed from its assistant message when the next message is the model's.
    Calls still pending at the end are left for resume to answer.
    """
    repaired: list[Message] = []
    pending: list[ToolUseBlock] = []
    for message in context:
        if message.role == "assistant":
            if pending:  # the results of the previous call were lost and the model went on
                repaired[-1] = _without_calls(repaired[-1])
            pending = list(message.tool_uses)
            repaired.append(message)
            continue
        ids = [use.id for use in pending]
        results = {r.tool_use_id: r for r in message.tool_results if r.tool_use_id in ids}
        answered = [
            results.get(i) or ToolResultBlock(tool_use_id=i, content=LOST_RESULT, is_error=True)
            for i in ids
        ]
        rest = [b for b in message.content if not isinstance(b, ToolResultBlock)]
        content = [*answered, *rest]
        pending = []
        if content == message.content:
            repaired.append(message)
        elif content:
            repaired.append(message.model_copy(update={"content": content}))
    return repaired


def _without_calls(message: Message) -> Message:
    content = [b for b in message.content if not isinstance(b, ToolUseBlock)]
    return message.model_copy(update={"content": content or [TextBlock(text=LOST_CALLS)]})


def _apply_tombstones(message: Message, tombstones: dict[str, str]) -> Message:
    if not tombstones or not message.tool_results:
        return message
    blocks = [
        b.model_copy(update={"content": tombstones[b.tool_use_id], "tombstoned": True})
        if isinstance(b, ToolResultBlock) and b.tool_use_id in tombstones
        else b
        for b in message.content
    ]
    return message.model_copy(update={"content": blocks})
