"""``python -m benchmarks``: the compaction benchmark, side by side, with tables and plots.

    python -m benchmarks            # full run (≤ 10 min on 2 cores): benchmarks/results/
    python -m benchmarks --quick    # CI run (≤ 60 s), writes to a temporary folder
    python -m benchmarks --show     # print the committed side-by-side table
    python -m benchmarks --strategies '' --no-overhead --sessions 1,10,100
                                    # the scale table alone (sessions per process, and a
                                    # batch on a local Ray instance)

Strategies (one scripted long coding session, each against the strict local Messages API
server with the latency model and prompt caching): no compaction, blocking full summary,
LangChain ``create_agent`` + ``SummarizationMiddleware``, tidemark session memory. Then the
runtime overhead per turn as the transcript grows, 1/10/100 sessions in one process, and a
batch of the same sessions on a local Ray instance (skipped, with the reason, without Ray).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import params as presets
from benchmarks.concurrency import RayRow, ScaleRow, ray_table, run_ray_batch, run_scale
from benchmarks.overhead import OverheadRow, measure_overhead
from benchmarks.params import Params
from benchmarks.report import (
    compaction_table,
    overhead_table,
    plots,
    scale_table,
    side_by_side,
    targets,
)
from benchmarks.strategies import LABELS, Compaction, StrategyResult, run_strategy

RESULTS = Path(__file__).resolve().parent / "results"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="CI mode: ≤ 60 s")
    p.add_argument("--time-scale", type=float, help="multiply every model sleep by this")
    p.add_argument(
        "--out",
        type=Path,
        help="results folder (default: benchmarks/results, or a temporary folder with --quick)",
    )
    p.add_argument(
        "--strategies", help="comma-separated subset of: " + ", ".join(LABELS) + " ('' for none)"
    )
    p.add_argument("--reads", type=int, help="file-reading turns in the session")
    p.add_argument(
        "--session",
        choices=("reads", "writes"),
        help="the scripted session: file reads (default) or a write-heavy one",
    )
    p.add_argument("--sessions", help="concurrency levels, e.g. 1,10,100 ('' to skip)")
    p.add_argument("--no-overhead", action="store_true", help="skip the overhead benchmark")
    p.add_argument(
        "--ray-tasks",
        type=int,
        help=f"tasks of the batch on local Ray (default {RAY_TASKS}, none with --quick; 0 skips)",
    )
    p.add_argument("--show", action="store_true", help="print the results table and exit")
    p.add_argument(
        "--render", action="store_true", help="rewrite tables and plots from OUT/raw.json"
    )
    return p.parse_args(argv)


def _params(args: argparse.Namespace) -> Params:
    params = presets.quick() if args.quick else presets.full()
    changes: dict[str, object] = {}
    if args.time_scale is not None:
        changes["time_scale"] = args.time_scale
    if args.strategies is not None:  # '' runs none (e.g. the scale table alone)
        changes["strategies"] = tuple(s.strip() for s in args.strategies.split(",") if s)
    if args.reads is not None:
        changes["reads"] = args.reads
    if args.session is not None:
        changes["session"] = args.session
    if args.sessions is not None:
        changes["scale_sessions"] = tuple(int(s) for s in args.sessions.split(",") if s)
    if args.no_overhead:
        changes["overhead_sizes"] = ()
    return dataclasses.replace(params, **changes)


# The batch on local Ray: two waves of the default 8 sessions per CPU on 2 CPUs (~3 min).
RAY_TASKS = 32
RAY_CPUS = 2


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def run(params: Params, out: Path, *, ray_tasks: int = 0) -> str:
    """Run everything, write tables, plots and raw figures to `out`; return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _log(f"benchmarks: {params.describe()}")
    results: list[StrategyResult] = []
    skipped: list[str] = []
    has_langchain = all(
        importlib.util.find_spec(m) is not None for m in ("langchain", "langchain_anthropic")
    )
    with tempfile.TemporaryDirectory(prefix="tidemark-bench-") as tmp:
        work = Path(tmp)
        for name in params.strategies:
            if name.startswith("langchain") and not has_langchain:
                skipped.append(
                    f"{LABELS[name]}: skipped, LangChain is not installed "
                    "(pip install '.[bench]'); no figures are given for it."
                )
                _log(f"benchmarks: {skipped[-1]}")
                continue
            t0 = time.monotonic()
            result = run_strategy(name, params, work)
            _log(
                f"benchmarks: {result.label}: {result.outcome}, {len(result.compactions)} "
                f"compactions, {time.monotonic() - t0:.0f} s"
            )
            if result.outcome in ("unavailable",) or result.outcome.startswith("exit"):
                skipped.append(f"{result.label}: could not run ({result.error}); no figures.")
                continue
            results.append(result)
        overhead: list[OverheadRow] = []
        if params.overhead_sizes:
            overhead = measure_overhead(params.overhead_sizes)
            _log(f"benchmarks: overhead measured up to {params.overhead_sizes[-1]:,} messages")
        scale: list[ScaleRow] = []
        for n in params.scale_sessions:
            t0 = time.monotonic()
            scale.append(run_scale(n, params, work))
            _log(
                f"benchmarks: {n} concurrent sessions, {time.monotonic() - t0:.0f} s, "
                f"load average {_load()}"
            )
        ray: RayRow | str | None = None
        if ray_tasks:
            t0 = time.monotonic()
            concurrency = min(ray_tasks, 8 * RAY_CPUS)
            ray = run_ray_batch(ray_tasks, concurrency, params, work, num_cpus=RAY_CPUS)
            _log(
                f"benchmarks: batch of {ray_tasks} tasks on local Ray, "
                f"{time.monotonic() - t0:.0f} s, load average {_load()}"
                + (f": {ray}" if isinstance(ray, str) else "")
            )
    summary = _write(
        out, params, results, skipped, overhead, scale, time.monotonic() - started, ray
    )
    return summary


