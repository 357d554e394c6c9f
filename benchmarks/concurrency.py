"""Drives `benchmarks.scale` for 1, 10, 100 sessions, and `benchmarks.ray_batch` for a batch
on a local Ray instance, and reads back what they did."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from benchmarks.params import Params
from benchmarks.script import StepScript
from benchmarks.strategies import ROOT, child_env, latency_model, percentile, quiet_disconnects
from tests.support.fakeapi import FakeMessagesAPI, LatencyModel
from tests.support.sessions import LongSession, write_repository

__all__ = ["RayRow", "ScaleRow", "ray_table", "run_ray_batch", "run_scale"]


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
    # CPU time of the `bash` commands' processes (the scripted session runs pytest once).
    tools_cpu_s: float = 0.0
    lag_p99_commands_ms: float = 0.0  # samples while some session's `bash` command ran
    lag_p99_no_commands_ms: float = 0.0  # samples while none ran

    @property
    def cpu_ms_per_turn(self) -> float:
        return self.cpu_s * 1000 / self.turns if self.turns else 0.0

    @property
    def turns_per_s(self) -> float:
        return self.turns / self.wall_s if self.wall_s else 0.0


def _ts(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _sessions(root: Path, n: int, params: Params) -> tuple[StepScript, LatencyModel, int]:
    """`n` workspaces (s000, s001, ...) under `root`, the script every session follows, the
    latency model and the window of the scale runs."""
    files: list[str] = []
    for i in range(n):
        files = write_repository(root / f"s{i:03d}", params.files, params.lines_per_file)
    script = StepScript(LongSession(files, reads=params.scale_reads))
    return script, latency_model(params, params.scale_time_scale), params.scale_compact_at * 2


def run_scale(n: int, params: Params, workdir: Path) -> ScaleRow:
    root = workdir / f"scale-{n}"
    script, latency, window = _sessions(root, n, params)
    out = workdir / f"scale-{n}.json"
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
    seen = _read_sessions(root.glob("s*/.tidemark/sessions/*/events.jsonl"))
    # Steady state: once every session has had its first answer (the process's first
    # requests pay for lazy imports and new connections once).
    steady_from = max(seen.first_turns, default=0.0)
    everything = [lag for _, lag in data["lags"]]
    steady = [(t, lag) for t, lag in data["lags"] if t >= steady_from]
    lags = [lag for _, lag in steady]
    updating = [lag for t, lag in steady if _inside(t, seen.updating)]
    commands = [lag for t, lag in steady if _inside(t, seen.commands)]
    no_commands = [lag for t, lag in steady if not _inside(t, seen.commands)]
    return ScaleRow(
        sessions=n,
        finished=sum(o == "finished" for o in data["outcomes"]),
        turns=seen.turns,
        compactions=seen.compactions,
        memory_updates=seen.updates,
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
        tools_cpu_s=data.get("children_cpu_s", 0.0),
        lag_p99_commands_ms=percentile(commands, 99),
        lag_p99_no_commands_ms=percentile(no_commands, 99),
    )


@dataclass
class _Sessions:
    turns: int = 0
    compactions: int = 0
    updates: int = 0
    first_turns: list[float] = field(default_factory=list[float])
    updating: list[tuple[float, float]] = field(default_factory=list[tuple[float, float]])
    commands: list[tuple[float, float]] = field(default_factory=list[tuple[float, float]])


def _read_sessions(event_files: Iterable[Path]) -> _Sessions:
    """Counts, first answers, and when memory updates and `bash` commands ran."""
    seen = _Sessions()
    for events_file in event_files:
        events = [json.loads(x) for x in events_file.read_text().splitlines() if x.strip()]
        seen.turns += sum(e["event"] == "turn_finished" for e in events)
        seen.compactions += sum(e["event"] == "compaction" for e in events)
        seen.updates += sum(e["event"] == "memory_update_committed" for e in events)
        finished = [_ts(e["timestamp"]) for e in events if e["event"] == "turn_finished"]
        seen.first_turns += finished[:1]
        start: float | None = None
        bash: dict[str, float] = {}
        for e in events:
            if e["event"] == "memory_update_started":
                start = _ts(e["timestamp"])
            elif e["event"] in ("memory_update_committed", "memory_update_failed") and start:
                seen.updating.append((start, _ts(e["timestamp"])))
                start = None
            elif e["event"] == "tool_started" and e["tool"] == "bash":
                bash[e["tool_use_id"]] = _ts(e["timestamp"])
            elif e["event"] == "tool_call" and e["tool_use_id"] in bash:
                seen.commands.append((bash.pop(e["tool_use_id"]), _ts(e["timestamp"])))
    return seen


def _inside(t: float, spans: list[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in spans)


# -- a batch on a local Ray instance ----------------------------------------------------------


@dataclass
class RayRow:
    tasks: int
    concurrency: int
    workers: int
    finished: int
    turns: int
    compactions: int
    startup_s: float  # ray.init and the workers' start, before the first task is asked for
    wall_s: float  # from the first task asked for to the last result
    cpu_s: float  # CPU time of the worker processes that hosted the sessions
    lag_p50_ms: float  # the workers' event loops, steady state
    lag_p99_ms: float
    lag_max_ms: float
    samples: int
    invalid: list[str]

    @property
    def tasks_per_min(self) -> float:
        return self.tasks * 60 / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_ms_per_turn(self) -> float:
        return self.cpu_s * 1000 / self.turns if self.turns else 0.0


def run_ray_batch(
    tasks: int, concurrency: int, params: Params, workdir: Path, *, num_cpus: int = 2
) -> RayRow | str:
    """The batch's figures, or why it was skipped (Ray missing, or it could not start)."""
    if importlib.util.find_spec("ray") is None:
        return "skipped: Ray is not installed (pip install '.[batch]')"
    root = workdir / f"ray-{tasks}"
    script, latency, window = _sessions(root, tasks, params)
    out = workdir / f"ray-{tasks}.json"
    command = [
        *(sys.executable, "-m", "benchmarks.ray_batch", "URL", str(root), str(tasks), str(out)),
        *("--concurrency", str(concurrency), "--num-cpus", str(num_cpus)),
        *("--context-window", str(window), "--compact-at", str(params.scale_compact_at)),
    ]
    with FakeMessagesAPI(script, latency=latency, context_window=window) as api:
        quiet_disconnects(api)
        command[command.index("URL")] = api.url
        started = time.monotonic()
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=child_env(),
            check=False,
            timeout=_RAY_TIMEOUT_S,
            capture_output=True,
            text=True,
        )
        invalid = [r.error or "" for r in api.invalid_requests]
    if done.returncode != 0 or not out.exists():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return (
            f"could not run ({last}; exit {done.returncode} after "
            f"{time.monotonic() - started:.0f} s)"
        )
    data = json.loads(out.read_text())
    batch_out = Path(data["out"])
    # Steady state: once the first wave of tasks (one per session slot) has had an answer.
    first_wave = [batch_out / "tasks" / f"t{i:03d}" for i in range(concurrency)]
    seen = _read_sessions(
        f for task in first_wave for f in task.glob("workspace/.tidemark/sessions/*/events.jsonl")
    )
    steady_from = max(seen.first_turns, default=0.0)
    lags = [lag for t, lag in data["lags"] if t >= steady_from]
    return RayRow(
        tasks=tasks,
        concurrency=concurrency,
        workers=data["workers"],
        finished=sum(o == "finished" for o in data["outcomes"]),
        turns=data["turns"],
        compactions=data["compactions"],
        startup_s=data["startup_s"],
        wall_s=data["wall_s"],
        cpu_s=data["cpu_s"],
        lag_p50_ms=percentile(lags, 50),
        lag_p99_ms=percentile(lags, 99),
        lag_max_ms=max(lags, default=0.0),
        samples=len(lags),
        invalid=invalid,
    )


