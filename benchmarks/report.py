"""Tables (markdown) and plots (PNG) from the benchmark's results."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.concurrency import ScaleRow
from benchmarks.overhead import EXTRA, OPERATIONS, OverheadRow, growth_exponent
from benchmarks.params import Params
from benchmarks.prices import PRICES_DATE, PRICES_SOURCE
from benchmarks.strategies import StrategyResult, percentile

__all__ = [
    "compaction_table",
    "overhead_table",
    "plots",
    "scale_table",
    "side_by_side",
    "targets",
]

BASELINE = "blocking"


def _ms(v: float) -> str:
    if v >= 10_000:
        return f"{v / 1000:,.1f} s"
    if v >= 100:
        return f"{v:,.0f} ms"
    if v >= 1:
        return f"{v:.1f} ms"
    return f"{v:.2f} ms"


def _ratio(v: float, base: float) -> str:
    if base == 0:
        return "–"
    r = v / base
    if r == 0:
        return "0×"
    if r < 0.01:
        return f"1/{1 / r:,.0f}"
    return f"{r:.2f}×"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def side_by_side(results: Sequence[StrategyResult], params: Params) -> str:
    """The main table: one column per strategy, figures and ratios to the blocking one."""
    base = next((r for r in results if r.name == BASELINE), None)

    def row(
        title: str,
        fn: Callable[[StrategyResult], float],
        fmt: Callable[[float], str],
        *,
        ratio: bool = True,
        per_compaction: bool = False,
    ) -> list[list[str]]:
        def shown(r: StrategyResult) -> bool:
            return not per_compaction or bool(r.compactions)

        out = [title, *(fmt(fn(r)) if shown(r) else "–" for r in results)]
        rows = [out]
        if ratio and base is not None:
            rows.append(
                ["  ÷ strategy 2", *(_ratio(fn(r), fn(base)) if shown(r) else "–" for r in results)]
            )
        return rows

    def stall(q: float) -> Callable[[StrategyResult], float]:
        return lambda r: percentile(r.stalls, q)

    def after(attr: str) -> Callable[[StrategyResult], float]:
        return lambda r: _median([getattr(c, attr) for c in r.compactions])

    def post_pre(r: StrategyResult) -> float:
        return _median([c.after_input / c.before_input for c in r.compactions if c.before_input])

    def num(v: float) -> str:
        return f"{v:,.0f}"

    rows: list[list[str]] = [
        ["outcome", *(r.outcome for r in results)],
        ["turns / tool calls", *(f"{r.turns} / {r.tool_calls}" for r in results)],
        ["compactions", *(str(len(r.compactions)) for r in results)],
    ]
    rows += row("stall at compaction p50", stall(50), _ms, per_compaction=True)
    rows += row("stall p99", stall(99), _ms, per_compaction=True)
    rows += row("stall max", stall(100), _ms, per_compaction=True)
    rows += row("blocking model calls at compaction", lambda r: r.blocking_calls, num, ratio=False)
    rows += row(
        "1st turn after compaction: input tokens (median)",
        after("after_input"),
        num,
        per_compaction=True,
    )
    rows += row(
        "1st turn after: uncached input (median)", after("after_uncached"), num, per_compaction=True
    )
    rows += row(
        "1st turn after: time to first token (median)",
        after("after_ttft_ms"),
        _ms,
        per_compaction=True,
    )
    rows += row(
        "last turn before: time to first token (median)",
        after("before_ttft_ms"),
        _ms,
        ratio=False,
        per_compaction=True,
    )
    rows += row(
        "post/pre input tokens (median)",
        post_pre,
        lambda v: f"{v:.2f}",
        ratio=False,
        per_compaction=True,
    )
    rows += fidelity_rows(results)
    rows += row("input tokens, uncached (all requests)", lambda r: r.total("input"), num)
    rows += row("cache writes", lambda r: r.total("cache_write"), num)
    rows += row("cache reads", lambda r: r.total("cache_read"), num)
    rows += row("output tokens", lambda r: r.total("output"), num)
    rows += row("requests: turn / compact / session-memory", lambda r: 0, lambda v: "", ratio=False)
    rows[-1] = [
        rows[-1][0],
        *(
            " / ".join(
                str(r.tokens.get(p, {}).get("requests", 0))
                for p in ("turn", "compact", "session-memory")
            )
            for r in results
        ),
    ]
    rows += row("estimated cost, all requests", lambda r: r.total_cost, lambda v: f"${v:.3f}")
    rows += row(
        "  of which summaries / memory updates",
        lambda r: r.cost_usd.get("compact", 0.0) + r.cost_usd.get("session-memory", 0.0),
        lambda v: f"${v:.3f}",
    )
    rows += row("invalid requests (strict server)", lambda r: len(r.invalid), num, ratio=False)
    rows += row(
        "memory lag at compaction (median, tokens)",
        lambda r: (
            _median([c.memory_lag_tokens or 0 for c in r.compactions])
            if r.name.startswith("tidemark")
            else 0
        ),
        lambda v: f"{v:,.0f}" if v else "–",
        ratio=False,
    )
    rows += row("session time, un-scaled", lambda r: r.wall_s, lambda v: f"{v:,.0f} s")
    header = ["", *(r.label for r in results)]
    return (
        f"Parameters: {params.describe()}. Prices: {PRICES_SOURCE} ({PRICES_DATE}).\n\n"
        + _table(header, rows)
    )


def missed_target(r: StrategyResult) -> int:
    """Compactions whose first request after was over half of --compact-at (server count)."""
    return sum(1 for c in r.compactions if c.after_input > r.compact_at // 2)


def turn_gaps(r: StrategyResult) -> list[int]:
    at = [c.after_turn_index for c in r.compactions if c.after_turn_index >= 0]
    return [b - a for a, b in itertools.pairwise(at)]


def retention(r: StrategyResult) -> list[float]:
    return [c.facts_kept / c.facts_seen for c in r.compactions if c.facts_seen]


def fidelity_rows(results: Sequence[StrategyResult]) -> list[list[str]]:
    """Faithfulness, every figure from the server's records."""

    def per(fn: Callable[[StrategyResult], str], *, compactions: bool = True) -> list[str]:
        return [fn(r) if r.compactions or not compactions else "–" for r in results]

    def ratio(r: StrategyResult) -> str:
        values = [c.after_input / r.compact_at for c in r.compactions if r.compact_at]
        return f"{_median(values):.2f} / {max(values, default=0):.2f}"

    def cache(r: StrategyResult) -> str:
        values = [c.after_cache_read / c.after_input for c in r.compactions if c.after_input]
        return f"{_median(values):.2f}"

    def kept(r: StrategyResult) -> str:
        values = retention(r)
        if not values:
            return "–"
        return f"{_median(values):.0%} / {min(values):.0%}"

    def end(r: StrategyResult) -> str:
        if not r.facts_seen_end:
            return "–"
        return f"{r.facts_kept_end / r.facts_seen_end:.0%} ({r.facts_kept_end}/{r.facts_seen_end})"

    return [
        [
            "results covered without being seen",
            *per(lambda r: str(r.unseen_covered), compactions=False),
        ],
        [
            "compactions that missed the target (> ½ --compact-at)",
            *per(lambda r: str(missed_target(r))),
        ],
        ["1st request after compaction ÷ --compact-at (median / max)", *per(ratio)],
        ["fewest turns between compactions", *per(lambda r: str(min(turn_gaps(r), default="–")))],
        ["cache reads ÷ input, 1st turn after compaction (median)", *per(cache)],
        ["planted facts kept after compaction (median / min)", *per(kept)],
        ["planted facts kept at the end", *per(end, compactions=False)],
    ]


