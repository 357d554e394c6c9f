"""Background memory updates: when one is due, and running it in the session's task group.

The policy mirrors Claude Code's sessionMemory: nothing until the context reaches
``memory_init_tokens``; then an update when the transcript grew by ``memory_update_tokens``
since the last update's snapshot and either ``memory_tool_calls`` tool calls happened or the
model paused (its last message called no tool). Growth is counted on the whole transcript,
which compaction never shrinks, so there is no stale baseline after a compaction. When the
session keeps growing while an update runs, the next one starts as soon as it commits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio

from tidemark.config import Settings
from tidemark.errors import ModelError
from tidemark.events import EventLog
from tidemark.memory import (
    MemoryDocument,
    MemoryStore,
    MemoryUpdateError,
    RuntimeRecord,
    describe_rules,
    merge_update,
    validate_document,
)
from tidemark.messages import Message
from tidemark.model import Model, ModelRequest, ToolSpec
from tidemark.tokens import TokenCounter

__all__ = ["MemoryUpdater", "Snapshot", "UpdatePolicy"]

UPDATE_INSTRUCTION = """\
<tidemark-session-memory-update>
Do not continue the task and do not call tools. Your only job now: update the session memory \
(notes that will replace the conversation above when the context is compacted) so that it \
covers everything above.

Current memory:
<current-memory>
{memory}
</current-memory>
{originals}
{rules}
{rejected}
Subsections marked "(kept by tidemark)" are maintained by the runtime: do not write them.
Write "# Current State" as three short lists: Done, In progress, Next.

