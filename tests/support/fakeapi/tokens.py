"""Deterministic token counting and prompt-cache accounting for the fake server.

A token is four characters of compact JSON: `count_tokens` sums
ceil(len(json.dumps(x, separators=(",", ":"))) / 4) over `tools` (the whole list),
`system` (the string or the whole block list) and each message.

Prompt caching follows what the API reports: the request is cut into blocks (each tool,
each system block, each message content block) in tools -> system -> messages order; at a
`cache_control` breakpoint the prefix ending there is written to a server-wide cache. A
later request reads the longest prefix ending at any of its block boundaries (up to its
last breakpoint) that an earlier request wrote. As in the API, message blocks are cached
per `tool_choice`: changing it leaves only the tools and system prefix to read. The API's
minimum cacheable length, 20-block lookback window and TTL are not modelled.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass
from typing import Any


def _tokens(value: Any) -> int:
    return math.ceil(len(json.dumps(value, separators=(",", ":"), default=str)) / 4)


def count_tokens(body: dict[str, Any]) -> int:
    """The server's token count of a request's input."""
    total = 0
    for key in ("tools", "system"):
        if body.get(key):
            total += _tokens(body[key])
    for message in body.get("messages") or []:
        total += _tokens(message)
    return total


@dataclass(frozen=True)
class _Boundary:
    key: str  # hash of the prefix ending here, cache_control markers left out
    tokens: int  # tokens of that prefix
    breakpoint: bool


def _has_cache_control(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    if "cache_control" in block:
        return True
    nested = block.get("content")
    return isinstance(nested, list) and any(_has_cache_control(b) for b in nested)


def count_breakpoints(body: dict[str, Any]) -> int:
    """How many blocks carry `cache_control` (the API allows at most 4)."""
    blocks: list[Any] = list(body.get("tools") or [])
    if isinstance(body.get("system"), list):
        blocks += body["system"]
    for message in body.get("messages") or []:
        if isinstance(message, dict) and isinstance(message.get("content"), list):
            blocks += message["content"]
    return sum(_has_cache_control(b) for b in blocks)


def _without_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(v) for v in value]
    return value


def _boundaries(body: dict[str, Any]) -> list[_Boundary]:
    digest = hashlib.sha256(f"model:{body.get('model')}".encode())
    out: list[_Boundary] = []

    def add(tag: str, block: Any, tokens: int) -> None:
        canonical = json.dumps(_without_cache_control(block), sort_keys=True, default=str)
        digest.update(f"\n{tag}:{canonical}".encode())
        out.append(_Boundary(digest.hexdigest(), tokens, _has_cache_control(block)))

    tools = list(body.get("tools") or [])
    for i, tool in enumerate(tools):
        add("tool", tool, _tokens(tools[: i + 1]))
    base = _tokens(tools) if tools else 0

    system = body.get("system")
    if isinstance(system, list):
        for i, block in enumerate(system):
            add("system", block, base + _tokens(system[: i + 1]))
    elif system:
        add("system", system, base + _tokens(system))
    base += _tokens(system) if system else 0

    # Message blocks are cached per `tool_choice` (absent means auto): a request that
    # changes it reads only the tools and system prefix.
    choice = body.get("tool_choice") or {"type": "auto"}
    digest.update(f"\ntool_choice:{json.dumps(choice, sort_keys=True)}".encode())
    for message in body.get("messages") or []:
        if not isinstance(message, dict):  # only reachable with strict=False
            add("block", message, base + _tokens(message))
            base += _tokens(message)
            continue
        digest.update(f"\nmessage:{message.get('role')}".encode())
        content = message.get("content")
        if isinstance(content, list):
            for i, block in enumerate(content):
                add("block", block, base + _tokens({**message, "content": content[: i + 1]}))
        else:
            add("block", content, base + _tokens(message))
        base += _tokens(message)
    return out


class PromptCache:
    """Server-wide prompt cache: which prefixes earlier requests wrote."""

    def __init__(self) -> None:
        self._keys: set[str] = set()
        self._lock = threading.Lock()

    def usage(self, body: dict[str, Any]) -> dict[str, int]:
        """Split the request's tokens into cache reads, cache writes and plain input."""
        total = count_tokens(body)
        boundaries = _boundaries(body)
        last = max((i for i, b in enumerate(boundaries) if b.breakpoint), default=None)
        if last is None:
            return _usage(input_tokens=total, created=0, read=0)
        with self._lock:
            read = max((b.tokens for b in boundaries[: last + 1] if b.key in self._keys), default=0)
            self._keys.update(b.key for b in boundaries[: last + 1] if b.breakpoint)
        cached_prefix = boundaries[last].tokens
        return _usage(input_tokens=total - cached_prefix, created=cached_prefix - read, read=read)


def _usage(*, input_tokens: int, created: int, read: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
    }
