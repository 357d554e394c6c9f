"""`tidemark batch`: many tasks, each a full session in its own copy of its workspace.

TASKS.jsonl holds one task per line (`id`, `workspace`, `task`, optional settings). This
module reads and checks that file, prepares each task's workspace copy, runs one task as
a session (`run_task`, what a Ray worker calls), keeps `OUT/results.jsonl` and renders the
summary. `tidemark.batch_ray` schedules the tasks on Ray.

Layout of ``--out DIR``::

    DIR/.tidemark-batch.json            the batch's token (workers use it to see DIR)
    DIR/results.jsonl                   one line per task that ended (finished or failed)
    DIR/tasks/<id>/workspace/           the task's copy of its workspace (its session too:
                                        workspace/.tidemark/sessions/<session-id>/)
    DIR/tasks/<id>/attempt.json         which worker runs (or ran) the latest attempt
    DIR/tasks/<id>/session/             the session folder, copied back from a remote worker

A rerun reads results.jsonl and skips every task in it; a task with a workspace copy but
no result was interrupted and resumes from its transcript, like `tidemark resume`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
from pydantic import ValidationError

from tidemark.config import Settings
from tidemark.config_file import FileConfig, load_config
from tidemark.errors import ConfigError, TidemarkError, TurnLimitError, WorkspaceError
from tidemark.inspection import read_events, summarize
from tidemark.loop import Agent, RunResult
from tidemark.mcp_tools import connect_mcp_servers
from tidemark.model import Model
from tidemark.providers import ProviderName, make_model
from tidemark.storage import JsonlAppender, atomic_write_text, read_jsonl
from tidemark.tools import default_approver
from tidemark.transcript import SessionPaths, list_sessions, load_transcript

__all__ = [
    "RESULT_KEYS",
    "BatchOptions",
    "BatchTask",
    "ModelCache",
    "ResultStore",
    "read_tasks",
    "run_task",
    "task_settings",
]

MARKER = ".tidemark-batch.json"
RESULTS = "results.jsonl"

# Keys of each results.jsonl line, in order.
RESULT_KEYS = (
    "id",
    "outcome",
    "exit_code",
    "turns",
    "compactions",
    "memory_updates",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cost_usd",
    "longest_stall_ms",
    "wall_s",
    "attempts",
    "error",
    "final_text",
    "session_id",
    "session_dir",
    "workspace",
)

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# git URLs: scheme://..., or scp-like user@host:path.
_URL_RE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:)", re.IGNORECASE)

# Settings a task line may set (at top level or under "settings"), beside the CLI flags.
TASK_SETTINGS = (
    "max_turns",
    "context_window",
    "compact_at",
    "memory_init_tokens",
    "memory_update_tokens",
    "memory_tool_calls",
    "compaction_wait_ms",
    "max_output_tokens",
    "tool_timeout",
)
_TASK_KEYS = ("id", "workspace", "task", "model", "settings", *TASK_SETTINGS)


@dataclass(frozen=True)
class BatchTask:
    """One line of TASKS.jsonl, checked."""

    id: str
    workspace: str  # an absolute directory, or a git URL to clone
    clone: bool
    task: str
    line: int
    model: str | None = None
    settings: dict[str, Any] = field(default_factory=dict[str, Any])


@dataclass(frozen=True)
class BatchOptions:
    """What the command line says for every task (a task's own settings win), and the
    user's config file, read where the command runs.

    Each task's workspace files (`.tidemark/config.toml`, `.mcp.json`) are read from its
    copy where it runs. Precedence, as for `tidemark run`: the task's line, the command
    line, the workspace files, the user file.
    """

    provider: ProviderName
    model: str | None = None
    settings: dict[str, Any] = field(default_factory=dict[str, Any])
    tools: tuple[str, ...] = ()
    provider_given: bool = False  # --provider: it wins over a workspace file's provider
    user_config: FileConfig = field(default_factory=FileConfig)


# -- TASKS.jsonl --------------------------------------------------------------------------------


def read_tasks(path: Path, options: BatchOptions) -> list[BatchTask]:
    """Every task of the file; ConfigError (one line: file, line, key) on the first bad one."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (TASKS.jsonl: one JSON task per line)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    tasks: list[BatchTask] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path.name} line {number}"
        task = _parse_line(line, where, number, path.parent, options)
        if task.id in seen:
            raise ConfigError(f"{where}: id {task.id!r} is already used on line {seen[task.id]}")
        seen[task.id] = number
        tasks.append(task)
    if not tasks:
        raise ConfigError(
            f"{path}: no tasks (one JSON object per line with id, workspace and task)"
        )
    return tasks


def _parse_line(line: str, where: str, number: int, base: Path, options: BatchOptions) -> BatchTask:
    try:
        data: object = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object with id, workspace and task")
    record = cast(dict[str, Any], data)
    for key in record:
        if key not in _TASK_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(_TASK_KEYS)})")
    for key in ("id", "workspace", "task"):
        if key not in record:
            raise ConfigError(f"{where}: missing key {key!r}")
    task_id = record["id"]
    if isinstance(task_id, int) and not isinstance(task_id, bool):
        task_id = str(task_id)
    if not isinstance(task_id, str) or not _ID_RE.match(task_id):
        raise ConfigError(
            f"{where}: key 'id' must be a name of letters, digits, '.', '_' or '-' "
            f"(it names the task's folder), got {record['id']!r}"
        )
    text = record["task"]
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: key 'task' must be a non-empty string")
    model = record.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ConfigError(f"{where}: key 'model' must be a non-empty string")
    workspace, clone = _workspace(record["workspace"], where, base)
    settings = _task_settings(record, where)
    _check_settings(where, {**options.settings, **settings})
    return BatchTask(
        id=task_id,
        workspace=workspace,
        clone=clone,
        task=text,
        line=number,
        model=model,
        settings=settings,
    )


