"""Runs each strategy on the same scripted session against the latency-modelled server.

Every session runs in its own process, as a user's agent would, so the measured stalls are
the agent's own; the server (with the latency model and prompt caching) runs in this
process and records every request. Figures come from the server's records (tokens, time to
first token, invalid requests) and from the agent's events (compactions).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.classic import TASK
from benchmarks.params import Params
from benchmarks.prices import cost
from benchmarks.script import StepScript
from tests.support.coverage import (
    facts_seen_before,
    haystack,
    unseen_by_memory,
    unseen_by_summaries,
)
from tests.support.fakeapi import FakeMessagesAPI, LatencyModel, RecordedRequest
from tests.support.sessions import LongSession, facts_in, write_repository
from tidemark.messages import Message
from tidemark.transcript import load_transcript

__all__ = ["LABELS", "Compaction", "StrategyResult", "percentile", "run_strategy"]

ROOT = Path(__file__).resolve().parents[1]


def latency_model(params: Params, time_scale: float) -> LatencyModel:
    """The benchmark's latency model at the given time compression."""
    return LatencyModel(
        params.ttft_base_s, params.ttft_per_input_token_s, params.per_output_token_s, time_scale
    )


def child_env() -> dict[str, str]:
    """Environment of a benchmark subprocess: no API settings of the user, this checkout first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


OVERFLOW = "prompt is too long"

LABELS = {
    "none": "1. no compaction",
    "blocking": "2. blocking full summary",
    "langchain": "3. LangChain SummarizationMiddleware",
    "langchain-defaults": "3b. LangChain, middleware defaults",
    "tidemark": "4. tidemark session memory",
    "tidemark-rewrite": "4b. tidemark, whole rewrites",
}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


@dataclass
class Compaction:
    stall_ms: float  # un-scaled: model time / time_scale + the rest as measured
    measured_ms: float  # wall clock, as the session saw it at this time scale
    model_calls: int  # blocking model calls during the stall
    strategy: str
    pre_tokens: int | None = None  # runtime's own estimate (tidemark pieces only)
    post_tokens: int | None = None
    memory_lag_tokens: int | None = None
    tool_results_cleared: int | None = None
    trigger: str | None = None  # tidemark: threshold, window or fresh_memory (before it)
    before_input: int = 0  # server-counted input of the last turn before compaction
    after_input: int = 0  # ... and of the first turn after it
    after_uncached: int = 0
    before_ttft_ms: float = 0.0
    after_ttft_ms: float = 0.0
    after_cache_read: int = 0  # cache reads of the first turn after it
    after_turn_index: int = -1  # index of that turn among the turn requests
    facts_seen: int = 0  # planted facts the session's requests had carried by then
    facts_kept: int = 0  # ... of which the first turn after it still carries (context + memory)


@dataclass
class StrategyResult:
    name: str
    label: str
    outcome: str
    error: str | None
    wall_s: float  # un-scaled session time (measured / time scale)
    turns: int
    tool_calls: int
    compactions: list[Compaction] = field(default_factory=list[Compaction])
    tokens: dict[str, dict[str, int]] = field(default_factory=dict[str, dict[str, int]])
    cost_usd: dict[str, float] = field(default_factory=dict[str, float])
    invalid: list[str] = field(default_factory=list[str])
    overflow: str | None = None
    memory_updates: int = 0
    memory_update_s: list[float] = field(default_factory=list[float])
    blocking_calls: int = 0
    compact_at: int = 0
    unseen_covered: int = 0  # tool results (and inputs) a memory or summary claimed unseen
    facts_seen_end: int = 0  # planted facts seen by the end of the session
    facts_kept_end: int = 0  # ... still in the last turn's request (context + memory)

    @property
    def stalls(self) -> list[float]:
        return [c.stall_ms for c in self.compactions]

    @property
    def total_cost(self) -> float:
        return sum(self.cost_usd.values())

    def total(self, key: str) -> int:
        return sum(t[key] for t in self.tokens.values())


def quiet_disconnects(api: FakeMessagesAPI) -> None:
    """Clients closing idle keep-alive connections at exit are not errors worth a traceback."""
    server = api._server  # pyright: ignore[reportPrivateUsage]
    if server is not None:
        server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]


def _command(name: str, params: Params, url: str, ws: Path, out: Path) -> list[str]:
    py = sys.executable
    limits = ["--compact-at", str(params.compact_at), "--max-turns", str(params.max_turns)]
    if name in ("none", "blocking"):
        return [
            py,
            "-m",
            "benchmarks.classic",
            name,
            url,
            str(ws),
            str(out),
            "--context-window",
            str(params.context_window),
            *limits,
        ]
    if name.startswith("langchain"):
        extra = ["--trim-default"] if name == "langchain-defaults" else []
        return [py, "-m", "benchmarks.langchain_agent", url, str(ws), str(out), *limits, *extra]
    return [
        py,
        "-m",
        "tidemark.cli",
        "run",
        "--workspace",
        str(ws),
        "--yes",
        "--context-window",
        str(params.context_window),
        *limits,
        TASK,
    ]


def run_strategy(name: str, params: Params, workdir: Path) -> StrategyResult:
    ws = workdir / name
    ws.mkdir(parents=True, exist_ok=True)
    files = write_repository(ws, params.files, params.lines_per_file)
    if params.session == "writes":
        session = LongSession(files, reads=0, writes=params.writes)
    else:
        session = LongSession(files, reads=params.reads, parallel_every=params.parallel_every)
    script = StepScript(
        session,
        summary_tokens=params.summary_tokens,
        memory_tokens=params.memory_tokens if name == "tidemark-rewrite" else None,
    )
    latency = latency_model(params, params.time_scale)
    out = workdir / f"{name}.json"
    env = child_env()
    with FakeMessagesAPI(script, latency=latency, context_window=params.context_window) as api:
        quiet_disconnects(api)
        env["ANTHROPIC_BASE_URL"] = api.url
        env["ANTHROPIC_API_KEY"] = "bench"
        started = time.monotonic()
        proc = subprocess.run(
            _command(name, params, api.url, ws, out),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        wall = time.monotonic() - started
        records = list(api.requests)
    transcript = _transcript(ws)
    runner: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if name.startswith("tidemark"):
        runner = {
            "outcome": "finished" if proc.returncode == 0 else f"exit {proc.returncode}",
            "error": proc.stderr.strip().splitlines()[-1] if proc.returncode else None,
        }
    elif not runner:
        runner = {"outcome": f"exit {proc.returncode}", "error": proc.stderr[-500:]}
    result = _result(name, params, runner, records, _events(ws), wall, session)
    _fidelity(result, records, _events(ws), transcript)
    return result


def _transcript(ws: Path) -> list[Message]:
    found = sorted(ws.glob(".tidemark/sessions/*/transcript.jsonl"))
    return load_transcript(found[-1]).messages if found else []


def _fidelity(
    result: StrategyResult,
    records: list[RecordedRequest],
    events: list[dict[str, Any]],
    transcript: list[Message],
) -> None:
    """What the server's records say about faithfulness: unseen coverage, planted facts."""
    ok = [r for r in records if r.status == 200 and r.usage is not None]
    turns = [r for r in ok if r.purpose == "turn"]
    if result.name.startswith("tidemark"):
        memory = [r for r in records if r.purpose == "session-memory"]
        result.unseen_covered = len(unseen_by_memory(events, transcript, memory))
    else:
        compacts = [r for r in ok if r.purpose == "compact"]
        result.unseen_covered = unseen_by_summaries(turns, compacts)
    # Planted facts: one per file; "seen" once a turn request carried it, "kept" when the
    # request in question (context and memory or summary) still carries it.
    seen_before = facts_seen_before(turns)
    for c in result.compactions:
        k = c.after_turn_index
        if 0 < k < len(turns):
            before = seen_before[k]
            c.facts_seen = len(before)
            c.facts_kept = len(before & facts_in(haystack(turns[k])))
    if turns:
        seen = seen_before[-1] | facts_in(haystack(turns[-1]))
        result.facts_seen_end = len(seen)
        result.facts_kept_end = len(seen & facts_in(haystack(turns[-1])))


