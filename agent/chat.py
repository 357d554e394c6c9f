"""`tidemark chat`: one session held interactively in the terminal (prompt_toolkit).

The user types a message (Enter sends, Esc then Enter or Alt-Enter starts a new line, Up
recalls earlier messages); the agent's reply streams as it is generated, with its tool
calls and approval questions inline. Between turns the bottom toolbar is the live status
line: context size against the compaction threshold, memory state, compactions. Memory
updates run while the user types. Ctrl-C interrupts the current turn (the transcript stays
valid); a second Ctrl-C, or Ctrl-C or Ctrl-D at the prompt, leaves. Slash commands:
/memory, /compact, /inspect, /clear (a new session), /help, /exit.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TextIO

import anyio

from tidemark.errors import TidemarkError
from tidemark.loop import Agent, Conversation
from tidemark.tools import Tool, ToolCall
from tidemark.tools.approval import DENIED_BY_USER
from tidemark.tools.interface import describe_input

__all__ = ["ChatApprover", "ChatView", "run_chat"]

HELP = """\
  /memory    show the session memory
  /compact   compact the context now (memory + tail, else clearing, else a summary)
  /inspect   what the session did so far (turns, tool calls, updates, compactions)
  /clear     leave this session and start a new one
  /help      this list
  /exit      leave (also Ctrl-D); `tidemark chat --session ID` comes back to it
  Enter sends; Esc then Enter (or Alt-Enter) starts a new line; Up/Down: history;
  Ctrl-C interrupts the agent's turn."""

LEAVE_WAIT_S = 30.0  # how long leaving waits for a memory update in flight

Action = Literal["leave", "clear"]


