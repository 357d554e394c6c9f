"""Drives `benchmarks.scale` for 1, 10, 100 sessions and reads back what they did."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from benchmarks.params import Params
from benchmarks.script import StepScript
from benchmarks.strategies import ROOT, child_env, latency_model, percentile, quiet_disconnects
from tests.support.fakeapi import FakeMessagesAPI
from tests.support.sessions import LongSession, write_repository

__all__ = ["ScaleRow", "run_scale"]


@dataclass
class ScaleRow:
    sessions: int
    finished: int
    turns: int
    compactions: int
    memory_updates: int
    wall_s: float  # measured, at the scale's time compression
    cpu_s: float  # CPU time of the sessions' process
    time_scale: float
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    lag_p99_updating_ms: float  # samples taken while at least one memory update ran
    lag_p99_all_ms: float  # warm-up included (first requests: lazy imports, connections)
    lag_max_all_ms: float
    samples: int
    samples_updating: int
    invalid: list[str]

    @property
    def cpu_ms_per_turn(self) -> float:
        return self.cpu_s * 1000 / self.turns if self.turns else 0.0

    @property
    def turns_per_s(self) -> float:
        return self.turns / self.wall_s if self.wall_s else 0.0


def _ts(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run_scale(n: int, params: Params, workdir: Path) -> ScaleRow:
    root = workdir / f"scale-{n}"
    files: list[str] = []
    for i in range(n):
        files = write_repository(root / f"s{i:03d}", params.files, params.lines_per_file)
    script = StepScript(
        LongSession(files, reads=params.scale_reads), memory_tokens=params.memory_tokens
    )
    latency = latency_model(params, params.scale_time_scale)
    out = workdir / f"scale-{n}.json"
    window = params.scale_compact_at * 2
    env = child_env()
    with FakeMessagesAPI(script, latency=latency, context_window=window) as api:
        quiet_disconnects(api)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.scale",
                api.url,
                str(root),
                str(n),
                str(out),
                "--context-window",
                str(window),
                "--compact-at",
                str(params.scale_compact_at),
            ],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=1800,
            capture_output=True,
        )
        invalid = [r.error or "" for r in api.invalid_requests]
    data = json.loads(out.read_text())
    turns = compactions = updates = 0
    busy: list[tuple[float, float]] = []
    first_turns: list[float] = []
    for events_file in root.glob("s*/.tidemark/sessions/*/events.jsonl"):
        events = [json.loads(x) for x in events_file.read_text().splitlines() if x.strip()]
        turns += sum(e["event"] == "turn_finished" for e in events)
        compactions += sum(e["event"] == "compaction" for e in events)
        updates += sum(e["event"] == "memory_update_committed" for e in events)
        first_turns += [_ts(e["timestamp"]) for e in events if e["event"] == "turn_finished"][:1]
        start: float | None = None
        for e in events:
            if e["event"] == "memory_update_started":
                start = _ts(e["timestamp"])
            elif e["event"] in ("memory_update_committed", "memory_update_failed") and start:
                busy.append((start, _ts(e["timestamp"])))
                start = None
    # Steady state: once every session has had its first answer (the process's first
    # requests pay for lazy imports and new connections once).
    steady_from = max(first_turns, default=0.0)
    everything = [lag for _, lag in data["lags"]]
    steady = [(t, lag) for t, lag in data["lags"] if t >= steady_from]
    lags = [lag for _, lag in steady]
    updating = [lag for t, lag in steady if any(a <= t <= b for a, b in busy)]
    return ScaleRow(
        sessions=n,
        finished=sum(o == "finished" for o in data["outcomes"]),
        turns=turns,
        compactions=compactions,
        memory_updates=updates,
        wall_s=data["wall_s"],
        cpu_s=data["cpu_s"],
        time_scale=params.scale_time_scale,
        lag_p50_ms=percentile(lags, 50),
        lag_p99_ms=percentile(lags, 99),
        lag_max_ms=max(lags, default=0.0),
        lag_p99_updating_ms=percentile(updating, 99),
        lag_p99_all_ms=percentile(everything, 99),
        lag_max_all_ms=max(everything, default=0.0),
        samples=len(lags),
        samples_updating=len(updating),
        invalid=invalid,
    )