def _events(ws: Path) -> list[dict[str, Any]]:
    found = sorted(ws.glob(".tidemark/sessions/*/events.jsonl"))
    if not found:
        return []
    return [json.loads(line) for line in found[-1].read_text().splitlines() if line.strip()]


def _ttft_ms(r: RecordedRequest, scale: float) -> float:
    if r.first_token_at is None:
        return 0.0
    return (r.first_token_at - r.started_at) * 1000 / scale


def _duration_ms(r: RecordedRequest) -> float:
    return ((r.finished_at or r.started_at) - r.started_at) * 1000


def _uncached(r: RecordedRequest) -> int:
    u = r.usage or {}
    return u.get("input_tokens", 0) + u.get("cache_creation_input_tokens", 0)


def _total_input(r: RecordedRequest) -> int:
    u = r.usage or {}
    return (
        u.get("input_tokens", 0)
        + u.get("cache_creation_input_tokens", 0)
        + u.get("cache_read_input_tokens", 0)
    )


def _result(
    name: str,
    params: Params,
    runner: dict[str, Any],
    records: list[RecordedRequest],
    events: list[dict[str, Any]],
    wall: float,
    session: LongSession,
) -> StrategyResult:
    scale = params.time_scale
    ok = [r for r in records if r.status == 200 and r.usage is not None]
    turns = [r for r in ok if r.purpose == "turn"]
    compacts = [r for r in ok if r.purpose == "compact"]
    invalid = [r.error or "" for r in records if r.error and not r.error.startswith(OVERFLOW)]
    overflow = next((r.error for r in records if r.error and r.error.startswith(OVERFLOW)), None)
    tokens: dict[str, dict[str, int]] = {}
    costs: dict[str, float] = {}
    for r in ok:
        purpose = r.purpose or "turn"
        u = r.usage or {}
        t = tokens.setdefault(
            purpose, {"requests": 0, "input": 0, "cache_write": 0, "cache_read": 0, "output": 0}
        )
        t["requests"] += 1
        t["input"] += u.get("input_tokens", 0)
        t["cache_write"] += u.get("cache_creation_input_tokens", 0)
        t["cache_read"] += u.get("cache_read_input_tokens", 0)
        t["output"] += u.get("output_tokens", 0)
    for purpose, t in tokens.items():
        costs[purpose] = cost(
            input_tokens=t["input"],
            cache_write=t["cache_write"],
            cache_read=t["cache_read"],
            output=t["output"],
        )
    result = StrategyResult(
        name=name,
        label=LABELS.get(name, name),
        outcome=str(runner.get("outcome")),
        error=runner.get("error"),
        wall_s=_unscaled_wall(wall, turns + compacts, scale),
        turns=len(turns),
        tool_calls=_tool_calls(session, turns),
        tokens=tokens,
        cost_usd=costs,
        invalid=invalid,
        overflow=overflow,
        blocking_calls=len(compacts),
        compact_at=params.compact_at,
    )
    if overflow:
        result.outcome = f"overflowed after {len(turns)} turns"
    if name.startswith("langchain"):
        _langchain_compactions(result, runner, turns, compacts, scale)
    else:
        _tidemark_compactions(result, events, turns, compacts, scale)
        committed = [e for e in events if e["event"] == "memory_update_committed"]
        result.memory_updates = len(committed)
        result.memory_update_s = [e["duration_ms"] / 1000 / scale for e in committed]
    return result


