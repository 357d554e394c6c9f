"""The session-memory cookbook's demo, on tidemark's real pieces, with the notebook's bugs fixed.

Five Python questions with small memory thresholds: memory updates run in the background
while the conversation goes on; then compaction (memory + kept tail, no model call); then
the notebook's evaluation: the follow-up question with the full context, with the compacted
context, and after a classic blocking summary: input tokens, response time, cost.

    python examples/cookbook_demo.py                 # local fake API with a latency model
    ANTHROPIC_API_KEY=... python examples/cookbook_demo.py   # the real API

Fixed from the notebook: the summary is made once (it was requested twice), in the
background (it blocked each turn); the kept messages and `chat` are defined (they were
not); what the memory covers is tracked by message id (the notebook's message index broke
once the list was replaced); the cost figures are the requests' real usage, prompt
caching included, instead of guesses; and a compacted session keeps its kept tail.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prices import cost
from tidemark.compaction import CompactionResult, full_summary
from tidemark.config import Settings
from tidemark.messages import Message, TextBlock, Usage
from tidemark.model import Model, ModelRequest, ModelResponse, TextSink
from tidemark.providers.anthropic import AnthropicModel
from tidemark.session import Session
from tidemark.transcript import SessionPaths

SYSTEM_PROMPT = "You are a helpful coding assistant. Keep responses concise but informative."
QUESTIONS = [
    "What are Python decorators and why are they useful?",
    "Show me a simple decorator example that logs function calls.",
    "How do I create a decorator that accepts arguments?",
    "Now explain Python's async/await syntax briefly.",
    "What's the difference between asyncio.gather and asyncio.wait?",
]
FOLLOW_UP = "Can you give me a quick example combining decorators with async?"


@dataclass
class Metered:
    """A `Model` that records each request's purpose, usage and duration."""

    inner: Model
    calls: list[tuple[str, Usage, float]] = field(default_factory=list[tuple[str, Usage, float]])

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    def estimate_tokens(self, text: str) -> int:
        return self.inner.estimate_tokens(text)

    async def generate(
        self, request: ModelRequest, on_text: TextSink | None = None
    ) -> ModelResponse:
        started = time.perf_counter()
        response = await self.inner.generate(request, on_text)
        self.calls.append((request.purpose, response.usage, time.perf_counter() - started))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def cost(self, purpose: str) -> float:
        return sum(_cost(u) for p, u, _ in self.calls if p == purpose)


def _cost(u: Usage) -> float:
    return cost(
        input_tokens=u.input_tokens,
        cache_write=u.cache_creation_input_tokens,
        cache_read=u.cache_read_input_tokens,
        output=u.output_tokens,
    )


def _text(response: ModelResponse) -> str:
    return "\n".join(b.text for b in response.content if isinstance(b, TextBlock)).strip()


async def _ask(model: Metered, messages: list[Message], question: str) -> tuple[str, float, Usage]:
    """The notebook's `timed_chat`: one question on top of `messages`."""
    request = ModelRequest(
        system=SYSTEM_PROMPT,
        messages=[*messages, Message.user_text(question)],
        max_tokens=1024,
        cache_breakpoint=len(messages) - 1 if messages else None,
    )
    started = time.perf_counter()
    response = await model.generate(request)
    return _text(response), time.perf_counter() - started, response.usage


