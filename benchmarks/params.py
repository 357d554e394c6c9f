"""The benchmark's parameters: latency model, session shape, windows; printed with every result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["Params", "full", "quick"]


@dataclass(frozen=True)
class Params:
    # Latency model of a large hosted model (un-scaled).
    ttft_base_s: float = 0.4
    ttft_per_input_token_s: float = 0.00004
    per_output_token_s: float = 0.015
    time_scale: float = 0.15  # every model sleep is multiplied by this; results are un-scaled
    # Output sizes: blocking summaries are whole ~3,000-token documents. tidemark's updates
    # write what changed (see `tests.support.sessions.changes_text`); the "whole rewrites"
    # variant writes a whole ~3,000-token document every time, like a model that ignores
    # the instruction.
    summary_tokens: int = 3000
    memory_tokens: int = 3000
    # The scripted session.
    files: int = 24
    lines_per_file: int = 300
    reads: int = 90
    parallel_every: int = 5
    # "reads": the file-reading session above; "writes": a write-heavy one (`writes` new
    # files of ~1,500 tokens each: large tool inputs that only stubs can shrink).
    session: str = "reads"
    writes: int = 80
    # Windows (tokens).
    context_window: int = 100_000
    compact_at: int = 67_000  # tidemark's default for this window: window - 33,000
    max_turns: int = 200
    # Runtime overhead and scale.
    overhead_sizes: tuple[int, ...] = (10, 100, 1_000, 10_000)
    scale_sessions: tuple[int, ...] = (1, 10, 100)
    scale_reads: int = 12
    scale_compact_at: int = 20_000
    scale_time_scale: float = 1.0  # real time: compressing time would overstate the CPU load
    strategies: tuple[str, ...] = field(
        default=(
            "none",
            "blocking",
            "langchain",
            "langchain-defaults",
            "tidemark",
            "tidemark-rewrite",
        )
    )
    quick: bool = False

    def describe(self) -> str:
        """One paragraph of the parameters, printed above every table."""
        return (
            f"latency model: TTFT {self.ttft_base_s * 1000:.0f} ms + "
            f"{self.ttft_per_input_token_s * 1000:.2f} ms/uncached input token, "
            f"{self.per_output_token_s * 1000:.0f} ms/output token; "
            f"time scale {self.time_scale} (times reported un-scaled); "
            f"summaries {self.summary_tokens} output tokens; memory updates write what changed "
            f"(whole rewrites: {self.memory_tokens}); "
            + (
                f"session: {self.reads} file reads (2 in parallel every {self.parallel_every}) "
                f"over {self.files} files of {self.lines_per_file} lines; "
                if self.session == "reads"
                else f"session: {self.writes} new files written, ~1,500 tokens each; "
            )
            + f"window {self.context_window:,}, compact at {self.compact_at:,}"
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def full() -> Params:
    return Params()


def quick() -> Params:
    """CI: fewer turns, a smaller window, 50x time compression, fewer concurrency levels."""
    return Params(
        time_scale=0.02,
        files=12,
        lines_per_file=200,
        reads=24,
        context_window=40_000,
        compact_at=30_000,
        max_turns=80,
        overhead_sizes=(10, 100, 1_000),
        scale_sessions=(1, 10),
        scale_reads=8,
        scale_time_scale=0.05,
        strategies=("none", "blocking", "langchain", "tidemark"),
        quick=True,
    )
