"""The agent: a turn loop that asks the model, runs its tools, and hands the rest off."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, cast

import anyio

from tidemark.compactor import DEFAULT_STRATEGIES, Strategy
from tidemark.config import Settings
from tidemark.errors import (
    ContextTooLongError,
    NoAnswerError,
    TidemarkError,
    TurnLimitError,
    WorkspaceError,
)
from tidemark.events import EventSubscriber
from tidemark.messages import Message, TextBlock, ToolResultBlock, ToolUseBlock
from tidemark.model import Model, ModelResponse, TextSink, ToolSpec, model_settings
from tidemark.prompts import system_prompt
from tidemark.session import Session
from tidemark.tool_turn import ToolTurns
from tidemark.tools import (
    Approver,
    Tool,
    ToolContext,
    Toolset,
    builtin_tools,
    default_approver,
    file_access,
    reap_leftover_processes,
)
from tidemark.transcript import SessionPaths, load_transcript

__all__ = ["Agent", "Conversation", "RunResult"]

# How a run that returned ended (a run that did not finish raises a TidemarkError).
Outcome = Literal["finished", "nothing_to_do"]
# How a session ended, as its `session_finished` event records it.
Ending = Literal[
    "finished",
    "turn_limit",
    "empty_reply",
    "repeated_calls",
    "interrupted",
    "terminated",
    "nothing_to_do",
    "failed",
]
# Runs that ended without an answer: exit 1, and `run` raises.
_UNFINISHED: dict[str, int] = {"turn_limit": 1, "empty_reply": 1, "repeated_calls": 1}

INTERRUPTED = "interrupted: the run stopped before this call finished; run it again if needed"
CUT_OFF = "Your reply was cut off at the output limit. Continue where you stopped."
NUDGE = "You have not used any tool yet. Use the tools to do the task, then answer."


@dataclass(frozen=True)
class RunResult:
    session_id: str
    outcome: Outcome
    turns: int
    final_text: str
    paths: SessionPaths


class Agent:
    """A coding agent over one workspace: ``await Agent(model).run("fix the failing test")``.

    It prints nothing: every event goes to the session's events.jsonl and to `on_event`,
    called with each event record as it happens (a status line, a log, a test's list).
    The model's context window and recommended settings apply wherever `settings` does not
    set a field itself (`Agent(LocalModel())` runs like `tidemark run --provider local`).
    """

    def __init__(
        self,
        model: Model,
        *,
        tools: Iterable[Tool] = (),
        builtin: bool = True,
        settings: Settings | None = None,
        approver: Approver | None = None,
        on_event: EventSubscriber | None = None,
        on_text: TextSink | None = None,
        compaction: Sequence[Strategy] = DEFAULT_STRATEGIES,
    ) -> None:
        """`compaction`: the strategies compaction tries, in order (default: the contract's
        ladder); ``("full_summary",)`` is the classic blocking summary, ``()`` never
        compacts. Memory updates run only with ``"session_memory"``."""
        self.model = model
        self.compaction = tuple(compaction)
        self.on_text = on_text  # receives the agent's reply text as it streams
        # The model says what it needs (its window, its recommended settings); what the
        # caller set explicitly wins.
        self.settings = (settings or Settings()).over(model_settings(model))
        self.toolset = Toolset([*(builtin_tools() if builtin else []), *tools])
        self.approver = approver or default_approver(self.settings.auto_approve)
        self.on_event = on_event
        self.nudge_without_action = self.settings.nudge_without_action
        self._cancel_cause: Literal["interrupted", "terminated"] = "interrupted"
        workspace = self.settings.workspace
        if not workspace.is_dir():
            raise WorkspaceError(f"workspace {workspace} does not exist or is not a directory")
        self.workspace = workspace.resolve()

    def cancelled_by(self, cause: Literal["interrupted", "terminated"]) -> None:
        """Say why the caller is about to cancel the run; its `session_finished` records it.

        ``interrupted`` (the default: Ctrl-C) has exit code 130, ``terminated`` (SIGTERM) 143.
        """
        self._cancel_cause = cause

    def _session(self, paths: SessionPaths, resumed: bool) -> Session:
        specs = [ToolSpec.model_validate(s) for s in self.toolset.specs()]
        return Session(
            paths=paths,
            model=self.model,
            settings=self.settings,
            # A model may ask for a prompt style ("small": the embedded local model).
            system=system_prompt(self.workspace, str(getattr(self.model, "prompt_style", ""))),
            tools=specs,
            subscribers=[self.on_event] if self.on_event else [],
            restored=load_transcript(paths.transcript) if resumed else None,
            strategies=self.compaction,
            file_tools={
                t.name: access for t in self.toolset if (access := file_access(t)) is not None
            },
        )

    async def run(
        self,
        task: str,
        *,
        wait_for_memory: bool = True,
        on_answer: Callable[[RunResult], None] | None = None,
    ) -> RunResult:
        """Start a new session on `task`.

        On a normal finish, `on_answer` (if given) gets the result as soon as the answer is
        known; then, with `wait_for_memory` (the default), the run lets an in-flight or due
        session-memory update commit before it returns, each update bounded by
        ``Settings.memory_update_timeout``, so the session memory covers the session. With
        ``wait_for_memory=False`` the update is cancelled at once (the previous memory
        stays). Cancelling the run skips the wait; errors and cancellation never wait.
        """
        paths = SessionPaths.create(self.workspace)
        session = self._session(paths, resumed=False)
        self._started(session, task, resumed=False)
        session.add(Message.user_text(task))
        return await self._drive(session, wait_for_memory, on_answer)

    async def resume(
        self,
        session_id: str | None = None,
        task: str | None = None,
        *,
        wait_for_memory: bool = True,
        on_answer: Callable[[RunResult], None] | None = None,
    ) -> RunResult:
        """Continue a session after an exit or a crash; `task` adds a new user message.

        `wait_for_memory` and `on_answer` work as in `run`.
        """
        paths = SessionPaths.find(self.workspace, session_id)
        reap_leftover_processes(paths.processes)
        session = self._session(paths, resumed=True)
        self._started(session, task or "", resumed=True)
        _answer_pending(session)
        if task:
            session.add(Message.user_text(task))
        elif not session.context or session.context[-1].role == "assistant":
            session.close()
            return RunResult(paths.session_id, "nothing_to_do", 0, "", paths)
        return await self._drive(session, wait_for_memory, on_answer)

    @asynccontextmanager
    async def conversation(
        self, session_id: str | None = None, *, resume: bool = False
    ) -> AsyncGenerator[Conversation]:
        """A session that takes one user message after another (`tidemark chat`).

        Its memory updates run in the background between messages, while the user types.
        ``resume`` continues the session `session_id` (the latest when None).
        """
        if resume:
            paths = SessionPaths.find(self.workspace, session_id)
            reap_leftover_processes(paths.processes)
        else:
            paths = SessionPaths.create(self.workspace)
        session = self._session(paths, resumed=resume)
        # Turn numbers go on from the session's earlier ones (events and inspect show them).
        session.turns = sum(1 for m in session.transcript if m.origin == "model")
        self._started(session, "", resumed=resume)
        _answer_pending(session)
        ending: Ending = "finished"
        try:
            async with anyio.create_task_group() as tg:
                session.bind(tg)
                try:
                    yield Conversation(self, session)
                except anyio.get_cancelled_exc_class():
                    ending = self._cancel_cause  # a signal ended the conversation
                    raise
                finally:
                    tg.cancel_scope.cancel()
        finally:
            _answer_pending(session)
            session.events.emit(
                "session_finished",
                outcome=ending,
                turns=session.turns,
                exit_code=_exit_code(ending, None),
            )
            session.close()

    def _started(self, session: Session, task: str, *, resumed: bool) -> None:
        session.events.emit(
            "session_started",
            task=task,
            workspace=str(self.workspace),
            model=self.model.name,
            provider=type(self.model).__name__,
            resumed=resumed,
        )

    async def _drive(
        self,
        session: Session,
        wait_for_memory: bool,
        on_answer: Callable[[RunResult], None] | None,
    ) -> RunResult:
        ending: Ending = "interrupted"
        failure: BaseException | None = None
        try:
            try:
                async with anyio.create_task_group() as tg:
                    session.bind(tg)
                    try:
                        ending = await self._turns(session)
                        if ending == "finished":
                            if on_answer is not None:
                                on_answer(_result(session))
                            if wait_for_memory:
                                await session.settle_updates()
                    except TidemarkError as exc:  # raised below, outside the task group
                        ending, failure = "failed", exc
                    finally:
                        tg.cancel_scope.cancel()  # in-flight memory updates end with the run
            except BaseExceptionGroup as group:
                # A background update failed: the caller gets that error, not a group.
                failure = _one_error(group)
                ending = "failed" if isinstance(failure, Exception) else ending
        finally:
            if ending == "interrupted":
                ending = self._cancel_cause
            # Synchronous, so a cancellation cannot cut it short: the transcript ends valid.
            _answer_pending(session)
            session.events.emit(
                "session_finished",
                outcome=ending,
                turns=session.turns,
                exit_code=_exit_code(ending, failure),
            )
            session.close()
        session_id = session.paths.session_id
        if isinstance(failure, TidemarkError):
            failure.session_id = session_id
        if failure is not None:
            raise failure
        _raise_unfinished(ending, session, self.settings)
        return _result(session)

    async def _turns(self, session: Session) -> Ending:
        ctx = ToolContext(
            workspace=self.workspace,
            default_timeout=self.settings.tool_timeout,
            process_registry=session.paths.processes,
        )
        tool_turns = ToolTurns(self.toolset, self.approver, ctx)
        acted = any(m.tool_uses for m in session.transcript)
        nudged = False
        first = session.turns + 1  # a conversation numbers its turns across messages
        for turn in range(first, first + self.settings.max_turns):
            session.turns = turn
            await self._prepare(session, turn)
            started = anyio.current_time()
            # A small model that has not acted yet is made to call a tool.
            response = await self._ask(session, must_act=self.nudge_without_action and not acted)
            reply = _kept_reply(response)
            if reply is None:
                # Nothing to keep (the API rejects an empty assistant turn) and no answer:
                # the context still ends with the user's side, so a resume asks again.
                self._turn_finished(session, turn, response, started)
                return "empty_reply"
            session.add(reply)
            session.note_usage(response.usage)
            self._turn_finished(session, turn, response, started)
            step = next_step(reply, nudge=self.nudge_without_action and not acted and not nudged)
            if step == "run_tools":
                acted = True
                results = await tool_turns.run(session, reply.tool_uses)
                session.add(Message(role="user", origin="tools", content=list(results)))
                if tool_turns.blocked_turns >= 2:  # told once already, and still repeating
                    return "repeated_calls"
            elif step == "cut_off":
                session.add(Message.user_text(CUT_OFF, origin="runtime"))
            elif step == "nudge":
                nudged = True
                session.add(Message.user_text(NUDGE, origin="runtime"))
            else:
                return "finished"
        return "turn_limit"

    async def _prepare(self, session: Session, turn: int) -> None:
        """Before a turn: compact if needed, start a due memory update, say the turn began."""
        await session.compact_if_needed()
        # After compaction, so an update's snapshot is the context the next turn sends
        # (the same cached prefix, and never larger than the window).
        session.schedule_update()
        session.events.emit(
            "turn_started",
            turn=turn,
            context_tokens=session.context_tokens(),
            threshold=self.settings.compaction_threshold,
            memory_lag_tokens=None
            if session.updater.document.is_empty
            else session.memory_lag_tokens(),
        )

    async def _ask(self, session: Session, *, must_act: bool) -> ModelResponse:
        """The model's reply to the context; a window overflow compacts and asks once more."""
        try:
            return await self.model.generate(
                session.request(self.settings.max_output_tokens, must_act=must_act),
                self.on_text,
            )
        except ContextTooLongError:
            await session.compact_if_needed(force=True)
            return await self.model.generate(
                session.request(self.settings.max_output_tokens), self.on_text
            )

    @staticmethod
    def _turn_finished(
        session: Session, turn: int, response: ModelResponse, started: float
    ) -> None:
        session.events.emit(
            "turn_finished",
            turn=turn,
            input_tokens=response.usage.total_input_tokens,
            output_tokens=response.usage.output_tokens,
            duration_ms=round((anyio.current_time() - started) * 1000, 3),
            stop_reason=response.stop_reason,
            cache_read_input_tokens=response.usage.cache_read_input_tokens,
            cache_creation_input_tokens=response.usage.cache_creation_input_tokens,
            context_tokens=session.context_tokens(),
        )


Step = Literal["run_tools", "cut_off", "nudge", "finished"]


def next_step(reply: Message, *, nudge: bool) -> Step:
    """What comes after a kept reply: run its tool calls, continue a reply cut off at the
    output limit, nudge a model that answered before acting (`nudge`), or finish."""
    if reply.tool_uses:
        return "run_tools"
    if reply.stop_reason == "max_tokens":
        return "cut_off"
    return "nudge" if nudge else "finished"


def _kept_reply(response: ModelResponse) -> Message | None:
    """The reply as a transcript message, or None when it holds nothing to keep.

    The API rejects whitespace-only text blocks: never keep one in the transcript.
    """
    content = [b for b in response.content if not (isinstance(b, TextBlock) and not b.text.strip())]
    if not any(isinstance(b, TextBlock | ToolUseBlock) for b in content):
        return None
    return Message(
        role="assistant",
        origin="model",
        content=content,
        usage=response.usage,
        stop_reason=response.stop_reason,
    )


def _one_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a group stands for: a TidemarkError first, else the first other error."""
    leaves: list[BaseException] = []

    def flatten(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in cast("BaseExceptionGroup[BaseException]", exc).exceptions:
                flatten(inner)
        else:
            leaves.append(exc)

    flatten(group)
    for kind in (TidemarkError, Exception):
        found = next((e for e in leaves if isinstance(e, kind)), None)
        if found is not None:
            return found
    return group  # only cancellations or interrupts: they keep their group semantics


def _exit_code(ending: Ending, failure: BaseException | None) -> int:
    if isinstance(failure, TidemarkError):
        return failure.exit_code
    if ending == "failed":
        return 1  # a bug: its traceback follows
    # The shell's convention for a run a signal stopped: 128 + the signal number.
    return {"finished": 0, "nothing_to_do": 0, "terminated": 143, **_UNFINISHED}.get(ending, 130)


def _raise_unfinished(ending: Ending, session: Session, settings: Settings) -> None:
    """A run that ended without an answer raises: it is not a finished task."""
    session_id, turns = session.paths.session_id, session.turns
    if ending == "turn_limit":
        raise TurnLimitError(
            f"the agent hit the turn cap ({settings.max_turns} turns) before finishing",
            session_id=session_id,
        )
    if ending == "empty_reply":
        raise NoAnswerError(
            f"the model ended turn {turns} with an empty reply, not an answer (resume with "
            'an instruction, e.g. "answer from what you found")',
            session_id=session_id,
        )
    if ending == "repeated_calls":
        raise NoAnswerError(
            f"the model kept repeating the same tool calls after being told (turn {turns}), "
            "with no answer (resume with a more precise instruction)",
            session_id=session_id,
        )


def _result(session: Session) -> RunResult:
    final = session.context[-1].text if session.context else ""
    return RunResult(session.paths.session_id, "finished", session.turns, final, session.paths)


class Conversation:
    """One open session of `Agent.conversation`: send a message, get the agent's answer."""

    def __init__(self, agent: Agent, session: Session) -> None:
        self.agent = agent
        self.session = session

    @property
    def session_id(self) -> str:
        return self.session.paths.session_id

    async def send(self, text: str) -> RunResult:
        """Add the user's message and run turns until the agent answers.

        When cancelled (the user interrupts), the transcript stays valid: an unanswered
        tool call gets an error result. Errors of the model raise as from `Agent.run`.
        """
        session = self.session
        session.add(Message.user_text(text))
        try:
            ending = await self.agent._turns(session)  # pyright: ignore[reportPrivateUsage]
        finally:
            _answer_pending(session)
        # The user's think time is the memory's time: an update due now runs meanwhile.
        session.schedule_update()
        _raise_unfinished(ending, session, self.agent.settings)
        return _result(session)

    async def wait_for_memory(self, timeout_s: float) -> None:
        """Let an update in flight commit (bounded), e.g. before leaving."""
        await self.session.updater.wait_idle(timeout_s)


def _answer_pending(session: Session) -> None:
    """A tool call the run never answered (interrupt, crash) gets an error result."""
    if not session.context:
        return
    last = session.context[-1]
    if last.role == "assistant" and last.tool_uses:
        session.add(
            Message(
                role="user",
                origin="tools",
                content=[
                    ToolResultBlock(tool_use_id=u.id, content=INTERRUPTED, is_error=True)
                    for u in last.tool_uses
                ],
            )
        )
