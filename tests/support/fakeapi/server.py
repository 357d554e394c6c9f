"""A strict local HTTP server speaking the Anthropic Messages API, run in a background thread."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from .replies import RecordedRequest, Reply, Responder, Script, new_tool_use_id, signature_for
from .tokens import PromptCache, count_tokens
from .validation import validate_request

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
PURPOSE_HEADER = "x-tidemark-purpose"
_CHUNK_CHARS = 16  # characters per delta: a few tokens, like the real API

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_ERROR_STATUSES = {kind: status for status, kind in _ERROR_TYPES.items()}
_DEFAULT_ERROR_MESSAGES = {
    "rate_limit_error": "This request would exceed the rate limit for your organization.",
    "overloaded_error": "Overloaded",
    "api_error": "Internal server error",
}


@dataclass
class LatencyModel:
    """How long the fake model takes. `ttft` and `output_time` return scaled seconds:
    what the server sleeps and the recorded timings show."""

    ttft_base_s: float = 0.4
    ttft_per_input_token_s: float = 0.00004
    per_output_token_s: float = 0.015
    time_scale: float = 1.0  # multiplies every sleep (0.01 runs 100x faster)

    def ttft(self, input_tokens: int) -> float:
        """Time to first token for this many uncached input tokens (plain + cache writes)."""
        return (self.ttft_base_s + self.ttft_per_input_token_s * input_tokens) * self.time_scale

    def output_time(self, n: int) -> float:
        """Time to generate `n` output tokens after the first."""
        return self.per_output_token_s * n * self.time_scale


class _Dropped(Exception):
    """The reply asked for the connection to be dropped."""


class _Ended(Exception):
    """The reply asked for the stream to end early, with a well-formed end of the body."""


class FakeMessagesAPI:
    """The Messages API on 127.0.0.1, answering with what `responder` returns.

    Requests are validated like the real API (400 with its error texts) before the
    responder sees them; see `validation.py` and `tokens.py` for the rules and the token
    and prompt-cache model.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        latency: LatencyModel | None = None,
        context_window: int = 200_000,
        caching: bool = True,
        strict: bool = True,
    ) -> None:
        self.responder: Responder = responder or Script()
        self.latency = latency
        self.context_window = context_window
        self.caching = caching
        self.strict = strict
        self.requests: list[RecordedRequest] = []
        self.url = ""
        self._cache = PromptCache()
        self._lock = threading.Lock()
        self._turns = threading.Condition(self._lock)  # notified when a `turn` request arrives
        self._turn_count = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def invalid_requests(self) -> list[RecordedRequest]:
        """Requests rejected by validation (not injected faults)."""
        with self._lock:
            return [r for r in self.requests if r.error is not None]

    def requests_for(self, purpose: str) -> list[RecordedRequest]:
        """Requests whose purpose header equals `purpose`, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.purpose == purpose]

    def start(self) -> None:
        api = self

        class Handler(_Handler):
            fake_api = api

        server = _Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
        server.daemon_threads = True
        server.request_queue_size = 1024  # 100 concurrent sessions must not hit the backlog
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeMessagesAPI:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- request handling (runs on the server's handler threads) --

    def _handle(self, http: _Handler) -> None:
        started_at = time.monotonic()
        path = urlsplit(http.path).path
        headers = {k.lower(): v for k, v in http.headers.items()}
        length = int(headers.get("content-length") or 0)
        raw = http.rfile.read(length)
        if len(raw) < length:  # the client went away mid-request (killed): nothing to answer
            http.close_connection = True
            return
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        record = RecordedRequest(
            path=path,
            purpose=headers.get(PURPOSE_HEADER),
            headers=headers,
            body=body if isinstance(body, dict) else {},
            stream=isinstance(body, dict) and body.get("stream") is True,
            input_tokens=0,
            started_at=started_at,
        )
        with self._lock:
            self.requests.append(record)
            if record.purpose == "turn":
                self._turn_count += 1
                self._turns.notify_all()
            turns_before = self._turn_count
        try:
            self._answer(http, record, body, turns_before)
        except _Ended:
            pass
        except (_Dropped, ConnectionError):
            http.close_connection = True
            with contextlib.suppress(OSError):
                http.connection.shutdown(socket.SHUT_RDWR)
        finally:
            if record.finished_at is None:
                record.finished_at = time.monotonic()

    def _answer(self, http: _Handler, record: RecordedRequest, body: Any, turns: int) -> None:
        if record.path not in (MESSAGES_PATH, COUNT_TOKENS_PATH):
            _send_error(http, record, 404, f"Not found: {record.path}")
            return
        if body is None:
            self._reject(http, record, "There was an error parsing the body of your request.")
            return
        count_only = record.path == COUNT_TOKENS_PATH
        if "anthropic-version" not in record.headers:
            self._reject(http, record, "anthropic-version: header is required")
            return
        error = validate_request(body, count_only=count_only) if self.strict else None
        if error is not None:
            self._reject(http, record, error)
            return
        record.input_tokens = count_tokens(body)
        if count_only:
            _send_json(http, record, 200, {"input_tokens": record.input_tokens})
            return
        if record.input_tokens > self.context_window:
            too_long = f"{record.input_tokens} tokens > {self.context_window} maximum"
            self._reject(http, record, f"prompt is too long: {too_long}")
            return

        try:
            reply = self.responder(record)
            content = [_finish_block(block) for block in copy.deepcopy(reply.content)]
            output_tokens = reply.output_tokens or _estimate_output(content)
        except Exception as exc:  # a bug in the test's script: fail loudly, without retries
            error = f"fake API responder failed: {type(exc).__name__}: {exc}"
            _send_error(http, record, 500, error, headers={"x-should-retry": "false"})
            return
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.hold_turns:
            self._hold(turns + reply.hold_turns, reply.hold_idle_s)
        if reply.status != 200:
            retry_after = reply.retry_after_s
            _send_error(http, record, reply.status, reply.error_message, retry_after=retry_after)
            return
        if not record.stream and reply.stall_after_events is not None:
            time.sleep(reply.stall_s)
            record.finished_at = time.monotonic()
            raise _Dropped
        if not record.stream and reply.drop_stream_after_events is not None:
            record.finished_at = time.monotonic()
            raise _Dropped
        if not record.stream and reply.mid_stream_error:
            status = _ERROR_STATUSES.get(reply.mid_stream_error, 500)
            _send_error(http, record, status, reply.error_message)
            return

        message = self._message(body, reply, content, output_tokens)
        usage = message["usage"]
        record.usage = dict(usage)
        uncached = usage["input_tokens"] + usage["cache_creation_input_tokens"]
        if record.stream:
            _SSEWriter(http, record, reply, self.latency).send(message, uncached)
            return
        if self.latency is not None:
            time.sleep(self.latency.ttft(uncached))
            record.first_token_at = time.monotonic()
            time.sleep(self.latency.output_time(usage["output_tokens"]))
        else:
            record.first_token_at = time.monotonic()
        _send_json(http, record, 200, message, cut=reply.malformed_event_after is not None)

    def _hold(self, turns: int, idle_s: float) -> None:
        """Until `turns` turn requests have arrived, or none arrives for `idle_s`."""
        with self._turns:
            while self._turn_count < turns and self._server is not None:
                seen = self._turn_count
                self._turns.wait(idle_s)
                if self._turn_count == seen:
                    return  # the session stopped sending turns (it finishes or waits)

    def _reject(self, http: _Handler, record: RecordedRequest, error: str) -> None:
        record.error = error
        _send_error(http, record, 400, error)

    def _message(
        self, body: dict[str, Any], reply: Reply, content: list[dict[str, Any]], output_tokens: int
    ) -> dict[str, Any]:
        if self.caching:
            usage = self._cache.usage(body)
        else:
            usage = {
                "input_tokens": count_tokens(body),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            }
        has_tool_use = any(block["type"] == "tool_use" for block in content)
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": reply.stop_reason or ("tool_use" if has_tool_use else "end_turn"),
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": output_tokens},
        }


def _finish_block(block: dict[str, Any]) -> dict[str, Any]:
    if block.get("type") == "tool_use" and not block.get("id"):
        block["id"] = new_tool_use_id()
    if block.get("type") == "thinking":
        block["signature"] = signature_for(block.get("thinking", ""))
    return block


def _estimate_output(content: list[dict[str, Any]]) -> int:
    chars = 0
    for block in content:
        if block["type"] == "text":
            chars += len(block["text"])
        elif block["type"] == "thinking":
            chars += len(block["thinking"])
        elif block["type"] == "tool_use":
            chars += len(json.dumps(block["input"]))
    return max(1, math.ceil(chars / 4))


def _chunks(s: str) -> list[str]:
    return [s[k : k + _CHUNK_CHARS] for k in range(0, len(s), _CHUNK_CHARS)] or [""]


class _SSEWriter:
    """Streams one message as the API does, honouring the latency model and stream faults."""

    def __init__(
        self, http: _Handler, record: RecordedRequest, reply: Reply, latency: LatencyModel | None
    ) -> None:
        self.http = http
        self.record = record
        self.reply = reply
        self.latency = latency
        self.events_sent = 0

    def send(self, message: dict[str, Any], uncached_tokens: int) -> None:
        http = self.http
        http.send_response(200)
        http.send_header("content-type", "text/event-stream; charset=utf-8")
        http.send_header("cache-control", "no-cache")
        http.send_header("transfer-encoding", "chunked")
        http.send_header("request-id", _request_id())
        http.end_headers()

        content: list[dict[str, Any]] = message["content"]
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {**message["usage"], "output_tokens": 1}
        self._event("message_start", {"type": "message_start", "message": start})
        self._event("ping", {"type": "ping"})

        deltas = [(index, delta) for index, block in enumerate(content) for delta in _deltas(block)]
        ttft = self.latency.ttft(uncached_tokens) if self.latency else 0.0
        output_time = (
            self.latency.output_time(message["usage"]["output_tokens"]) if self.latency else 0.0
        )
        t0 = time.monotonic()
        sent = 0
        for index, block in enumerate(content):
            self._event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": _opening(block)},
            )
            for delta_index, delta in deltas:
                if delta_index != index:
                    continue
                _sleep_until(t0 + ttft + output_time * sent / len(deltas))
                if self.record.first_token_at is None:
                    self.record.first_token_at = time.monotonic()
                self._event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
                sent += 1
            self._event("content_block_stop", {"type": "content_block_stop", "index": index})
            if index == 0 and self.reply.mid_stream_error:
                self._mid_stream_error(self.reply.mid_stream_error)
                return
        _sleep_until(t0 + ttft + output_time)
        self._event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": message["usage"],
            },
        )
        self._event("message_stop", {"type": "message_stop"})
        self._end()

    def _mid_stream_error(self, kind: str) -> None:
        error_message = self.reply.error_message or _DEFAULT_ERROR_MESSAGES.get(kind, kind)
        self._event(
            "error",
            {"type": "error", "error": {"type": kind, "message": error_message}},
        )
        self._end()

    def _event(self, name: str, data: dict[str, Any]) -> None:
        reply, sent = self.reply, self.events_sent
        if reply.drop_stream_after_events is not None and sent >= reply.drop_stream_after_events:
            self.record.finished_at = time.monotonic()
            raise _Dropped
        if reply.stall_after_events is not None and sent >= reply.stall_after_events:
            time.sleep(reply.stall_s)  # a proxy that holds the connection open and goes quiet
            self.record.finished_at = time.monotonic()
            raise _Dropped
        if reply.end_stream_after_events is not None and sent >= reply.end_stream_after_events:
            self.record.finished_at = time.monotonic()
            self._end()
            raise _Ended
        encoded = json.dumps(data)
        malformed = reply.malformed_event_after is not None and sent >= reply.malformed_event_after
        if malformed:
            encoded = encoded[: len(encoded) // 2]  # JSON cut mid-way, as a broken proxy sends
        if name in ("message_stop", "error") or malformed:
            self.record.finished_at = time.monotonic()  # before the client can see the end
        payload = f"event: {name}\ndata: {encoded}\n\n".encode()
        self.http.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        self.http.wfile.flush()
        self.events_sent += 1
        if malformed:
            self._end()
            raise _Ended

    def _end(self) -> None:
        self.http.wfile.write(b"0\r\n\r\n")
        self.http.wfile.flush()


def _opening(block: dict[str, Any]) -> dict[str, Any]:
    """The block as `content_block_start` announces it, before any delta."""
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": ""}
    if kind == "tool_use":
        return {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
    if kind == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    return block


def _deltas(block: dict[str, Any]) -> list[dict[str, Any]]:
    kind = block["type"]
    if kind == "text":
        return [{"type": "text_delta", "text": c} for c in _chunks(block["text"])]
    if kind == "tool_use":
        partial = json.dumps(block["input"]) if block["input"] else ""
        return [{"type": "input_json_delta", "partial_json": c} for c in _chunks(partial)]
    if kind == "thinking":
        chunks = [{"type": "thinking_delta", "thinking": c} for c in _chunks(block["thinking"])]
        return [*chunks, {"type": "signature_delta", "signature": block["signature"]}]
    return []


def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def _request_id() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


def _send_json(
    http: _Handler,
    record: RecordedRequest,
    status: int,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
    *,
    cut: bool = False,
) -> None:
    record.status = status
    record.finished_at = time.monotonic()  # before the client can see the answer
    data = json.dumps(payload).encode()
    if cut:  # a body whose JSON is cut mid-way (its length says so, as a broken proxy's would)
        data = data[: len(data) // 2]
    http.send_response(status)
    http.send_header("content-type", "application/json")
    http.send_header("content-length", str(len(data)))
    http.send_header("request-id", payload.get("request_id") or _request_id())
    for name, value in (headers or {}).items():
        http.send_header(name, value)
    http.end_headers()
    http.wfile.write(data)
    http.wfile.flush()


def _send_error(
    http: _Handler,
    record: RecordedRequest,
    status: int,
    message: str | None,
    *,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    kind = _ERROR_TYPES.get(status, "api_error")
    headers = dict(headers or {})
    if status == 429 and retry_after is None:
        retry_after = 0.01
    if retry_after is not None:
        headers["retry-after"] = str(math.ceil(retry_after))
        headers["retry-after-ms"] = str(round(retry_after * 1000))
    payload = {
        "type": "error",
        "error": {"type": kind, "message": message or _DEFAULT_ERROR_MESSAGES.get(kind, kind)},
        "request_id": _request_id(),
    }
    _send_json(http, record, status, payload, headers)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that was killed or closed its keep-alive connection is not a server error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked SSE that can be cut mid-body
    fake_api: FakeMessagesAPI

    def do_POST(self) -> None:
        self.fake_api._handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass
