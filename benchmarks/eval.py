"""``python -m benchmarks.eval``: can the embedded model do small coding tasks? A table out.

    python -m benchmarks.eval                     # every task, the default local model
    python -m benchmarks.eval --quick             # the smoke subset (read-value, fix-string)
    python -m benchmarks.eval --tasks read-value,fix-bug --model path/to/model.gguf
    python -m benchmarks.eval --label 1.5b --out benchmarks/results/eval-1.5b.md

Each task (see `benchmarks.eval_tasks`) gets a fresh repository in a temporary folder and
one run of the real CLI, ``tidemark run --yes --max-turns N TASK``, with no API key (so the
local provider) and a time limit. Per task: finished (exit 0 with an answer), correct (the
checker accepts the answer and the workspace; only counted when finished), turns and tool
calls (from the session's events.jsonl), wall and CPU seconds of the run. Tasks run one
after another: the model uses every core.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.eval_tasks import QUICK, TASKS, Task, task_named
from benchmarks.strategies import child_env

__all__ = ["EvalRow", "main", "run_task", "table"]


@dataclass
class EvalRow:
    task: str
    kind: str
    finished: bool
    correct: bool
    turns: int
    tool_calls: int
    wall_s: float
    cpu_s: float
    exit_code: int | None  # None: killed at the time limit
    answer: str
    error: str


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _events(workspace: Path) -> list[dict[str, object]]:
    sessions = workspace / ".tidemark" / "sessions"
    if not sessions.is_dir():
        return []
    records: list[dict[str, object]] = []
    for folder in sorted(sessions.iterdir()):
        log = folder / "events.jsonl"
        if log.is_file():
            for line in log.read_text().splitlines():
                if line.strip():
                    records.append(json.loads(line))
    return records


def run_task(
    task: Task, root: Path, *, model: str | None = None, time_scale: float = 1.0
) -> EvalRow:
    """One task through the real CLI in a fresh repository under `root`."""
    workspace = root / task.name
    workspace.mkdir(parents=True)  # a fresh repository: an existing folder is an error
    task.setup(workspace)
    command = [sys.executable, "-m", "tidemark.cli", "run", "--workspace", str(workspace)]
    command += ["--provider", "local", "--yes", "--max-turns", str(task.max_turns)]
    if model:
        command += ["--model", model]
    command.append(task.prompt)
    cpu_before = _children_cpu()
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the time limit ends the run and whatever it started
    )
    try:
        out, err = process.communicate(timeout=task.time_limit_s * time_scale)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        code = None
    wall = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before
    events = _events(workspace)
    turns = sum(1 for e in events if e.get("event") == "turn_finished")
    calls = sum(1 for e in events if e.get("event") == "tool_call")
    finished = code == 0 and bool(out.strip())
    try:
        correct = finished and task.check(out, workspace)
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        correct = False
    errors = [line for line in err.splitlines() if line.startswith("tidemark: error:")]
    if code is None:
        error = f"killed at the time limit ({task.time_limit_s * time_scale:.0f} s)"
    else:
        error = errors[-1].removeprefix("tidemark: error: ") if errors else ""
    return EvalRow(
        task=task.name,
        kind=task.kind,
        finished=finished,
        correct=correct,
        turns=turns,
        tool_calls=calls,
        wall_s=round(wall, 1),
        cpu_s=round(cpu, 1),
        exit_code=code,
        answer=" ".join(out.split())[:200],
        error=error[:200],
    )


def _why(row: EvalRow) -> str:
    if row.correct:
        return ""
    if not row.finished:
        text = row.error or f"exit {row.exit_code}"
        for start, short in (
            ("the agent hit the turn cap", "turn cap"),
            ("the model ended turn", "empty reply"),
            ("the model kept repeating", "repeated calls"),
            ("killed at the time limit", "time limit"),
        ):
            if text.startswith(start):
                return short
        return text[:60]
    return "wrong: " + row.answer[:60]


def table(rows: list[EvalRow], label: str) -> str:
    """The results as a markdown table with totals."""
    lines = [
        f"Eval: {label}",
        "",
        "| task | kind | finished | correct | turns | tool calls | wall s | CPU s | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        note = _why(r).replace("|", "\\|")
        lines.append(
            f"| {r.task} | {r.kind} | {'yes' if r.finished else 'no'} | "
            f"{'yes' if r.correct else 'no'} | {r.turns} | {r.tool_calls} | "
            f"{r.wall_s:.0f} | {r.cpu_s:.0f} | {note} |"
        )
    lines.append(
        f"| **total** | | {sum(r.finished for r in rows)}/{len(rows)} | "
        f"**{sum(r.correct for r in rows)}/{len(rows)}** | {sum(r.turns for r in rows)} | "
        f"{sum(r.tool_calls for r in rows)} | {sum(r.wall_s for r in rows):.0f} | "
        f"{sum(r.cpu_s for r in rows):.0f} | |"
    )
    return "\n".join(lines) + "\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="the smoke subset: " + ", ".join(QUICK))
    p.add_argument(
        "--tasks", help="comma-separated task names: " + ", ".join(t.name for t in TASKS)
    )
    p.add_argument("--model", help="a GGUF file (default: the embedded default model)")
    p.add_argument("--label", help="what this run measures (default: the model)")
    p.add_argument("--out", type=Path, help="also write the table here, and OUT.json")
    p.add_argument("--keep", type=Path, help="keep the task repositories (and sessions) here")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every task's time limit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.tasks:
        try:
            tasks = [task_named(name.strip()) for name in args.tasks.split(",") if name.strip()]
        except KeyError as exc:
            print(f"benchmarks.eval: error: no task named {exc}", file=sys.stderr)
            return 2
    else:
        tasks = [task_named(n) for n in QUICK] if args.quick else list(TASKS)
    label = args.label or (Path(args.model).name if args.model else "default local model")
    started = os.getloadavg()[0]
    rows: list[EvalRow] = []
    with tempfile.TemporaryDirectory(prefix="tidemark-eval-") as temp:
        root = args.keep or Path(temp)
        for task in tasks:
            row = run_task(task, root, model=args.model, time_scale=args.time_scale)
            rows.append(row)
            mark = "correct" if row.correct else _why(row)
            print(
                f"{task.name}: {mark} ({row.turns} turns, {row.wall_s:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    # Wall times depend on what else the machine runs: the label says how busy it was.
    ended = os.getloadavg()[0]
    label += f" (load average {started:.1f} at start, {ended:.1f} at end; {os.cpu_count()} cores)"
    result = table(rows, label)
    print(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(result)
        args.out.with_suffix(".json").write_text(
            json.dumps({"label": label, "rows": [asdict(r) for r in rows]}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
