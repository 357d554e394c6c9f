"""Strategy 3: LangChain 1.x ``create_agent`` + ``SummarizationMiddleware`` on the same session.

Run as ``python -m benchmarks.langchain_agent URL WORKSPACE OUT.json [options]``. The agent
uses ``ChatAnthropic`` against the benchmark's server, tidemark's own tool implementations
(wrapped as LangChain tools, so tool outputs are byte-identical), the library's defaults
for the middleware (keep the last 20 messages, trim what is summarized to 4,000 tokens) and
``AnthropicPromptCachingMiddleware``, the library's own prompt caching.

Two adaptations, both documented in the results: requests carry ``X-Tidemark-Purpose``
(``turn`` for the agent, ``compact`` for summaries) through ``default_headers``; and the
caching middleware's top-level ``cache_control`` (automatic caching, which the local
server does not model) is expanded into the block-level breakpoint on the last block that
automatic caching amounts to — LangChain's own code path for non-direct transports.

The middleware's default ``trim_tokens_to_summarize=4000`` keeps the last 4,000 tokens
*starting on a human message*; in a tool loop there is none after the task, so the summary
becomes "Previous conversation was too long to summarize." with no model call (the
``langchain-defaults`` strategy shows that). The main LangChain strategy therefore passes
``trim_tokens_to_summarize=None``: the configuration that actually summarizes.

Writes OUT.json: outcome, turns, and each summarization's start/end (monotonic clock) and
stall in ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio


def _wrap_tools(workspace: Path) -> list[Any]:
    from langchain_core.tools import StructuredTool

    from tidemark.tools import ToolContext, ToolError, builtin_tools

    ctx = ToolContext(
        workspace=workspace.resolve(),
        default_timeout=120.0,
        process_registry=workspace / ".bench-processes.json",
    )
    wrapped: list[Any] = []
    for tool in builtin_tools():

        def make(t: Any) -> Any:
            async def run(**kwargs: Any) -> str:
                try:
                    return await t.run(kwargs, ctx)
                except ToolError as exc:
                    return f"error: {exc}"

            return run

        wrapped.append(
            StructuredTool(
                name=tool.name,
                description=tool.description,
                args_schema=tool.input_schema,
                coroutine=make(tool),
            )
        )
    return wrapped


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    from langchain.agents import create_agent
    from langchain.agents.middleware import SummarizationMiddleware
    from langchain_anthropic import ChatAnthropic
    from langchain_anthropic.middleware import AnthropicPromptCachingMiddleware

    from benchmarks.classic import TASK
    from tidemark.prompts import system_prompt

    class BlockExpandedChatAnthropic(ChatAnthropic):
        """ChatAnthropic, with automatic caching expanded into a last-block breakpoint."""

        @property
        def _llm_type(self) -> str:
            return "anthropic-chat-block-cache"

    summaries: list[dict[str, Any]] = []

    class TimedSummarization(SummarizationMiddleware):
        """The library's middleware; only times the hook that may block on a summary."""

        async def abefore_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
            started = time.monotonic()
            result = await super().abefore_model(state, runtime)
            if result is not None:
                ended = time.monotonic()
                added = [m for m in result["messages"] if getattr(m, "type", "") == "human"]
                preview = str(added[0].content)[:160] if added else ""
                summaries.append(
                    {
                        "start": started,
                        "end": ended,
                        "stall_ms": (ended - started) * 1000,
                        "summary_preview": preview,
                        "summary_chars": len(str(added[0].content)) if added else 0,
                    }
                )
            return result

    common: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "base_url": args.url,
        "api_key": "bench",
        "max_retries": 0,
    }
    model = BlockExpandedChatAnthropic(
        **common, max_tokens_to_sample=8192, default_headers={"X-Tidemark-Purpose": "turn"}
    )
    summarizer = BlockExpandedChatAnthropic(
        **common, max_tokens_to_sample=4096, default_headers={"X-Tidemark-Purpose": "compact"}
    )
    workspace = Path(args.workspace).resolve()  # noqa: ASYNC240 - once, before the run
    agent = create_agent(
        model,
        tools=_wrap_tools(workspace),
        system_prompt=system_prompt(workspace),
        middleware=[
            TimedSummarization(
                model,
                trigger=("tokens", args.compact_at),
                summarizer=summarizer,
                trim_tokens_to_summarize=4000 if args.trim_default else None,
            ),
            AnthropicPromptCachingMiddleware(),
        ],
    )
    outcome, error, turns = "finished", None, 0
    try:
        state = await agent.ainvoke(
            {"messages": [{"role": "user", "content": TASK}]},
            config={"recursion_limit": 2 * args.max_turns + 10},
        )
        turns = sum(1 for m in state["messages"] if m.type == "ai")
    except Exception as exc:  # the peer's failure is a result, reported as such
        outcome, error = "failed", f"{type(exc).__name__}: {str(exc)[:300]}"
    return {"outcome": outcome, "turns": turns, "error": error, "summaries": summaries}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.langchain_agent")
    parser.add_argument("url")
    parser.add_argument("workspace")
    parser.add_argument("out")
    parser.add_argument("--compact-at", type=int, required=True)
    parser.add_argument("--max-turns", type=int, default=200)
    parser.add_argument(
        "--trim-default",
        action="store_true",
        help="keep the middleware's default trim_tokens_to_summarize (4000) instead of None",
    )
    args = parser.parse_args(argv)
    try:
        import langchain  # noqa: F401
        import langchain_anthropic  # noqa: F401
    except ImportError as exc:
        Path(args.out).write_text(json.dumps({"outcome": "unavailable", "error": str(exc)}))
        return 0
    result = anyio.run(_main, args)
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
