"""Deciding and committing nothing: which compaction to make, from a sequence of strategies.

The contract's ladder is the default: ``session_memory`` (the memory replaces what it
covers), ``tool_result_clearing`` (tombstones and stubs before any memory exists), then
``full_summary`` (a blocking model call, only when nothing instant fits the window). A
caller or a benchmark passes another sequence: ``("full_summary",)`` is the classic blocking
summary, ``()`` never compacts. Memory updates run only when ``session_memory`` is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tidemark.compaction import (
    CompactionBudget,
    CompactionResult,
    UnusableSummaryError,
    clear_tool_results,
    compact_with_memory,
    full_summary,
    reaches_target,
)
from tidemark.config import Settings
from tidemark.errors import ModelError
from tidemark.events import EventLog
from tidemark.memory import RuntimeRecord
from tidemark.messages import Message
from tidemark.model import Model, ToolSpec
from tidemark.token_meter import TokenMeter
from tidemark.transcript_index import TranscriptIndex
from tidemark.updater import MemoryUpdater

__all__ = ["DEFAULT_STRATEGIES", "MIN_TURNS_BETWEEN", "Compactor", "Strategy"]

Strategy = Literal["session_memory", "tool_result_clearing", "full_summary"]
DEFAULT_STRATEGIES: tuple[Strategy, ...] = (
    "session_memory",
    "tool_result_clearing",
    "full_summary",
)

# Turns between two compactions while the request still fits the window: each compaction
# rewrites the prompt cache, so one must buy many turns.
MIN_TURNS_BETWEEN = 3


@dataclass
class Compactor:
    """Chooses compactions: at the threshold (`due`, `compact`), or before it (`ahead`) when
    the one at the threshold would tombstone what the memory has not seen."""

    settings: Settings
    index: TranscriptIndex
    meter: TokenMeter
    updater: MemoryUpdater
    record: RuntimeRecord
    events: EventLog
    model: Model
    system: str
    tools: Sequence[ToolSpec]
    strategies: Sequence[Strategy] = DEFAULT_STRATEGIES
    # The memory version (what it covers) `ahead` found no lossless compaction for.
    _weighed_ahead: str | None = field(default=None, init=False)
    # (memory version, user messages) -> about what the summary message takes
    _summary_size: tuple[tuple[str | None, int], int] | None = field(default=None, init=False)

    @property
    def uses_memory(self) -> bool:
        return "session_memory" in self.strategies

    def due(self, pre: int, *, turns_since: int | None, force: bool) -> bool:
        """Whether to compact now: over the threshold, and not right after the last one
        while the request still fits the window (`force`: the window rejected it)."""
        if force:
            return bool(self.strategies)
        if not self.strategies or pre <= self.settings.compaction_threshold:
            return False
        recent = turns_since is not None and turns_since < MIN_TURNS_BETWEEN
        return not (recent and self.fits_window(pre))

    def fits_window(self, tokens: int) -> bool:
        return tokens <= self.settings.context_window - self.settings.max_output_tokens

    async def compact(
        self, context: Sequence[Message], pre: int, *, force: bool
    ) -> tuple[CompactionResult | None, float]:
        """The compaction to commit (or None) and the ms waited for an update in flight."""
        waited = 0.0
        if self.uses_memory:
            waited = await self.updater.wait_idle(self.settings.compaction_wait_ms / 1000)
        self.meter.calibrate(context)
        budget = self.meter.budget(self.settings)
        result = self.instant(context, budget, force=force)
        if result is None and self.fits_window(pre) and not force:
            return None, waited  # nothing reaches the target and the request still fits: wait
        if result is None and "full_summary" in self.strategies:
            result = await self._blocking(context, budget)
        return result, waited

    def instant(
        self, context: Sequence[Message], budget: CompactionBudget, *, force: bool = False
    ) -> CompactionResult | None:
        """The best instant compaction that may be committed, or None."""
        ceiling = int(self.settings.compaction_threshold / self.meter.calibration)
        candidates: list[CompactionResult] = []
        document = self.updater.document
        index = self.index
        if (
            "session_memory" in self.strategies
            and not document.is_empty
            and document.covers_message_id in index.positions
        ):
            result = compact_with_memory(
                context,
                index.messages,
                index.positions,
                memory_text=document.render(self.record),
                covers_message_id=document.covers_message_id or "",
                counter=self.meter.counter,
                budget=budget,
            )
            if result is not None:
                if result.post_tokens <= budget.target:
                    return result
                candidates.append(result)
        if "tool_result_clearing" in self.strategies:
            candidates.append(
                clear_tool_results(context, counter=self.meter.counter, budget=budget)
            )
        fitting = [r for r in candidates if r.post_tokens <= budget.limit]
        if force:
            # The window rejected the request: anything that frees tokens and fits will do.
            current = self.meter.preamble_tokens + self.meter.counter.messages(context)
            fitting = [r for r in fitting if r.post_tokens < current]
        else:
            fitting = [r for r in fitting if reaches_target(r, budget, ceiling)]
        return min(fitting, key=lambda r: r.post_tokens, default=None)

    def ahead(
        self,
        context: Sequence[Message],
        pre: int,
        *,
        turns_since: int | None,
        lag_tokens: int,
        turn_growth: int,
    ) -> CompactionResult | None:
        """A compaction before the threshold that loses nothing, when waiting would.

        What the memory does not cover stays verbatim in the kept tail, as far as the target
        leaves room beside the memory; beyond that, compaction tombstones results the memory
        has not seen. When the compaction at the threshold would have to (the memory lags by
        `lag_tokens` plus the growth until then) and so would one after the next turn
        (`turn_growth`: the largest recent turn, estimated like the lag), this is the last
        moment a compaction keeps everything: take it (had the memory committed in time,
        the lag would be smaller). Never within `MIN_TURNS_BETWEEN` turns of the previous
        compaction, only when it frees a quarter of the threshold, and weighed once per
        memory version when no compaction now keeps everything.
        """
        threshold = self.settings.compaction_threshold
        document = self.updater.document
        version = document.covers_message_id
        if (
            not self.uses_memory
            or document.is_empty
            or pre > threshold
            or (turns_since is not None and turns_since < MIN_TURNS_BETWEEN)
            or version == self._weighed_ahead
        ):
            return None
        calibration = self.meter.calibration
        budget = self.meter.budget(self.settings)
        fixed = budget.preamble + self._summary_tokens()
        room = budget.target - fixed  # for what the memory does not cover
        if lag_tokens + (threshold - pre) / calibration <= room:
            return None  # the compaction at the threshold keeps everything
        if lag_tokens + turn_growth <= room:
            return None  # so does one after the next turn: wait, the memory may commit first
        self._weighed_ahead = version  # later turns only lag more, until the next commit
        self.meter.calibrate(context)
        budget = self.meter.budget(self.settings)
        result = self.instant(context, budget)
        if (
            result is None
            or result.strategy != "session_memory"
            or result.tool_results_cleared
            or result.stubs
            or result.post_tokens > budget.target
            or (pre - threshold // 4) / self.meter.calibration < result.post_tokens
        ):
            return None
        return result

    def _summary_tokens(self) -> int:
        """About what the summary message takes: the memory and the user's own messages
        (rendered once per memory version and count of user messages)."""
        key = (self.updater.document.covers_message_id, len(self.record.user_messages))
        if self._summary_size is None or self._summary_size[0] != key:
            text = self.updater.document.render(self.record)
            size = self.meter.counter.estimate(text + "\n".join(self.record.user_messages))
            self._summary_size = (key, size + 100)
        return self._summary_size[1]

    async def _blocking(
        self, context: Sequence[Message], budget: CompactionBudget
    ) -> CompactionResult | None:
        self.events.emit(
            "notice",
            text="compacting: no session memory fits; asking the model for a full summary "
            "(this blocks)",
        )
        try:
            return await full_summary(
                context,
                self.index.messages,
                self.index.positions,
                model=self.model,
                system=self.system,
                tools=self.tools,
                max_tokens=self.settings.memory_update_output_tokens,
                counter=self.meter.counter,
                budget=budget,
            )
        except ModelError as exc:
            # A summary that came back unusable was still paid for: its usage goes along.
            usage = exc.usage.event_keys() if isinstance(exc, UnusableSummaryError) else {}
            self.events.emit("compaction_failed", strategy="full_summary", error=str(exc), **usage)
            return None
