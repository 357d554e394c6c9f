"""A strict local Messages API server for tests and benchmarks, driven by the real SDK.

    with FakeMessagesAPI(Script([tool_calls(("bash", {"cmd": "ls"})), text("Done.")])) as api:
        client = AsyncAnthropic(base_url=api.url, api_key="test")

It runs in a background thread, so it works under any async backend. Requests are checked
against the rules the real API enforces (400 `invalid_request_error` with the real texts),
tokens are counted deterministically (`count_tokens`), prompt caching is reported like the
API does, and replies can inject faults (error statuses, delays, dropped streams, mid-stream
errors) and follow a `LatencyModel`.
"""

from .replies import RecordedRequest, Reply, Responder, Script, signature_for, text, tool_calls
from .server import COUNT_TOKENS_PATH, MESSAGES_PATH, FakeMessagesAPI, LatencyModel
from .tokens import count_tokens
from .validation import validate_request

__all__ = [
    "COUNT_TOKENS_PATH",
    "MESSAGES_PATH",
    "FakeMessagesAPI",
    "LatencyModel",
    "RecordedRequest",
    "Reply",
    "Responder",
    "Script",
    "count_tokens",
    "signature_for",
    "text",
    "tool_calls",
    "validate_request",
]