async def _converse(
    session: Session, model: Metered
) -> tuple[list[Message], int, CompactionResult | None, float]:
    """The five questions with background updates, then an instant compaction."""
    full_context: list[Message] = []
    full_estimate = 0
    result: CompactionResult | None = None
    stall_ms = 0.0
    print("=" * 60 + "\nCONVERSATION WITH BACKGROUND SESSION MEMORY\n" + "=" * 60)
    async with anyio.create_task_group() as tg:
        session.bind(tg)
        for i, question in enumerate(QUESTIONS, 1):
            print(f"\n[Turn {i}] USER: {question}")
            session.add(Message.user_text(question))
            response = await model.generate(session.request(1024))
            session.add(
                Message(
                    role="assistant",
                    origin="model",
                    content=response.content,
                    usage=response.usage,
                    stop_reason=response.stop_reason,
                )
            )
            session.note_usage(response.usage)
            print(f"ASSISTANT: {_text(response)[:300]}")
            was_running = session.updater.running
            session.schedule_update()  # the answer is a natural pause
            state = (
                "update started in the background"
                if session.updater.running and not was_running
                else "update still running"
                if was_running
                else "no update due"
            )
            print(f"  [context {session.context_tokens():,} tokens; memory: {state}]")
        # Demo only: let the update in flight finish so the memory covers the chat.
        # tidemark itself never waits at compaction (compaction_wait_ms defaults to 0).
        await session.updater.wait_idle(120)

        full_context = list(session.context)
        full_estimate = session.context_tokens()
        started = time.perf_counter()
        result = await session.compact_if_needed(force=True)
        stall_ms = (time.perf_counter() - started) * 1000
        tg.cancel_scope.cancel()
    session.close()
    return full_context, full_estimate, result, stall_ms


async def demo(model: Metered, workspace: Path) -> None:
    settings = Settings(
        workspace=workspace,
        context_window=200_000,
        compact_at=2_000,  # small, like the notebook's thresholds: the chat is short
        memory_init_tokens=200,
        memory_update_tokens=500,
    )
    session = Session(
        paths=SessionPaths.create(workspace),
        model=model,
        settings=settings,
        system=SYSTEM_PROMPT,
        tools=[],
    )
    full_context, full_estimate, result, stall_ms = await _converse(session, model)

    print("\n" + "=" * 60 + "\nCOMPACTION\n" + "=" * 60)
    print(f"Before: {len(full_context)} messages, ~{full_estimate:,} tokens")
    if result is None:
        print("Nothing to compact (the memory covers nothing the tail does not keep).")
        return
    kept = result.context[1:]
    print(
        f"After ({result.strategy}, {stall_ms:.1f} ms, no model call): "
        f"{'memory' if result.strategy == 'session_memory' else 'tombstones and stubs'} + "
        f"{len(kept)} kept messages, ~{result.post_tokens:,} tokens"
    )
    for m in kept:
        print(f"  - {m.role}: {m.text[:60]!r}")
    print(f"\nSession memory ({session.paths.memory}):\n{session.paths.memory.read_text()[:800]}")

    print("\n" + "=" * 60 + "\nRESPONSE TIME: FULL vs COMPACTED vs BLOCKING SUMMARY\n" + "=" * 60)
    full_answer, full_time, full_usage = await _ask(model, full_context, FOLLOW_UP)
    compact_answer, compact_time, compact_usage = await _ask(model, result.context, FOLLOW_UP)
    started = time.perf_counter()
    classic = await full_summary(
        full_context,
        session.transcript,
        session.positions,
        model=model,
        system=SYSTEM_PROMPT,
        tools=[],
        max_tokens=1024,
        counter=session.counter,
        budget=session.budget(),
    )
    blocking_s = time.perf_counter() - started
    classic_answer, classic_time, classic_usage = await _ask(model, classic.context, FOLLOW_UP)
    del full_answer, classic_answer
    print(f"Question: {FOLLOW_UP}\nCompacted answer: {compact_answer[:200]}\n")
    rows = [
        (
            "input tokens",
            full_usage.total_input_tokens,
            compact_usage.total_input_tokens,
            classic_usage.total_input_tokens,
        ),
        (
            "  of which not cached",
            full_usage.input_tokens + full_usage.cache_creation_input_tokens,
            compact_usage.input_tokens + compact_usage.cache_creation_input_tokens,
            classic_usage.input_tokens + classic_usage.cache_creation_input_tokens,
        ),
    ]
    print(f"{'':28}{'full':>14}{'session memory':>16}{'blocking summary':>18}")
    for label, a, b, c in rows:
        print(f"{label:28}{a:>14,}{b:>16,}{c:>18,}")
    print(f"{'response time (s)':28}{full_time:>14.2f}{compact_time:>16.2f}{classic_time:>18.2f}")
    print(f"{'wait at compaction (s)':28}{'–':>14}{stall_ms / 1000:>16.4f}{blocking_s:>18.2f}")

    print(
        "\n"
        + "=" * 60
        + "\nCOST (real usage of every request, prompt caching included)\n"
        + "=" * 60
    )
    updates = model.cost("session-memory")
    n_updates = sum(1 for p, _, _ in model.calls if p == "session-memory")
    summary_cost = model.cost("compact")
    sm = updates + _cost(compact_usage)
    trad = summary_cost + _cost(classic_usage)
    print(
        f"Session memory: {n_updates} background updates ${updates:.4f} + follow-up "
        f"${_cost(compact_usage):.4f} = ${sm:.4f}"
    )
    print(
        f"Blocking summary: summary ${summary_cost:.4f} + follow-up "
        f"${_cost(classic_usage):.4f} = ${trad:.4f}"
    )
    print(f"Full context, no compaction: follow-up ${_cost(full_usage):.4f}")
    print(
        f"Difference (session memory - blocking): ${sm - trad:+.4f}; the user waited "
        f"{stall_ms:.1f} ms instead of {blocking_s:.1f} s at compaction."
    )


