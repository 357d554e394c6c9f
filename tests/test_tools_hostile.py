"""Hostile workspaces: special files, symlinks out, odd bytes, huge files, long paths.

Every built-in file tool is tried on each hostile path; nothing may block, escape the
workspace, write inside `.tidemark/`, crash with an internal error or return text that
is not valid for the API.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tidemark.tools import AutoApprover, ToolCall, ToolContext, ToolOutcome, Toolset, builtin_tools

pytestmark = pytest.mark.anyio

# Short: before the fix a FIFO blocked a tool until its timeout.
TIMEOUT = 5.0


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "ok.txt").write_text("needle in a normal file\n")
    yield root
    # A reader stuck in open() on a FIFO (the bug) would keep pytest from exiting.
    while FIFOS:
        fifo = FIFOS.pop()
        for _ in range(3):
            os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("needle: the secret outside\n")
    return folder


async def call(workspace: Path, name: str, **input: Any) -> ToolOutcome:
    [outcome] = await Toolset(builtin_tools()).execute(
        [ToolCall("1", name, input)],
        ToolContext(workspace, default_timeout=TIMEOUT),
        AutoApprover(),
    )
    assert "internal error" not in outcome.content, outcome.content
    assert "timed out" not in outcome.content, outcome.content
    json.dumps(outcome.content).encode("utf-8")  # valid text for the API: no lone surrogates
    assert "\udcff" not in outcome.content
    return outcome


async def refused(workspace: Path, name: str, needle: str, **input: Any) -> str:
    outcome = await call(workspace, name, **input)
    assert outcome.is_error, outcome.content
    assert needle in outcome.content, outcome.content
    return outcome.content


FIFOS: list[Path] = []


def make_fifo(path: Path) -> None:
    os.mkfifo(path)
    FIFOS.append(path)


def make_socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))  # the socket file stays after the socket is closed
    server.close()


def make_device(path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero: never ends
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")


SPECIAL: dict[str, Callable[[Path], None]] = {
    "fifo": make_fifo,
    "socket": make_socket,
    "device": make_device,
}
KINDS = {"fifo": "named pipe (FIFO)", "socket": "socket", "device": "character device"}


# -- special files: FIFOs, sockets, devices ---------------------------------------------------


@pytest.mark.parametrize("kind", SPECIAL)
async def test_search_tools_skip_special_files_without_blocking(workspace: Path, kind: str) -> None:
    (workspace / "sub").mkdir()
    SPECIAL[kind](workspace / "sub" / "special")
    found = await call(workspace, "grep", pattern="needle")
    assert found.content == "ok.txt:1: needle in a normal file"
    listed = await call(workspace, "list_files")
    assert listed.content == "ok.txt"
    await refused(workspace, "grep", f"is a {KINDS[kind]}", pattern="x", path="sub/special")


@pytest.mark.parametrize("kind", SPECIAL)
async def test_file_tools_refuse_special_files_without_blocking(workspace: Path, kind: str) -> None:
    SPECIAL[kind](workspace / "special")
    os.symlink("special", workspace / "link-to-special")
    for path in ["special", "link-to-special"]:
        await refused(workspace, "read_file", f"is a {KINDS[kind]}", path=path)
        await refused(
            workspace, "edit_file", f"is a {KINDS[kind]}", path=path, old_string="a", new_string="b"
        )
        await refused(workspace, "write_file", f"is a {KINDS[kind]}", path=path, content="x")
    assert stat.S_ISREG(os.lstat(workspace / "special").st_mode) is False  # not replaced


# -- symlinks out of the workspace and into .tidemark -----------------------------------------


async def test_a_file_symlink_to_outside_is_refused_by_every_tool(
    workspace: Path, outside: Path
) -> None:
    os.symlink(outside / "secret.txt", workspace / "file-link")
    await refused(workspace, "read_file", "path escapes the workspace", path="file-link")
    await refused(
        workspace, "write_file", "path escapes the workspace", path="file-link", content="x"
    )
    await refused(
        workspace,
        "edit_file",
        "path escapes the workspace",
        path="file-link",
        old_string="needle",
        new_string="pin",
    )
    await refused(
        workspace, "grep", "path escapes the workspace", pattern="needle", path="file-link"
    )
    assert (await call(workspace, "grep", pattern="secret")).content == "no matches for 'secret'"
    assert (await call(workspace, "list_files")).content == "ok.txt"
    assert (outside / "secret.txt").read_text() == "needle: the secret outside\n"


async def test_a_directory_symlink_to_outside_is_refused_by_every_tool(
    workspace: Path, outside: Path
) -> None:
    os.symlink(outside, workspace / "dir-link")
    escape = "path escapes the workspace"
    await refused(workspace, "read_file", escape, path="dir-link/secret.txt")
    await refused(workspace, "write_file", escape, path="dir-link/new.txt", content="x")
    await refused(workspace, "write_file", escape, path="dir-link/deeper/new.txt", content="x")
    await refused(
        workspace,
        "edit_file",
        escape,
        path="dir-link/secret.txt",
        old_string="needle",
        new_string="pin",
    )
    await refused(workspace, "grep", escape, pattern="needle", path="dir-link")
    await refused(workspace, "list_files", escape, path="dir-link")
    assert (await call(workspace, "grep", pattern="secret")).content == "no matches for 'secret'"
    assert (await call(workspace, "list_files")).content == "ok.txt"
    assert os.listdir(outside) == ["secret.txt"]


async def test_a_dangling_symlink_to_outside_cannot_create_a_file_there(
    workspace: Path, outside: Path
) -> None:
    os.symlink(outside / "planted.txt", workspace / "dangling")
    await refused(
        workspace, "write_file", "path escapes the workspace", path="dangling", content="x"
    )
    assert not (outside / "planted.txt").exists()
    assert (await call(workspace, "list_files")).content == "ok.txt"


async def test_symlinks_into_the_runtime_folder_are_never_written_or_searched(
    workspace: Path,
) -> None:
    runtime = workspace / ".tidemark" / "sessions" / "s1"
    runtime.mkdir(parents=True)
    (runtime / "session-memory.md").write_text("# Session Title\nneedle\n")
    os.symlink(runtime / "session-memory.md", workspace / "memory-link")
    os.symlink(workspace / ".tidemark", workspace / "runtime-link")
    own = "is the runtime's own folder"
    await refused(workspace, "write_file", own, path="memory-link", content="x")
    await refused(workspace, "write_file", own, path="runtime-link/new.md", content="x")
    await refused(
        workspace, "edit_file", own, path="memory-link", old_string="needle", new_string="pin"
    )
    assert (await call(workspace, "grep", pattern="needle")).content == (
        "ok.txt:1: needle in a normal file"
    )
    assert (await call(workspace, "list_files")).content == "ok.txt"
    assert (runtime / "session-memory.md").read_text() == "# Session Title\nneedle\n"
    assert not (workspace / ".tidemark" / "new.md").exists()


async def test_a_symlink_loop_is_a_clear_error(workspace: Path) -> None:
    os.symlink("loop-b", workspace / "loop-a")
    os.symlink("loop-a", workspace / "loop-b")
    for name, extra in [
        ("read_file", {}),
        ("write_file", {"content": "x"}),
        ("edit_file", {"old_string": "a", "new_string": "b"}),
    ]:
        await refused(workspace, name, "symbolic links", path="loop-a", **extra)
    assert (await call(workspace, "list_files")).content == "ok.txt"
    assert (await call(workspace, "grep", pattern="needle")).content.startswith("ok.txt:1:")


async def test_a_symlink_inside_the_workspace_is_followed_and_kept(workspace: Path) -> None:
    os.symlink("ok.txt", workspace / "alias.txt")
    read = await call(workspace, "read_file", path="alias.txt")
    assert read.content == "     1\tneedle in a normal file"
    await call(workspace, "write_file", path="alias.txt", content="new text\n")
    assert os.readlink(workspace / "alias.txt") == "ok.txt"  # the link is still a link
    assert (workspace / "ok.txt").read_text() == "new text\n"


async def test_writing_a_hard_link_never_changes_the_file_outside(
    workspace: Path, outside: Path
) -> None:
    os.link(outside / "secret.txt", workspace / "hard.txt")
    await call(workspace, "write_file", path="hard.txt", content="replaced\n")
    await call(workspace, "edit_file", path="hard.txt", old_string="replaced", new_string="edited")
    assert (workspace / "hard.txt").read_text() == "edited\n"
    assert (outside / "secret.txt").read_text() == "needle: the secret outside\n"


# -- names: "~", long paths, deep trees, undecodable names ------------------------------------


async def test_a_tilde_is_a_name_in_the_workspace_not_the_home_folder(workspace: Path) -> None:
    await refused(workspace, "read_file", "file not found: ~/.bashrc", path="~/.bashrc")
    await call(workspace, "write_file", path="~/notes.txt", content="mine\n")
    assert (workspace / "~" / "notes.txt").read_text() == "mine\n"
    assert (await call(workspace, "read_file", path="~/notes.txt")).content == "     1\tmine"


async def test_a_name_too_long_for_the_file_system_is_a_clear_error(workspace: Path) -> None:
    name = "n" * 300
    for tool, extra in [
        ("read_file", {}),
        ("write_file", {"content": "x"}),
        ("edit_file", {"old_string": "a", "new_string": "b"}),
        ("list_files", {}),
        ("grep", {"pattern": "x"}),
    ]:
        await refused(workspace, tool, "too long", path=name, **extra)
    await refused(workspace, "read_file", "too long", path="/".join(["d" * 200] * 30))


async def test_a_very_deep_tree_is_listed_and_searched_without_crashing(workspace: Path) -> None:
    depth = 1_100  # deeper than Python's recursion limit; paths longer than PATH_MAX (4096)
    fd = os.open(workspace, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("ddd", dir_fd=fd)
            inner = os.open("ddd", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        leaf = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"needle at the bottom\n")
        os.close(leaf)
    finally:
        os.close(fd)
    try:
        listed = await call(workspace, "list_files")
        assert "ok.txt" in listed.content.splitlines()
        found = await call(workspace, "grep", pattern="needle")
        assert "ok.txt:1: needle in a normal file" in found.content
    finally:
        remove_deep_tree(workspace / "ddd", depth)


def remove_deep_tree(top: Path, depth: int) -> None:
    """Remove a chain of folders too deep for shutil.rmtree (which recurses)."""
    fds = [os.open(top, os.O_RDONLY)]
    for _ in range(depth - 1):
        fds.append(os.open(top.name, os.O_RDONLY, dir_fd=fds[-1]))
    for name in os.listdir(fds[-1]):
        os.unlink(name, dir_fd=fds[-1])
    for fd in reversed(fds[:-1]):
        os.close(fds.pop())
        os.rmdir(top.name, dir_fd=fd)
    os.close(fds.pop())
    top.rmdir()


async def test_file_names_that_are_not_utf8_are_listed_as_valid_text(workspace: Path) -> None:
    fd = os.open(os.path.join(os.fsencode(workspace), b"caf\xe9.txt"), os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"needle latin\n")
    os.close(fd)
    (workspace / "new\nline.txt").write_text("x\n")
    listed = (await call(workspace, "list_files")).content.splitlines()
    assert "caf\\xe9.txt" in listed and "ok.txt" in listed
    assert "new\\nline.txt" in listed
    found = await call(workspace, "grep", pattern="needle latin")
    assert found.content == "caf\\xe9.txt:1: needle latin"


# -- contents: non-UTF-8, binary, huge ---------------------------------------------------------


async def test_a_latin_1_file_is_read_with_a_note_and_edited_without_losing_bytes(
    workspace: Path,
) -> None:
    (workspace / "legacy.py").write_bytes("name = 'café'\nvalue = 1\n".encode("latin-1"))
    read = await call(workspace, "read_file", path="legacy.py")
    assert not read.is_error
    assert read.content.startswith("     1\tname = 'caf\ufffd'\n     2\tvalue = 1")
    assert "not valid UTF-8" in read.content
    await call(workspace, "edit_file", path="legacy.py", old_string="value = 1", new_string="v = 2")
    assert (workspace / "legacy.py").read_bytes() == "name = 'café'\nv = 2\n".encode("latin-1")
    found = await call(workspace, "grep", pattern="caf")
    assert found.content == "legacy.py:1: name = 'caf\ufffd'"


async def test_a_binary_file_is_refused_by_read_and_edit_and_skipped_by_grep(
    workspace: Path,
) -> None:
    (workspace / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00needle\x00")
    await refused(workspace, "read_file", "image.png is a binary file", path="image.png")
    await refused(
        workspace,
        "edit_file",
        "binary",
        path="image.png",
        old_string="needle",
        new_string="pin",
    )
    assert (await call(workspace, "grep", pattern="needle")).content.startswith("ok.txt:1:")
    assert (workspace / "image.png").read_bytes().endswith(b"needle\x00")


async def test_a_huge_file_is_read_a_page_at_a_time(workspace: Path) -> None:
    line = b"x" * 99 + b"\n"
    with (workspace / "huge.log").open("wb") as file:
        for _ in range(60):  # 60 MB, 600,000 lines
            file.write(line * 10_000)
        file.write(b"the last line\n")
    first = await call(workspace, "read_file", path="huge.log", limit=3)
    assert first.content.splitlines()[:3] == [f"{n:>6}\t{'x' * 99}" for n in (1, 2, 3)]
    assert "use offset=4 to read more" in first.content
    last = await call(workspace, "read_file", path="huge.log", offset=600_001)
    assert last.content.startswith("600001\tthe last line")


async def test_a_huge_single_line_is_cut_and_the_read_stays_small(workspace: Path) -> None:
    (workspace / "min.js").write_bytes(b"a" * 50_000_000 + b"\nsecond\n")
    read = await call(workspace, "read_file", path="min.js")
    assert len(read.content) < 31_000
    assert "line cut at 2000 characters" in read.content
    assert "     2\tsecond" in read.content


async def test_edit_file_refuses_a_file_too_large_to_edit_in_memory(workspace: Path) -> None:
    with (workspace / "big.txt").open("wb") as file:
        file.truncate(200_000_000)  # sparse: no disk used
    await refused(
        workspace, "edit_file", "too large", path="big.txt", old_string="a", new_string="b"
    )


# -- writes: atomic, mode kept -----------------------------------------------------------------


async def test_writes_keep_the_mode_of_the_file_they_replace(workspace: Path) -> None:
    script = workspace / "run.sh"
    script.write_text("echo one\n")
    script.chmod(0o751)
    await call(workspace, "write_file", path="run.sh", content="echo two\n")
    assert stat.S_IMODE(script.stat().st_mode) == 0o751
    await call(workspace, "edit_file", path="run.sh", old_string="two", new_string="three")
    assert stat.S_IMODE(script.stat().st_mode) == 0o751
    assert script.read_text() == "echo three\n"
    await call(workspace, "write_file", path="new.txt", content="x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((workspace / "new.txt").stat().st_mode) == 0o666 & ~umask
    assert sorted(os.listdir(workspace)) == ["new.txt", "ok.txt", "run.sh"]  # no temp files


WRITER = """
import sys
from pathlib import Path
import anyio
from tidemark.tools import AutoApprover, ToolCall, ToolContext, Toolset, builtin_tools

