"""A session: the facade over its parts, and the task group its background updates run in.

The parts, each in its own module: the transcript index (`tidemark.transcript_index`), the
token meter (`tidemark.token_meter`), the memory scheduler (`tidemark.scheduler`) and the
compactor (`tidemark.compactor`). The session owns the context (what the next request
sends), appends to transcript and context, and commits what the compactor chooses.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from anyio.abc import TaskGroup

from tidemark.compaction import CompactionBudget, CompactionResult
from tidemark.compactor import DEFAULT_STRATEGIES, MIN_TURNS_BETWEEN, Compactor, Strategy
from tidemark.config import Settings
from tidemark.events import EventLog, EventSubscriber
from tidemark.memory import MemoryStore, RuntimeRecord
from tidemark.messages import Message, ToolResultBlock, ToolUseBlock, Usage
from tidemark.model import Model, ModelRequest, ToolSpec
from tidemark.scheduler import MemoryScheduler
from tidemark.storage import read_jsonl
from tidemark.token_meter import TokenMeter
from tidemark.tokens import TokenCounter
from tidemark.tools import FileAccess
from tidemark.tools.builtin.shell import command_failed
from tidemark.transcript import SessionPaths, TranscriptState, TranscriptWriter
from tidemark.transcript_index import TranscriptIndex
from tidemark.updater import MemoryUpdater, UpdatePolicy

__all__ = ["MIN_TURNS_BETWEEN", "Session"]


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
        strategies: Sequence[Strategy] = DEFAULT_STRATEGIES,
        file_tools: Mapping[str, FileAccess] | None = None,
    ) -> None:
        """`file_tools`: tool name -> what it does to the file its `path` input names
        (from each tool's `files` metadata), for the memory's list of files touched."""
        self.paths = paths
        self.model = model
        self.settings = settings
        self.system = system
        self.tools = list(tools)
        self.file_tools = dict(file_tools or {})
        self.events = EventLog(paths.session_id, paths.events, subscribers)
        self.counter = TokenCounter(model.estimate_tokens)
        self.index = TranscriptIndex(self.counter.message)
        self.meter = TokenMeter(self.counter, self.counter.preamble(system, self.tools))
        self.context: list[Message] = []
        # The runtime's own subsections take at most half a section each (as characters).
        self.record = RuntimeRecord(kept_chars=settings.memory_section_limit_tokens * 2)
        self.compactions = 0
        self.turns = 0
        self._compacted_turn: int | None = None  # the turn of the latest compaction
        # How much the transcript grew between the latest checks for compaction (turns).
        self._turn_growth: deque[int] = deque(maxlen=20)
        self._tokens_seen = 0
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
            on_commit=lambda document, snapshot: self.scheduler.committed(document, snapshot),
        )
        self.scheduler = MemoryScheduler(
            updater=self.updater,
            settings=settings,
            index=self.index,
            meter=self.meter,
            events=self.events,
            context=lambda: self.context,
        )
        self.compactor = Compactor(
            settings=settings,
            index=self.index,
            meter=self.meter,
            updater=self.updater,
            record=self.record,
            events=self.events,
            model=model,
            system=system,
            tools=self.tools,
            strategies=tuple(strategies),
        )
        self.scheduler.enabled = self.compactor.uses_memory
        self._writer = TranscriptWriter(paths.transcript)
        if restored is not None:
            self._restore(restored)

    # -- views of the parts (read-only for callers) ---------------------------------------

    @property
    def transcript(self) -> list[Message]:
        return self.index.messages

    @property
    def positions(self) -> dict[str, int]:
        return self.index.positions

    @property
    def transcript_tokens(self) -> int:
        return self.index.tokens

    @property
    def policy(self) -> UpdatePolicy:
        return self.scheduler.policy

    @property
    def preamble_tokens(self) -> int:
        return self.meter.preamble_tokens

    @property
    def calibration(self) -> float:
        return self.meter.calibration

    # -- transcript and context -------------------------------------------------------

    def add(self, message: Message) -> None:
        """Append to transcript (on disk first) and context."""
        self._writer.message(message)
        self.index.append(message)
        self.context.append(message)
        if message.is_users_own:
            self.record.user_messages.append(message.text)

    def note_usage(self, usage: Usage) -> None:
        """The latest response's usage anchors the context size (the rest is estimated)."""
        self.meter.note_usage(usage, len(self.context))

    def context_tokens(self) -> int:
        """Estimated input tokens of the next request."""
        return self.meter.context_tokens(self.context)

    def note_tool_call(
        self, name: str, tool_input: dict[str, Any], result: ToolResultBlock
    ) -> None:
        self.policy.tool_calls_since += 1
        self._note_files(name, tool_input, result)

    def _note_files(self, name: str, tool_input: dict[str, Any], result: ToolResultBlock) -> None:
        path = tool_input.get("path")
        access = self.file_tools.get(name)
        if isinstance(path, str) and not result.is_error and access is not None:
            self.record.note_file(path, modified=access == "write")
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

    # -- memory updates (the scheduler) ---------------------------------------------------

    def bind(self, tg: TaskGroup) -> None:
        self.scheduler.bind(tg)

    def memory_lag_tokens(self) -> int:
        return self.scheduler.lag_tokens()

    def schedule_update(self) -> None:
        """Between turns: start a background update when the policy says it is due."""
        self.scheduler.schedule()

    async def settle_updates(self) -> None:
        """At a normal finish: let a due or in-flight update commit (bounded)."""
        await self.scheduler.settle()

    # -- compaction (the compactor chooses, the session commits) ----------------------------

    def budget(self) -> CompactionBudget:
        """The contract's figures, in estimated tokens (scaled by the calibration)."""
        return self.meter.budget(self.settings)

    async def compact_if_needed(self, *, force: bool = False) -> CompactionResult | None:
        """Shrink the context when the next request would pass --compact-at.

        A compaction is committed only when it reaches the target (or as close as the
        context allows, under the threshold), and not within `MIN_TURNS_BETWEEN` turns of
        the previous one while the request still fits the window: each one rewrites the
        prompt cache. One may come before the threshold, at the last turn a compaction keeps
        everything, when the one at the threshold would have to tombstone what the memory
        has not seen (`Compactor.ahead`).
        """
        pre = self.context_tokens()
        since = None if self._compacted_turn is None else self.turns - self._compacted_turn
        self._turn_growth.append(self.index.tokens - self._tokens_seen)
        self._tokens_seen = self.index.tokens
        started = anyio.current_time()
        waited = 0.0
        if self.compactor.due(pre, turns_since=since, force=force):
            trigger = "window" if force else "threshold"
            result, waited = await self.compactor.compact(self.context, pre, force=force)
        else:
            trigger = "fresh_memory"
            result = self.compactor.ahead(
                self.context,
                pre,
                turns_since=since,
                lag_tokens=self.memory_lag_tokens(),
                turn_growth=max(self._turn_growth, default=0),
            )
        if result is None:
            return None
        self.context = result.context
        self.meter.forget()
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
            trigger=trigger,
            **(result.usage.event_keys() if result.usage else {}),
        )
        return result

    # -- resume and close --------------------------------------------------------------------

    def _restore(self, state: TranscriptState) -> None:
        uses: dict[str, ToolUseBlock] = {}
        for message in state.messages:
            self.index.append(message)
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
        self._tokens_seen = self.index.tokens
        self.scheduler.restored()

    def close(self) -> None:
        self._writer.close()
        self.events.close()
