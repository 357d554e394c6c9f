"""`tidemark run / resume / inspect / batch`: flags, logging set-up, exit codes.

Exit codes: 0 finished with an answer, 1 no answer (model/API error, turn cap, empty
reply, repeated calls), 2 bad usage or input (one line on stderr), 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import re
import signal
import sys
import warnings
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast

import anyio
import structlog
from pydantic import ValidationError

from tidemark.config import Settings
from tidemark.config_file import FileConfig, McpServerConfig, load_config, parse_mcp_flag
from tidemark.errors import ConfigError, SessionNotFoundError, TidemarkError, WorkspaceError
from tidemark.loop import Agent, RunResult
from tidemark.mcp_tools import McpTool, connect_mcp_servers
from tidemark.model import Model
from tidemark.progress import RichProgress, follow, make_progress
from tidemark.providers import ProviderName, default_provider, make_model
from tidemark.providers.local import local_defaults
from tidemark.tools import TerminalApprover, default_approver

__all__ = ["main"]

# The settings the command line sets, each as --field-name, with the name of its value.
# Flag, type, help and default all come from `Settings` (its fields' docstrings).
_SETTING_FLAGS: dict[str, str] = {
    "max_turns": "N",
    "context_window": "TOKENS",
    "compact_at": "TOKENS",
    "memory_init_tokens": "N",
    "memory_update_tokens": "N",
    "memory_tool_calls": "N",
    "compaction_wait_ms": "MS",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tidemark: error: {message} (see `{self.prog} --help`)\n")


def _count(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _add_common(p: argparse.ArgumentParser, *, workspace: bool = True) -> None:
    if workspace:
        p.add_argument("--workspace", default=".", help="repository to work in (default: .)")
    p.add_argument(
        "--provider",
        choices=["anthropic", "local"],
        help="model provider (default: anthropic when ANTHROPIC_API_KEY or ANTHROPIC_BASE_URL "
        "is set, else the embedded local model)",
    )
    p.add_argument("--model", help="model name (anthropic) or path to a .gguf file (local)")
    _add_setting(p, "max_turns")
    p.add_argument("--yes", action="store_true", help="approve tools that write or run commands")
    if workspace:
        p.add_argument("--log-json", metavar="FILE", help="also write the event log to FILE")
    for field in _SETTING_FLAGS:
        if field != "max_turns":
            _add_setting(p, field)
    p.add_argument(
        "--tools",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="add your own tools (repeatable), e.g. --tools mytools:TOOLS",
    )
    if workspace:  # MCP servers start in a session's workspace
        _add_mcp(p)


def _add_setting(p: argparse.ArgumentParser, field: str) -> None:
    """--field-name for a `Settings` field: its help is the field's docstring and its
    defaults (the local model's too, where it recommends another)."""
    info = Settings.model_fields[field]
    text = " ".join((info.description or "").split()).rstrip(".")
    defaults: list[str] = []
    if info.default is not None:
        defaults.append(f"default {info.default}")
    local = local_defaults().get(field)
    if local is not None and local != info.default:
        defaults.append(f"{local} with the local model")
    if defaults:
        text += f" ({'; '.join(defaults)})"
    help_text = text[:1].lower() + text[1:]
    flag = "--" + field.replace("_", "-")
    p.add_argument(flag, type=_count, metavar=_SETTING_FLAGS[field], help=help_text)


def _add_mcp(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mcp",
        action="append",
        default=[],
        metavar="NAME=COMMAND|URL",
        help="add an MCP tool server (repeatable): NAME='python3 server.py' (stdio) or "
        "NAME=http://host/mcp (streamable HTTP); its tools are mcp__NAME__<tool>",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tidemark", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run the agent on a task")
    _add_common(run)
    run.add_argument("task", metavar="TASK", help="what the agent should do")
    resume = sub.add_parser("resume", help="continue a session after an exit or a crash")
    _add_common(resume)
    resume.add_argument("--session", help="session id (default: the latest)")
    resume.add_argument("task", metavar="TASK", nargs="?", help="a new instruction (optional)")
    chat = sub.add_parser("chat", help="hold a session interactively in the terminal")
    _add_common(chat)
    chat.add_argument("--session", help="continue this session (default: a new one)")
    tools = sub.add_parser("tools", help="list every tool a session would have")
    tools.add_argument("--workspace", default=".", help="repository to work in (default: .)")
    tools.add_argument(
        "--tools", action="append", default=[], metavar="MODULE:ATTR", help="as for run"
    )
    _add_mcp(tools)
    tools.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    inspect = sub.add_parser("inspect", help="show what a session did")
    inspect.add_argument("--workspace", default=".")
    inspect.add_argument("--session", help="session id (default: the latest)")
    inspect.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    inspect.add_argument("--list", action="store_true", help="list the sessions")
    inspect.add_argument(
        "--messages", action="store_true", help="show the transcript with boundaries marked"
    )
    _add_batch(sub)
    return parser


def _add_batch(sub: Any) -> None:
    batch = sub.add_parser(
        "batch",
        help="run many tasks, each a session in its own copy of its workspace, on Ray",
        description="Run every task of TASKS.jsonl (one JSON object per line: id, workspace "
        "(a directory, copied, or a git URL, cloned), task, optional settings) as a session "
        "in its own copy of its workspace, on Ray. Results go to OUT/results.jsonl; rerun the "
        "same command to continue after an interruption.",
    )
    batch.add_argument("tasks_file", metavar="TASKS.jsonl", help="the tasks, one per line")
    batch.add_argument("--out", required=True, metavar="DIR", help="results and session copies")
    batch.add_argument(
        "--address",
        metavar="RAY_ADDRESS",
        help="an existing Ray cluster, e.g. ray://head:10001 (default: RAY_ADDRESS, else a "
        "local Ray instance on this machine)",
    )
    batch.add_argument(
        "--concurrency",
        type=_positive,
        metavar="N",
        help="sessions in flight at once (default: 8 per CPU; 1 per CPU with --provider local)",
    )
    batch.add_argument(
        "--max-attempts",
        type=_positive,
        default=3,
        metavar="N",
        help="runs of a task whose worker died, before it is reported as failed (default 3)",
    )
    batch.add_argument(
        "--retry-failed", action="store_true", help="run tasks that failed before again"
    )
    _add_common(batch, workspace=False)


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def _flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags give (only those given, and --yes)."""
    values: dict[str, Any] = {}
    for field in _SETTING_FLAGS:
        value = getattr(args, field)
        if value is not None:
            values[field] = value
    values["auto_approve"] = args.yes
    return values


def _settings(args: argparse.Namespace, config: FileConfig | None = None) -> Settings:
    """What the config files and flags set; the model adds its own under them (`Agent`)."""
    values: dict[str, Any] = {"workspace": Path(args.workspace).expanduser()}
    if config is not None:  # the config files, under the command line
        values.update(config.settings)
    flags = _flag_settings(args)
    flags["auto_approve"] = args.yes or values.get("auto_approve", False)
    values.update(flags)
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a rule across fields: its message names them
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ConfigError(_flag_names(message)) from None
        where = str(first["loc"][0]).replace("_", "-")
        raise ConfigError(f"--{where}: {first['msg']}") from None


def _flag_names(text: str) -> str:
    """A settings message with its field names as the flags that set them."""
    for field in _SETTING_FLAGS:
        text = re.sub(rf"\b{field}\b", "--" + field.replace("_", "-"), text)
    return text


def _window(settings: Settings) -> int | None:
    """The window the flags or config files set (None: the model's own)."""
    return settings.context_window if "context_window" in settings.model_fields_set else None


def _agent(model: Model, settings: Settings, **options: Any) -> Agent:
    try:
        return Agent(model, settings=settings, **options)
    except ConfigError as exc:  # the model's settings under the flags: named by their flags
        raise ConfigError(_flag_names(str(exc))) from None


def _configure_logging(log_json: TextIO | None) -> None:
    """Events go to --log-json as JSON lines; the console gets progress lines instead."""

    def drop(_: Any, __: str, event_dict: Any) -> Any:
        raise structlog.DropEvent

    if log_json is None:
        structlog.configure(processors=[drop], cache_logger_on_first_use=False)
        return
    structlog.configure(
        processors=[structlog.processors.JSONRenderer(ensure_ascii=False)],
        logger_factory=structlog.WriteLoggerFactory(file=log_json),
        cache_logger_on_first_use=False,
    )


def _load_tools(specs: Sequence[str]) -> list[Any]:
    from tidemark.tools import ToolLoadError, load_tools

    loaded: list[Any] = []
    for spec in specs:
        try:
            loaded.extend(load_tools(spec))
        except ToolLoadError as exc:
            raise ConfigError(f"--tools {spec}: {exc}") from None
    return loaded


def _check_task(args: argparse.Namespace) -> None:
    task = getattr(args, "task", None)
    if task is not None and not task.strip():
        raise ConfigError("TASK is empty: say what the agent should do")


def _one_line_warnings() -> None:
    """Warnings (a damaged log line, say) as one tidemark line, not Python's two."""

    def show(message: Warning | str, *_: Any, **__: Any) -> None:
        print(f"tidemark: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def _check_workspace(raw: str) -> None:
    workspace = Path(raw).expanduser()
    if not workspace.is_dir():
        raise WorkspaceError(
            f"workspace {workspace} does not exist: create it or pass --workspace DIR"
        )


async def _run(
    args: argparse.Namespace, answered: list[RunResult], agents: list[Agent]
) -> RunResult:
    config: FileConfig = args.file_config
    provider: ProviderName = args.provider or config.provider or default_provider()
    settings = _settings(args, config)
    extra_tools = _load_tools([*config.tools, *args.tools])
    async with _mcp_tools(args, config) as mcp_tools:
        tools = [*extra_tools, *mcp_tools]
        return await _run_agent(args, provider, settings, tools, answered, agents)


def _mcp_servers(args: argparse.Namespace, config: FileConfig) -> dict[str, McpServerConfig]:
    servers = dict(config.mcp_servers)
    servers.update(parse_mcp_flag(spec) for spec in args.mcp)
    return servers


def _mcp_tools(
    args: argparse.Namespace, config: FileConfig
) -> contextlib.AbstractAsyncContextManager[list[McpTool]]:
    workspace = Path(args.workspace).expanduser().resolve()
    return connect_mcp_servers(
        _mcp_servers(args, config),
        workspace=workspace,
        log_dir=workspace / ".tidemark" / "mcp-logs",
    )


async def _run_agent(
    args: argparse.Namespace,
    provider: ProviderName,
    settings: Settings,
    extra_tools: list[Any],
    answered: list[RunResult],
    agents: list[Agent],
) -> RunResult:
    # Loading a local model blocks for a moment (and joins the model file on first use).
    model = await anyio.to_thread.run_sync(
        make_model, provider, args.model or args.file_config.model, _window(settings)
    )
    progress = make_progress(sys.stderr)
    from tidemark.providers.local import LocalModel

    if isinstance(model, LocalModel) and isinstance(progress, RichProgress):
        model.on_progress = progress.model_progress  # prefill takes seconds on a CPU
    approver = default_approver(settings.auto_approve)
    if isinstance(approver, TerminalApprover) and isinstance(progress, RichProgress):
        approver = TerminalApprover(ask=progress.ask)  # the status line steps aside to ask

    def answer(result: RunResult) -> None:
        # The answer is shown at once; the session memory is saved after it.
        answered.append(result)
        progress.close()  # the status line steps aside (it comes back while saving)
        if result.final_text:
            print(result.final_text, flush=True)

    try:
        agent = _agent(
            model, settings, tools=extra_tools, approver=approver, on_event=follow(progress)
        )
        agents.append(agent)  # told by the signal watcher why it is cancelled
        if args.command == "run":
            return await agent.run(args.task, on_answer=answer)
        return await agent.resume(args.session, args.task, on_answer=answer)
    finally:
        progress.close()
        with anyio.CancelScope(shield=True):
            await model.aclose()


async def _main_async(args: argparse.Namespace) -> int:
    result: RunResult | None = None
    stopped_by: list[int] = []  # the signal that stopped the run
    answered: list[RunResult] = []
    agents: list[Agent] = []
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    stopped_by.append(signum)
                    for agent in agents:  # its session_finished says how it was stopped
                        agent.cancelled_by(
                            "terminated" if signum == signal.SIGTERM else "interrupted"
                        )
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch_signals)
        try:
            result = await _run(args, answered, agents)
        finally:
            tg.cancel_scope.cancel()
    interrupted = bool(stopped_by)
    if interrupted and answered and result is None:
        # The task finished and its answer is out; only the memory save was skipped.
        print(
            "tidemark: session memory not saved (interrupted); it stays at its last update",
            file=sys.stderr,
        )
        result = answered[0]
    if result is None or (interrupted and not answered):
        print("tidemark: interrupted; continue with `tidemark resume`", file=sys.stderr)
        # The shell's convention: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM).
        return 143 if stopped_by == [signal.SIGTERM] else 130
    if result.outcome == "nothing_to_do":
        print(
            f"tidemark: session {result.session_id} already finished; give a TASK to go on",
            file=sys.stderr,
        )
        return 0
    print(
        f"tidemark: session {result.session_id} finished in {result.turns} turns", file=sys.stderr
    )
    return 0


async def _until_terminated(agent: Agent, chat: Awaitable[int]) -> int:
    """Run the chat; SIGTERM ends it like Ctrl-C ends a run: the session records
    `terminated`, the exit code is 143 (Ctrl-C stays the chat's own: it interrupts a turn)."""
    code: int | None = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal code
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    agent.cancelled_by("terminated")
                    code = 143
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        code = await chat
        tg.cancel_scope.cancel()
    return 143 if code is None else code


async def _chat(args: argparse.Namespace) -> int:
    """`tidemark chat`: the same agent as `run`, held interactively."""
    try:
        import prompt_toolkit  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError:
        raise ConfigError(
            "tidemark chat needs prompt_toolkit: pip install 'tidemark[chat]'"
        ) from None
    from tidemark.chat import ChatApprover, ChatView, run_chat
    from tidemark.tools import AutoApprover

    config: FileConfig = args.file_config
    provider: ProviderName = args.provider or config.provider or default_provider()
    settings = _settings(args, config)
    extra_tools = _load_tools([*config.tools, *args.tools])
    async with _mcp_tools(args, config) as mcp_tools:
        model = await anyio.to_thread.run_sync(
            make_model, provider, args.model or config.model, _window(settings)
        )
        view = ChatView()
        try:
            agent = _agent(
                model,
                settings,
                tools=[*extra_tools, *mcp_tools],
                approver=AutoApprover() if settings.auto_approve else ChatApprover(view),
                on_event=follow(view),
                on_text=view.text,
            )
            return await _until_terminated(agent, run_chat(agent, view, args.session))
        finally:
            with anyio.CancelScope(shield=True):
                await model.aclose()


def _check_terminal() -> None:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise ConfigError(
            "tidemark chat needs a terminal (stdin and stdout); in scripts use "
            "`tidemark run TASK` or `tidemark resume --session ID TASK`"
        )


async def _tools_command(args: argparse.Namespace) -> int:
    """`tidemark tools`: every tool a session would have, and where it comes from."""
    from tidemark.tools import builtin_tools

    config: FileConfig = args.file_config
    rows: list[tuple[str, str, bool, str]] = [
        (t.name, "built-in", t.needs_approval, t.description) for t in builtin_tools()
    ]
    for spec in [*config.tools, *args.tools]:
        rows += [
            (t.name, f"python {spec}", t.needs_approval, t.description) for t in _load_tools([spec])
        ]
    async with _mcp_tools(args, config) as mcp_tools:
        rows += [(t.name, t.source, t.needs_approval, t.description) for t in mcp_tools]
    seen: set[str] = set()
    for name, *_ in rows:
        if name in seen:
            raise ConfigError(f"two tools are named {name!r}: rename one (see `tidemark tools`)")
        seen.add(name)
    if args.json:
        for name, source, approval, description in rows:
            record = {"name": name, "source": source, "needs_approval": approval}
            print(json.dumps({**record, "description": description}, ensure_ascii=False))
        return 0
    width = max(len(name) for name, *_ in rows)
    source_width = max(len(source) for _, source, *_ in rows)
    print(f"{'TOOL':<{width}}  {'FROM':<{source_width}}  APPROVAL  DESCRIPTION")
    for name, source, approval, description in rows:
        summary = description.strip().splitlines()[0] if description.strip() else ""
        asks = "asks" if approval else "no"
        print(f"{name:<{width}}  {source:<{source_width}}  {asks:<8}  {summary[:70]}")
    return 0


def _tidemark_error(exc: BaseException) -> TidemarkError | None:
    """The error to report, also from inside the task groups' exception groups."""
    if isinstance(exc, TidemarkError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", exc)
        for inner in group.exceptions:
            found = _tidemark_error(inner)
            if found is not None:
                return found
    return None


def _report(error: TidemarkError, args: argparse.Namespace) -> int:
    """One line on stderr: the error, and which command to run next when there is one."""
    hint = ""
    if isinstance(error, SessionNotFoundError):
        hint = (
            "list them with `tidemark inspect --list`"
            if getattr(args, "session", None)
            else "start one with `tidemark run TASK`"
        )
    elif error.session_id is not None and error.exit_code == 1:
        hint = f"continue with `tidemark resume --session {error.session_id}`"
    print(f"tidemark: error: {error}{'; ' + hint if hint else ''}", file=sys.stderr)
    return error.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _one_line_warnings()
    if args.command == "inspect":
        from tidemark.inspection import inspect_command

        try:
            return inspect_command(args)
        except TidemarkError as exc:
            return _report(exc, args)
    if args.command == "batch":
        from tidemark.batch_ray import batch_command

        try:
            return batch_command(args, _flag_settings(args))
        except TidemarkError as exc:
            return _report(exc, args)
    log_file: TextIO | None = None
    try:
        if getattr(args, "log_json", None):
            try:
                log_file = Path(args.log_json).open("a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise ConfigError(f"--log-json {args.log_json}: {exc.strerror}") from None
        _check_workspace(args.workspace)
        _check_task(args)
        args.file_config = load_config(Path(args.workspace).expanduser())
        if args.command == "tools":
            return anyio.run(_tools_command, args)
        if args.command == "chat":
            _check_terminal()
            _configure_logging(log_file)
            try:
                return anyio.run(_chat, args)  # prompt_toolkit runs on asyncio
            except KeyboardInterrupt:  # Ctrl-C before the chat took the terminal
                print("tidemark: interrupted", file=sys.stderr)
                return 130
        _configure_logging(log_file)
        return anyio.run(_main_async, args)
    except (TidemarkError, BaseExceptionGroup) as exc:
        error = _tidemark_error(exc)
        if error is None:
            raise
        return _report(error, args)
    finally:
        if log_file is not None:
            log_file.close()
        if argv is None:  # the command itself, about to exit (not a call from Python code)
            # Collecting the whole heap at interpreter exit takes seconds on a busy machine
            # (measured: 2.7-3.7 s against 0.1-0.2 s frozen); Ctrl-C must end the run at once.
            gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