def _unscaled_wall(wall: float, foreground: list[RecordedRequest], scale: float) -> float:
    """Session time with the model's foreground time un-scaled and the rest as measured.

    Background memory updates overlap turns, so only turns and blocking summaries count.
    """
    model_s = sum(_duration_ms(r) for r in foreground) / 1000
    return wall - model_s + model_s / scale


def _tool_calls(session: LongSession, turns: list[RecordedRequest]) -> int:
    """Tool calls the session made: those of every scripted reply it was served."""
    from benchmarks.script import step_of

    if not turns:
        return 0
    served = max(step_of(r.body) for r in turns) + 1  # replies whose results came back
    replies = session.turns()[:served]
    return sum(1 for reply in replies for b in reply.content if b.get("type") == "tool_use")


def _fill_turns(
    c: Compaction, before: RecordedRequest | None, after: RecordedRequest | None, scale: float
) -> None:
    if before is not None:
        c.before_input = _total_input(before)
        c.before_ttft_ms = _ttft_ms(before, scale)
    if after is not None:
        c.after_cache_read = (after.usage or {}).get("cache_read_input_tokens", 0)
        c.after_input = _total_input(after)
        c.after_uncached = _uncached(after)
        c.after_ttft_ms = _ttft_ms(after, scale)


def _tidemark_compactions(
    result: StrategyResult,
    events: list[dict[str, Any]],
    turns: list[RecordedRequest],
    compacts: list[RecordedRequest],
    scale: float,
) -> None:
    k = 0
    for i, e in enumerate(events):
        if e["event"] != "compaction":
            continue
        measured = float(e["duration_ms"])
        calls = 0
        model_ms = 0.0
        if e["strategy"] == "full_summary" and k < len(compacts):
            model_ms = _duration_ms(compacts[k])
            calls = 1
            k += 1
        if float(e.get("waited_for_update_ms", 0)) > 0:
            calls += 1
            model_ms += float(e["waited_for_update_ms"])
        model_ms = min(model_ms, measured)
        c = Compaction(
            stall_ms=measured - model_ms + model_ms / scale,
            measured_ms=measured,
            model_calls=calls,
            strategy=e["strategy"],
            pre_tokens=e.get("pre_tokens"),
            post_tokens=e.get("post_tokens"),
            memory_lag_tokens=e.get("memory_lag_tokens"),
            tool_results_cleared=e.get("tool_results_cleared"),
            trigger=e.get("trigger"),
        )
        turn = next((x["turn"] for x in events[i:] if x["event"] == "turn_finished"), None)
        if turn is not None:
            before = turns[turn - 2] if 2 <= turn <= len(turns) + 1 else None
            after = turns[turn - 1] if turn <= len(turns) else None
            c.after_turn_index = turn - 1 if after is not None else -1
            _fill_turns(c, before, after, scale)
        result.compactions.append(c)


def _langchain_compactions(
    result: StrategyResult,
    runner: dict[str, Any],
    turns: list[RecordedRequest],
    compacts: list[RecordedRequest],
    scale: float,
) -> None:
    for k, s in enumerate(runner.get("summaries") or []):
        measured = float(s["stall_ms"])
        during = [r for r in compacts if s["start"] <= r.started_at <= s["end"]]
        model_ms = min(sum(_duration_ms(r) for r in during), measured)
        c = Compaction(
            stall_ms=measured - model_ms + model_ms / scale,
            measured_ms=measured,
            model_calls=len(during),
            strategy="langchain_summary",
        )
        before = next((r for r in reversed(turns) if r.started_at < s["start"]), None)
        after = next((r for r in turns if r.started_at >= s["end"]), None)
        c.after_turn_index = turns.index(after) if after is not None else -1
        _fill_turns(c, before, after, scale)
        result.compactions.append(c)
        del k


def summarize_stalls(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values, default=0.0),
        "mean": statistics.fmean(values) if values else 0.0,
    }
