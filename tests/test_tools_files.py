"""read_file, write_file, edit_file, and confinement of every path to the workspace."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tidemark.tools import AutoApprover, ToolCall, ToolContext, ToolOutcome, Toolset, builtin_tools

pytestmark = pytest.mark.anyio


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    return root


async def call(workspace: Path, name: str, **input: Any) -> ToolOutcome:
    [outcome] = await Toolset(builtin_tools()).execute(
        [ToolCall("1", name, input)], ToolContext(workspace), AutoApprover()
    )
    return outcome


async def test_read_file_numbers_lines_like_cat_n(workspace: Path) -> None:
    (workspace / "a.py").write_text("first\nsecond\n")
    outcome = await call(workspace, "read_file", path="a.py")
    assert (outcome.content, outcome.is_error) == ("     1\tfirst\n     2\tsecond", False)


async def test_read_file_reads_a_window_and_says_how_to_read_on(workspace: Path) -> None:
    (workspace / "a.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    outcome = await call(workspace, "read_file", path="a.txt", offset=3, limit=2)
    assert outcome.content.splitlines() == [
        "     3\tline 3",
        "     4\tline 4",
        "[showed lines 3-4 of 10 (limit is 2 lines); use offset=5 to read more]",
    ]


async def test_read_file_caps_its_output_and_says_where_it_stopped(workspace: Path) -> None:
    (workspace / "big.txt").write_text("x" * 99 + "\n" + ("y" * 99 + "\n") * 999)
    outcome = await call(workspace, "read_file", path="big.txt")
    assert len(outcome.content) <= 30_200
    last = outcome.content.splitlines()[-1]
    assert last.startswith("[showed lines 1-") and "of 1000" in last
    assert "capped at 30000 characters" in last and "use offset=" in last


async def test_read_file_shortens_very_long_lines(workspace: Path) -> None:
    (workspace / "min.js").write_text("z" * 5000)
    outcome = await call(workspace, "read_file", path="min.js")
    assert "[line cut at 2000 characters]" in outcome.content and len(outcome.content) < 2100


@pytest.mark.parametrize(
    ("setup", "path", "message"),
    [
        (lambda ws: None, "missing.txt", "file not found: missing.txt"),
        (lambda ws: (ws / "d").mkdir(), "d", "d is a directory"),
        (lambda ws: (ws / "b.bin").write_bytes(b"\x00\x01\x02"), "b.bin", "b.bin is a binary file"),
        (lambda ws: (ws / "s.txt").write_text("a\n"), "s.txt", "offset 5 is past the end"),
    ],
)
async def test_read_file_explains_what_it_cannot_read(
    workspace: Path, setup: Any, path: str, message: str
) -> None:
    setup(workspace)
    outcome = await call(workspace, "read_file", path=path, offset=5 if path == "s.txt" else 1)
    assert outcome.is_error and message in outcome.content


async def test_read_file_says_when_a_file_is_empty(workspace: Path) -> None:
    (workspace / "empty").write_text("")
    assert (await call(workspace, "read_file", path="empty")).content == "(empty is empty)"


async def test_write_file_creates_parents_and_reports_bytes_written(workspace: Path) -> None:
    outcome = await call(workspace, "write_file", path="src/pkg/mod.py", content="é = 1\n")
    assert (outcome.content, outcome.is_error) == (
        "created src/pkg/mod.py (7 bytes written)",
        False,
    )
    assert (workspace / "src/pkg/mod.py").read_text() == "é = 1\n"
    again = await call(workspace, "write_file", path="src/pkg/mod.py", content="")
    assert again.content == "overwrote src/pkg/mod.py (0 bytes written)"


async def test_write_file_refuses_the_runtime_folder(workspace: Path) -> None:
    outcome = await call(workspace, "write_file", path=".tidemark/sessions/x/memory.md", content="")
    assert outcome.is_error and ".tidemark/ is the runtime's own folder" in outcome.content
    assert not (workspace / ".tidemark").exists()


async def test_edit_file_replaces_a_unique_string(workspace: Path) -> None:
    (workspace / "a.py").write_text("def f():\n    return 1\n")
    outcome = await call(
        workspace, "edit_file", path="a.py", old_string="return 1", new_string="return 2"
    )
    assert (outcome.content, outcome.is_error) == ("replaced 1 occurrence in a.py", False)
    assert (workspace / "a.py").read_text() == "def f():\n    return 2\n"


async def test_edit_file_refuses_an_ambiguous_string_and_says_how_many_matched(
    workspace: Path,
) -> None:
    (workspace / "a.py").write_text("x = 1\nx = 1\nx = 1\n")
    outcome = await call(
        workspace, "edit_file", path="a.py", old_string="x = 1", new_string="x = 2"
    )
    assert outcome.is_error and "occurs 3 times in a.py" in outcome.content
    assert "replace_all" in outcome.content
    assert (workspace / "a.py").read_text() == "x = 1\nx = 1\nx = 1\n"


async def test_edit_file_replaces_every_occurrence_when_asked(workspace: Path) -> None:
    (workspace / "a.py").write_text("x = 1\nx = 1\n")
    outcome = await call(
        workspace, "edit_file", path="a.py", old_string="1", new_string="2", replace_all=True
    )
    assert outcome.content == "replaced 2 occurrences in a.py"
    assert (workspace / "a.py").read_text() == "x = 2\nx = 2\n"


async def test_edit_file_says_when_the_string_is_not_found(workspace: Path) -> None:
    (workspace / "a.py").write_text("x = 1\n")
    outcome = await call(workspace, "edit_file", path="a.py", old_string="x=1", new_string="x=2")
    assert outcome.is_error and "old_string not found in a.py" in outcome.content


async def test_edit_file_refuses_an_empty_old_string(workspace: Path) -> None:
    (workspace / "a.py").write_text("x\n")
    outcome = await call(workspace, "edit_file", path="a.py", old_string="", new_string="y")
    assert outcome.is_error and "use write_file" in outcome.content


@pytest.mark.parametrize("name", ["read_file", "write_file", "edit_file"])
async def test_paths_that_climb_out_of_the_workspace_are_refused(
    workspace: Path, name: str
) -> None:
    secret = workspace.parent / "secret.txt"
    secret.write_text("x")
    input = {"path": "../secret.txt", "content": "", "old_string": "x", "new_string": "y"}
    schema = builtin_tools()[[t.name for t in builtin_tools()].index(name)].input_schema
    outcome = await call(
        workspace, name, **{k: v for k, v in input.items() if k in schema["properties"]}
    )
    assert outcome.is_error and outcome.content.startswith(
        "path escapes the workspace: ../secret.txt"
    )
    assert secret.read_text() == "x"


async def test_absolute_paths_are_allowed_only_inside_the_workspace(workspace: Path) -> None:
    (workspace / "in.txt").write_text("inside\n")
    inside = await call(workspace, "read_file", path=str(workspace / "in.txt"))
    assert inside.content == "     1\tinside"
    outside = await call(workspace, "read_file", path="/etc/hostname")
    assert outside.is_error and "path escapes the workspace: /etc/hostname" in outside.content


async def test_symlinks_that_point_outside_the_workspace_are_refused(workspace: Path) -> None:
    outside = workspace.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("s")
    os.symlink(outside, workspace / "link")
    os.symlink(outside / "secret.txt", workspace / "file-link")
    for path in ["link/secret.txt", "file-link"]:
        outcome = await call(workspace, "read_file", path=path)
        assert outcome.is_error and "path escapes the workspace" in outcome.content
    write = await call(workspace, "write_file", path="link/new.txt", content="x")
    assert write.is_error and not (outside / "new.txt").exists()
