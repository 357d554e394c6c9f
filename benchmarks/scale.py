"""Many tidemark sessions in one process: turns per second and event-loop lag.

``python -m benchmarks.scale URL ROOT N OUT.json [options]`` runs N real `Agent` sessions
concurrently in one event loop (one workspace each, under ROOT) against the benchmark's
server, with background memory updates on, while a ticker task sleeps 5 ms at a time and
records how late it wakes up: the event-loop lag every session's turn suffers. The CPU time
of the processes the sessions' tools ran (their `bash` commands) is reported beside the
sessions' own.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import structlog

from benchmarks.classic import TASK
from tidemark.config import Settings
from tidemark.loop import Agent
from tidemark.providers.anthropic import AnthropicModel

TICK_S = 0.005


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    lags: list[tuple[float, float]] = []  # (wall clock, lag ms)
    outcomes: list[str] = []
    running = True

    async def ticker() -> None:
        while running:
            t0 = anyio.current_time()
            await anyio.sleep(TICK_S)
            lags.append((time.time(), (anyio.current_time() - t0 - TICK_S) * 1000))

    async def session(i: int) -> None:
        model = AnthropicModel(
            context_window=args.context_window, base_url=args.url, api_key="bench"
        )
        settings = Settings(
            workspace=Path(args.root) / f"s{i:03d}",
            context_window=args.context_window,
            compact_at=args.compact_at,
            max_turns=args.max_turns,
            auto_approve=True,
        )
        try:
            result = await Agent(model, settings=settings).run(TASK)
            outcomes.append(result.outcome)
        finally:
            await model.aclose()

    started = time.monotonic()
    cpu_started = time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        async with anyio.create_task_group() as sessions:
            for i in range(args.sessions):
                sessions.start_soon(session, i)
        running = False
    return {
        "wall_s": time.monotonic() - started,
        "cpu_s": time.process_time() - cpu_started,
        "children_cpu_s": _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - _cpu(children),
        "outcomes": outcomes,
        "lags": lags,
    }


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument("url")
    parser.add_argument("root")
    parser.add_argument("sessions", type=int)
    parser.add_argument("out")
    parser.add_argument("--context-window", type=int, default=40_000)
    parser.add_argument("--compact-at", type=int, default=20_000)
    parser.add_argument("--max-turns", type=int, default=200)
    args = parser.parse_args(argv)
    structlog.configure(processors=[_drop], cache_logger_on_first_use=False)
    Path(args.out).write_text(json.dumps(anyio.run(_main, args)))
    return 0


def _drop(_logger: Any, _method: str, _event: Any) -> Any:
    raise structlog.DropEvent


if __name__ == "__main__":
    sys.exit(main())
