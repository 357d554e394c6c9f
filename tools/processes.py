"""Commands run for ``bash``: every process they start ends with the call, recorded.

Each command runs under a small supervisor process that leads a new session and makes
itself the *child subreaper* of everything below it (``PR_SET_CHILD_SUBREAPER``): a process
that the command leaves behind, even one that called ``setsid`` or double-forked to leave
the process group, is re-parented to the supervisor instead of to init, so the supervisor
finds it among its descendants and ends it. It sweeps its descendants (TERM, a short
grace, then KILL until none is left) when the command ends, when the runtime stops the
call (timeout, cancellation: it gets SIGTERM) and when the runtime dies, even by
``kill -9`` (``PR_SET_PDEATHSIG`` and a watch on its parent id).

Every process of a call also carries a tag in its environment, and the call is recorded
in a registry file while it runs, so ``reap_leftover_processes`` (run again on resume) can
end whatever survived the supervisor itself: the recorded process group, and every
process still carrying the tag. A process that both leaves the group and clears its
environment is out of reach once its supervisor is gone (a cgroup would hold it; see
SECURITY.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.to_thread

from .atomic import atomic_write

__all__ = ["CommandResult", "reap_leftover_processes", "run_command", "supervised_argv"]

_GRACE_SECONDS = 0.5  # how long the supervisor lets processes end on SIGTERM
_STOP_SECONDS = 3.0  # how long the runtime lets the supervisor sweep before killing it
_DRAIN_SECONDS = 2.0
TAG_VARIABLE = "TIDEMARK_BASH_CALL"

# Runs with `python -I -S -c`: argv = [runtime pid, status fd or -1, grace seconds, program,
# args...]. It writes
# {"stopped": N} to the status fd when the command has ended and its leftovers are gone.
_SUPERVISOR = r"""
import json, os, signal, sys, threading, time
parent, status_fd, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
if status_fd >= 0:
    os.set_inheritable(status_fd, False)  # the command must not hold the status pipe open
me = os.getpid()
ending = threading.Lock()
try:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans below us come to us
    libc.prctl(1, signal.SIGUSR1, 0, 0, 0)  # PR_SET_PDEATHSIG
except Exception:
    pass

def descendants():
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/" + entry + "/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] != b"Z":  # a zombie is already dead: it only waits to be reaped
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [me]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found

def reap():
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass

def send(pids, signum):
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass

def sweep(grace):
    first = descendants()
    if first:
        send(first, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and descendants():
            reap()
            time.sleep(0.02)
        while True:  # what forks while being killed is re-parented to us: kill again
            left = descendants()
            if not left:
                break
            send(left, signal.SIGKILL)
            reap()
            time.sleep(0.005)
    reap()
    return len(first)

def end(code, grace):
    ending.acquire()  # one ending only (a signal and the parent watch may race)
    sweep(grace)
    os._exit(code)

def on_term(signum, frame):
    end(128 + signum, grace)

def on_parent_death(signum, frame):
    if os.getppid() != parent:  # not just the spawning thread of the runtime ending
        end(128 + signal.SIGKILL, 0)

signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGUSR1, on_parent_death)
if os.getppid() != parent:
    end(128 + signal.SIGKILL, 0)
child = os.posix_spawnp(
    sys.argv[4], sys.argv[4:], os.environ, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ)
)

def watch_parent():
    while True:
        if os.getppid() != parent:
            end(128 + signal.SIGKILL, 0)
        time.sleep(0.5)

threading.Thread(target=watch_parent, daemon=True).start()
try:
    status = os.waitpid(child, 0)[1]
except ChildProcessError:  # reaped by an ending under way in the parent watch
    time.sleep(3600)
code = os.waitstatus_to_exitcode(status)
with ending:
    stopped = sweep(grace)
    if status_fd >= 0:
        os.write(status_fd, json.dumps({"stopped": stopped}).encode())
    os._exit(code if code >= 0 else 128 - code)
