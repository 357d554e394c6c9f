"""Anthropic Messages API provider: the only module that imports `anthropic`.

Streams every request, marks prompt-cache breakpoints (tools, system, the shared prefix,
the latest message), sends `X-Tidemark-Purpose`, and leaves retries with backoff on
408/409/429/5xx/529 before a stream starts to the SDK. A stream that fails after it started
(dropped connection, an `error` event, a malformed event, an end without `message_stop`, no
event for `stall_timeout` seconds) is retried here, from the start, with backoff.
"""

from __future__ import annotations

import functools
import inspect
import os
import ssl
from collections.abc import Sequence
from typing import Any

import anthropic
import anyio

from tidemark.errors import ConfigError, ContextTooLongError, ModelError
from tidemark.messages import (
    ContentBlock,
    Message,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
)
from tidemark.model import ModelRequest, ModelResponse, TextSink
from tidemark.tokens import chars_estimate

__all__ = ["DEFAULT_MODEL", "AnthropicModel", "to_wire_messages"]

DEFAULT_MODEL = "claude-sonnet-4-5"
_STREAM_RETRIES = 3
# The API sends `ping` events while a reply is slow, so a long silence means a dead stream.
DEFAULT_STALL_TIMEOUT = 120.0
STALL_TIMEOUT_ENV = "TIDEMARK_STALL_TIMEOUT"
# Where the SDK's HTTP stack raises from when a stream breaks midway.
_TRANSPORT_MODULES = frozenset({"httpx", "httpx2", "httpcore", "h11", "anyio"})


class _MidStreamError(Exception):
    """A stream broke after it started; worth retrying from the start."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _stall_timeout_from_env() -> float:
    raw = os.environ.get(STALL_TIMEOUT_ENV)
    if not raw:
        return DEFAULT_STALL_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{STALL_TIMEOUT_ENV}={raw!r}: expected seconds, e.g. 120") from None
    if value <= 0:
        raise ConfigError(f"{STALL_TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0")
    return value


_EPHEMERAL: dict[str, str] = {"type": "ephemeral"}


def _block_to_wire(block: ContentBlock) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        # The API rejects empty and whitespace-only text blocks.
        return {"type": "text", "text": block.text if block.text.strip() else "(empty)"}
    if isinstance(block, ToolUseBlock):
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    if isinstance(block, ToolResultBlock):
        wire: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": block.tool_use_id,
            "content": block.content or "(no output)",
        }
        if block.images:
            # A list of text and image blocks; the API rejects an empty text block.
            text = [{"type": "text", "text": block.content}] if block.content.strip() else []
            wire["content"] = text + [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": i.media_type, "data": i.data},
                }
                for i in block.images
            ]
        if block.is_error:
            wire["is_error"] = True
        return wire
    return {"type": "thinking", "thinking": block.thinking, "signature": block.signature}


def to_wire_messages(
    messages: Sequence[Message], cache_at: Sequence[int] = ()
) -> list[dict[str, Any]]:
    """Our messages in the Messages API's shape; `cache_at` indexes get a cache breakpoint."""
    wire: list[dict[str, Any]] = []
    marks = {i % len(messages) for i in cache_at} if messages else set[int]()
    for i, message in enumerate(messages):
        blocks = [_block_to_wire(b) for b in message.content] or [
            {"type": "text", "text": "(empty)"}
        ]
        if i in marks:
            # Thinking blocks cannot carry cache_control; mark the last other block.
            for block in reversed(blocks):
                if block["type"] != "thinking":
                    block["cache_control"] = _EPHEMERAL
                    break
        wire.append({"role": message.role, "content": blocks})
    return wire


