"""Runtime overhead per turn, model and tools excluded, as the transcript grows.

Builds real `Session` objects holding 10 … 10,000 messages (a task, then read_file
calls and their ~1,000-character results) and times, with no model behind them, what the
turn loop does every turn: append messages (transcript line written and flushed), the
context-size estimate, the summary-boundary search, building the request, the memory
policy check; plus the provider's conversion to the wire format, and the compaction plan
(memory + kept tail) that runs when the threshold is crossed.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tidemark.boundaries import last_safe_boundary
from tidemark.config import Settings
from tidemark.memory import HEADINGS, MemoryDocument
from tidemark.messages import Message, ToolResultBlock, ToolUseBlock, Usage
from tidemark.model import ToolSpec
from tidemark.prompts import system_prompt
from tidemark.providers.anthropic import AnthropicModel
from tidemark.session import Session
from tidemark.tools import Toolset, builtin_tools
from tidemark.transcript import SessionPaths

__all__ = ["OPERATIONS", "OverheadRow", "measure_overhead"]

# What one turn does, and how often: two appends (reply, tool results), the context size
# (compaction check, progress line, turn event, update policy), one request, one policy
# check, one boundary search (when an update starts; counted every turn to be safe), one
# check whether to compact ahead of the threshold.
OPERATIONS: dict[str, int] = {
    "append message": 2,
    "context size estimate": 4,
    "boundary search": 1,
    "build request": 1,
    "update policy check": 1,
    "compaction check below the threshold": 1,
}
EXTRA = (
    "wire conversion (provider)",
    "compaction plan (at threshold)",
    "context size, just after compaction",
)

_RESULT = "\n".join(
    f"{k:>5}\tdef helper_{k}(values): return sum(v for v in values if v > {k})" for k in range(14)
)


@dataclass
class OverheadRow:
    messages: int
    ms: dict[str, float]  # median ms per call of each operation

    @property
    def per_turn_ms(self) -> float:
        return sum(self.ms[name] * count for name, count in OPERATIONS.items())


def _pair(i: int) -> tuple[Message, Message]:
    use = ToolUseBlock(
        id=f"toolu_{i:06d}", name="read_file", input={"path": f"inventory/module_{i % 24:02d}.py"}
    )
    reply = Message(
        role="assistant",
        origin="model",
        content=[use],
        usage=Usage(input_tokens=10, output_tokens=20),
    )
    result = Message(
        role="user", origin="tools", content=[ToolResultBlock(tool_use_id=use.id, content=_RESULT)]
    )
    return reply, result


def _session(root: Path, n: int) -> tuple[Session, AnthropicModel]:
    model = AnthropicModel(api_key="overhead-benchmark", base_url="http://127.0.0.1:9")
    settings = Settings(workspace=root, context_window=10_000_000, compact_at=9_000_000)
    specs = [ToolSpec.model_validate(s) for s in Toolset(builtin_tools()).specs()]
    session = Session(
        paths=SessionPaths.create(root),
        model=model,
        settings=settings,
        system=system_prompt(root),
        tools=specs,
    )
    session.add(Message.user_text("Fix the restock bug in the inventory service."))
    i = 0
    while len(session.context) < n - 1:
        for m in _pair(i):
            session.add(m)
        i += 1
    session.note_usage(Usage(input_tokens=session.context_tokens()))
    return session, model


def _median_ms(fn: Callable[[], object], budget_s: float = 0.15, max_reps: int = 200) -> float:
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < 3 or (time.perf_counter() < deadline and len(samples) < max_reps):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(samples)


def _row(root: Path, n: int) -> OverheadRow:
    session, model = _session(root, n)
    ms: dict[str, float] = {}
    counter = [10**6]

    def append() -> None:
        counter[0] += 1
        session.add(_pair(counter[0])[0])
        session.context.pop()  # keep the size fixed; the transcript keeps growing (as in life)

    ms["append message"] = _median_ms(append)
    ms["context size estimate"] = _median_ms(session.context_tokens)
    ms["boundary search"] = _median_ms(lambda: last_safe_boundary(session.context))
    ms["build request"] = _median_ms(lambda: session.request(8192))
    ms["update policy check"] = _median_ms(
        lambda: session.policy.due(
            context_tokens=session.context_tokens(),
            transcript_tokens=session.transcript_tokens,
            paused=False,
        )
    )
    request = session.request(8192)
    ms["wire conversion (provider)"] = _median_ms(lambda: model._params(request))  # pyright: ignore[reportPrivateUsage]
    covers = session.context[len(session.context) // 2 - 1]
    session.updater.document = MemoryDocument(
        sections={h: f"notes on {h}" for h in HEADINGS}, covers_message_id=covers.id, update=1
    )
    # Each turn under the threshold: would a compaction now keep what the one at the
    # threshold would lose? (With a memory in place; the usual answer: no, quickly.)
    ms["compaction check below the threshold"] = _median_ms(
        lambda: session.compactor.ahead(
            session.context,
            session.context_tokens(),
            turns_since=None,
            lag_tokens=session.memory_lag_tokens(),
            turn_growth=3_000,
        )
    )
    ms["compaction plan (at threshold)"] = _median_ms(
        lambda: session.compactor.instant(session.context, session.budget())
    )
    # Just after a compaction no usage anchors the size: the whole context is estimated.
    session.meter.forget()
    ms["context size, just after compaction"] = _median_ms(session.context_tokens)
    session.close()
    return OverheadRow(n, ms)


def measure_overhead(sizes: tuple[int, ...]) -> list[OverheadRow]:
    with tempfile.TemporaryDirectory(prefix="tidemark-overhead-") as tmp:
        return [_row(Path(tmp), n) for n in sizes]


def growth_exponent(rows: list[OverheadRow], key: str | None = None) -> float:
    """Slope of log(time) against log(messages) between the two largest sizes."""
    if len(rows) < 2:
        return 0.0
    a, b = rows[-2], rows[-1]
    ta = a.per_turn_ms if key is None else a.ms[key]
    tb = b.per_turn_ms if key is None else b.ms[key]
    if ta <= 0 or tb <= 0:
        return 0.0
    return math.log(tb / ta) / math.log(b.messages / a.messages)