class ChatView:
    """What the user sees: streamed text, inline tool calls and notices, the status line.

    It is a `Progress` for `tidemark.progress.follow`, so it is driven by the session's
    events; `text` is the agent's `on_text`.
    """

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.conversation: Conversation | None = None
        self.memory = "idle"
        self.lag: int | None = None
        self.streamed = False  # some reply text was shown during this turn
        self._column = 0
        self.invalidate: Callable[[], None] = lambda: None  # redraws the prompt's toolbar
        self.interrupt: Callable[[], None] = lambda: None  # cancels the turn running now

    # -- Progress -------------------------------------------------------------------------

    def turn_started(self, turn: int, context_tokens: int, threshold: int) -> None:
        pass  # the toolbar shows it between turns

    def tool_started(self, name: str, detail: str) -> None:
        self._line(f"  > {name} {detail}".rstrip())

    def memory_state(self, state: str) -> None:
        self.memory = state
        self.invalidate()

    def memory_lag(self, tokens: int | None) -> None:
        self.lag = tokens

    def notice(self, text: str) -> None:
        self._line(f"  [{text}]")

    def close(self) -> None:
        self.end_of_text()

    # -- output ---------------------------------------------------------------------------

    def text(self, delta: str) -> None:
        if not delta:
            return
        self.streamed = True
        self.out.write(delta)
        self.out.flush()
        newline = delta.rfind("\n")
        self._column = len(delta) - newline - 1 if newline >= 0 else self._column + len(delta)

    def end_of_text(self) -> None:
        if self._column:
            self.out.write("\n")
            self.out.flush()
            self._column = 0

    def _line(self, text: str) -> None:
        self.end_of_text()
        self.out.write(text + "\n")
        self.out.flush()

    def say(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            self._line(line)

    def toolbar(self) -> str:
        conversation = self.conversation
        if conversation is None:
            return ""
        session = conversation.session
        threshold = session.settings.compaction_threshold
        memory = self.memory
        if memory == "idle" and session.updater.document.is_empty:
            memory = "none yet"
        elif memory == "idle" and self.lag is not None:
            memory = f"idle, {self.lag:,} tokens behind"
        return (
            f" session {conversation.session_id} | context {session.context_tokens():,}/"
            f"{threshold:,} tokens | memory {memory} | compactions {session.compactions} | "
            "/help"
        )


class ChatApprover:
    """Asks on the chat's terminal, with a prompt that an interrupt can cancel."""

    def __init__(self, view: ChatView) -> None:
        self.view = view
        self._lock = anyio.Lock()

    async def approve(self, call: ToolCall, tool: Tool) -> str | None:
        from prompt_toolkit import PromptSession

        self.view.end_of_text()
        async with self._lock:  # one question at a time
            try:
                answer = await PromptSession[str]().prompt_async(
                    f"  Allow {call.name} {describe_input(call.input)}? [y/N] ",
                    handle_sigint=False,
                )
            except KeyboardInterrupt:  # Ctrl-C at the question: the turn ends too
                self.view.interrupt()
                return DENIED_BY_USER
            except EOFError:
                return DENIED_BY_USER
        return None if answer.strip().lower() in ("y", "yes") else DENIED_BY_USER


async def run_chat(agent: Agent, view: ChatView, session_id: str | None) -> int:
    """Hold the chat until the user leaves; `session_id` continues that session."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings

    history = agent.workspace / ".tidemark" / "chat-history"
    history.parent.mkdir(parents=True, exist_ok=True)
    keys = KeyBindings()

    @keys.add("escape", "enter")
    def _newline(event: Any) -> None:  # pyright: ignore[reportUnusedFunction]
        event.current_buffer.insert_text("\n")

    prompt: PromptSession[str] = PromptSession(
        history=FileHistory(str(history)),
        key_bindings=keys,
        bottom_toolbar=view.toolbar,
        refresh_interval=0.5,
        prompt_continuation="... ",
    )
    view.invalidate = lambda: prompt.app.invalidate() if prompt.app.is_running else None
    resume = session_id is not None
    while True:
        async with agent.conversation(session_id, resume=resume) as conversation:
            view.conversation = conversation
            how = "continued" if resume else "new"
            view.say(f"tidemark chat: session {conversation.session_id} ({how}); /help for help")
            action = await _converse(conversation, prompt, view)
            if conversation.session.updater.running:
                view.say("  [saving the session memory; Ctrl-C skips]")
                await _unless_interrupted(conversation.wait_for_memory(LEAVE_WAIT_S))
        view.conversation = None
        if action == "clear":
            session_id, resume = None, False
            continue
        view.say(
            f"tidemark: left session {conversation.session_id}; continue with "
            f"`tidemark chat --session {conversation.session_id}`"
        )
        return 0


async def _converse(conversation: Conversation, prompt: Any, view: ChatView) -> Action:
    while True:
        try:
            line: str = await prompt.prompt_async("you> ", handle_sigint=False)
        except (EOFError, KeyboardInterrupt):
            return "leave"
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            action = await _command(text, conversation, view)
            if action is not None:
                return action
            continue
        if await _turn(conversation, line, view) == "leave":
            return "leave"


async def _turn(conversation: Conversation, text: str, view: ChatView) -> Action | None:
    """One message and the agent's turns; Ctrl-C cancels them, a second one leaves."""
    view.streamed = False
    leave = False
    turn = anyio.CancelScope()
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal leave
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    if turn.cancel_called:
                        leave = True
                        return
                    turn.cancel()

        tg.start_soon(watch)
        view.interrupt = turn.cancel
        with turn:
            try:
                result = await conversation.send(text)
            except TidemarkError as exc:
                view.end_of_text()
                view.say(f"tidemark: error: {exc}")
            else:
                if not view.streamed and result.final_text:
                    view.text(result.final_text)  # a provider that does not stream
        tg.cancel_scope.cancel()
    view.interrupt = lambda: None
    view.end_of_text()
    if turn.cancelled_caught:
        view.say("  [interrupted; the transcript is kept. Type a new message, or Ctrl-D]")
    return "leave" if leave else None


async def _unless_interrupted(work: Awaitable[None]) -> None:
    """Await `work`; Ctrl-C ends the wait early instead of ending the program."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        await work
        tg.cancel_scope.cancel()


async def _command(text: str, conversation: Conversation, view: ChatView) -> Action | None:
    name = text.split()[0].lower()
    session = conversation.session
    if name in ("/exit", "/quit"):
        return "leave"
    if name == "/clear":
        return "clear"
    if name == "/help":
        view.say(HELP)
    elif name == "/memory":
        document = session.updater.document
        if document.is_empty:
            view.say(
                "  (no session memory yet: the first update starts at "
                f"{session.settings.memory_init_tokens:,} tokens of context)"
            )
        else:
            view.say(session.paths.memory.read_text(encoding="utf-8").rstrip())
    elif name == "/compact":
        before = session.compactions
        await session.compact_if_needed(force=True)
        if session.compactions == before:
            view.say("  [nothing to compact: the context holds nothing that can be dropped]")
    elif name == "/inspect":
        from tidemark.inspection import inspect_command

        view.end_of_text()
        args = argparse.Namespace(
            workspace=str(session.paths.workspace),
            session=conversation.session_id,
            json=False,
            list=False,
            messages=False,
        )
        inspect_command(args)
    else:
        view.say(f"  unknown command {name}; /help lists them")
    return None