def _workspace(value: Any, where: str, base: Path) -> tuple[str, bool]:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: key 'workspace' must be a directory path or a git URL")
    if _URL_RE.match(value):
        return value, True
    path = (base / Path(value).expanduser()).resolve()
    if not path.is_dir():
        raise ConfigError(
            f"{where}: key 'workspace': {path} is not a directory (paths are relative to the "
            "TASKS file; a git URL is cloned)"
        )
    # A bare repository (or a `.git` folder) has no work tree to copy: clone it.
    bare = path.suffix == ".git" or ((path / "HEAD").is_file() and (path / "objects").is_dir())
    return str(path), bare


def _task_settings(record: dict[str, Any], where: str) -> dict[str, Any]:
    nested: object = record.get("settings", {})
    if not isinstance(nested, dict):
        raise ConfigError(f"{where}: key 'settings' must be an object")
    inner = cast(dict[str, Any], nested)
    for key in inner:
        if key not in TASK_SETTINGS:
            raise ConfigError(
                f"{where}: unknown key 'settings.{key}' (known: {', '.join(TASK_SETTINGS)})"
            )
    return {**inner, **{k: v for k, v in record.items() if k in TASK_SETTINGS}}


def _check_settings(where: str, values: dict[str, Any]) -> Settings:
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"{where}: {message}") from None
        raise ConfigError(f"{where}: key {first['loc'][0]!r}: {first['msg']}") from None


# -- results.jsonl ------------------------------------------------------------------------------


class ResultStore:
    """`OUT/results.jsonl`: one whole line per ended task, appended as each one ends."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / RESULTS
        self.results: dict[str, dict[str, Any]] = {}
        for record in read_jsonl(self.path):
            task_id = record.get("id")
            if isinstance(task_id, str):
                self.results[task_id] = record
        self._file: JsonlAppender | None = None

    def forget_failed(self) -> list[str]:
        """Drop the results of tasks that did not finish, so they run again; their ids."""
        failed = [i for i, r in self.results.items() if r.get("outcome") != "finished"]
        if failed:
            for task_id in failed:
                del self.results[task_id]
            text = "".join(
                json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n"
                for r in self.results.values()
            )
            atomic_write_text(self.path, text)
        return failed

    def add(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self._file = JsonlAppender(self.path)
        self._file.append(record)
        self.results[str(record["id"])] = record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def batch_token(out: Path) -> str:
    """The batch's token in `OUT/.tidemark-batch.json`, made on first use.

    A worker that reads the same token at the same path shares this folder with the
    driver (same machine or a shared file system) and works in it directly.
    """
    marker = out / MARKER
    try:
        data: object = json.loads(marker.read_text(encoding="utf-8"))
        token: object = cast(dict[str, Any], data).get("token") if isinstance(data, dict) else None
        if isinstance(token, str):
            return token
    except (OSError, ValueError):
        pass
    token = secrets.token_hex(8)
    atomic_write_text(marker, json.dumps({"token": token}) + "\n")
    return token


def shares_folder(out: str, token: str) -> bool:
    try:
        data: object = json.loads((Path(out) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and cast(dict[str, Any], data).get("token") == token


# -- one task, on a worker ----------------------------------------------------------------------


class ModelCache:
    """One model (one HTTP client, one loaded local model) per worker, shared by its sessions."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str | None, int | None], Model] = {}
        self._lock = anyio.Lock()

    async def get(self, provider: ProviderName, name: str | None, window: int | None) -> Model:
        key = (provider, name, window)
        async with self._lock:
            if key not in self._models:
                self._models[key] = await anyio.to_thread.run_sync(
                    make_model, provider, name, window
                )
            return self._models[key]

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for model in self._models.values():
                await model.aclose()
            self._models.clear()