def compaction_table(results: Sequence[StrategyResult]) -> str:
    rows: list[list[str]] = []
    for r in results:
        for k, c in enumerate(r.compactions, 1):
            rows.append(
                [
                    r.label,
                    str(k),
                    c.strategy + (" (early)" if c.trigger == "fresh_memory" else ""),
                    _ms(c.stall_ms),
                    _ms(c.measured_ms),
                    str(c.model_calls),
                    f"{c.before_input:,} → {c.after_input:,}",
                    f"{c.after_input / c.before_input:.2f}" if c.before_input else "–",
                    f"{_ms(c.before_ttft_ms)} → {_ms(c.after_ttft_ms)}",
                    f"{c.memory_lag_tokens:,}"
                    if r.name.startswith("tidemark") and c.memory_lag_tokens is not None
                    else "–",
                    str(c.tool_results_cleared) if c.tool_results_cleared is not None else "–",
                    f"{c.after_input / r.compact_at:.2f}" if r.compact_at else "–",
                    f"{c.after_cache_read / c.after_input:.2f}" if c.after_input else "–",
                    f"{c.facts_kept}/{c.facts_seen}" if c.facts_seen else "–",
                ]
            )
    header = [
        "strategy",
        "#",
        "kind",
        "stall (un-scaled)",
        "stall (measured)",
        "model calls",
        "input tokens: last turn before → first after",
        "post/pre",
        "TTFT before → after",
        "memory lag (tokens)",
        "results tombstoned",
        "1st after ÷ --compact-at",
        "cache reads ÷ input after",
        "planted facts kept",
    ]
    return _table(header, rows)


