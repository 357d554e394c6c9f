"""What the fake server answers (`Reply`, `Script`) and what it records (`RecordedRequest`)."""

from __future__ import annotations

import base64
import hashlib
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    """The server's answer to one request.

    `content` holds wire-format blocks. A `tool_use` block without an `id` gets a fresh
    one; a `thinking` block always gets the signature the server will later accept
    (`signature_for`).
    """

    content: list[dict[str, Any]]
    stop_reason: str | None = None  # None: "tool_use" if any tool_use block, else "end_turn"
    output_tokens: int | None = None  # None: estimated from the content (chars / 4, min 1)
    status: int = 200  # != 200: answer with an error of the API's shape instead
    error_message: str | None = None
    delay_s: float = 0.0  # wall-clock delay before answering, not scaled by the latency model
    # Answer only once this many more `turn` requests have arrived after this request (or
    # when none has arrived for `hold_idle_s`: the session stopped sending turns). Makes
    # "a memory update spans K turns" exact, whatever the machine's speed.
    hold_turns: int = 0
    hold_idle_s: float = 1.0
    drop_stream_after_events: int | None = None  # counts every SSE event, `ping` included
    mid_stream_error: str | None = None  # error type sent as an SSE `error` event
    retry_after_s: float | None = None  # None: 0.01 s on 429, no header on other statuses
    # Stream faults, each after this many SSE events (`ping` included):
    malformed_event_after: int | None = None  # one event whose JSON data is cut, then the end
    end_stream_after_events: int | None = None  # a clean end of the body, no `message_stop`
    stall_after_events: int | None = None  # silence for `stall_s`, then the connection drops
    stall_s: float = 30.0


@dataclass
class RecordedRequest:
    """One request as the server received it, and what became of it."""

    path: str
    purpose: str | None
    headers: dict[str, str]
    body: dict[str, Any]
    stream: bool
    input_tokens: int
    started_at: float
    first_token_at: float | None = None
    finished_at: float | None = None
    status: int = 200
    error: str | None = None  # the 400 message when validation rejected the request
    usage: dict[str, int] | None = None


Responder = Callable[[RecordedRequest], Reply]


def text(s: str, **kw: Any) -> Reply:
    """A reply holding one text block."""
    return Reply(content=[{"type": "text", "text": s}], **kw)


def tool_calls(*calls: tuple[str, dict[str, Any]], text: str | None = None, **kw: Any) -> Reply:
    """A reply calling tools, in parallel when several calls are given."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [
        {"type": "tool_use", "id": new_tool_use_id(), "name": name, "input": args}
        for name, args in calls
    ]
    return Reply(content=content, **kw)


def new_tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def signature_for(thinking: str) -> str:
    """The signature the fake server gives a thinking block, and checks when it comes back."""
    digest = hashlib.sha256(f"tidemark-fakeapi:{thinking}".encode()).digest()
    return base64.b64encode(digest).decode()


class Script:
    """A responder that plays scripted turns in order, with separate memory/compact answers.

    Requests with purpose "turn" (or no purpose header) consume `turns`; once they run out,
    `default` answers. "session-memory" and "compact" requests go to `memory` and `compact`;
    any other purpose gets `default`. A turn may be a `Reply` or a function building one.
    """

    def __init__(
        self,
        turns: Sequence[Reply | Callable[[RecordedRequest], Reply]] = (),
        *,
        memory: Callable[[RecordedRequest], Reply] | None = None,
        compact: Callable[[RecordedRequest], Reply] | None = None,
        default: Reply | None = None,
    ) -> None:
        self._turns = deque(turns)
        self._lock = threading.Lock()
        self.memory = memory or (lambda _request: text("Nothing new to remember."))
        self.compact = compact or (lambda _request: text("Summary of the conversation so far."))
        self.default = default or text("Done.")

    @property
    def remaining(self) -> int:
        """How many scripted turns have not been played yet."""
        with self._lock:
            return len(self._turns)

    def __call__(self, request: RecordedRequest) -> Reply:
        if request.purpose == "session-memory":
            return self.memory(request)
        if request.purpose == "compact":
            return self.compact(request)
        if request.purpose not in (None, "turn"):
            return self.default
        with self._lock:
            turn = self._turns.popleft() if self._turns else self.default
        return turn if isinstance(turn, Reply) else turn(request)