def prepare_workspace(task: BatchTask, folder: Path) -> Path:
    """The task's own copy of its workspace (made once; a half-made copy is made again)."""
    workspace = folder / "workspace"
    if workspace.is_dir():
        return workspace
    partial = folder / "workspace.partial"
    shutil.rmtree(partial, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    if task.clone:
        done = subprocess.run(
            ["git", "clone", "--quiet", "--", task.workspace, str(partial)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
        if done.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            last = (done.stderr.strip().splitlines() or ["git clone failed"])[-1]
            raise WorkspaceError(f"cannot clone {task.workspace}: {last}")
    else:
        source = Path(task.workspace)
        if not source.is_dir():
            raise WorkspaceError(f"workspace {source} does not exist on this worker")
        shutil.copytree(source, partial, symlinks=True, ignore=_skip_sessions(source))
    partial.rename(workspace)
    return workspace


def _skip_sessions(source: Path) -> Any:
    """Copy everything but the source's own tidemark sessions (the task starts its own)."""

    def ignore(directory: str, names: list[str]) -> list[str]:
        if Path(directory) == source / ".tidemark" and "sessions" in names:
            return ["sessions"]
        return []

    return ignore


def _latest_started_session(workspace: Path) -> SessionPaths | None:
    """The task's session if it got as far as its task message; an empty one is removed."""
    sessions = list_sessions(workspace)
    for paths in sessions[:-1]:
        shutil.rmtree(paths.root, ignore_errors=True)  # only one session per task copy
    if not sessions:
        return None
    latest = sessions[-1]
    if any(m.role == "user" for m in load_transcript(latest.transcript).messages):
        return latest
    shutil.rmtree(latest.root, ignore_errors=True)
    return None


async def run_task(
    task: BatchTask,
    options: BatchOptions,
    base: Path,
    models: ModelCache,
    attempt: int,
) -> dict[str, Any]:
    """Run (or resume) one task as a session under `base/tasks/<id>`; its result record.

    Only a cancellation (the batch was interrupted) escapes; every failure is a result.
    """
    folder = base / "tasks" / task.id
    started = time.monotonic()
    # File work (an fsync-ed write, reading a transcript and an event log) runs in threads:
    # the worker's other sessions share this event loop.
    await anyio.to_thread.run_sync(_write_attempt, folder, attempt)
    outcome, exit_code, error = "finished", 0, None
    workspace: Path | None = None
    paths: SessionPaths | None = None
    final = ""
    try:
        workspace = await anyio.to_thread.run_sync(prepare_workspace, task, folder)
        config = options.user_config.merge(
            await anyio.to_thread.run_sync(functools.partial(load_config, workspace, user=False))
        )
        provider = options.provider
        if not options.provider_given and config.provider is not None:
            provider = config.provider
        settings = task_settings(task, options, config, workspace)
        # Unless a window is set, the model brings its own (and its recommended settings).
        window = settings.context_window if "context_window" in settings.model_fields_set else None
        model = await models.get(provider, task.model or options.model or config.model, window)
        async with connect_mcp_servers(
            config.mcp_servers,
            workspace=workspace,
            log_dir=workspace / ".tidemark" / "mcp-logs",
        ) as mcp_tools:
            agent = Agent(
                model,
                tools=[*_load_tools([*config.tools, *options.tools]), *mcp_tools],
                settings=settings,
                approver=default_approver(settings.auto_approve),
            )
            existing = await anyio.to_thread.run_sync(_latest_started_session, workspace)
            result: RunResult
            if existing is None:
                result = await agent.run(task.task)
            else:
                result = await agent.resume(existing.session_id, None)
        paths = result.paths
        final = result.final_text
        if result.outcome == "nothing_to_do":  # it had finished before its result was kept
            ended = load_transcript(paths.transcript).messages
            final = ended[-1].text if ended else ""
    except TurnLimitError as exc:
        outcome, exit_code, error = "turn_limit", exc.exit_code, str(exc)
    except (TidemarkError, BaseExceptionGroup) as exc:
        found = _tidemark_error(exc)
        if found is None:
            if isinstance(exc, BaseExceptionGroup) and _cancelled(exc):
                raise
            outcome, exit_code, error = "error", 1, _bug(folder, exc)
        else:
            outcome, exit_code, error = "failed", found.exit_code, str(found)
    except Exception as exc:  # a bug must cost one task, not the batch
        outcome, exit_code, error = "error", 1, _bug(folder, exc)
    if paths is None and workspace is not None:
        sessions = list_sessions(workspace)
        paths = sessions[-1] if sessions else None
    record = functools.partial(
        _record, task, outcome, exit_code, error, final, paths, workspace, started, attempt
    )
    result_record: dict[str, Any] = {}
    with anyio.CancelScope(shield=True):  # an ended task's result is never lost to Ctrl-C
        result_record = await anyio.to_thread.run_sync(record)
    return result_record


def _write_attempt(folder: Path, attempt: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        folder / "attempt.json",
        json.dumps({"attempt": attempt, "pid": os.getpid(), "host": socket.gethostname()}) + "\n",
    )


def task_settings(
    task: BatchTask, options: BatchOptions, config: FileConfig, workspace: Path
) -> Settings:
    """A task's settings: its line, then the command line, then the config files (the
    workspace's over the user's); `Agent` lays them over what the model recommends."""
    values: dict[str, Any] = {}
    values.update(config.settings)
    flags = dict(options.settings)
    # --yes approves; without it a config file's `auto_approve` still holds (as for run).
    flags["auto_approve"] = bool(flags.get("auto_approve")) or values.get("auto_approve", False)
    values.update(flags)
    values.update(task.settings)
    try:
        return Settings(**values, workspace=workspace)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = f" {first['loc'][0]!r}" if first["loc"] else ""
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"task {task.id}: setting{where}: {message}") from None


def _cancelled(group: BaseExceptionGroup[Any]) -> bool:
    cancelled = anyio.get_cancelled_exc_class()
    return any(isinstance(e, cancelled) for e in group.exceptions)


def _tidemark_error(exc: BaseException) -> TidemarkError | None:
    if isinstance(exc, TidemarkError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in cast(BaseExceptionGroup[BaseException], exc).exceptions:
            found = _tidemark_error(inner)
            if found is not None:
                return found
    return None


def _bug(folder: Path, exc: BaseException) -> str:
    """Keep the traceback in the task's folder; the result gets one line."""
    text = "".join(traceback.format_exception(exc))
    with contextlib.suppress(OSError):
        atomic_write_text(folder / "error.txt", text)
    return f"internal error ({type(exc).__name__}: {exc}); traceback in {folder / 'error.txt'}"


def _load_tools(specs: Sequence[str]) -> list[Any]:
    from tidemark.tools import load_tools

    loaded: list[Any] = []
    for spec in specs:
        loaded.extend(load_tools(spec))
    return loaded


def _record(
    task: BatchTask,
    outcome: str,
    exit_code: int,
    error: str | None,
    final: str,
    paths: SessionPaths | None,
    workspace: Path | None,
    started: float,
    attempt: int,
) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    record.update(
        id=task.id,
        outcome=outcome,
        exit_code=exit_code,
        error=error,
        final_text=final,
        wall_s=round(time.monotonic() - started, 3),
        attempts=attempt,
        workspace=str(workspace) if workspace else None,
    )
    if paths is not None and paths.events.exists():
        events, damage = read_events(paths.events)
        s = summarize(paths.session_id, events, damage.count)
        record.update(
            turns=s.turns,
            compactions=s.compactions,
            memory_updates=s.updates_committed,
            input_tokens=s.input_tokens,
            output_tokens=s.output_tokens,
            cache_read_input_tokens=s.cache_read_input_tokens,
            cache_creation_input_tokens=s.cache_creation_input_tokens,
            cost_usd=s.estimated_cost_usd,
            longest_stall_ms=s.longest_stall_ms,
            session_id=paths.session_id,
            session_dir=str(paths.root),
        )
    else:
        record.update(
            turns=0,
            compactions=0,
            memory_updates=0,
            input_tokens=0,
            output_tokens=0,
            cache_read_input_tokens=0,
            cache_creation_input_tokens=0,
            longest_stall_ms=0.0,
        )
    return record


# -- session folders from remote workers --------------------------------------------------------


def pack_session(session_dir: str | None) -> bytes | None:
    """The session folder as a gzipped tar (a remote worker sends it back with the result)."""
    if not session_dir or not Path(session_dir).is_dir():
        return None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(session_dir, arcname=".")
    return buffer.getvalue()


def unpack_session(archive: bytes, target: Path) -> None:
    """Replace `target` with the session folder in `archive` (all or nothing)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".session.", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(partial, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def worker_base(out: str, token: str) -> Path:
    """Where a worker keeps a task's files: OUT itself when it shares the folder, else a
    folder of its own machine (the session folder is then sent back)."""
    if shares_folder(out, token):
        return Path(out)
    return Path(tempfile.gettempdir()) / "tidemark-batch" / token


def result_line(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as results.jsonl keeps it: the result keys in order, nothing else."""
    return {key: record.get(key) for key in RESULT_KEYS}
