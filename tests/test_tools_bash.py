"""bash: output and exit codes, caps, timeouts, and that no process outlives the runtime."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tidemark.tools import (
    AutoApprover,
    ToolCall,
    ToolContext,
    ToolOutcome,
    Toolset,
    builtin_tools,
    reap_leftover_processes,
)

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[1]


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan stays a zombie until init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def group_alive(pgid: int) -> bool:
    """Some member of the process group is alive and not a zombie."""
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, NotADirectoryError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_until(condition: Any, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


async def wait_for_file(path: Path, seconds: float = 5.0) -> str:
    """The file's text once a command has written it (no event tells us when)."""
    file = anyio.Path(path)
    with anyio.fail_after(seconds):
        while not await file.exists() or not (await file.read_text()).strip():  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return (await file.read_text()).strip()


def pgid_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[2])


async def call(ctx: ToolContext, **input: Any) -> ToolOutcome:
    [outcome] = await Toolset(builtin_tools()).execute(
        [ToolCall("1", "bash", input)], ctx, AutoApprover()
    )
    return outcome


async def test_bash_returns_merged_output_and_the_exit_code(tmp_path: Path) -> None:
    outcome = await call(ToolContext(tmp_path), command="echo out; echo err >&2; exit 3")
    assert (outcome.content, outcome.is_error) == ("out\nerr\n[exit code: 3]", False)


async def test_bash_runs_in_the_workspace_with_no_input(tmp_path: Path) -> None:
    ctx = ToolContext(tmp_path)
    outcome = await call(ctx, command="pwd; cat; echo done")
    assert outcome.content == f"{ctx.workspace}\ndone\n[exit code: 0]"


async def test_bash_says_when_there_was_no_output(tmp_path: Path) -> None:
    assert (
        await call(ToolContext(tmp_path), command="true")
    ).content == "(no output)\n[exit code: 0]"


async def test_bash_keeps_the_head_and_tail_of_long_output(tmp_path: Path) -> None:
    command = "echo START; head -c 200000 /dev/zero | tr '\\0' x; echo; echo END"
    outcome = await call(ToolContext(tmp_path), command=command)
    assert outcome.content.startswith("START\n") and outcome.content.endswith("END\n[exit code: 0]")
    assert len(outcome.content) < 31_000
    assert "bytes of output cut from the middle" in outcome.content
    assert "read_file with offset/limit" in outcome.content


async def test_bash_stops_background_processes_when_the_command_ends(tmp_path: Path) -> None:
    outcome = await call(ToolContext(tmp_path), command="sleep 300 & echo $! > bg.pid")
    assert outcome.content.endswith("[background processes the command left running were stopped]")
    assert wait_until(lambda: not running(int((tmp_path / "bg.pid").read_text())))


async def test_a_timed_out_command_returns_its_partial_output_and_its_group_is_killed(
    tmp_path: Path,
) -> None:
    command = "trap '' TERM; sleep 300 & echo $! > bg.pid; echo partial; wait"
    started = time.monotonic()
    outcome = await call(ToolContext(tmp_path), command=command, timeout=0.5)
    assert time.monotonic() - started < 5
    assert outcome.is_error
    assert outcome.content.startswith("partial\n[timed out after 0.5 s;")
    assert wait_until(lambda: not running(int((tmp_path / "bg.pid").read_text())))


async def test_the_context_default_timeout_limits_bash(tmp_path: Path) -> None:
    outcome = await call(ToolContext(tmp_path, default_timeout=0.3), command="sleep 30")
    assert outcome.is_error and "timed out after 0.3 s" in outcome.content


async def test_a_timeout_above_the_maximum_is_refused(tmp_path: Path) -> None:
    outcome = await call(ToolContext(tmp_path), command="true", timeout=601)
    assert (
        outcome.is_error and "timeout: Input should be less than or equal to 600" in outcome.content
    )


async def test_cancelling_a_call_kills_its_process_group_and_propagates(tmp_path: Path) -> None:
    registry = tmp_path / "state" / "processes.json"
    ctx = ToolContext(tmp_path, process_registry=registry)
    finished = False
    background = 0
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            nonlocal finished
            await call(ctx, command="sleep 300 & echo $! > bg.pid; wait")
            finished = True

        tg.start_soon(run)
        background = int(await wait_for_file(tmp_path / "bg.pid"))
        # The group is recorded once the supervisor runs (the command may be quicker).
        [recorded] = await _recorded_groups(registry)
        assert recorded["pgid"] == pgid_of(background)
        tg.cancel_scope.cancel()
    assert not finished
    assert wait_until(lambda: not running(background))
    assert json.loads(registry.read_text())["groups"] == []


