"""A session: transcript, context, memory and the task group its background updates run in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
from anyio.abc import TaskGroup

from tidemark.boundaries import last_safe_boundary
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
from tidemark.coverage import claimable_boundary, originals_needed, render_originals
from tidemark.errors import ModelError
from tidemark.events import EventLog, EventSubscriber
from tidemark.memory import MemoryDocument, MemoryStore, RuntimeRecord
from tidemark.messages import Message, ToolResultBlock, ToolUseBlock, Usage
from tidemark.model import Model, ModelRequest, ToolSpec
from tidemark.storage import read_jsonl
from tidemark.tokens import TokenCounter
from tidemark.tools.builtin.shell import command_failed
from tidemark.transcript import SessionPaths, TranscriptState, TranscriptWriter
from tidemark.updater import MemoryUpdater, Snapshot, UpdatePolicy

__all__ = ["MIN_TURNS_BETWEEN", "Session"]

# Turns between two compactions while the request still fits the window: each compaction
# rewrites the prompt cache, so one must buy many turns.
MIN_TURNS_BETWEEN = 3

_READS = {"read_file"}
_WRITES = {"write_file", "edit_file"}


class Session:
    """Owns one session's state. The turn loop appends; updates and compaction read it."""

    def __init__(
        self,
        *,
        paths: SessionPaths,
        model: Model,
        settings: Settings,
        system: str,
        tools: Sequence[ToolSpec],
        subscribers: Sequence[EventSubscriber] = (),
        restored: TranscriptState | None = None,
    ) -> None:
        self.paths = paths
        self.model = model
        self.settings = settings
        self.system = system
        self.tools = list(tools)
        self.events = EventLog(paths.session_id, paths.events, subscribers)
        self.counter = TokenCounter(model.estimate_tokens)
        self.preamble_tokens = self.counter.preamble(system, self.tools)
        self.transcript: list[Message] = []
        self.positions: dict[str, int] = {}
        self.cumulative: list[int] = []  # transcript tokens up to and including each message
        self.context: list[Message] = []
        # The runtime's own subsections take at most half a section each (as characters).
        self.record = RuntimeRecord(kept_chars=settings.memory_section_limit_tokens * 2)
        self.compactions = 0
        self.turns = 0
        self._compacted_turn: int | None = None  # the turn of the latest compaction
        # Real tokens per estimated token, from the latest response's usage: compaction
        # plans in estimates, so its budget is scaled to land under the real target.
        self.calibration = 1.0
        self._anchor: tuple[int, int] | None = None  # (usage tokens, context length then)
        self._tg: TaskGroup | None = None
        self.store = MemoryStore(paths.memory)
        self.updater = MemoryUpdater(
            model=model,
            settings=settings,
            store=self.store,
            events=self.events,
            counter=self.counter,
            system=system,
            tools=self.tools,
            record=self.record,
            on_commit=self._committed,
        )
        self.policy = UpdatePolicy(
            init_tokens=settings.memory_init_tokens,
            update_tokens=settings.memory_update_tokens,
            tool_calls=settings.memory_tool_calls,
        )
        self._writer = TranscriptWriter(paths.transcript)
        if restored is not None:
            self._restore(restored)

    # -- transcript and context -------------------------------------------------------

    def add(self, message: Message) -> None:
        """Append to transcript (on disk first) and context."""
        self._writer.message(message)
        self._index(message)
        self.context.append(message)
        if message.is_users_own:
            self.record.user_messages.append(message.text)

    def _index(self, message: Message) -> None:
        self.positions[message.id] = len(self.transcript)
        self.transcript.append(message)
        previous = self.cumulative[-1] if self.cumulative else 0
        self.cumulative.append(previous + self.counter.message(message))

    @property
    def transcript_tokens(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0

    def note_usage(self, usage: Usage) -> None:
        """The latest response's usage anchors the context size (the rest is estimated)."""
        self._anchor = (usage.context_tokens, len(self.context))

    def _calibrate(self) -> float:
        """Real tokens per estimated token, from the latest usage (kept until a newer one).

        Computed when compaction or an update needs it, not on every turn: it sums the
        estimate of the whole context the usage was measured on.
        """
        if self._anchor is not None and self._anchor[1] <= len(self.context):
            tokens, length = self._anchor
            estimated = self.preamble_tokens + self.counter.messages(self.context[:length])
            if tokens > 0 and estimated > 0:
                self.calibration = min(3.0, max(0.5, tokens / estimated))
        return self.calibration

    def context_tokens(self) -> int:
        """Estimated input tokens of the next request."""
        if self._anchor is not None and self._anchor[1] <= len(self.context):
            tokens, length = self._anchor
            return tokens + self.counter.messages(self.context[length:])
        return self.preamble_tokens + self.counter.messages(self.context)

    def note_tool_call(
        self, name: str, tool_input: dict[str, Any], result: ToolResultBlock
    ) -> None:
        self.policy.tool_calls_since += 1
        self._note_files(name, tool_input, result)

    def _note_files(self, name: str, tool_input: dict[str, Any], result: ToolResultBlock) -> None:
        path = tool_input.get("path")
        if isinstance(path, str) and not result.is_error and name in _READS | _WRITES:
            self.record.note_file(path, modified=name in _WRITES)
        if result.is_error or (name == "bash" and command_failed(result.content)):
            self.record.note_error(f"{name}: {result.content}")

    def request(self, max_tokens: int, *, must_act: bool = False) -> ModelRequest:
        previous_end = next(
            (
                i - 1
                for i in range(len(self.context) - 1, 0, -1)
                if self.context[i].role == "assistant"
            ),
            None,
        )
        return ModelRequest(
            system=self.system,
            messages=list(self.context),
            tools=self.tools,
            max_tokens=max_tokens,
            purpose="turn",
            cache_breakpoint=previous_end,
            tool_choice="any" if must_act else "auto",
        )

    # -- memory updates -----------------------------------------------------------------

    def bind(self, tg: TaskGroup) -> None:
        self._tg = tg

    def memory_lag_tokens(self) -> int:
        covers = self.updater.document.covers_message_id
        position = self.positions.get(covers) if covers else None
        covered = self.cumulative[position] if position is not None else 0
        return self.transcript_tokens - covered

    def schedule_update(self) -> None:
        """Between turns: start a background update when the policy says it is due."""
        if self.updater.running or self._tg is None:
            return
        last = next((m for m in reversed(self.context) if m.role == "assistant"), None)
        if (
            self.policy.due(
                context_tokens=self.context_tokens(),
                transcript_tokens=self.transcript_tokens,
                paused=last is not None and not last.tool_uses,
            )
            and self.updater.may_start()
        ):
            self._start_update()

    async def settle_updates(self) -> None:
        """At a normal finish: start a due update, then let it (and one in flight) commit.

        The whole wait is bounded by one update's timeout. Cancelling the caller (Ctrl-C)
        cancels the update, whose commit is shielded: the memory is the old file or the new.
        """
        self.schedule_update()
        if self.updater.running:
            self.events.emit("notice", text="saving session memory (Ctrl-C skips)")
            with anyio.move_on_after(self.settings.memory_update_timeout):
                await self.updater.settle()

    def _start_update(self) -> None:
        assert self._tg is not None
        j = last_safe_boundary(self.context)
        if j is None or self.context[j].id not in self.positions:
            return
        boundary = self.context[j]
        position = self.positions[boundary.id]
        covers = self.updater.document.covers_message_id
        covered = self.positions.get(covers, -1) if covers else -1
        if position <= covered:
            return
        room = self.settings.context_window - self.settings.memory_update_output_tokens
        prefix = self.preamble_tokens + self.counter.messages(self.context[: j + 1])
        needed = prefix + 2 * self.settings.memory_limit_tokens  # the memory, in the instruction
        if needed * self._calibrate() > room:
            return  # would not fit the window; the next compaction makes room
        # What the window leaves beside the prefix and the instruction (with today's memory).
        instruction = self.counter.estimate(self.updater.document.render(self.record)) + 1_000
        claim = self._claim(j, covered, room=int(room / self.calibration) - prefix - instruction)
        if claim is None:
            return
        position, originals = claim
        snapshot = Snapshot(
            messages=self.context[: j + 1],
            boundary_id=self.transcript[position].id,
            boundary_index=position,
            from_message_id=self.transcript[covered + 1].id,
            context_tokens=self.context_tokens(),
            lag_tokens=self.memory_lag_tokens(),
            originals=originals,
        )
        self.policy.taken(self.cumulative[position])
        update = self.updater.begin()
        self._tg.start_soon(self._run_update, update, snapshot)

    def _claim(self, j: int, covered: int, *, room: int) -> tuple[int, str] | None:
        """How far an update over ``context[:j + 1]`` may move the memory's boundary.

        Content compaction shortened in the uncovered part goes along in full (after the
        shared prefix, so the cache still holds); what does not fit is not claimed.
        Returns (transcript position of the new boundary, the originals as text) or None.
        """
        prefix = self.context[: j + 1]
        last = self.positions[prefix[-1].id]
        needed = originals_needed(
            prefix, self.transcript, self.positions, first=covered + 1, last=last
        )
        position, carried = claimable_boundary(
            self.transcript,
            needed,
            covered=covered,
            boundary=last,
            room=room,
            estimate=self.counter.estimate,
        )
        if position is None:
            return None
        return position, render_originals(carried, self.transcript)

    async def _run_update(self, update: int, snapshot: Snapshot) -> None:
        await self.updater.run(update, snapshot)
        # Keep up, unless updates are failing (the backoff decides when to try again).
        hold = self.updater.failures > 0 or self.updater.running
        if self.policy.behind(self.transcript_tokens) and not hold:
            self._start_update()  # the session outran the memory: keep up

    def _committed(self, document: MemoryDocument, snapshot: Snapshot) -> None:
        self.events.emit(
            "summary_boundary",
            message_id=snapshot.boundary_id,
            message_index=snapshot.boundary_index,
            context_tokens=snapshot.context_tokens,
            memory_lag_tokens=self.memory_lag_tokens(),
        )

    # -- compaction ------------------------------------------------------------------------

    def budget(self) -> CompactionBudget:
        """The contract's figures, in estimated tokens (scaled by the calibration)."""
        s = self.settings

        def est(tokens: int) -> int:
            return int(tokens / self.calibration)

        return CompactionBudget(
            # 5% below the target: estimates of single messages vary around the calibration.
            target=est(s.compaction_target * 19 // 20),
            limit=est(s.context_window - s.max_output_tokens),
            preamble=self.preamble_tokens,
            tail_min=est(s.tail_min_tokens),
            tail_max=est(s.tail_max_tokens),
            tail_covered_max=est(s.tail_covered_max_tokens),
        )

    async def compact_if_needed(self, *, force: bool = False) -> CompactionResult | None:
        """Shrink the context when the next request would pass --compact-at.

        A compaction is committed only when it reaches the target (or as close as the
        context allows, under the threshold), and not within `MIN_TURNS_BETWEEN` turns of
        the previous one while the request still fits the window: each one rewrites the
        prompt cache.
        """
        pre = self.context_tokens()
        fits_window = pre <= self.settings.context_window - self.settings.max_output_tokens
        if not force:
            if pre <= self.settings.compaction_threshold:
                return None
            recent = self._compacted_turn is not None and (
                self.turns - self._compacted_turn < MIN_TURNS_BETWEEN
            )
            if recent and fits_window:
                return None
        started = anyio.current_time()
        waited = await self.updater.wait_idle(self.settings.compaction_wait_ms / 1000)
        self._calibrate()
        budget = self.budget()
        result = self._instant(budget, force=force)
        if result is None and fits_window and not force:
            return None  # nothing reaches the target and the request still fits: wait
        if result is None:
            self.events.emit(
                "notice",
                text="compacting: no session memory fits; asking the model for a full summary "
                "(this blocks)",
            )
            try:
                result = await full_summary(
                    self.context,
                    self.transcript,
                    self.positions,
                    model=self.model,
                    system=self.system,
                    tools=self.tools,
                    max_tokens=self.settings.memory_update_output_tokens,
                    counter=self.counter,
                    budget=budget,
                )
            except ModelError as exc:
                # A summary that came back unusable was still paid for: its usage goes along.
                usage = exc.usage if isinstance(exc, UnusableSummaryError) else None
                self.events.emit(
                    "compaction_failed",
                    strategy="full_summary",
                    error=str(exc),
                    **_usage_keys(usage),
                )
                return None
        self.context = result.context
        self._anchor = None
        self.compactions += 1
        self._compacted_turn = self.turns
        self._writer.context(self.context, result.summary)
        self.events.emit(
            "compaction",
            strategy=result.strategy,
            pre_tokens=pre,
            post_tokens=round(result.post_tokens * self.calibration),
            messages_dropped=result.messages_dropped,
            messages_kept=result.messages_kept,
            boundary_message_id=result.boundary_message_id,
            duration_ms=round((anyio.current_time() - started) * 1000, 3),
            waited_for_update_ms=round(waited, 3),
            tool_results_cleared=result.tool_results_cleared,
            stubs=result.stubs,
            memory_lag_tokens=self.memory_lag_tokens(),
            threshold=self.settings.compaction_threshold,
            target=self.settings.compaction_target,
            **_usage_keys(result.usage),
        )
        return result

    def _instant(self, budget: CompactionBudget, *, force: bool = False) -> CompactionResult | None:
        """The best instant compaction that may be committed, or None."""
        ceiling = int(self.settings.compaction_threshold / self.calibration)
        candidates: list[CompactionResult] = []
        document = self.updater.document
        if not document.is_empty and document.covers_message_id in self.positions:
            result = compact_with_memory(
                self.context,
                self.transcript,
                self.positions,
                memory_text=document.render(self.record),
                covers_message_id=document.covers_message_id or "",
                counter=self.counter,
                budget=budget,
            )
            if result is not None:
                if result.post_tokens <= budget.target:
                    return result
                candidates.append(result)
        candidates.append(clear_tool_results(self.context, counter=self.counter, budget=budget))
        fitting = [r for r in candidates if r.post_tokens <= budget.limit]
        if force:
            # The window rejected the request: anything that frees tokens and fits will do.
            current = self.preamble_tokens + self.counter.messages(self.context)
            fitting = [r for r in fitting if r.post_tokens < current]
        else:
            fitting = [r for r in fitting if reaches_target(r, budget, ceiling)]
        return min(fitting, key=lambda r: r.post_tokens, default=None)

    # -- resume and close --------------------------------------------------------------------

    def _restore(self, state: TranscriptState) -> None:
        uses: dict[str, ToolUseBlock] = {}
        for message in state.messages:
            self._index(message)
            if message.is_users_own:
                self.record.user_messages.append(message.text)
            for use in message.tool_uses:
                uses[use.id] = use
            for result in message.tool_results:
                use = uses.get(result.tool_use_id)
                if use is not None:
                    self._note_files(use.name, use.input, result)
        numbers = [
            e["update"] for e in read_jsonl(self.paths.events) if isinstance(e.get("update"), int)
        ]
        self.updater.updates = max([self.updater.updates, *numbers])
        self.context = list(state.context)
        self.compactions = state.compactions
        document = self.updater.document
        if document.covers_message_id in self.positions:
            self.policy.initialized = True
            self.policy.snapshot_tokens = self.cumulative[
                self.positions[document.covers_message_id or ""]
            ]

    def close(self) -> None:
        self._writer.close()
        self.events.close()


def _usage_keys(usage: Usage | None) -> dict[str, int]:
    """A request's usage as event keys (``input_tokens`` includes the cached parts)."""
    if usage is None:
        return {}
    return {
        "input_tokens": usage.total_input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
    }