def _from_wire_block(block: Any) -> ContentBlock | None:
    kind = getattr(block, "type", None)
    if kind == "text":
        return TextBlock(text=block.text)
    if kind == "tool_use":
        raw = block.input
        return ToolUseBlock(id=block.id, name=block.name, input=dict(raw) if raw else {})
    if kind == "thinking":
        return ThinkingBlock(thinking=block.thinking, signature=block.signature)
    return None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context per process, built as the SDK builds its own (CA bundle, SSL_CERT_*
    variables). Building one reads the CA bundle: ~0.1 s of CPU that blocked the event loop
    for every new model, the main stall when many sessions start in one process. A context
    is safe to share between clients and threads."""
    try:
        import httpx2 as http
    except ImportError:  # SDK versions built on httpx
        import httpx as http
    context: ssl.SSLContext = http.create_ssl_context()
    return context


class AnthropicModel:
    """A model behind the Messages API (Anthropic, or any server that speaks it)."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        context_window: int = 200_000,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = 4,
        timeout: float = 600.0,
        stall_timeout: float | None = None,
    ) -> None:
        self._name = model
        self._context_window = context_window
        self._stall_timeout = stall_timeout or _stall_timeout_from_env()
        # The SDK reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL itself. A server named by
        # ANTHROPIC_BASE_URL alone (llama-server, Ollama, a test server) needs no key, but
        # the SDK refuses to send a request without one: give it a placeholder.
        if (
            api_key is None
            and not os.environ.get("ANTHROPIC_API_KEY")
            and (base_url or os.environ.get("ANTHROPIC_BASE_URL"))
        ):
            api_key = "no-key"
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=max_retries,
            timeout=timeout,
            http_client=anthropic.DefaultAsyncHttpxClient(verify=_tls_context()),
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def context_window(self) -> int:
        return self._context_window

    def estimate_tokens(self, text: str) -> int:
        return chars_estimate(text)

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        n = len(request.messages)
        cache_at = [n - 1]
        if request.cache_breakpoint is not None and 0 <= request.cache_breakpoint < n - 1:
            cache_at.insert(0, request.cache_breakpoint)
        params: dict[str, Any] = {
            "model": self._name,
            "max_tokens": request.max_tokens,
            "messages": to_wire_messages(request.messages, cache_at),
            "extra_headers": {"X-Tidemark-Purpose": request.purpose},
        }
        if request.system:
            params["system"] = [
                {"type": "text", "text": request.system, "cache_control": _EPHEMERAL}
            ]
        if request.tools:
            tools = [t.model_dump() for t in request.tools]
            tools[-1]["cache_control"] = _EPHEMERAL
            params["tools"] = tools
            if request.tool_choice != "auto":
                params["tool_choice"] = {"type": request.tool_choice}
        return params

    async def generate(
        self, request: ModelRequest, on_text: TextSink | None = None
    ) -> ModelResponse:
        # The SDK retries a request that fails before its stream starts. A stream that
        # breaks midway (dropped connection, an `overloaded_error` event) is retried here,
        # from the start, a few times with backoff.
        for attempt in range(_STREAM_RETRIES + 1):
            try:
                final = await self._stream_once(request, on_text)
                break
            except _MidStreamError as exc:
                if attempt == _STREAM_RETRIES:
                    raise ModelError(
                        f"the API stream failed {attempt + 1} times in a row (last: {exc.reason})"
                    ) from exc
                await anyio.sleep(0.5 * 2**attempt)
        else:  # pragma: no cover - the loop always breaks or raises
            raise ModelError("unreachable")
        blocks = [b for b in (_from_wire_block(x) for x in final.content) if b is not None]
        u = final.usage
        usage = Usage(
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            cache_creation_input_tokens=u.cache_creation_input_tokens or 0,
            cache_read_input_tokens=u.cache_read_input_tokens or 0,
        )
        return ModelResponse(
            content=blocks, stop_reason=final.stop_reason, usage=usage, model=final.model
        )

    async def _stream_once(self, request: ModelRequest, on_text: TextSink | None) -> Any:
        opened = False
        try:
            if request.purpose == "session-memory" and on_text is None:
                # Nobody watches a background update: one JSON body parses far cheaper
                # than hundreds of stream events, which keeps the event loop free.
                create: Any = self._client.messages.create
                return await create(**self._params(request))
            async with self._client.messages.stream(**self._params(request)) as stream:
                opened = True
                await self._follow(stream, on_text)
                return await stream.get_final_message()
        except _MidStreamError:
            raise
        except anthropic.BadRequestError as exc:
            message = _error_message(exc)
            if "prompt is too long" in message or "exceed context limit" in message:
                raise ContextTooLongError(message) from exc
            raise ModelError(f"the API rejected the request: {message}") from exc
        except anthropic.APIStatusError as exc:
            if opened:  # an `error` event inside a stream that had started (status 200)
                raise _MidStreamError(f"an error event: {_error_message(exc)}") from exc
            raise ModelError(
                f"the API failed with HTTP {exc.status_code}: {_error_message(exc)}"
            ) from exc
        except anthropic.APIConnectionError as exc:
            raise ModelError(f"cannot reach the API: {exc}") from exc
        except anthropic.APIError as exc:
            if opened:
                raise _MidStreamError(f"an error event: {exc}") from exc
            raise ModelError(f"the API failed: {exc}") from exc
        except ValueError as exc:
            # A cut or garbled event (JSONDecodeError), or a reply body that is not JSON.
            if opened:
                raise _MidStreamError(f"a malformed event ({exc})") from exc
            raise ModelError(f"the API sent a reply that is not valid JSON: {exc}") from exc
        except Exception as exc:
            if opened and type(exc).__module__.split(".")[0] in _TRANSPORT_MODULES:
                raise _MidStreamError(f"the connection broke ({type(exc).__name__})") from exc
            raise

    async def _follow(self, stream: Any, on_text: TextSink | None) -> None:
        """Read the stream to its `message_stop`, passing text on; a stall or an early end
        raises `_MidStreamError`."""
        stopped = False
        # One scope for the whole stream, its deadline pushed back at every event.
        with anyio.CancelScope(deadline=anyio.current_time() + self._stall_timeout) as idle:
            async for event in stream:
                idle.deadline = anyio.current_time() + self._stall_timeout
                if event.type == "message_stop":
                    stopped = True
                elif (
                    on_text is not None
                    and event.type == "content_block_delta"
                    and event.delta.type == "text_delta"
                ):
                    result = on_text(event.delta.text)
                    if inspect.isawaitable(result):
                        await result
        if idle.cancelled_caught:
            raise _MidStreamError(f"the stream stalled (no event for {self._stall_timeout:g} s)")
        if not stopped:
            raise _MidStreamError("the stream ended before `message_stop`")

    async def aclose(self) -> None:
        await self._client.close()


def _error_message(exc: anthropic.APIError) -> str:
    body: Any = getattr(exc, "body", None)
    if isinstance(body, dict):
        error: Any = body.get("error")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        if isinstance(error, dict) and isinstance(error.get("message"), str):  # pyright: ignore[reportUnknownMemberType]
            return str(error["message"])  # pyright: ignore[reportUnknownArgumentType]
    return str(exc)