async def main() -> None:
    tools = Toolset(builtin_tools())
    contents = [sys.argv[2] * 4_000_000, sys.argv[3] * 4_000_000]
    for n in range(1_000):
        call = ToolCall(str(n), "write_file", {"path": "data.txt", "content": contents[n % 2]})
        [outcome] = await tools.execute([call], ToolContext(Path(sys.argv[1])), AutoApprover())
        assert not outcome.is_error, outcome.content
        print("written", flush=True)

anyio.run(main)
"""


def test_a_kill_9_in_the_middle_of_writes_leaves_the_old_file_or_the_new_one(
    tmp_path: Path,
) -> None:
    target = tmp_path / "data.txt"
    for kill_point in range(4):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), "a", "b"], stdout=subprocess.PIPE
        )
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"written\n"
        time.sleep(0.005 * kill_point)  # somewhere in the next writes
        writer.kill()
        writer.wait()
        writer.stdout.close()
        data = target.read_bytes()
        assert data in (b"a" * 4_000_000, b"b" * 4_000_000), (kill_point, len(data))


FULL_DISK = """
import json, resource, sys
from pathlib import Path
import anyio
from tidemark.tools import AutoApprover, ToolCall, ToolContext, Toolset, builtin_tools

resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))  # writes past 1 MB fail

BIG = "x" * 2_000_000
INPUTS = {
    "write_file": {"path": "keep.txt", "content": BIG},
    "edit_file": {"path": "keep.txt", "old_string": "original", "new_string": BIG},
}

async def main() -> None:
    call = ToolCall("1", sys.argv[2], INPUTS[sys.argv[2]])
    ctx = ToolContext(Path(sys.argv[1]))
    [outcome] = await Toolset(builtin_tools()).execute([call], ctx, AutoApprover())
    print(json.dumps([outcome.is_error, outcome.content]))

anyio.run(main)
"""


@pytest.mark.parametrize("tool", ["write_file", "edit_file"])
def test_a_full_disk_in_the_middle_of_a_write_leaves_the_file_as_it_was(
    tmp_path: Path, tool: str
) -> None:
    (tmp_path / "keep.txt").write_text("original\n")
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path), tool],
        capture_output=True,
        text=True,
        check=True,
    )
    is_error, content = json.loads(done.stdout)
    assert is_error and "left as it was" in content, content
    assert (tmp_path / "keep.txt").read_text() == "original\n"
    assert os.listdir(tmp_path) == ["keep.txt"]  # the temporary file was removed