def _fake_answer(question: str) -> str:
    topic = question.rstrip("?.").lower()
    body = " ".join(
        f"Point {k}: about {topic}, with a short example and when to use it." for k in range(1, 16)
    )
    return f"Here is a concise answer on {topic}. {body}"


@contextlib.contextmanager
def _fake_api(time_scale: float) -> Iterator[str]:
    from tests.support.fakeapi import FakeMessagesAPI, LatencyModel, RecordedRequest, Reply, text

    def respond(request: RecordedRequest) -> Reply:
        users = [m for m in request.body.get("messages", []) if m.get("role") == "user"]
        if request.purpose in ("session-memory", "compact"):
            asked = re.findall(
                r"(What[^\"'?]*\?|Show[^\"'.]*\.|How[^\"'?]*\?|Now[^\"'.]*\.)",
                str(request.body.get("messages")),
            )
            topics = "\n".join(f"- Asked: {q}" for q in dict.fromkeys(asked)) or "- none yet"
            return text(
                "# Session Title\nPython decorators and async, explained\n\n"
                "# Current State\n- Done: answered the questions below.\n- Next: follow-ups.\n\n"
                "# Task specification\nConcise answers to Python questions.\n\n"
                f"# Key results\n{topics}\n\n# Worklog\n{topics}\n"
            )
        last = users[-1]["content"] if users else ""
        question = last if isinstance(last, str) else str(last[-1].get("text", ""))
        return text(_fake_answer(question))

    latency = LatencyModel(time_scale=time_scale)
    with FakeMessagesAPI(respond, latency=latency) as api:
        yield api.url


async def _run(args: argparse.Namespace) -> None:
    real = bool(os.environ.get("ANTHROPIC_API_KEY")) and not args.fake
    with contextlib.ExitStack() as stack:
        if real:
            inner = AnthropicModel(args.model)
            print(f"Using the real API ({args.model}).")
        else:
            url = stack.enter_context(_fake_api(args.time_scale))
            inner = AnthropicModel(args.model, base_url=url, api_key="demo")
            print(
                f"Using the local fake API at {url} (latency model, time scale "
                f"{args.time_scale}; times shown are as measured)."
            )
        model = Metered(inner)
        workspace = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cookbook-")))
        try:
            await demo(model, workspace)
        finally:
            await model.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The session-memory cookbook demo on tidemark.")
    parser.add_argument(
        "--fake",
        action="store_true",
        help="use the local fake API even when ANTHROPIC_API_KEY is set",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="fake API only: multiply the latency model's times by this",
    )
    parser.add_argument("--model", default="claude-sonnet-4-5")
    anyio.run(_run, parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