async def _recorded_groups(registry: Path, seconds: float = 10.0) -> list[dict[str, Any]]:
    file = anyio.Path(registry)
    with anyio.fail_after(seconds):
        while True:
            if await file.exists():
                groups: list[dict[str, Any]] = json.loads(await file.read_text())["groups"]
                if groups:
                    return groups
            await anyio.sleep(0.01)


async def test_a_finished_call_leaves_the_process_registry_empty(tmp_path: Path) -> None:
    registry = tmp_path / "processes.json"
    await call(ToolContext(tmp_path, process_registry=registry), command="echo hi")
    assert json.loads(registry.read_text()) == {"groups": []}


RUNTIME = """
import sys
from pathlib import Path
import anyio
sys.path.insert(0, {repo!r})
from tidemark.tools import ToolContext, builtin_tools

async def main() -> None:
    ctx = ToolContext(Path(sys.argv[1]), process_registry=Path(sys.argv[2]))
    [bash] = [t for t in builtin_tools() if t.name == "bash"]
    await bash.run({{"command": "sleep 300 & echo $! > bg.pid; wait"}}, ctx)

anyio.run(main, backend={backend!r})
"""


def start_runtime(
    workspace: Path, registry: Path, backend: str
) -> tuple[subprocess.Popen[bytes], int]:
    script = RUNTIME.format(repo=str(REPO), backend=backend)
    runtime = subprocess.Popen([sys.executable, "-c", script, str(workspace), str(registry)])
    assert wait_until(
        lambda: (workspace / "bg.pid").exists() and (workspace / "bg.pid").read_text().strip(), 30
    )
    return runtime, int((workspace / "bg.pid").read_text())


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_processes_die_with_the_runtime_even_on_kill_9(tmp_path: Path, backend: str) -> None:
    registry = tmp_path / "processes.json"
    runtime, background = start_runtime(tmp_path, registry, backend)
    assert running(background)
    runtime.kill()
    runtime.wait()
    assert wait_until(lambda: not running(background))
    # Every member of the group dies with the runtime, the shell and its supervisor too
    # (they go a moment after the background job).
    leaders = [g["pgid"] for g in json.loads(registry.read_text())["groups"]]
    assert wait_until(lambda: not any(group_alive(pgid) for pgid in leaders))
    assert reap_leftover_processes(registry) == 0  # nothing was left to reap
    assert json.loads(registry.read_text()) == {"groups": []}


def test_reaping_kills_groups_a_dead_runtime_left_behind(tmp_path: Path) -> None:
    registry = tmp_path / "processes.json"
    runtime, background = start_runtime(tmp_path, registry, "asyncio")
    supervisor = pgid_of(background)
    os.kill(supervisor, signal.SIGSTOP)  # the supervisor cannot act on the runtime's death
    try:
        runtime.kill()
        runtime.wait()
        time.sleep(0.2)
        assert running(background)
        assert reap_leftover_processes(registry) == 1
        assert wait_until(lambda: not running(background))
        assert json.loads(registry.read_text()) == {"groups": []}
    finally:
        if running(supervisor):
            os.killpg(supervisor, signal.SIGKILL)


def test_reaping_never_kills_a_process_whose_pid_was_reused(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        registry = tmp_path / "processes.json"
        entry = {"pgid": stranger.pid, "start_time": 1, "owner_pid": 999_999_999, "command": "x"}
        registry.write_text(json.dumps({"groups": [entry]}))
        assert reap_leftover_processes(registry) == 0
        time.sleep(0.05)
        assert stranger.poll() is None
        assert json.loads(registry.read_text()) == {"groups": []}
    finally:
        stranger.kill()
        stranger.wait()


async def test_reaping_leaves_the_groups_of_a_running_runtime_alone(tmp_path: Path) -> None:
    registry = tmp_path / "processes.json"
    ctx = ToolContext(tmp_path, process_registry=registry)
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(call, ctx, command="sleep 300 & echo $! > bg.pid; wait"))
        background = int(await wait_for_file(tmp_path / "bg.pid"))
        assert reap_leftover_processes(registry) == 0
        assert running(background)
        assert len(json.loads(registry.read_text())["groups"]) == 1
        tg.cancel_scope.cancel()


def test_reaping_a_missing_or_damaged_registry_is_harmless(tmp_path: Path) -> None:
    assert reap_leftover_processes(tmp_path / "none.json") == 0
    damaged = tmp_path / "damaged.json"
    damaged.write_text('{"groups": [')
    assert reap_leftover_processes(damaged) == 0
    assert json.loads(damaged.read_text()) == {"groups": []}


# -- processes that leave the command's process group -------------------------------------

