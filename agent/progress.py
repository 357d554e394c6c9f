"""Human-readable progress while a session runs (stderr); separate from the event log."""

from __future__ import annotations

import sys
from typing import Protocol, TextIO

__all__ = ["NullProgress", "PlainProgress", "Progress"]


class Progress(Protocol):
    def turn_started(self, turn: int, context_tokens: int, threshold: int) -> None: ...
    def tool_started(self, name: str, detail: str) -> None: ...
    def memory_state(self, state: str) -> None: ...
    def notice(self, text: str) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    def turn_started(self, turn: int, context_tokens: int, threshold: int) -> None:
        pass

    def tool_started(self, name: str, detail: str) -> None:
        pass

    def memory_state(self, state: str) -> None:
        pass

    def notice(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlainProgress:
    """One plain line per step: for logs and pipes."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.memory = "idle"

    def _line(self, text: str) -> None:
        print(f"tidemark: {text}", file=self.out, flush=True)

    def turn_started(self, turn: int, context_tokens: int, threshold: int) -> None:
        self._line(
            f"turn {turn} | context {context_tokens:,}/{threshold:,} tokens | memory {self.memory}"
        )

    def tool_started(self, name: str, detail: str) -> None:
        self._line(f"  {name} {detail}")

    def memory_state(self, state: str) -> None:
        self.memory = state

    def notice(self, text: str) -> None:
        self._line(text)

    def close(self) -> None:
        pass


def make_progress(out: TextIO) -> Progress:
    """Plain lines (a live status line on terminals comes with the inspect work)."""
    return PlainProgress(out)
