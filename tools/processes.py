"""Commands run for ``bash``: own process group, tied to the runtime's life, recorded.

Each command runs under a small supervisor process that leads a new session (so its
process group holds everything the command starts). The supervisor asks the kernel for a
signal when the runtime dies (``PR_SET_PDEATHSIG``) and also watches its parent id; when the
runtime is gone it kills the whole group, even if the runtime was ``kill -9``-ed. Groups are
also recorded in a registry file while they run, so ``reap_leftover_processes`` can end
whatever still survives (say the supervisor itself was killed) when the session resumes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
from anyio.abc import ByteReceiveStream, Process

__all__ = ["CommandResult", "reap_leftover_processes", "run_command", "supervised_argv"]

_GRACE_SECONDS = 0.5
_DRAIN_SECONDS = 2.0

# Runs with `python -I -S -c`: argv = [runtime pid, program, args...].
_SUPERVISOR = r"""
import os, signal, sys, threading, time
parent = int(sys.argv[1])
def end_group():
    os.killpg(0, signal.SIGKILL)
def on_parent_death(signum, frame):
    if os.getppid() != parent:  # not just the spawning thread of the runtime ending
        end_group()
signal.signal(signal.SIGUSR1, on_parent_death)
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGUSR1, 0, 0, 0)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != parent:
    end_group()
child = os.posix_spawnp(
    sys.argv[2], sys.argv[2:], os.environ, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ)
)
def watch_parent():
    while True:
        if os.getppid() != parent:
            end_group()
        time.sleep(0.5)
threading.Thread(target=watch_parent, daemon=True).start()
status = os.waitpid(child, 0)[1]
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
"""


def supervised_argv(argv: list[str]) -> list[str]:
    """`argv` run under the supervisor: its whole process group ends when the runtime dies.

    The caller must start it as a new session (``start_new_session=True``) so that the
    group holds the program and everything it starts, and nothing else.
    """
    return [sys.executable, "-I", "-S", "-c", _SUPERVISOR, str(os.getpid()), *argv]


@dataclass(frozen=True)
class CommandResult:
    output: str
    exit_code: int | None  # None when the command timed out
    timed_out: bool
    stopped_background: bool  # processes left running by the command were stopped


class _Output:
    """Merged output, keeping the head and the tail when it grows past the cap."""

    def __init__(self, max_chars: int) -> None:
        self._head_cap = max_chars // 3
        self._tail_cap = max_chars - self._head_cap
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0

    def add(self, chunk: bytes) -> None:
        self._total += len(chunk)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        self._tail += chunk
        if len(self._tail) > self._tail_cap:
            del self._tail[: len(self._tail) - self._tail_cap]

    def text(self) -> str:
        head = self._head.decode("utf-8", "replace")
        cut = self._total - len(self._head) - len(self._tail)
        tail = self._tail.decode("utf-8", "replace")
        if cut <= 0:
            return head + tail
        notice = (
            f"\n[... {cut} bytes of output cut from the middle; redirect the output to a "
            "file and use grep or read_file with offset/limit to see all of it ...]\n"
        )
        return head + notice + tail


async def run_command(
    command: str,
    *,
    cwd: Path,
    timeout: float,  # noqa: ASYNC109
    max_chars: int,
    registry: Path | None = None,
) -> CommandResult:
    """Run ``bash -c command``; on timeout or cancellation its whole process group ends."""
    process = await anyio.open_process(
        supervised_argv(["bash", "-c", command]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
    )
    pgid = process.pid
    if registry is not None:
        # The registry is fsync-ed under a lock: off the event loop, which other sessions share.
        await anyio.to_thread.run_sync(_record_group, registry, pgid, command)
    output = _Output(max_chars)
    drained = anyio.Event()
    timed_out = stopped = False
    try:
        assert process.stdout is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, process.stdout, output, drained)
            with anyio.move_on_after(timeout) as deadline:
                await process.wait()
            timed_out = deadline.cancelled_caught
            stopped = await _stop_group(pgid, process)
            with anyio.move_on_after(_DRAIN_SECONDS):
                await drained.wait()
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await _stop_group(pgid, process)
            await process.aclose()
            if registry is not None:
                await anyio.to_thread.run_sync(_forget_group, registry, pgid)
    return CommandResult(
        output=output.text(),
        exit_code=None if timed_out else process.returncode,
        timed_out=timed_out,
        stopped_background=stopped and not timed_out,
    )


async def _drain(stream: ByteReceiveStream, output: _Output, done: anyio.Event) -> None:
    try:
        async for chunk in stream:
            output.add(chunk)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass
    finally:
        done.set()


async def _stop_group(pgid: int, process: Process) -> bool:
    """SIGTERM the group, give it a short grace, then SIGKILL. False if it was already gone."""
    if not await _group_alive_async(pgid) or not _signal_group(pgid, signal.SIGTERM):
        return False
    with anyio.move_on_after(_GRACE_SECONDS):
        await process.wait()
        while await _group_alive_async(pgid):  # noqa: ASYNC110 (no event says it is gone)
            await anyio.sleep(0.02)
        return True
    _signal_group(pgid, signal.SIGKILL)
    await process.wait()
    return True


def _signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member we may not signal: the group still exists
    return True


async def _group_alive_async(pgid: int) -> bool:
    """`_group_alive` without blocking the event loop: an empty group is seen at once; a
    scan of /proc (hundreds of files on a busy machine) runs in a worker thread."""
    if not _signal_group(pgid, 0):
        return False  # no process at all in the group, not even a zombie
    return await anyio.to_thread.run_sync(_group_alive, pgid)


def _group_alive(pgid: int) -> bool:
    """Whether the group has a member that is not a zombie (zombies wait for init to reap)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return _signal_group(pgid, 0)
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields 5 (pgrp) and 3 (state)
            return True
    return False