def overhead_table(rows: Sequence[OverheadRow]) -> str:
    names = [*OPERATIONS, *EXTRA]
    header = ["messages", *names, "per turn (weighted)"]
    body = [
        [
            f"{r.messages:,}",
            *(f"{r.ms[n] * 1000:,.1f} µs" for n in names),
            f"{r.per_turn_ms * 1000:,.1f} µs",
        ]
        for r in rows
    ]
    weights = ", ".join(f"{n} ×{c}" for n, c in OPERATIONS.items())
    return _table(header, body) + f"\n\nPer turn = {weights}.\n\n" + overhead_statement(rows)


def overhead_statement(rows: Sequence[OverheadRow]) -> str:
    if len(rows) < 2:
        return ""
    last = rows[-1]
    parts = [
        f"Per-turn runtime overhead at {last.messages:,} messages: "
        f"{last.per_turn_ms * 1000:,.1f} µs; from {rows[-2].messages:,} to {last.messages:,} "
        f"messages it grows as n^{growth_exponent(list(rows)):.2f} "
        "(n^0 = constant, n^1 = linear)."
    ]
    for name in EXTRA:
        parts.append(
            f"{name}: {last.ms[name]:,.2f} ms at {last.messages:,} messages, "
            f"n^{growth_exponent(list(rows), name):.2f}."
        )
    return " ".join(parts)


def scale_table(rows: Sequence[ScaleRow]) -> str:
    header = [
        "sessions",
        "finished",
        "turns",
        "compactions",
        "memory updates committed",
        "wall (s)",
        "turns/s",
        "CPU per turn",
        "commands' CPU",
        "lag p50",
        "lag p99",
        "lag max",
        "lag p99 during updates",
        "lag p99 while commands run / none run",
        "lag p99 / max incl. warm-up",
        "invalid",
    ]
    body = [
        [
            str(r.sessions),
            str(r.finished),
            str(r.turns),
            str(r.compactions),
            str(r.memory_updates),
            f"{r.wall_s:.1f}",
            f"{r.turns_per_s:.1f}",
            _ms(r.cpu_ms_per_turn),
            f"{r.tools_cpu_s:.1f} s",
            _ms(r.lag_p50_ms),
            _ms(r.lag_p99_ms),
            _ms(r.lag_max_ms),
            _ms(r.lag_p99_updating_ms),
            f"{_ms(r.lag_p99_commands_ms)} / {_ms(r.lag_p99_no_commands_ms)}",
            f"{_ms(r.lag_p99_all_ms)} / {_ms(r.lag_max_all_ms)}",
            str(len(r.invalid)),
        ]
        for r in rows
    ]
    scale = rows[0].time_scale if rows else 1.0
    note = (
        f"Time scale {scale} ({'real time' if scale == 1 else 'compressed: load is denser'}). "
        "Lag: how late a 5 ms sleep of a ticker task wakes up, steady state (after every "
        "session's first answer); 'during updates' = samples while a memory update was "
        "in flight; 'while commands run' = while some session's `bash` command (the "
        "session's pytest run) ran. Commands' CPU: the CPU time of those commands' "
        "processes, beside the sessions' own."
    )
    problems = sorted({e[:160] for r in rows for e in r.invalid})
    if problems:
        note += " Invalid requests: " + "; ".join(problems)
    return _table(header, body) + "\n\n" + note


