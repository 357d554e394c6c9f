"""A batch on a local Ray instance: tasks per minute, CPU per turn, the workers' loop lag.

``python -m benchmarks.ray_batch URL ROOT TASKS OUT.json [options]`` runs TASKS tasks (the
workspaces ROOT/s000, s001, ...) through `tidemark.batch_ray.run_on_ray` against the
benchmark's server, exactly as ``tidemark batch`` does, on a local Ray instance. Each worker
is a `SessionHost` that also runs a ticker task on its event loop (sleep 5 ms, record how late
it wakes) and, after each task, appends the new lag samples and its process CPU time to
``OUT/.bench/<pid>.jsonl``; the figures are read from there and from results.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from benchmarks.classic import TASK
from tidemark.batch import BatchOptions, BatchTask, ResultStore
from tidemark.batch_ray import BatchPlan, RunStats, SessionHost, run_on_ray

__all__ = ["MeasuredHost", "main"]

TICK_S = 0.005


class MeasuredHost(SessionHost):
    """A `SessionHost` whose event loop is watched by a ticker (a measurement probe: it runs
    for the actor's life, which Ray ends at shutdown)."""

    def __init__(self, out: str, token: str) -> None:
        super().__init__(out, token)
        self._lags: list[tuple[float, float]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._log = Path(out) / ".bench" / f"{os.getpid()}.jsonl"

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(TICK_S)
            self._lags.append((time.time(), (loop.time() - t0 - TICK_S) * 1000))

    async def run(self, task: BatchTask, options: BatchOptions, attempt: int) -> dict[str, Any]:
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        record = await super().run(task, options, attempt)
        new, self._lags = self._lags, []
        line = json.dumps({"cpu_s": time.process_time(), "lags": new}) + "\n"
        await asyncio.to_thread(_append, self._log, line)
        return record


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_batch")
    parser.add_argument("url")
    parser.add_argument("root")
    parser.add_argument("tasks", type=int)
    parser.add_argument("out")
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--num-cpus", type=int)
    parser.add_argument("--context-window", type=int, default=40_000)
    parser.add_argument("--compact-at", type=int, default=20_000)
    parser.add_argument("--max-turns", type=int, default=200)
    args = parser.parse_args(argv)
    structlog.configure(processors=[_drop], cache_logger_on_first_use=False)
    os.environ["ANTHROPIC_BASE_URL"] = args.url
    os.environ["ANTHROPIC_API_KEY"] = "bench"
    out = Path(args.out).with_suffix("")  # the batch's --out folder, beside OUT.json
    out.mkdir(parents=True, exist_ok=True)
    todo = [
        BatchTask(
            id=f"t{i:03d}",
            workspace=str(Path(args.root) / f"s{i:03d}"),
            clone=False,
            task=TASK,
            line=i + 1,
        )
        for i in range(args.tasks)
    ]
    options = BatchOptions(
        provider="anthropic",
        settings={
            "context_window": args.context_window,
            "compact_at": args.compact_at,
            "max_turns": args.max_turns,
            "auto_approve": True,
        },
    )
    plan = BatchPlan(
        todo=todo,
        options=options,
        out=out,
        concurrency=args.concurrency,
        num_cpus=args.num_cpus,
        host=MeasuredHost,
    )
    store = ResultStore(out)
    started: list[float] = []

    def status(_in_flight: int, _stats: RunStats) -> None:
        if not started:  # the first status comes once the actors are asked for
            started.append(time.monotonic())

    t0 = time.monotonic()
    try:
        run_on_ray(plan, store, lambda _line: None, status)
    finally:
        store.close()
    ended = time.monotonic()
    cpu = 0.0
    lags: list[tuple[float, float]] = []
    for log in (out / ".bench").glob("*.jsonl"):
        entries = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        cpu += max((e["cpu_s"] for e in entries), default=0.0)
        lags += [tuple(x) for e in entries for x in e["lags"]]  # pyright: ignore[reportArgumentType]
    results = list(store.results.values())
    Path(args.out).write_text(
        json.dumps(
            {
                "startup_s": (started[0] if started else ended) - t0,
                "wall_s": ended - (started[0] if started else t0),
                "cpu_s": cpu,
                "workers": len(list((out / ".bench").glob("*.jsonl"))),
                "outcomes": [r.get("outcome") for r in results],
                "turns": sum(int(r.get("turns") or 0) for r in results),
                "compactions": sum(int(r.get("compactions") or 0) for r in results),
                "lags": lags,
                "out": str(out),
            }
        )
    )
    return 0


def _drop(_logger: Any, _method: str, _event: Any) -> Any:
    raise structlog.DropEvent


if __name__ == "__main__":
    sys.exit(main())
