"""`tidemark batch` on Ray: workers that host many sessions each, and the loop that feeds them.

Sessions spend most of their time waiting for the model, so each Ray worker is an async
actor (`SessionHost`) that runs many sessions on one event loop, sharing one model client.
The driver keeps at most ``--concurrency`` tasks in flight, spread over one actor per CPU
of the cluster; a task whose worker dies is retried (resuming its session) up to
``max_attempts`` times on a fresh actor; a task that fails is a result, never the end of
the batch. Ctrl-C cancels the sessions in flight (they end as `tidemark resume` expects)
and leaves the folder ready for the same command to continue.

With no address, a local Ray instance is started, bounded to this machine's CPUs; with
``--address`` (or ``RAY_ADDRESS``) the batch runs on that cluster, whose nodes need
tidemark installed (``pip install 'tidemark[batch]'``).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from tidemark.batch import (
    BatchOptions,
    BatchTask,
    ModelCache,
    ResultStore,
    batch_token,
    pack_session,
    read_tasks,
    result_line,
    run_task,
    shares_folder,
    unpack_session,
    worker_base,
)
from tidemark.errors import ConfigError, ProviderUnavailableError

if TYPE_CHECKING:  # the terminal UI loads only for the command, not on workers
    from rich.progress import Progress

__all__ = ["BatchPlan", "SessionHost", "batch_command", "render_summary", "run_on_ray"]

# Environment a remote worker needs to reach the model (a local instance inherits it).
_FORWARDED_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL")
SESSIONS_PER_CPU = 8  # default --concurrency per CPU: sessions mostly wait for the model
_CANCEL_GRACE_S = 15.0


class SessionHost:
    """A Ray actor: many sessions on one event loop, one model client shared by them."""

    def __init__(self, out: str, token: str) -> None:
        self.out = out
        self.token = token
        self.base = worker_base(out, token)
        self.shared = shares_folder(out, token)
        self.models = ModelCache()

    async def run(self, task: BatchTask, options: BatchOptions, attempt: int) -> dict[str, Any]:
        record = await run_task(task, options, self.base, self.models, attempt)
        if not self.shared:  # the driver cannot see this machine's files: send them back
            record["_archive"] = pack_session(record.get("session_dir"))
            record["_host"] = os.uname().nodename
        return record

    def pid(self) -> int:
        return os.getpid()


@dataclass
class BatchPlan:
    """What one run of the batch does."""

    todo: list[BatchTask]
    options: BatchOptions
    out: Path
    address: str | None = None
    concurrency: int | None = None
    max_attempts: int = 3
    num_cpus: int | None = None  # of a local instance (default: this machine's)
    host: type[SessionHost] = SessionHost  # the actor class (a subclass may measure it)


@dataclass
class _Flight:
    task: BatchTask
    actor: int
    generation: int
    attempt: int
    started: float


@dataclass
class RunStats:
    done: int = 0
    failed: int = 0
    retried: int = 0
    interrupted: list[str] = field(default_factory=list[str])


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ProviderUnavailableError(
            "tidemark batch runs on Ray, which is not installed: pip install 'tidemark[batch]'"
        ) from None
    return ray


@contextmanager
def _ray_session(ray: Any, plan: BatchPlan) -> Generator[None]:
    env = {k: os.environ[k] for k in _FORWARDED_ENV if os.environ.get(k)}
    address = plan.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
        "runtime_env": {"env_vars": env} if env else None,
    }
    if address is None:
        cpus = plan.num_cpus or len(os.sched_getaffinity(0))
        kwargs.update(address="local", num_cpus=cpus, object_store_memory=200 * 1024**2)
    else:
        kwargs.update(address=address)
    try:
        ray.init(**kwargs)
    except Exception as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cannot start {where}: {first}") from None
    try:
        yield
    finally:
        ray.shutdown()


class _Interrupted(BaseException):
    """Ctrl-C or SIGTERM in the driver."""


class _Stop:
    """Whether Ctrl-C or SIGTERM came; the driver loop looks between its short waits.

    The handler only records it: an exception raised inside Ray's blocking calls would
    surface as a SystemError from its extension code.
    """

    def __init__(self) -> None:
        self.count = 0

    @property
    def requested(self) -> bool:
        return self.count > 0

    @property
    def at_once(self) -> bool:
        """A second Ctrl-C: stop without waiting for the sessions to end (they resume later)."""
        return self.count > 1

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1


@contextmanager
def _stop_on_signals() -> Generator[_Stop]:
    stop = _Stop()
    old_int = signal.signal(signal.SIGINT, stop)
    old_term = signal.signal(signal.SIGTERM, stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def run_on_ray(
    plan: BatchPlan,
    store: ResultStore,
    on_result: Callable[[dict[str, Any]], None],
    on_status: Callable[[int, RunStats], None],
) -> RunStats:
    """Run `plan.todo` on Ray, adding each result to `store` as it ends."""
    ray = _import_ray()
    from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError

    lost_worker = (RayActorError, WorkerCrashedError, ObjectLostError)
    stats = RunStats()
    token = batch_token(plan.out)
    with _stop_on_signals() as stop, _ray_session(ray, plan):
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        local_model = plan.options.provider == "local"
        concurrency = plan.concurrency or (cpus if local_model else SESSIONS_PER_CPU * cpus)
        concurrency = max(1, min(concurrency, len(plan.todo)))
        n_actors = min(cpus, concurrency)
        per_actor = math.ceil(concurrency / n_actors)
        host = ray.remote(plan.host).options(
            num_cpus=1, max_concurrency=per_actor, max_restarts=0, max_task_retries=0
        )
        actors: list[Any] = [host.remote(str(plan.out), token) for _ in range(n_actors)]
        generations = [0] * n_actors
        load = [0] * n_actors
        pending: deque[BatchTask] = deque(plan.todo)
        attempts: dict[str, int] = {}
        flights: dict[Any, _Flight] = {}

        def submit(task: BatchTask) -> None:
            i = min(range(n_actors), key=lambda a: load[a])
            attempt = attempts.get(task.id, 0) + 1
            attempts[task.id] = attempt
            ref = actors[i].run.remote(task, plan.options, attempt)
            flights[ref] = _Flight(task, i, generations[i], attempt, time.monotonic())
            load[i] += 1

        def replace_actor(i: int, generation: int) -> None:
            if generations[i] != generation:
                return  # already replaced after another of its tasks failed
            ray.kill(actors[i], no_restart=True)
            actors[i] = host.remote(str(plan.out), token)
            generations[i] += 1

        def finish(flight: _Flight, record: dict[str, Any]) -> None:
            archive = record.pop("_archive", None)
            remote_host = record.pop("_host", None)
            if remote_host is not None:
                record["workspace"] = f"{remote_host}:{record.get('workspace')}"
                if archive is not None:
                    local = plan.out / "tasks" / flight.task.id / "session"
                    unpack_session(archive, local)
                    record["session_dir"] = str(local)
            line = result_line(record)
            store.add(line)
            stats.done += 1
            stats.failed += line["outcome"] != "finished"
            on_result(line)

        try:
            while pending or flights:
                if stop.requested:
                    raise _Interrupted
                while pending and len(flights) < concurrency:
                    submit(pending.popleft())
                on_status(len(flights), stats)
                ready, _ = ray.wait(list(flights), num_returns=1, timeout=0.25)
                for ref in ready:
                    flight = flights.pop(ref)
                    load[flight.actor] -= 1
                    try:
                        record: dict[str, Any] = ray.get(ref)
                    except lost_worker as exc:
                        replace_actor(flight.actor, flight.generation)
                        if flight.attempt < plan.max_attempts:
                            stats.retried += 1
                            pending.appendleft(flight.task)
                            continue
                        record = _lost(flight, exc)
                    except Exception as exc:  # our own code failed on the worker: a bug
                        record = _lost(flight, exc, what="failed on its worker")
                    finish(flight, record)
        except _Interrupted:
            stats.interrupted = [f.task.id for f in flights.values()] + [t.id for t in pending]
            on_status(len(flights), stats)
            for ref in flights:
                ray.cancel(ref)
            # The sessions end cleanly (interrupted tool calls answered, files closed) and
            # whatever finished meanwhile is kept.
            deadline = time.monotonic() + _CANCEL_GRACE_S
            while flights and time.monotonic() < deadline and not stop.at_once:
                ready, _ = ray.wait(list(flights), num_returns=1, timeout=0.25)
                for ref in ready:
                    flight = flights.pop(ref)
                    try:
                        finish(flight, ray.get(ref))
                        stats.interrupted.remove(flight.task.id)
                    except Exception:  # cancelled, or lost: it resumes on the next run
                        pass
    return stats


def _lost(flight: _Flight, exc: BaseException, what: str = "") -> dict[str, Any]:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return result_line(
        {
            "id": flight.task.id,
            "outcome": "error",
            "exit_code": 1,
            "turns": 0,
            "compactions": 0,
            "attempts": flight.attempt,
            "wall_s": round(time.monotonic() - flight.started, 3),
            "error": (
                f"the task {what}: {reason}"
                if what
                else f"its worker died {flight.attempt} times ({reason}); "
                "rerun with --retry-failed to try again"
            ),
            "final_text": "",
        }
    )


# -- what the user sees -------------------------------------------------------------------------


class BatchProgress:
    """A progress bar on a terminal; one line per ended task anywhere else."""

    def __init__(self, total: int, already: int, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.total = total
        self.stream = stream
        self.console = Console(file=stream, highlight=False)
        self._bar: Progress | None = None
        self._task: Any = None
        self.count = already
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]tidemark batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("starting Ray", total=total, completed=already)

    def status(self, running: int, stats: RunStats) -> None:
        if self._bar is None:
            return
        parts = [f"{running} running"]
        if stats.failed:
            parts.append(f"{stats.failed} failed")
        if stats.retried:
            parts.append(f"{stats.retried} retried")
        self._bar.update(self._task, description=" · ".join(parts))

    def result(self, record: dict[str, Any]) -> None:
        self.count += 1
        line = (
            f"[{self.count}/{self.total}] {record['id']}: {record['outcome']} "
            f"({record['turns']} turns, {record['wall_s']:.1f} s)"
        )
        if record.get("error"):
            line += f": {record['error']}"
        if self._bar is not None:
            self._bar.advance(self._task)
            self._bar.console.print(line, markup=False)
        else:
            print(f"tidemark batch: {line}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _fmt_ms(value: Any) -> str:
    ms = float(value or 0)
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def render_summary(
    tasks: Sequence[BatchTask], store: ResultStore, out: Path, stream: TextIO
) -> None:
    """The table of every task of the file: its result, or why it has none yet."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, highlight=False)
    if not console.is_terminal:
        console = Console(file=stream, highlight=False, width=200, no_color=True)
    table = Table(title=f"tidemark batch: {out / 'results.jsonl'}", title_justify="left")
    for name, justify in (
        ("id", "left"),
        ("outcome", "left"),
        ("exit", "right"),
        ("turns", "right"),
        ("tokens in / out", "right"),
        ("cost", "right"),
        ("compactions", "right"),
        ("longest stall", "right"),
        ("wall", "right"),
        ("attempts", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    totals = {"turns": 0, "in": 0, "out": 0, "cost": 0.0, "priced": True, "done": 0}
    for task in tasks:
        r = store.results.get(task.id)
        if r is None:
            table.add_row(task.id, "not finished (rerun to continue)", *[""] * 8)
            continue
        totals["done"] += 1
        totals["turns"] += int(r.get("turns") or 0)
        totals["in"] += int(r.get("input_tokens") or 0)
        totals["out"] += int(r.get("output_tokens") or 0)
        cost = r.get("cost_usd")
        if cost is None:
            totals["priced"] = False
        else:
            totals["cost"] += float(cost)
        style = "green" if r.get("outcome") == "finished" else "red"
        table.add_row(
            task.id,
            f"[{style}]{r.get('outcome')}[/]",
            str(r.get("exit_code")),
            str(r.get("turns") or 0),
            f"{int(r.get('input_tokens') or 0):,} / {int(r.get('output_tokens') or 0):,}",
            "?" if cost is None else f"${float(cost):.4f}",
            str(r.get("compactions") or 0),
            _fmt_ms(r.get("longest_stall_ms")),
            f"{float(r.get('wall_s') or 0):.1f} s",
            str(r.get("attempts") or ""),
        )
    finished = sum(1 for t in tasks if store.results.get(t.id, {}).get("outcome") == "finished")
    cost_text = f"${totals['cost']:.4f}" if totals["priced"] else "? (model not priced)"
    table.caption = (
        f"{finished} of {len(tasks)} finished, {totals['done'] - finished} failed, "
        f"{len(tasks) - totals['done']} not finished; {totals['turns']} turns, "
        f"{totals['in']:,} / {totals['out']:,} tokens, cost {cost_text} (agent turns only)"
    )
    table.caption_justify = "left"
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as capture:
        console.print(table)
    for line in capture.get().splitlines():
        print(line.rstrip(), file=stream)


def stderr_progress(total: int, already: int) -> BatchProgress:
    return BatchProgress(total, already, sys.stderr)


# -- the command --------------------------------------------------------------------------------


def batch_command(args: Any, flag_settings: dict[str, Any]) -> int:
    """`tidemark batch`: exit 0 all finished, 1 some failed, 2 bad input, 130 interrupted."""
    from tidemark.config_file import load_config, load_user_config
    from tidemark.providers import default_provider

    user_config = load_user_config()
    options = BatchOptions(
        provider=args.provider or user_config.provider or default_provider(),
        model=args.model,
        settings=flag_settings,
        tools=tuple(args.tools),
        provider_given=args.provider is not None,
        user_config=user_config,
    )
    tasks = read_tasks(Path(args.tasks_file).expanduser(), options)
    _check_tools([*user_config.tools, *options.tools])
    for task in tasks:  # a wrong key in a workspace's config file stops the batch at once
        if not task.clone:
            load_config(Path(task.workspace), user=False)
    out = Path(args.out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a folder for the results")
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out)
    if args.retry_failed:
        again = store.forget_failed()
        if again:
            print(f"tidemark batch: running {len(again)} failed tasks again", file=sys.stderr)
    todo = [t for t in tasks if t.id not in store.results]
    stats = RunStats()
    if not todo:
        print(
            f"tidemark batch: every task has a result in {store.path}; nothing to run "
            "(--retry-failed runs the failed ones again)",
            file=sys.stderr,
        )
    else:
        resumed = sum((out / "tasks" / t.id / "workspace").is_dir() for t in todo)
        print(
            f"tidemark batch: {len(todo)} of {len(tasks)} tasks to run"
            + (f" ({resumed} resume where they stopped)" if resumed else "")
            + (f" on the Ray cluster at {args.address}" if args.address else ""),
            file=sys.stderr,
            flush=True,
        )
        progress = stderr_progress(len(tasks), len(tasks) - len(todo))
        plan = BatchPlan(
            todo=todo,
            options=options,
            out=out,
            address=args.address,
            concurrency=args.concurrency,
            max_attempts=args.max_attempts,
        )
        try:
            stats = run_on_ray(plan, store, progress.result, progress.status)
        except KeyboardInterrupt:
            stats.interrupted = [t.id for t in todo if t.id not in store.results]
        finally:
            progress.close()
            store.close()
    render_summary(tasks, store, out, sys.stdout)
    if stats.interrupted:
        print(
            f"tidemark batch: interrupted with {len(stats.interrupted)} tasks not finished; "
            "rerun the same command to continue",
            file=sys.stderr,
        )
        return 130
    ended = [store.results[t.id] for t in tasks if t.id in store.results]
    return 0 if all(r.get("outcome") == "finished" for r in ended) else 1


def _check_tools(specs: Sequence[str]) -> None:
    from tidemark.tools import ToolLoadError, load_tools

    for spec in specs:
        try:
            load_tools(spec)
        except ToolLoadError as exc:
            raise ConfigError(f"--tools {spec}: {exc}") from None