_RAY_TIMEOUT_S = 900


def ray_table(row: RayRow | str) -> str:
    """The batch's row (or why there is none), under the scale table."""
    if isinstance(row, str):
        return f"Batch on a local Ray instance: {row}"
    header = [
        "tasks",
        "in flight",
        "workers",
        "finished",
        "turns",
        "Ray start-up (s)",
        "wall (s)",
        "tasks/min",
        "CPU per turn",
        "lag p50",
        "lag p99",
        "lag max",
        "invalid",
    ]
    body = [
        str(row.tasks),
        str(row.concurrency),
        str(row.workers),
        str(row.finished),
        str(row.turns),
        f"{row.startup_s:.1f}",
        f"{row.wall_s:.1f}",
        f"{row.tasks_per_min:.1f}",
        f"{row.cpu_ms_per_turn:.1f} ms",
        f"{row.lag_p50_ms:.1f} ms",
        f"{row.lag_p99_ms:.1f} ms",
        f"{row.lag_max_ms:,.0f} ms",
        str(len(row.invalid)),
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        "| " + " | ".join(body) + " |",
    ]
    return (
        "Batch on a local Ray instance (`tidemark batch`'s scheduler, the same session per "
        "task): each worker hosts its sessions on one event loop; CPU per turn is the workers' "
        "process CPU; lag is the workers' loops, steady state (after the first wave's first "
        "answers).\n\n" + "\n".join(lines)
    )
