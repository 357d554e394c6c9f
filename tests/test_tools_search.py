"""list_files and grep: sorted relative paths, ignored folders, globs, caps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tidemark.tools import AutoApprover, ToolCall, ToolContext, ToolOutcome, Toolset, builtin_tools

pytestmark = pytest.mark.anyio


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    files = {
        "README.md": "# demo\nTODO: write docs\n",
        "src/app.py": "def main():\n    return 'TODO'\n",
        "src/util/text.py": "def shout(s):\n    return s.upper()\n",
        "docs/guide.md": "nothing to do\n",
        ".git/config": "TODO in git\n",
        ".tidemark/sessions/s/transcript.jsonl": "TODO in runtime\n",
        "image.png": "TODO",
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00TODO\x00")
    return tmp_path


async def call(workspace: Path, name: str, **input: Any) -> ToolOutcome:
    [outcome] = await Toolset(builtin_tools()).execute(
        [ToolCall("1", name, input)], ToolContext(workspace), AutoApprover()
    )
    return outcome


async def test_list_files_lists_every_file_sorted_and_skips_git_and_tidemark(
    workspace: Path,
) -> None:
    outcome = await call(workspace, "list_files")
    assert outcome.content.splitlines() == [
        "README.md",
        "docs/guide.md",
        "image.png",
        "src/app.py",
        "src/util/text.py",
    ]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("**/*.py", ["src/app.py", "src/util/text.py"]),
        ("*.py", ["src/app.py", "src/util/text.py"]),
        ("src/*.py", ["src/app.py"]),
        ("*.md", ["README.md", "docs/guide.md"]),
        ("src/**", ["src/app.py", "src/util/text.py"]),
        ("src/[a-b]*.py", ["src/app.py"]),
    ],
)
async def test_list_files_filters_by_glob(
    workspace: Path, pattern: str, expected: list[str]
) -> None:
    outcome = await call(workspace, "list_files", pattern=pattern)
    assert outcome.content.splitlines() == expected


async def test_list_files_lists_a_subdirectory_with_workspace_relative_paths(
    workspace: Path,
) -> None:
    outcome = await call(workspace, "list_files", path="src", pattern="*.py")
    assert outcome.content.splitlines() == ["src/app.py", "src/util/text.py"]


async def test_list_files_says_when_nothing_matches(workspace: Path) -> None:
    outcome = await call(workspace, "list_files", pattern="*.rs")
    assert (outcome.content, outcome.is_error) == ("no files matching '*.rs' under .", False)


async def test_list_files_caps_the_listing_and_says_how_to_see_the_rest(tmp_path: Path) -> None:
    for i in range(1005):
        (tmp_path / f"f{i:04}.txt").write_text("")
    lines = (await call(tmp_path, "list_files")).content.splitlines()
    assert len(lines) == 1001 and lines[999] == "f0999.txt"
    assert lines[-1] == "[showed 1000 of 1005 files; narrow the path or pattern to see the rest]"


async def test_list_files_refuses_paths_outside_the_workspace(workspace: Path) -> None:
    outcome = await call(workspace, "list_files", path="..")
    assert outcome.is_error and "path escapes the workspace" in outcome.content


async def test_grep_reports_file_line_and_text_skipping_binary_git_and_tidemark(
    workspace: Path,
) -> None:
    outcome = await call(workspace, "grep", pattern="TODO")
    assert outcome.content.splitlines() == [
        "README.md:2: TODO: write docs",
        "src/app.py:2:     return 'TODO'",
    ]


async def test_grep_takes_python_regexes_and_a_glob(workspace: Path) -> None:
    outcome = await call(workspace, "grep", pattern=r"def \w+\(s\)", glob="*.py")
    assert outcome.content == "src/util/text.py:1: def shout(s):"
    only_md = await call(workspace, "grep", pattern="TODO", glob="*.md")
    assert only_md.content == "README.md:2: TODO: write docs"


async def test_grep_searches_a_single_file_or_folder(workspace: Path) -> None:
    assert (await call(workspace, "grep", pattern="def", path="src/app.py")).content == (
        "src/app.py:1: def main():"
    )
    assert (await call(workspace, "grep", pattern="def", path="src/util")).content == (
        "src/util/text.py:1: def shout(s):"
    )


async def test_grep_says_when_nothing_matches(workspace: Path) -> None:
    outcome = await call(workspace, "grep", pattern="FIXME")
    assert (outcome.content, outcome.is_error) == ("no matches for 'FIXME'", False)


async def test_grep_reports_a_bad_regex_as_an_error(workspace: Path) -> None:
    outcome = await call(workspace, "grep", pattern="def (")
    assert outcome.is_error and outcome.content.startswith("invalid regex 'def (':")


async def test_grep_caps_its_output_and_says_how_to_narrow_it(tmp_path: Path) -> None:
    (tmp_path / "log.txt").write_text(("match " + "x" * 94 + "\n") * 1000)
    outcome = await call(tmp_path, "grep", pattern="match")
    assert len(outcome.content) <= 30_200
    last = outcome.content.splitlines()[-1]
    assert last.startswith("[output capped at 30000 characters after ")
    assert "narrow the pattern, path or glob" in last