# Each escapes the process group a different way and records its own pid in a file.
ESCAPES = {
    "setsid": "setsid sh -c 'echo $$ > setsid.pid; exec sleep 300' &",
    "double_fork": "( (sh -c 'echo $$ > double_fork.pid; exec sleep 300' &) & )",
    "double_fork_setsid": "( setsid sh -c 'echo $$ > double_fork_setsid.pid; exec sleep 300' & )",
    "setsid_ignoring_term": (
        "setsid sh -c 'trap \"\" TERM; echo $$ > setsid_ignoring_term.pid; exec sleep 300' &"
    ),
    "setsid_without_environment": (
        "setsid env -i sh -c 'echo $$ > setsid_without_environment.pid; exec sleep 300' &"
    ),
}
ESCAPING = "\n".join(ESCAPES.values())


async def escaped_pids(workspace: Path) -> list[int]:
    return [int(await wait_for_file(workspace / f"{name}.pid")) for name in ESCAPES]


async def test_processes_that_leave_the_group_are_stopped_when_the_command_ends(
    tmp_path: Path,
) -> None:
    outcome = await call(ToolContext(tmp_path), command=f"{ESCAPING}\nsleep 0.3")
    assert outcome.content.endswith("[background processes the command left running were stopped]")
    pids = await escaped_pids(tmp_path)
    assert wait_until(lambda: not any(running(pid) for pid in pids)), [
        name for name, pid in zip(ESCAPES, pids, strict=True) if running(pid)
    ]


async def test_processes_that_leave_the_group_are_stopped_on_timeout(tmp_path: Path) -> None:
    outcome = await call(ToolContext(tmp_path), command=f"{ESCAPING}\nsleep 300", timeout=1)
    assert outcome.is_error and "timed out" in outcome.content
    pids = await escaped_pids(tmp_path)
    assert wait_until(lambda: not any(running(pid) for pid in pids))


async def test_processes_that_leave_the_group_are_stopped_when_the_call_is_cancelled(
    tmp_path: Path,
) -> None:
    pids: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(call, ToolContext(tmp_path), command=f"{ESCAPING}\nwait"))
        pids = await escaped_pids(tmp_path)
        tg.cancel_scope.cancel()
    assert wait_until(lambda: not any(running(pid) for pid in pids))


ESCAPING_RUNTIME = r"""
import sys
from pathlib import Path
import anyio
from tidemark.tools import ToolContext, builtin_tools

async def main() -> None:
    ctx = ToolContext(Path(sys.argv[1]), process_registry=Path(sys.argv[2]))
    [bash] = [t for t in builtin_tools() if t.name == "bash"]
    await bash.run({"command": sys.argv[3] + "\necho ready > ready.txt; wait"}, ctx)

anyio.run(main, backend=sys.argv[4])
"""


def start_escaping_runtime(
    workspace: Path, registry: Path, backend: str
) -> subprocess.Popen[bytes]:
    runtime = subprocess.Popen(
        [sys.executable, "-c", ESCAPING_RUNTIME, str(workspace), str(registry), ESCAPING, backend]
    )
    assert wait_until(lambda: (workspace / "ready.txt").exists(), 30)
    return runtime


def pids_in(workspace: Path) -> list[int]:
    return [int((workspace / f"{name}.pid").read_text()) for name in ESCAPES]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_processes_that_leave_the_group_die_with_the_runtime_on_kill_9(
    tmp_path: Path, backend: str
) -> None:
    registry = tmp_path / "processes.json"
    runtime = start_escaping_runtime(tmp_path, registry, backend)
    assert wait_until(lambda: all((tmp_path / f"{n}.pid").exists() for n in ESCAPES))
    pids = pids_in(tmp_path)
    assert all(running(pid) for pid in pids)
    runtime.kill()
    runtime.wait()
    assert wait_until(lambda: not any(running(pid) for pid in pids))


def test_reaping_on_resume_ends_processes_that_left_the_group(tmp_path: Path) -> None:
    registry = tmp_path / "processes.json"
    runtime = start_escaping_runtime(tmp_path, registry, "asyncio")
    assert wait_until(lambda: all((tmp_path / f"{n}.pid").exists() for n in ESCAPES))
    pids = pids_in(tmp_path)
    [group] = json.loads(registry.read_text())["groups"]
    supervisor = group["pgid"]
    os.kill(supervisor, signal.SIGSTOP)  # it cannot act on the runtime's death...
    runtime.kill()
    runtime.wait()
    os.kill(supervisor, signal.SIGKILL)  # ...and then it is gone too
    time.sleep(0.2)
    assert all(running(pid) for pid in pids), "nothing else should have ended them"
    # Out of reach without its supervisor: no longer in the group, no tag in its environment
    # (SECURITY.md says so). Everything else is found.
    unreachable = pids.pop(list(ESCAPES).index("setsid_without_environment"))
    try:
        assert reap_leftover_processes(registry) >= 1
        assert wait_until(lambda: not any(running(pid) for pid in pids))
        assert json.loads(registry.read_text()) == {"groups": []}
    finally:
        os.kill(unreachable, signal.SIGKILL)