def process_start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if it is gone or unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may hold spaces and parentheses; fields after it follow the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of the whole line


def _record_group(registry: Path, pgid: int, command: str) -> None:
    entry: dict[str, Any] = {
        "pgid": pgid,
        "start_time": process_start_time(pgid),
        "owner_pid": os.getpid(),
        "owner_start_time": process_start_time(os.getpid()),
        "command": command[:200],
    }
    _update_registry(registry, lambda groups: [*groups, entry])


def _forget_group(registry: Path, pgid: int) -> None:
    owner = os.getpid()
    _update_registry(
        registry,
        lambda groups: [g for g in groups if (g.get("pgid"), g.get("owner_pid")) != (pgid, owner)],
    )


def reap_leftover_processes(registry: Path) -> int:
    """Kill process groups recorded by runtimes that are gone; return how many were killed.

    A group is killed only if its leader's start time still matches the record, so a
    reused pid is never touched. Records of a runtime that is still running are kept.
    """
    killed = 0

    def reap(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal killed
        kept: list[dict[str, Any]] = []
        for group in groups:
            owner, owner_started = group.get("owner_pid"), group.get("owner_start_time")
            alive = isinstance(owner, int) and process_start_time(owner) == owner_started
            if alive and owner_started is not None:
                kept.append(group)
                continue
            pgid, started = group.get("pgid"), group.get("start_time")
            if not isinstance(pgid, int) or started is None:
                continue
            if process_start_time(pgid) == started and _group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
                killed += 1
        return kept

    if registry.exists():
        _update_registry(registry, reap)
    return killed


def _update_registry(
    registry: Path, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
) -> None:
    """Read, change and atomically replace the registry, under a lock on its folder."""
    registry.parent.mkdir(parents=True, exist_ok=True)
    with _locked(registry.parent):
        groups = change(_read_groups(registry))
        temporary = registry.with_name(f".{registry.name}.{os.getpid()}.tmp")
        with temporary.open("w", encoding="utf-8") as file:
            json.dump({"groups": groups}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, registry)


def _read_groups(registry: Path) -> list[dict[str, Any]]:
    try:
        data: object = json.loads(registry.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict):
        return []
    groups = cast(dict[str, object], data).get("groups")
    if not isinstance(groups, list):
        return []
    return [cast(dict[str, Any], g) for g in cast(list[object], groups) if isinstance(g, dict)]


@contextlib.contextmanager
def _locked(directory: Path) -> Generator[None]:
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
