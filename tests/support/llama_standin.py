"""A stand-in for llama.cpp's `Llama` with a scripted speed, for ordering tests of `LocalModel`.

It has the part of `Llama`'s interface the local provider uses (`tokenize`, `input_ids`,
`n_tokens`, `eval`, `metadata`, streamed `create_completion`, `close`). It generates a fixed
reply one piece at a time; a memory-update prompt generates slowly and can be held between
tokens by a gate, so a test can issue a turn while an update is provably in the middle of
generating.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["SlowUpdates"]

UPDATE_MARKER = "tidemark-session-memory-update"


class SlowUpdates:
    """Builds stand-in contexts that share one gate; pass an instance as `LocalModel(engine=)`.

    `update_started` is set once an update has produced its first token; updates then wait
    for `release` before each further token. Turns answer at `turn_token_s` per token.
    """

    def __init__(self, *, turn_token_s: float = 0.001, update_tokens: int = 20) -> None:
        self.turn_token_s = turn_token_s
        self.update_tokens = update_tokens
        self.update_started = threading.Event()
        self.release = threading.Event()
        self.contexts: list[_Context] = []
        self.finished: list[str] = []  # "turn" / "update", in the order generation ended
        self._lock = threading.Lock()

    def __call__(self, **_params: Any) -> _Context:
        context = _Context(self)
        self.contexts.append(context)
        return context

    def ended(self, kind: str) -> None:
        with self._lock:
            self.finished.append(kind)


class _Context:
    def __init__(self, owner: SlowUpdates) -> None:
        self.owner = owner
        self.input_ids: list[int] = []
        self.n_tokens = 0
        self.metadata: dict[str, str] = {}
        self.closed = False

    def tokenize(self, text: bytes, add_bos: bool = False, special: bool = False) -> list[int]:
        # One token per byte: prefix reuse behaves like the real cache, and decoding is exact.
        return [256, *text] if add_bos else list(text)

    def eval(self, tokens: list[int]) -> None:
        # Chunked prefill: `n_tokens` is where the cache ends; `eval` appends after it.
        self.input_ids = [*self.input_ids[: self.n_tokens], *tokens]
        self.n_tokens = len(self.input_ids)

    def create_completion(self, tokens: list[int], **params: Any) -> Iterator[dict[str, Any]]:
        self.input_ids = list(tokens)
        self.n_tokens = len(tokens)
        prompt = bytes(t for t in tokens if t < 256).decode(errors="replace")
        return self._stream(UPDATE_MARKER in prompt, int(params.get("max_tokens", 16)))

    def _stream(self, is_update: bool, max_tokens: int) -> Iterator[dict[str, Any]]:
        owner = self.owner
        if is_update:
            pieces = ["# Worklog\n", *["- read a file\n"] * (owner.update_tokens - 1)]
        else:
            pieces = ["The", " answer", " is", " ready", "."]
        pieces = pieces[:max_tokens]
        for n, piece in enumerate(pieces):
            if is_update and n == 1:
                owner.update_started.set()
            if is_update and n >= 1:
                if not owner.release.wait(timeout=60):
                    raise RuntimeError("the stand-in update was never released")
            else:
                time.sleep(owner.turn_token_s)
            last = n == len(pieces) - 1
            yield {"choices": [{"text": piece, "finish_reason": "stop" if last else None}]}
        owner.ended("update" if is_update else "turn")

    def close(self) -> None:
        self.closed = True
