"""The classic strategies on tidemark's own pieces: no compaction, and blocking full summary.

Run as ``python -m benchmarks.classic {none|blocking} URL WORKSPACE OUT.json [options]``,
one process per session (like a user's agent). The real `Agent`, `Session`, provider and
tools run unchanged; only the compaction strategies passed to `Agent` differ:

- ``blocking``: ``compaction=("full_summary",)``: no instant strategy, so no background
  memory is kept, and when the window is full the compaction is `full_summary`, a blocking
  ``compact`` request: summarize everything when full, the classic way.
- ``none``: ``compaction=()``: nothing is ever compacted; the run ends when the window
  overflows.

Events go to the session's ``events.jsonl`` as in any tidemark run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import structlog

from tidemark.compactor import Strategy
from tidemark.config import Settings
from tidemark.errors import TidemarkError
from tidemark.loop import Agent
from tidemark.providers.anthropic import AnthropicModel

TASK = "Fix the restock bug in the inventory service; the test is test_stock.py."


async def _main(args: argparse.Namespace) -> dict[str, object]:
    settings = Settings(
        workspace=Path(args.workspace),
        context_window=args.context_window,
        compact_at=args.compact_at,
        max_turns=args.max_turns,
        auto_approve=True,
    )
    model = AnthropicModel(context_window=args.context_window, base_url=args.url, api_key="bench")
    # Blocking: no memory; when the window is full, a blocking full summary. None: the
    # context only grows.
    strategies: tuple[Strategy, ...] = ("full_summary",) if args.strategy == "blocking" else ()
    agent = Agent(model, settings=settings, compaction=strategies)
    try:
        result = await agent.run(TASK)
        return {"outcome": result.outcome, "turns": result.turns, "error": None}
    except (TidemarkError, BaseExceptionGroup) as exc:
        error = _first_tidemark_error(exc)
        if error is None:
            raise
        return {"outcome": "failed", "turns": None, "error": f"{type(error).__name__}: {error}"}
    finally:
        await model.aclose()


def _first_tidemark_error(exc: BaseException) -> TidemarkError | None:
    if isinstance(exc, TidemarkError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:  # pyright: ignore[reportUnknownVariableType]
            found = _first_tidemark_error(inner)  # pyright: ignore[reportUnknownArgumentType]
            if found is not None:
                return found
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.classic")
    parser.add_argument("strategy", choices=["none", "blocking"])
    parser.add_argument("url")
    parser.add_argument("workspace")
    parser.add_argument("out")
    parser.add_argument("--context-window", type=int, required=True)
    parser.add_argument("--compact-at", type=int, required=True)
    parser.add_argument("--max-turns", type=int, default=200)
    args = parser.parse_args(argv)
    structlog.configure(processors=[_drop], cache_logger_on_first_use=False)
    outcome = anyio.run(_main, args)
    Path(args.out).write_text(json.dumps(outcome))
    return 0


def _drop(_logger: Any, _method: str, _event: Any) -> Any:
    raise structlog.DropEvent


if __name__ == "__main__":
    sys.exit(main())
