"""Human-readable progress while a session runs (stderr); separate from the event log.

On a terminal, `RichProgress` keeps one live status line at the bottom (turn, what is
running, context size against the compaction threshold, memory state) while tool calls and
notices scroll above it. Anywhere else (pipes, logs, CI), `PlainProgress` prints plain lines.
Both follow the run through its events (`follow`): the runtime itself never imports this.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Protocol, TextIO

from rich.console import Console, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from tidemark.events import EventSubscriber
from tidemark.tools.approval import read_answer
from tidemark.tools.interface import describe_input

__all__ = [
    "NullProgress",
    "PlainProgress",
    "Progress",
    "RichProgress",
    "follow",
    "make_progress",
]


class Progress(Protocol):
    def turn_started(self, turn: int, context_tokens: int, threshold: int) -> None: ...
    def tool_started(self, name: str, detail: str) -> None: ...
    def memory_state(self, state: str) -> None: ...
    def memory_lag(self, tokens: int | None) -> None:
        """Transcript tokens added since what the memory covers; None: no memory yet."""
        ...

    def notice(self, text: str) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    def turn_started(self, turn: int, context_tokens: int, threshold: int) -> None:
        pass

    def tool_started(self, name: str, detail: str) -> None:
        pass

    def memory_state(self, state: str) -> None:
        pass

    def memory_lag(self, tokens: int | None) -> None:
        pass

    def notice(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _model_text(phase: str, done: int, total: int) -> str:
    if phase == "reading":
        return f"model reading the prompt {done:,}/{total:,} tokens"
    return f"model writing, {done:,} token{'' if done == 1 else 's'}"


def _memory_text(state: str, lag: int | None) -> str:
    if state != "idle":
        return state
    if lag is None:
        return "idle"
    return f"idle, last update {lag:,} tokens ago"


class PlainProgress:
    """One plain line per step: for logs and pipes."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.memory = "idle"
        self.lag: int | None = None

    def _line(self, text: str) -> None:
        print(f"tidemark: {text}", file=self.out, flush=True)

    def turn_started(self, turn: int, context_tokens: int, threshold: int) -> None:
        self._line(
            f"turn {turn} | context {context_tokens:,}/{threshold:,} tokens | "
            f"memory {_memory_text(self.memory, self.lag)}"
        )

    def tool_started(self, name: str, detail: str) -> None:
        self._line(f"  {name} {detail}")

    def memory_state(self, state: str) -> None:
        self.memory = state

    def memory_lag(self, tokens: int | None) -> None:
        self.lag = tokens

    def notice(self, text: str) -> None:
        self._line(text)

    def close(self) -> None:
        pass