"""


def supervised_argv(argv: list[str], *, status_fd: int = -1) -> list[str]:
    """`argv` run under the supervisor: it and everything it starts end when the supervisor
    is sent SIGTERM and when the runtime dies.

    The caller must start it as a new session (``start_new_session=True``). With
    ``status_fd`` (passed to the child), the supervisor writes ``{"stopped": N}`` there
    once the program has ended and the N processes it left behind are gone.
    """
    return [
        *(sys.executable, "-I", "-S", "-c", _SUPERVISOR),
        *(str(os.getpid()), str(status_fd), str(_GRACE_SECONDS)),
        *argv,
    ]


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
    """Run ``bash -c command``; when it ends, times out or is cancelled, every process it
    started ends too (see the module's docstring)."""
    tag = secrets.token_hex(12)
    status_read, status_write = os.pipe()
    process: _Child | None = None
    try:
        # Started in a worker thread: fork and exec hold the calling thread until the
        # supervisor has exec-ed, which on a busy machine takes long enough to stall every
        # other session sharing the event loop.
        with anyio.CancelScope(shield=True):  # a process that started is always ended below
            process = await anyio.to_thread.run_sync(
                functools.partial(
                    _Child.start,
                    supervised_argv(["bash", "-c", command], status_fd=status_write),
                    cwd=cwd,
                    env={**os.environ, TAG_VARIABLE: tag},
                    pass_fds=(status_write,),
                )
            )
    except BaseException:
        os.close(status_read)
        raise
    finally:
        os.close(status_write)
    assert process is not None  # the shielded start returned it or raised
    pgid = process.pid
    output = _Output(max_chars)
    drained = anyio.Event()
    timed_out = False
    report: dict[str, Any] | None = None
    try:
        if registry is not None:
            # The registry is fsync-ed under a lock: off the event loop, which other sessions
            # share.
            await anyio.to_thread.run_sync(_record_group, registry, pgid, command, tag)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, process.stdout, output, drained)
            with anyio.move_on_after(timeout) as deadline:
                await process.wait()
            timed_out = deadline.cancelled_caught
            await _stop(pgid, process)
            with anyio.move_on_after(_DRAIN_SECONDS):
                await drained.wait()
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await _stop(pgid, process)
            process.close()
            report = _read_report(status_read)
            if report is None:  # the supervisor was stopped before it could finish its sweep
                await anyio.to_thread.run_sync(_kill_tagged, tag)
            if registry is not None:
                await anyio.to_thread.run_sync(_forget_group, registry, pgid)
    stopped = report is not None and bool(report.get("stopped"))
    return CommandResult(
        output=output.text(),
        exit_code=None if timed_out else process.returncode,
        timed_out=timed_out,
        stopped_background=stopped and not timed_out,
    )


class _Child:
    """A supervisor process started off the event loop, waited for and read without
    blocking it: its exit through a pidfd where the kernel has them (polled otherwise),
    its merged output through a non-blocking pipe."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        assert popen.stdout is not None
        self.stdout = popen.stdout.fileno()
        os.set_blocking(self.stdout, False)
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):  # no pidfd: not Linux 5.3+
            self._pidfd = os.pidfd_open(self.pid)

    @classmethod
    def start(
        cls, argv: list[str], *, cwd: Path, env: dict[str, str], pass_fds: tuple[int, ...]
    ) -> _Child:
        """Blocking: call it in a worker thread."""
        return cls(
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        )

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        while (code := self._popen.poll()) is None:
            if self._pidfd is not None:
                await anyio.wait_readable(self._pidfd)  # readable once the process exited
            else:
                await anyio.sleep(0.02)
        return code

    def close(self) -> None:
        """Close the pipe and the pidfd (the process has been waited for)."""
        for fd in (self._pidfd, self.stdout):
            if fd is not None:
                anyio.notify_closing(fd)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        assert self._popen.stdout is not None
        self._popen.stdout.close()


async def _drain(fd: int, output: _Output, done: anyio.Event) -> None:
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                continue
            except OSError:  # closed under us
                break
            if not chunk:
                break
            output.add(chunk)
    except anyio.ClosedResourceError:
        pass
    finally:
        done.set()


async def _stop(pgid: int, process: _Child) -> None:
    """End a call still running: SIGTERM to its group makes the supervisor sweep everything
    below it; if it has not exited in time, the group is killed."""
    if process.returncode is None and _signal_group(pgid, signal.SIGTERM):
        with anyio.move_on_after(_STOP_SECONDS):
            await process.wait()
    if process.returncode is None:
        _signal_group(pgid, signal.SIGKILL)
        await process.wait()
    if await _group_alive_async(pgid):  # only if the supervisor could not finish
        _signal_group(pgid, signal.SIGKILL)


def _read_report(fd: int) -> dict[str, Any] | None:
    """What the supervisor wrote when it finished; None if it ended before (killed)."""
    try:
        os.set_blocking(fd, False)
        data = os.read(fd, 4096)
    except OSError:
        data = b""
    finally:
        os.close(fd)
    try:
        report: object = json.loads(data)
    except ValueError:
        return None
    return cast(dict[str, Any], report) if isinstance(report, dict) else None


def _kill_tagged(tag: str) -> int:
    """SIGKILL every process whose environment carries the call's tag; how many there were."""
    marker = f"{TAG_VARIABLE}={tag}".encode()
    killed = 0
    for _ in range(5):  # again, for what forked while being killed
        found = [pid for pid in _pids() if marker in _environment(pid)]
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        killed += len(found)
        if not found:
            break
    return killed


def _pids() -> list[int]:
    try:
        return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []


def _environment(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            return file.read().split(b"\0")
    except OSError:  # gone, or not ours to read
        return []


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


def _record_group(registry: Path, pgid: int, command: str, tag: str) -> None:
    entry: dict[str, Any] = {
        "pgid": pgid,
        "tag": tag,
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
    """End what calls of runtimes that are gone left running; return how many calls had some.

    A recorded group is killed only if its leader's start time still matches the record, so
    a reused pid is never touched; processes that left the group are found by the call's
    tag in their environment. Records of a runtime that is still running are kept.
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
            pgid, started, tag = group.get("pgid"), group.get("start_time"), group.get("tag")
            ended = False
            if (
                isinstance(pgid, int)
                and started is not None
                and process_start_time(pgid) == started
                and _group_alive(pgid)
            ):
                ended = _signal_group(pgid, signal.SIGKILL)
            if isinstance(tag, str) and tag:
                ended = _kill_tagged(tag) > 0 or ended
            killed += ended
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
        atomic_write(registry, json.dumps({"groups": groups}))


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