def targets(
    results: Sequence[StrategyResult],
    overhead: Sequence[OverheadRow],
    scale: Sequence[ScaleRow],
) -> str:
    """The issue's targets, each with the measured figure and met / missed."""
    by = {r.name: r for r in results}
    lines: list[str] = []

    def check(name: str, ok: bool, figure: str) -> None:
        lines.append(f"| {name} | {figure} | {'met' if ok else '**missed**'} |")

    tm = by.get("tidemark")
    if tm is not None:
        p99 = percentile(tm.stalls, 99)
        check("tidemark stall p99 ≤ 10 ms", p99 <= 10, _ms(p99))
        check(
            "zero blocking model calls at compaction",
            tm.blocking_calls == 0,
            str(tm.blocking_calls),
        )
        check("zero invalid requests", not tm.invalid, str(len(tm.invalid)))
        check("0 results covered unseen", tm.unseen_covered == 0, str(tm.unseen_covered))
        check(
            "every 1st request after compaction ≤ ½ --compact-at (server count)",
            missed_target(tm) == 0,
            f"{missed_target(tm)} of {len(tm.compactions)} missed",
        )
        lags = [c.memory_lag_tokens for c in tm.compactions if c.memory_lag_tokens is not None]
        if lags and tm.compact_at:
            lag = percentile([float(x) for x in lags], 50)
            check(
                "memory lag at compaction (median) ≤ ¼ --compact-at",
                lag <= tm.compact_at / 4,
                f"{lag:,.0f} vs {tm.compact_at // 4:,}",
            )
        gap = min(turn_gaps(tm), default=None)
        check("≥ 3 turns between compactions", gap is None or gap >= 3, str(gap))
        blocking = by.get("blocking")
        if blocking is not None and retention(blocking) and retention(tm):
            ours, theirs = min(retention(tm)), min(retention(blocking))
            check(
                "planted-fact retention ≥ blocking summary's (worst compaction)",
                ours >= theirs,
                f"{ours:.0%} vs {theirs:.0%}",
            )
        for peer in ("blocking", "langchain"):
            other = by.get(peer)
            if other is None or not other.stalls or not tm.stalls:
                continue
            worst = max(tm.stalls) or 1e-9
            factor = percentile(other.stalls, 50) / worst
            check(
                f"≥ 1,000× shorter than {peer} (its p50 ÷ tidemark max)",
                factor >= 1000,
                f"{factor:,.0f}×",
            )
        base = by.get("blocking")
        if base is not None and base.total_cost:
            r = tm.total_cost / base.total_cost
            check("cost ≤ 1.1× blocking, caching on (all requests)", r <= 1.1, f"{r:.2f}×")
        rewrite = by.get("tidemark-rewrite")
        if rewrite is not None and base is not None and base.total_cost:
            r = rewrite.total_cost / base.total_cost
            check(
                "  same, whole rewrites (a model ignoring the instruction)", r <= 1.1, f"{r:.2f}×"
            )
    if overhead:
        last = overhead[-1]
        check(
            f"per-turn overhead < 1 ms at {last.messages:,} messages",
            last.per_turn_ms < 1,
            f"{last.per_turn_ms * 1000:,.1f} µs",
        )
    for row in scale:
        if row.sessions >= 100:
            check(
                "100 sessions: event-loop lag p99 < 20 ms", row.lag_p99_ms < 20, _ms(row.lag_p99_ms)
            )
    return "| target | measured | |\n|---|---|---|\n" + "\n".join(lines)


def plots(
    out: Path,
    results: Sequence[StrategyResult],
    overhead: Sequence[OverheadRow],
    scale: Sequence[ScaleRow],
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    with_stalls = [r for r in results if r.stalls]
    if with_stalls:
        fig, ax = plt.subplots(figsize=(8, 4))
        for i, r in enumerate(with_stalls):
            ax.scatter([i] * len(r.stalls), r.stalls, alpha=0.6)
        ax.set_yscale("log")
        ax.set_xticks(
            range(len(with_stalls)), [r.label for r in with_stalls], rotation=15, fontsize=7
        )
        ax.set_ylabel("stall at compaction (ms, un-scaled, log)")
        ax.set_title("What the user waits for at each compaction")
        fig.tight_layout()
        written.append(out / "stalls.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    if results:
        fig, ax = plt.subplots(figsize=(8, 4))
        kinds = [
            ("turn", "turns"),
            ("compact", "blocking summaries"),
            ("session-memory", "memory updates"),
        ]
        bottom = [0.0] * len(results)
        for key, label in kinds:
            values = [r.cost_usd.get(key, 0.0) for r in results]
            ax.bar(range(len(results)), values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_xticks(range(len(results)), [r.label for r in results], rotation=15, fontsize=7)
        ax.set_ylabel("estimated cost (USD)")
        ax.set_title("Cost of the same session, background updates included")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "cost.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    if overhead:
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = [r.messages for r in overhead]
        ax.plot(
            xs,
            [r.per_turn_ms for r in overhead],
            marker="o",
            linewidth=2,
            label="per turn (runtime)",
        )
        for name in EXTRA:
            ax.plot(xs, [r.ms[name] for r in overhead], marker=".", linestyle="--", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xlabel("messages in the context")
        ax.set_ylabel("ms (median)")
        ax.set_title("Runtime overhead as the transcript grows")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "overhead.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    if scale:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r.sessions for r in scale]
        ax.plot(xs, [r.lag_p50_ms for r in scale], marker="o", label="lag p50")
        ax.plot(xs, [r.lag_p99_ms for r in scale], marker="o", label="lag p99")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(20, color="grey", linewidth=0.8)
        ax.set_xlabel("concurrent sessions in one process")
        ax.set_ylabel("event-loop lag (ms)")
        ax2 = ax.twinx()
        ax2.plot(xs, [r.turns_per_s for r in scale], color="black", marker="s", label="turns/s")
        ax2.set_ylabel("turns per second")
        ax.legend(loc="upper left", fontsize=7)
        ax.set_title("Many sessions in one process")
        fig.tight_layout()
        written.append(out / "scale.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