Reply with ONLY what changed. To replace a section, write its exact heading line \
(e.g. `# Current State`) followed by its complete new content (the italic description line \
may be left out). To add lines at the end of a section without rewriting it (new Worklog \
steps, new Key results, new files), write the heading with ` (append)` after it, e.g. \
`# Worklog (append)`, followed by the new lines only. Leave unchanged sections out. If \
nothing needs to change, reply exactly: NO CHANGES. Keep it short: every word you write \
costs time.
</tidemark-session-memory-update>"""


@dataclass
class UpdatePolicy:
    init_tokens: int
    update_tokens: int
    tool_calls: int
    snapshot_tokens: int = 0  # transcript tokens covered by the last update's snapshot
    tool_calls_since: int = 0
    initialized: bool = False

    def due(self, *, context_tokens: int, transcript_tokens: int, paused: bool) -> bool:
        if not self.initialized:
            if context_tokens < self.init_tokens:
                return False
            self.initialized = True
        grown = transcript_tokens - self.snapshot_tokens
        return grown >= self.update_tokens and (self.tool_calls_since >= self.tool_calls or paused)

    def behind(self, transcript_tokens: int) -> bool:
        """True when the session outran the memory enough to start the next update now."""
        return self.initialized and transcript_tokens - self.snapshot_tokens >= self.update_tokens

    def taken(self, transcript_tokens: int) -> None:
        self.snapshot_tokens = transcript_tokens
        self.tool_calls_since = 0


@dataclass(frozen=True)
class Snapshot:
    """What an update summarizes: a context prefix ending at a safe boundary."""

    messages: Sequence[Message]
    boundary_id: str
    boundary_index: int  # position of the boundary message in the transcript
    from_message_id: str | None  # first message not covered before this update
    context_tokens: int
    lag_tokens: int  # transcript tokens not covered by memory when the update starts
    # Content the prefix lacks (shortened by compaction) that the update claims: sent in full
    # after the shared prefix (see tidemark.coverage).
    originals: str = ""


class MemoryUpdater:
    """Runs one update at a time; commits atomically; never touches the turn loop."""

    def __init__(
        self,
        *,
        model: Model,
        settings: Settings,
        store: MemoryStore,
        events: EventLog,
        counter: TokenCounter,
        system: str,
        tools: Sequence[ToolSpec],
        record: RuntimeRecord,
        on_commit: Callable[[MemoryDocument, Snapshot], None],
    ) -> None:
        self.model = model
        self.settings = settings
        self.store = store
        self.events = events
        self.counter = counter
        self.system = system
        self.tools = tools
        self.record = record
        self.on_commit = on_commit
        self.document = store.load() or MemoryDocument.empty()
        self.updates = self.document.update
        self.running = False
        self._usage: dict[str, int] = {}  # of the latest update's response, for its event
        self.failures = 0  # updates that failed in a row
        self._skip = 0  # due updates still to let pass before the next try (the backoff)
        # Why the latest update was rejected: told to the next one, so it condenses.
        self.rejection: str | None = None
        self._idle = anyio.Event()
        self._idle.set()

    async def settle(self) -> None:
        """Wait until no update is running (each one is bounded by its own timeout)."""
        while self.running:
            # A chained update begins synchronously when its predecessor ends, so the loop
            # sees it before this task runs again.
            await self._idle.wait()

    @property
    def output_budget(self) -> int:
        """Output tokens an update may use: enough for a whole rewrite of a full memory.

        Updates usually write a few changed sections; the budget is a cap, not a cost.
        """
        whole = self.settings.memory_limit_tokens * 5 // 4
        return max(self.settings.memory_update_output_tokens, whole)

    async def wait_idle(self, timeout_s: float) -> float:
        """Wait up to `timeout_s` for the update in flight; returns the ms waited."""
        if not self.running or timeout_s <= 0:
            return 0.0
        started = anyio.current_time()
        with anyio.move_on_after(timeout_s):
            await self._idle.wait()
        return (anyio.current_time() - started) * 1000

    def may_start(self) -> bool:
        """False while backing off after failed updates; each call is one due update let pass.

        A failure that repeats (a full disk, a broken provider) would otherwise cost a
        request every turn: after n failures in a row, 2**(n-1) - 1 due updates are skipped
        (at most 16) before the next try.
        """
        if self._skip > 0:
            self._skip -= 1
            return False
        return True

    def begin(self) -> int:
        """Mark an update as running (synchronously, so no second one starts)."""
        self.running = True
        self._idle = anyio.Event()
        self.updates += 1
        return self.updates

    async def run(self, update: int, snapshot: Snapshot) -> None:
        started = anyio.current_time()
        self.events.emit(
            "memory_update_started",
            update=update,
            from_message_id=snapshot.from_message_id,
            to_message_id=snapshot.boundary_id,
            context_tokens=snapshot.context_tokens,
            lag_tokens=snapshot.lag_tokens,
        )
        text = ""
        try:
            timeout = self.settings.memory_update_timeout
            try:
                # Its own bound: a stuck request would otherwise hold back every later update
                # (and the save at the finish).
                with anyio.fail_after(timeout):
                    document = await self._ask(snapshot, update)
                # Shielded: a cancellation cannot split the commit. The file (written in a
                # worker thread, fsync included, so the event loop never blocks on the disk),
                # the document in memory and the boundary event change together.
                with anyio.CancelScope(shield=True):
                    text = await anyio.to_thread.run_sync(self.store.save, document, self.record)
            except TimeoutError:
                self._failed(update, TimeoutError(f"timed out after {timeout:g} s"))
                return
            except anyio.get_cancelled_exc_class():
                self.events.emit(
                    "memory_update_failed", update=update, error="cancelled: session ended"
                )
                raise
            except Exception as exc:
                # Whatever failed (the model, its reply, the provider, the disk), a failed
                # update changes nothing: the previous memory stays and the turns go on.
                self._failed(update, exc)
                return
            self.failures = 0
            self.document = document
            self.rejection = None
            self.events.emit(
                "memory_update_committed",
                update=update,
                duration_ms=round((anyio.current_time() - started) * 1000, 3),
                memory_tokens=self.counter.estimate(text),
                covers_message_id=snapshot.boundary_id,
                **self._usage,
            )
            self.on_commit(document, snapshot)
        finally:
            self.running = False
            self._idle.set()

    def _failed(self, update: int, exc: Exception) -> None:
        if isinstance(exc, MemoryUpdateError):
            self.rejection = str(exc)  # the next update request is told why
        self.failures += 1
        self._skip = min(2 ** (self.failures - 1) - 1, 16)
        known = isinstance(exc, MemoryUpdateError | ModelError)
        self.events.emit(
            "memory_update_failed",
            update=update,
            error=str(exc) if known else f"{type(exc).__name__}: {exc}",
            consecutive_failures=self.failures,
            retry_after_turns=self._skip,
            **self._usage,
        )

    async def _ask(self, snapshot: Snapshot, update: int) -> MemoryDocument:
        self._usage = {}
        instruction = UPDATE_INSTRUCTION.format(
            memory=self.document.render(self.record).strip(),
            rules=describe_rules(
                self.settings.memory_limit_tokens, self.settings.memory_section_limit_tokens
            ),
            originals=f"\n{snapshot.originals}\n" if snapshot.originals else "",
            rejected=(
                f"\nYour previous update was rejected and not written: {self.rejection}. "
                "Condense the memory so this one fits.\n"
                if self.rejection
                else ""
            ),
        )
        request = ModelRequest(
            system=self.system,
            messages=[*snapshot.messages, Message.user_text(instruction, origin="runtime")],
            tools=self.tools,
            max_tokens=self.output_budget,
            purpose="session-memory",
            cache_breakpoint=len(snapshot.messages) - 1,
            # The turns' tool choice: the API keys its message cache by `tool_choice`, so
            # "none" here would make every update rewrite the whole prefix. The
            # instruction says not to call tools; a reply that only calls one is rejected.
            tool_choice="auto",
        )
        response = await self.model.generate(request)
        self._usage = response.usage.event_keys()
        reply = response.text
        if response.stop_reason == "tool_use" and not reply.strip():
            raise MemoryUpdateError("the update called a tool instead of writing the memory")
        if response.stop_reason == "max_tokens":
            raise MemoryUpdateError("the update was cut off at the output limit")
        if not reply.strip():
            raise MemoryUpdateError("the update is empty")
        sections = merge_update(self.document, reply)
        validate_document(
            sections,
            estimate=self.counter.estimate,
            max_tokens=self.settings.memory_limit_tokens,
            section_tokens=self.settings.memory_section_limit_tokens,
            record=self.record,
        )
        return MemoryDocument(
            sections=sections, covers_message_id=snapshot.boundary_id, update=update
        )