def _write(
    out: Path,
    params: Params,
    results: list[StrategyResult],
    skipped: list[str],
    overhead: list[OverheadRow],
    scale: list[ScaleRow],
    elapsed: float,
    ray: RayRow | str | None = None,
    *,
    load: str | None = None,
) -> str:
    notes = "".join(f"\n- {s}" for s in skipped)
    summary = (
        "# Compaction benchmark: the same session, four strategies\n\n"
        f"Generated by `python -m benchmarks{' --quick' if params.quick else ''}"
        f"{' --session ' + params.session if params.session != 'reads' else ''}` in "
        f"{elapsed:.0f} s.\n\n"
        + side_by_side(results, params)
        + ("\n\nSkipped:" + notes if notes else "")
        + "\n\n## Targets\n\n"
        + targets(results, overhead, scale)
        + "\n"
    )
    (out / "summary.md").write_text(summary)
    (out / "compactions.md").write_text(
        "# Every compaction\n\n"
        "(early): tidemark compacted before --compact-at, at the last turn where memory and "
        "verbatim tail still held everything (waiting would have tombstoned results the "
        "memory had not seen).\n\n" + compaction_table(results) + "\n"
    )
    if overhead:
        (out / "overhead.md").write_text(
            "# Runtime overhead per turn (model and tools excluded)\n\n"
            + overhead_table(overhead)
            + "\n"
        )
    # The load when the run ended (a re-render keeps the measuring run's figure).
    load = load or _load()
    if scale or ray is not None:
        (out / "scale.md").write_text(
            "# Concurrent sessions in one process\n\n"
            + (scale_table(scale) if scale else "(not measured)")
            + (f"\n\n{ray_table(ray)}" if ray is not None else "")
            + f"\n\nMachine: {os.cpu_count()} CPUs, load average {load} at the end.\n"
        )
    raw = {
        "elapsed_s": round(elapsed, 1),
        "params": params.as_dict(),
        "strategies": [dataclasses.asdict(r) for r in results],
        "skipped": skipped,
        "overhead": [dataclasses.asdict(r) for r in overhead],
        "scale": [dataclasses.asdict(r) for r in scale],
        "ray": dataclasses.asdict(ray) if isinstance(ray, RayRow) else ray,
        "load_at_end": load,
    }
    (out / "raw.json").write_text(json.dumps(raw, indent=1, default=str))
    plots(out, results, overhead, scale)
    return summary


def render(out: Path) -> str:
    """Tables and plots again from the raw figures of an earlier run (no new measurements)."""
    raw = json.loads((out / "raw.json").read_text())
    p = raw["params"]
    for key in ("overhead_sizes", "scale_sessions", "strategies"):
        p[key] = tuple(p[key])
    params = Params(**p)
    results = [
        StrategyResult(**{**s, "compactions": [Compaction(**c) for c in s["compactions"]]})
        for s in raw["strategies"]
    ]
    overhead = [OverheadRow(**r) for r in raw["overhead"]]
    scale = [ScaleRow(**r) for r in raw["scale"]]
    ray_raw = raw.get("ray")
    ray = RayRow(**ray_raw) if isinstance(ray_raw, dict) else ray_raw
    return _write(
        out,
        params,
        results,
        raw["skipped"],
        overhead,
        scale,
        raw["elapsed_s"],
        ray,
        load=raw.get("load_at_end"),
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.render:
        print(render(args.out or RESULTS))
        return 0
    if args.show:
        path = (args.out or RESULTS) / "summary.md"
        if not path.exists():
            print(f"no results at {path}: run `python -m benchmarks` first", file=sys.stderr)
            return 2
        print(path.read_text())
        return 0
    params = _params(args)
    ray_tasks = args.ray_tasks if args.ray_tasks is not None else (0 if args.quick else RAY_TASKS)
    out = args.out or (
        Path(tempfile.mkdtemp(prefix="tidemark-bench-quick-")) if args.quick else RESULTS
    )
    print(run(params, out, ray_tasks=ray_tasks))
    _log(f"benchmarks: tables and plots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
