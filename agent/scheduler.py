"""When background memory updates start, what each may claim, and chaining them.

One update at a time, in the session's task group. An update's snapshot is the context the
next turn sends (same cached prefix) up to its last safe boundary; content compaction
shortened there goes along in full (`tidemark.coverage`), and what does not fit is not
claimed. When the session keeps outrunning the memory, the next update starts as soon as
one commits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio
from anyio.abc import TaskGroup

from tidemark.boundaries import last_safe_boundary
from tidemark.config import Settings
from tidemark.coverage import claimable_boundary, originals_needed, render_originals
from tidemark.events import EventLog
from tidemark.memory import MemoryDocument
from tidemark.messages import Message
from tidemark.token_meter import TokenMeter
from tidemark.transcript_index import TranscriptIndex
from tidemark.updater import MemoryUpdater, Snapshot, UpdatePolicy

__all__ = ["MemoryScheduler"]


class MemoryScheduler:
    def __init__(
        self,
        *,
        updater: MemoryUpdater,
        settings: Settings,
        index: TranscriptIndex,
        meter: TokenMeter,
        events: EventLog,
        context: Callable[[], Sequence[Message]],
    ) -> None:
        """`context` gives the session's current context (compaction replaces it)."""
        self.updater = updater
        self.settings = settings
        self.index = index
        self.meter = meter
        self.events = events
        self.policy = UpdatePolicy(
            init_tokens=settings.memory_init_tokens,
            update_tokens=settings.memory_update_tokens,
            tool_calls=settings.memory_tool_calls,
        )
        self.enabled = True  # off when no compaction strategy uses the memory
        self._tg: TaskGroup | None = None
        self._context = context

    def bind(self, tg: TaskGroup) -> None:
        self._tg = tg

    def lag_tokens(self) -> int:
        """Transcript tokens the memory does not cover yet."""
        return self.index.tokens_after(self.updater.document.covers_message_id)

    def schedule(self) -> None:
        """Between turns: start a background update when the policy says it is due."""
        if not self.enabled or self.updater.running or self._tg is None:
            return
        context = self._context()
        last = next((m for m in reversed(context) if m.role == "assistant"), None)
        if (
            self.policy.due(
                context_tokens=self.meter.context_tokens(context),
                transcript_tokens=self.index.tokens,
                paused=last is not None and not last.tool_uses,
            )
            and self.updater.may_start()
        ):
            self._start(context)

    async def settle(self) -> None:
        """At a normal finish: start a due update, then let it (and one in flight) commit.

        The whole wait is bounded by one update's timeout. Cancelling the caller (Ctrl-C)
        cancels the update, whose commit is shielded: the memory is the old file or the new.
        """
        self.schedule()
        if self.updater.running:
            self.events.emit("notice", text="saving session memory (Ctrl-C skips)")
            with anyio.move_on_after(self.settings.memory_update_timeout):
                await self.updater.settle()

    def restored(self) -> None:
        """After resume: the policy counts growth from what the memory covers."""
        covers = self.updater.document.covers_message_id
        if covers in self.index.positions:
            self.policy.initialized = True
            self.policy.snapshot_tokens = self.index.tokens_through(covers)

    def _start(self, context: Sequence[Message]) -> None:
        assert self._tg is not None
        index = self.index
        j = last_safe_boundary(context)
        if j is None or context[j].id not in index.positions:
            return
        position = index.positions[context[j].id]
        covers = self.updater.document.covers_message_id
        covered = index.positions.get(covers, -1) if covers else -1
        if position <= covered:
            return
        settings = self.settings
        room = settings.context_window - settings.memory_update_output_tokens
        counter = self.meter.counter
        prefix = self.meter.preamble_tokens + counter.messages(context[: j + 1])
        needed = prefix + 2 * settings.memory_limit_tokens  # the memory, in the instruction
        if needed * self.meter.calibrate(context) > room:
            return  # would not fit the window; the next compaction makes room
        # What the window leaves beside the prefix and the instruction (with today's memory).
        instruction = counter.estimate(self.updater.document.render(self.updater.record)) + 1_000
        free = int(room / self.meter.calibration) - prefix - instruction
        claim = self._claim(context, j, covered, room=free)
        if claim is None:
            return
        position, originals = claim
        snapshot = Snapshot(
            messages=context[: j + 1],
            boundary_id=index.messages[position].id,
            boundary_index=position,
            from_message_id=index.messages[covered + 1].id,
            context_tokens=self.meter.context_tokens(context),
            lag_tokens=self.lag_tokens(),
            originals=originals,
        )
        self.policy.taken(index.cumulative[position])
        update = self.updater.begin()
        self._tg.start_soon(self._run, update, snapshot)

    def _claim(
        self, context: Sequence[Message], j: int, covered: int, *, room: int
    ) -> tuple[int, str] | None:
        """How far an update over ``context[:j + 1]`` may move the memory's boundary.

        Content compaction shortened in the uncovered part goes along in full (after the
        shared prefix, so the cache still holds); what does not fit is not claimed.
        Returns (transcript position of the new boundary, the originals as text) or None.
        """
        index = self.index
        prefix = context[: j + 1]
        last = index.positions[prefix[-1].id]
        needed = originals_needed(
            prefix, index.messages, index.positions, first=covered + 1, last=last
        )
        position, carried = claimable_boundary(
            index.messages,
            needed,
            covered=covered,
            boundary=last,
            room=room,
            estimate=self.meter.counter.estimate,
        )
        if position is None:
            return None
        return position, render_originals(carried, index.messages)

    async def _run(self, update: int, snapshot: Snapshot) -> None:
        await self.updater.run(update, snapshot)
        # Keep up, unless updates are failing (the backoff decides when to try again).
        hold = self.updater.failures > 0 or self.updater.running
        if self.policy.behind(self.index.tokens) and not hold:
            self._start(self._context())  # the session outran the memory: keep up

    def committed(self, document: MemoryDocument, snapshot: Snapshot) -> None:
        self.events.emit(
            "summary_boundary",
            message_id=snapshot.boundary_id,
            message_index=snapshot.boundary_index,
            context_tokens=snapshot.context_tokens,
            memory_lag_tokens=self.lag_tokens(),
        )