class RichProgress:
    """A live status line on a terminal; tool calls and notices scroll above it.

    The line is redrawn a few times a second by rich's refresh thread, so the elapsed time
    of a slow model call or tool keeps moving. `ask` takes the line down while a question
    is on the terminal (use it as the approver's prompt function).
    """

    def __init__(self, out: TextIO, console: Console | None = None) -> None:
        self.console = console or Console(file=out, highlight=False)
        self.turn = 0
        self.activity = "starting"
        self.context_tokens = 0
        self.threshold = 0
        self.memory = "idle"
        self.lag: int | None = None
        self._since = time.monotonic()
        self._spinner = Spinner("dots", style="cyan")
        self._live: Live | None = None
        self._paused = False
        # rich's refresh thread draws while the event loop reports steps.
        self._lock = threading.RLock()

    # -- what the runtime reports --------------------------------------------------------

    def turn_started(self, turn: int, context_tokens: int, threshold: int) -> None:
        self.turn = turn
        self.context_tokens = context_tokens
        self.threshold = threshold
        self._doing("waiting for the model")

    def tool_started(self, name: str, detail: str) -> None:
        self._print(Text(f"  {name} {detail}", style="dim"))
        self._doing(f"running {name}")

    def memory_state(self, state: str) -> None:
        self.memory = state
        self._refresh()

    def memory_lag(self, tokens: int | None) -> None:
        self.lag = tokens
        self._refresh()

    def notice(self, text: str) -> None:
        self._print(Text(f"tidemark: {text}", style="yellow"))

    def model_progress(self, phase: str, done: int, total: int) -> None:
        """A local model's progress on one request: "reading" the prompt or "writing" tokens
        (`total` is the prompt's new tokens, or the output budget). Any thread may call it.
        """
        # Not `_doing`: the elapsed time keeps counting the whole model call. The live
        # display redraws on its own thread, a few times a second.
        self.activity = _model_text(phase, done, total)

    def close(self) -> None:
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None

    async def ask(self, prompt: str) -> str:
        """Ask a question on the terminal with the status line out of the way."""
        with self._lock:
            self._paused = True
            self.close()
        try:
            return await read_answer(prompt)
        finally:
            with self._lock:
                self._paused = False
            self._refresh()

    # -- drawing ---------------------------------------------------------------------------

    def render(self) -> RenderableType:
        """The status line as it looks now."""
        line = Text()
        line.append(f"turn {self.turn}", style="bold")
        line.append(f" · {self.activity} {time.monotonic() - self._since:.1f}s")
        line.append(" · context ")
        line.append_text(self._context_text())
        line.append(" · memory ")
        line.append(
            _memory_text(self.memory, self.lag),
            style="magenta" if self.memory == "updating" else "",
        )
        grid = Table.grid(padding=(0, 1))
        grid.add_column()
        grid.add_column(no_wrap=True, overflow="ellipsis")  # one line, however narrow
        grid.add_row(self._spinner, line)
        return grid

    def _context_text(self) -> Text:
        if self.threshold <= 0:
            return Text(f"{self.context_tokens:,} tokens")
        share = self.context_tokens / self.threshold
        style = "green" if share < 0.7 else "yellow" if share < 0.9 else "red"
        filled = min(10, round(share * 10))
        return Text.assemble(
            (f"{self.context_tokens:,}/{self.threshold:,} ", style),
            ("▰" * filled + "▱" * (10 - filled), style),
            (f" {share:.0%}", style),
        )

    def _doing(self, activity: str) -> None:
        self.activity = activity
        self._since = time.monotonic()
        self._refresh()

    def _print(self, text: Text) -> None:
        with self._lock:
            self._start()
            self.console.print(text)

    def _refresh(self) -> None:
        with self._lock:
            self._start()
            if self._live is not None:
                self._live.refresh()

    def _start(self) -> None:
        if self._live is None and not self._paused:
            self._live = Live(
                console=self.console,
                get_renderable=self.render,
                refresh_per_second=4,
                transient=True,
            )
            self._live.start()


def make_progress(out: TextIO) -> Progress:
    """A live status line when `out` is a terminal, plain lines otherwise."""
    console = Console(file=out, highlight=False)
    if console.is_terminal and not console.is_dumb_terminal:
        return RichProgress(out, console)
    return PlainProgress(out)


def follow(progress: Progress) -> EventSubscriber:
    """An event subscriber that shows a run's events on `progress`."""

    def on_event(record: dict[str, Any]) -> None:
        match record["event"]:
            case "turn_started":
                progress.memory_lag(record["memory_lag_tokens"])
                progress.turn_started(record["turn"], record["context_tokens"], record["threshold"])
            case "tool_started":
                progress.tool_started(record["tool"], describe_input(record["input"]))
            case "memory_update_started":
                progress.memory_state("updating")
            case "memory_update_committed" | "memory_update_failed":
                progress.memory_state("idle")
            case "compaction":
                progress.notice(
                    f"compacted ({record['strategy']}): {record['pre_tokens']:,} -> "
                    f"{record['post_tokens']:,} tokens"
                )
            case "compaction_failed":
                progress.notice(f"compaction failed, context kept as it was: {record['error']}")
            case "notice":
                progress.notice(record["text"])
            case _:
                pass

    return on_event
